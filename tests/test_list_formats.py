"""List text as each supported format reads it: what blocks, what is an exception, what is bad."""

from __future__ import annotations

import ipaddress

import pytest

from blocklists.formats import ParsedList, parse_lines
from blocklists.names import normalize_domain, parents, parse_ip_entry

net = ipaddress.ip_network


def parse(text: str, fmt: str, match: str = "default") -> ParsedList:
    return parse_lines(text.splitlines(), fmt, match=match)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.COM", "example.com"),
        ("  example.com.  ", "example.com"),
        ("école.fr", "xn--cole-9oa.fr"),  # RFC 3492 Punycode of "école"
        ("ÉCOLE.fr", "xn--cole-9oa.fr"),
        ("xn--cole-9oa.fr", "xn--cole-9oa.fr"),
        ("bücher。example", "xn--bcher-kva.example"),  # ideographic full stop as a dot
        ("_dns.resolver.arpa", "_dns.resolver.arpa"),
        ("_sip._tcp.école.fr", "_sip._tcp.xn--cole-9oa.fr"),
        ("r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (".".join(["a" * 49] * 5) + ".com", ".".join(["a" * 49] * 5) + ".com"),  # 253
        ("a" * 64 + ".com", None),
        (".".join(["a" * 49] * 5) + ".co.uk", None),  # 256 characters
        ("a..com", None),
        (".example.com", None),
        ("*.example.com", None),
        ("example.com..", None),
        ("exa mple.com", None),
        ("example.com/path", None),
        ("", None),
        (".", None),
    ],
)
def test_normalize_domain(text: str, expected: str | None) -> None:
    assert normalize_domain(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", net("192.0.2.1/32")),
        ("10.0.0.0/8", net("10.0.0.0/8")),
        ("10.1.2.3/8", net("10.0.0.0/8")),
        ("2001:db8::1", net("2001:db8::1/128")),
        ("2001:db8::/32", net("2001:db8::/32")),
        ("example.com", None),
        ("300.1.2.3", None),
        ("1.2.3.4/40", None),
    ],
)
def test_parse_ip_entry(text: str, expected: object) -> None:
    assert parse_ip_entry(text) == expected


def test_parents_walks_up_to_the_top_level_domain() -> None:
    assert list(parents("a.b.c")) == ["a.b.c", "b.c", "c"]
    assert list(parents("com")) == ["com"]


# Each case: format, match, list text, and the expected sets, bad line numbers and skips.
FORMAT_CASES = [
    pytest.param(
        "domains",
        "default",
        """# a comment
example.com
*.wild.example
.dotted.example
Mixed.Case.Example.
école.fr

ads.example.net   # trailing comment
192.0.2.7
198.51.100.0/24
2001:db8::/32
bad name here
a..b
300.1.2.3
""",
        dict(
            suffix={
                "example.com",
                "wild.example",
                "dotted.example",
                "mixed.case.example",
                "xn--cole-9oa.fr",
                "ads.example.net",
            },
            networks={net("192.0.2.7/32"), net("198.51.100.0/24"), net("2001:db8::/32")},
        ),
        [12, 13, 14],
        0,
        id="domains",
    ),
    pytest.param(
        "ut1",
        "default",
        "porn.example\n10.0.0.1\nwww.porn.example\n-/bad\n",
        dict(suffix={"porn.example", "www.porn.example"}, networks={net("10.0.0.1/32")}),
        [4],
        0,
        id="ut1-domains-file",
    ),
    pytest.param(
        "hosts",
        "default",
        """# StevenBlack-style header
127.0.0.1 localhost
127.0.0.1 localhost.localdomain
255.255.255.255 broadcasthost
::1 localhost ip6-localhost ip6-loopback
fe80::1%lo0 localhost
0.0.0.0 0.0.0.0
0.0.0.0 ads.example.com
0.0.0.0 Tracker.Example.com trk2.example.com  # comment
127.0.0.1 école.fr
:: v6.example.org
203.0.113.9 redirected.example
just-a-name.example
nonsense ads.example.com
0.0.0.0 good.example bad..name
""",
        dict(
            exact={
                "ads.example.com",
                "tracker.example.com",
                "trk2.example.com",
                "xn--cole-9oa.fr",
                "v6.example.org",
                "redirected.example",
                "good.example",
            },
        ),
        [13, 14, 15],
        8,  # the local names of lines 2-7
        id="hosts",
    ),
    pytest.param(
        "hosts",
        "suffix",
        "0.0.0.0 ads.example.com\n0.0.0.0 localhost\n",
        dict(suffix={"ads.example.com"}),
        [],
        1,
        id="hosts-match-suffix",
    ),
    pytest.param(
        "adblock",
        "default",
        """[Adblock Plus 2.0]
! Title: test list
||ads.example.com^
||important.example^$important
||doc.example^$document,important
||third.example^$third-party
||typed.example^$dnstype=AAAA
@@||good.ads.example.com^
@@|exact-allow.example^
exact.example
|pipe-exact.example^
example.org##.banner
##.generic-banner
example.org#@#.banner
||path.example/ads/*
/banner[0-9]+/
||*.wildcard.example^
||école.fr^
||192.0.2.55^
||broken..example^
0.0.0.0 hosts-style.example
# a comment
||nocaret.example
""",
        dict(
            suffix={
                "ads.example.com",
                "important.example",
                "doc.example",
                "xn--cole-9oa.fr",
                "nocaret.example",
            },
            exact={"exact.example", "pipe-exact.example", "hosts-style.example"},
            except_suffix={"good.ads.example.com"},
            except_exact={"exact-allow.example"},
            networks={net("192.0.2.55/32")},
        ),
        [20],
        9,  # header, two option-narrowed rules, three cosmetic, path, regex, wildcard
        id="adblock",
    ),
    pytest.param(
        "adblock",
        "suffix",
        "exact.example\n|pipe.example^\n@@plain-allow.example\n||sub.example^\n",
        dict(
            suffix={"exact.example", "pipe.example", "sub.example"},
            except_suffix={"plain-allow.example"},
        ),
        [],
        0,
        id="adblock-match-suffix",
    ),
]


@pytest.mark.parametrize(("fmt", "match", "text", "expected", "bad_lines", "skipped"), FORMAT_CASES)
def test_formats(
    fmt: str, match: str, text: str, expected: dict, bad_lines: list[int], skipped: int
) -> None:
    parsed = parse(text, fmt, match)
    for field in ("suffix", "exact", "except_suffix", "except_exact", "networks"):
        assert getattr(parsed, field) == expected.get(field, set()), field
    assert [number for number, _ in parsed.bad_examples] == bad_lines
    assert parsed.bad_lines == len(bad_lines)
    assert parsed.skipped == skipped


def test_bad_line_reasons_quote_the_offending_text() -> None:
    parsed = parse("ok.example\nnot a name\n", "domains")
    assert parsed.bad_examples == [(2, "expected one name per line, got 'not a name'")]


def test_only_the_first_twenty_bad_lines_are_kept_as_examples() -> None:
    parsed = parse("\n".join(f"bad{i}..example" for i in range(50)), "domains")
    assert parsed.bad_lines == 50
    assert [number for number, _ in parsed.bad_examples] == list(range(1, 21))


def test_windows_line_endings_and_blank_lines() -> None:
    parsed = parse_lines(["a.example\r\n", "\r\n", "   \n", "b.example\r\n"], "domains")
    assert parsed.suffix == {"a.example", "b.example"}
    assert parsed.bad_lines == 0


@pytest.mark.parametrize(("fmt", "match"), [("csv", "default"), ("domains", "prefix")])
def test_unknown_format_or_match_is_refused(fmt: str, match: str) -> None:
    with pytest.raises(ValueError):
        parse_lines(["a.example"], fmt, match=match)
