"""Parsing list text (domains, hosts, AdBlock, UT1) into names and networks, line by line.

Parsers only ever call `.add(name)` on the targets of a `ParsedList`: sets by default (tests, small
lists), or key sinks (blocklists.build) that hash each name as it is read, so that a list of
millions of names is never held as Python strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import compress, islice
from operator import not_
from typing import Protocol

from blocklists.names import (
    MAX_NAME_LENGTH, VALID_ASCII_NAME, IPNetwork, normalize_domain, parse_ip_entry,
)
from common.addresses import is_ip

FORMATS = ("domains", "hosts", "adblock", "ut1")
CHUNK_LINES = 1 << 14  # lines parsed at once when given line by line
# A whole line that is a plain lowercase name whose last character is not a digit.
_PLAIN_LINES = re.compile(r"^(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{0,62}[a-z_-]$", re.MULTILINE)
MATCH_MODES = ("default", "suffix")
MAX_BAD_EXAMPLES = 20
# No list line needs more (a name is at most 253 characters; a hosts line holds a few names). A
# longer line is counted as bad, and readers replace it by OVERLONG_LINE without keeping it whole.
MAX_LINE_CHARS = 8192
OVERLONG_LINE = "\x00\x01overlong\x00"
OVERLONG_REASON = f"a line longer than {MAX_LINE_CHARS} characters"
# Such lines inside text already read, matched at line starts only so that the scan is linear.
OVERLONG_LINES = re.compile(r"^[^\n]{%d,}" % (MAX_LINE_CHARS + 1), re.MULTILINE)

# Names that hosts files map for the machine itself, not as blocks (the StevenBlack header).
_HOSTS_LOCAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "localhost6",
        "localhost6.localdomain6",
        "broadcasthost",
        "local",
        "0.0.0.0",
    }
)
_HOSTS_NULL_ADDRESSES = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1"})
# Options that do not narrow which DNS queries a rule applies to, so the rule holds as a block.
_ADBLOCK_DNS_NEUTRAL_OPTIONS = frozenset({"important", "all", "document", "doc"})
_ADBLOCK_COSMETIC_MARKERS = ("##", "#@#", "#?#", "#$#", "#%#", "#@?#", "#@$#", "$$", "$@$")


class NameTarget(Protocol):
    """Where parsed names go: a set, or a sink that hashes them (blocklists.build.KeySink)."""

    def add(self, name: str, /) -> None: ...

    def update(self, names: Iterable[str], /) -> None: ...

    def __len__(self) -> int: ...


@dataclass
class ParsedList:
    suffix: NameTarget = field(default_factory=set)  # blocks the name and all its subdomains
    exact: NameTarget = field(default_factory=set)  # blocks only that exact name
    except_suffix: NameTarget = field(default_factory=set)  # AdBlock @@||x^: this source only
    except_exact: NameTarget = field(default_factory=set)
    networks: set[IPNetwork] = field(default_factory=set)  # kept for answer inspection
    bad_lines: int = 0
    bad_examples: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    skipped: int = 0  # lines deliberately not enforced (UT1 urls, AdBlock cosmetic rules)
    origin: str = ""  # the file being parsed, when a list is read from several: prefixes reasons

    @property
    def entry_count(self) -> int:
        """Names and networks added (a key sink counts repeated names again)."""
        return len(self.suffix) + len(self.exact) + len(self.networks)

    def add_bad(self, line_number: int, reason: str) -> None:
        self.bad_lines += 1
        if len(self.bad_examples) < MAX_BAD_EXAMPLES:
            self.bad_examples.append(
                (line_number, f"{self.origin}: {reason}" if self.origin else reason)
            )


ParsedListFactory = Callable[[], ParsedList]


def parse_lines(
    lines: Iterable[str], fmt: str, *, match: str = "default", into: ParsedList | None = None
) -> ParsedList:
    """Parse list text; bad lines are counted with their 1-based line numbers, never raised.

    With `into`, the names are added to that list (several files of one source, or key sinks).
    """
    if fmt in ("domains", "ut1"):
        chunks = ("\n".join(OVERLONG_LINE if len(line) > MAX_LINE_CHARS else line.rstrip("\r\n")
                            for line in batch)
                  for batch in iter(lambda it=iter(lines): list(islice(it, CHUNK_LINES)), []))
        return parse_text(chunks, fmt, match=match, into=into)
    return parse_text((), fmt, match=match, into=into, lines=lines)


def parse_text(
    chunks: Iterable[str], fmt: str, *, match: str = "default", into: ParsedList | None = None,
    lines: Iterable[str] | None = None,
) -> ParsedList:
    """Parse list text given in chunks of whole lines (each without its last newline).

    Reading a big file in chunks lets the `domains` format check and hash a million plain names
    without a Python step per name; the other formats go line by line.
    """
    if match not in MATCH_MODES:
        raise ValueError(f"unknown match mode {match!r}; expected one of {', '.join(MATCH_MODES)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown list format {fmt!r}; expected one of {', '.join(FORMATS)}")
    parsed = ParsedList() if into is None else into
    if lines is not None:  # given line by line: a line too long is replaced like in a stream
        lines = (OVERLONG_LINE if len(line) > MAX_LINE_CHARS else line for line in lines)
    else:
        lines = (line for chunk in chunks for line in chunk.split("\n"))
    if fmt in ("domains", "ut1"):
        _parse_domains(chunks, parsed)
    elif fmt == "hosts":
        _parse_hosts(lines, parsed, parsed.suffix if match == "suffix" else parsed.exact)
    else:
        _parse_adblock(lines, parsed, widen_exact=match == "suffix")
    return parsed


def _quote(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _looks_like_bad_address(name: str) -> bool:
    # "300.1.2.3" passes as a name made of labels, but no top-level domain is all digits.
    return name[-1].isdigit() and name.rpartition(".")[2].isdigit()


def _parse_domains(chunks: Iterable[str], parsed: ParsedList) -> None:
    # The hot path: a UT1 "adult" file has millions of lines. One regular expression over a whole
    # chunk blanks out every plain lowercase name (what nearly every line is); the lines left are
    # the only ones that pay for comments, wildcards, IDNA, addresses and bad-line reports.
    is_plain_name = VALID_ASCII_NAME.fullmatch
    before = 0  # lines in the chunks before this one
    for chunk in chunks:
        if not chunk.strip():  # blank lines only (a stream of newlines): nothing to look at
            before += chunk.count("\n") + 1
            continue
        text = chunk.lower()
        lines = text.split("\n")
        rest = _PLAIN_LINES.sub("", text)
        if rest.count("\n") == len(rest):  # nothing left: every line was plain (or empty)
            plain = list(filter(None, lines))
        else:
            left = rest.split("\n")
            plain = list(filter(None, compress(lines, map(not_, left))))
            for index in compress(range(len(lines)), left):
                line = lines[index].strip()
                if len(line) <= MAX_NAME_LENGTH and is_plain_name(line) and not line[-1].isdigit():
                    parsed.suffix.add(line)
                elif line and line[0] != "#":
                    _add_domains_line(line, before + index + 1, parsed)
        if plain and max(map(len, plain)) > MAX_NAME_LENGTH:  # labels fit, the whole does not
            for index, line in enumerate(lines):
                if len(line) > MAX_NAME_LENGTH and _PLAIN_LINES.fullmatch(line):
                    _add_domains_line(line, before + index + 1, parsed)
            plain = [line for line in plain if len(line) <= MAX_NAME_LENGTH]
        parsed.suffix.update(plain)
        before += len(lines)


def _add_domains_line(line: str, number: int, parsed: ParsedList) -> None:
    if line == OVERLONG_LINE:
        parsed.add_bad(number, OVERLONG_REASON)
        return
    if "#" in line:
        line = line.partition("#")[0].rstrip()
    wildcard = line.startswith(("*.", "."))
    name = normalize_domain(line[line.index(".") + 1 :] if wildcard else line)
    network = None if wildcard else parse_ip_entry(line)
    if network is not None:
        parsed.networks.add(network)
    elif name is not None and not _looks_like_bad_address(name):
        parsed.suffix.add(name)
    elif len(line.split()) > 1:
        parsed.add_bad(number, f"expected one name per line, got {_quote(line)}")
    else:
        parsed.add_bad(number, f"not a valid name or address: {_quote(line)}")


def _is_hosts_local_name(name: str) -> bool:
    return name in _HOSTS_LOCAL_NAMES or name.startswith("ip6-")


def _is_address(text: str) -> bool:
    # "fe80::1%eth0" names its interface
    return text in _HOSTS_NULL_ADDRESSES or is_ip(text.partition("%")[0])


def _parse_hosts(lines: Iterable[str], parsed: ParsedList, target: NameTarget) -> None:
    is_plain_name = VALID_ASCII_NAME.fullmatch
    target_add = target.add
    for number, line in enumerate(map(str.lower, lines), 1):
        fields = line.split()
        # The common "0.0.0.0 name" line, accepted inline; the rest takes the careful path.
        if (
            len(fields) == 2
            and fields[0] in _HOSTS_NULL_ADDRESSES
            and is_plain_name(name := fields[1])
            and len(name) <= MAX_NAME_LENGTH
            and not name[-1].isdigit()
            and name not in _HOSTS_LOCAL_NAMES
            and not name.startswith("ip6-")
        ):
            target_add(name)
        elif line == OVERLONG_LINE:
            parsed.add_bad(number, OVERLONG_REASON)
        elif fields and fields[0][0] != "#":
            _add_hosts_line(line.partition("#")[0].split(), number, parsed, target)


def _add_hosts_line(
    fields: list[str], number: int, parsed: ParsedList, target: NameTarget
) -> None:
    if len(fields) < 2 or not _is_address(fields[0]):
        parsed.add_bad(number, f"expected an address then names, got {_quote(' '.join(fields))}")
        return
    # The address does not matter: any hosts entry overrides the real answer, i.e. a block.
    invalid = []
    for text in fields[1:]:
        name = normalize_domain(text)
        if name is not None and _is_hosts_local_name(name):
            parsed.skipped += 1
        elif name is None or _looks_like_bad_address(name):
            invalid.append(text)
        else:
            target.add(name)
    if invalid:
        parsed.add_bad(number, f"not a valid name: {_quote(' '.join(invalid))}")


def _parse_adblock(lines: Iterable[str], parsed: ParsedList, *, widen_exact: bool) -> None:
    exact_block = parsed.suffix if widen_exact else parsed.exact
    exact_allow = parsed.except_suffix if widen_exact else parsed.except_exact
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] == "!":
            continue
        if line == OVERLONG_LINE:
            parsed.add_bad(number, OVERLONG_REASON)
            continue
        if line[0] == "#":
            if line[1:2] in ("#", "@", "?", "$", "%"):
                parsed.skipped += 1  # a cosmetic rule for every site, irrelevant to DNS
            continue
        if line[0] == "[" or line[0] == "/" or any(m in line for m in _ADBLOCK_COSMETIC_MARKERS):
            parsed.skipped += 1  # a "[Adblock Plus 2.0]" header, a regex, or a cosmetic rule
            continue
        fields = line.split()
        if len(fields) > 1:
            _add_hosts_line(fields, number, parsed, exact_block)  # AdGuard accepts hosts syntax
            continue
        _add_adblock_rule(line, number, parsed, exact_block, exact_allow)


def _add_adblock_rule(
    line: str, number: int, parsed: ParsedList, exact_block: NameTarget, exact_allow: NameTarget
) -> None:
    is_exception = line.startswith("@@")
    rule = line[2:] if is_exception else line
    pattern, dollar, options = rule.rpartition("$")
    if not dollar:
        pattern = rule
    elif options and not all(
        option.strip().lower() in _ADBLOCK_DNS_NEUTRAL_OPTIONS for option in options.split(",")
    ):
        parsed.skipped += 1  # $third-party, $dnstype=..., $client=...: narrower than a DNS block
        return
    # "||name^" covers the name and its subdomains; "|name^" and a bare "name" only the name.
    covers_subdomains = pattern.startswith("||")
    body = pattern.lstrip("|")
    if body.endswith("^|"):
        body = body[:-2]
    elif body.endswith(("^", "|")):
        body = body[:-1]
    network = parse_ip_entry(body)
    if network is not None:
        if is_exception:
            parsed.skipped += 1  # an allowed address has no part in name matching
        else:
            parsed.networks.add(network)
        return
    if not body or any(c in body for c in "/*^|:?=&"):
        parsed.skipped += 1  # a URL path, a port or a wildcard: not expressible as a DNS name
        return
    name = normalize_domain(body)
    if name is None or _looks_like_bad_address(name):
        parsed.add_bad(number, f"not a valid AdBlock rule: {_quote(line)}")
    elif covers_subdomains:
        (parsed.except_suffix if is_exception else parsed.suffix).add(name)
    else:
        (exact_allow if is_exception else exact_block).add(name)
