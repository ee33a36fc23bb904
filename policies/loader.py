"""The policy file (SPEC §5): YAML in, a validated Policy out, each mistake named with its line."""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import re
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import publicsuffix2

from blocklists.names import normalize_domain
from common.errors import ClassguardError
from common.tokens import SHA256, TOKEN, token_sha256
from policies.model import (
    SAFE_SEARCH_MODES, WEEKDAYS, ClassPolicy, Device, DeviceBook, Exception_, IPAddress, IPNetwork, Policy,
    Rules, Window,
)
from policies.yaml_lines import YamlError
from policies.yaml_lines import describe_value as _describe
from policies.yaml_lines import item_line, key_line, load_yaml

__all__ = ["PolicyError", "load_policy", "parse_policy", "public_suffix_kind", "ID_PATTERN"]

PUBLIC_SUFFIX_FILE = Path(__file__).parent / "data" / "public_suffix_list.dat"

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TIME_PATTERN = re.compile(r"(\d{1,2}):(\d{2})")
DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")

TOP_KEYS = (
    "default_class", "always_allow", "locked_categories", "exceptions", "classes", "devices",
    "bypass_protection",
)
RULE_KEYS = ("block", "block_services", "allow", "deny", "allow_only", "safe_search", "schedule")
CLASS_KEYS = ("name", "school", "networks", *RULE_KEYS, "screen_time", "home")
WINDOW_KEYS = ("days", "from", "to", "block", "block_services", "closed", "school_days_only")
DEVICE_KEYS = ("class", "token", "token_sha256", "addresses")
EXCEPTION_KEYS = ("date", "from", "to", "name")
SCREEN_TIME_KEYS = ("daily_minutes",)

CATEGORY_HINT = "known: see docs/categories or classguard lists"
SERVICE_HINT = "known: see docs/services"


class PolicyError(ClassguardError):
    """The policy file has mistakes; `errors` holds one `FILE:LINE: message` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_policy(
    path: Path,
    *,
    known_categories: Collection[str] | None,
    known_services: Collection[str] | None,
    allow_open: bool = False,
) -> Policy:
    """Read, validate and return the policy in `path`; PolicyError lists every mistake found.

    `allow_open`: the configuration's `dns.allow_open`; without it a class network that covers
    the internet (0.0.0.0/0, ::/0, 0.0.0.0/1...) is refused, as it would make an open resolver.
    """
    try:
        data, _ = load_yaml(path)
    except YamlError as exc:
        raise PolicyError([str(exc)]) from None
    return parse_policy(
        data, source=str(path), known_categories=known_categories, known_services=known_services,
        allow_open=allow_open,
    )


def parse_policy(
    data: Any,
    *,
    source: str,
    known_categories: Collection[str] | None,
    known_services: Collection[str] | None,
    allow_open: bool = False,
) -> Policy:
    """Validate already-loaded policy data (with line information, or plain: then line 0).

    `known_categories` / `known_services` None skips that check (the lists are not known yet).
    """
    parser = _Parser(source, known_categories, known_services, allow_open=allow_open)
    policy = parser.policy(data)
    if parser.errors:
        # In file order, so that they can be fixed top to bottom (checks run section by section).
        ordered = sorted(parser.errors, key=lambda error: error[0])
        raise PolicyError([f"{source}:{line}: {message}" for line, message in ordered])
    return policy


# --- public suffixes --------------------------------------------------------------------------

_PRIVATE_MARKER = "===BEGIN PRIVATE DOMAINS==="


@dataclass(frozen=True, slots=True)
class _SuffixLists:
    icann: publicsuffix2.PublicSuffixList
    every: publicsuffix2.PublicSuffixList
    # What a public suffix can be at all: a rule as written (and in ASCII), one of its parents,
    # or a name under a wildcard rule's parent. A name that is neither is none, without the slower tree walks.
    rules: frozenset[str]
    wildcard_parents: frozenset[str]


_suffix_lists: _SuffixLists | None = None
_suffix_lock = threading.Lock()


def _load_suffix_lists() -> _SuffixLists:
    global _suffix_lists
    with _suffix_lock:
        if _suffix_lists is None:
            lines = PUBLIC_SUFFIX_FILE.read_text(encoding="utf-8").splitlines()
            # publicsuffix2 merges both sections into one tree, so the ICANN section (everything
            # before the private marker) gets a tree of its own.
            cut = next((i for i, line in enumerate(lines) if _PRIVATE_MARKER in line), len(lines))
            rules: set[str] = set()
            wildcard_parents: set[str] = set()
            for line in lines:
                rule = line.strip().split(None, 1)[0].lstrip("!") if line.strip() else ""
                if not rule or rule.startswith("//"):
                    continue
                # A wildcard's parent counts too (publicsuffix2 finds `ck` for `*.ck`).
                targets = (rules, wildcard_parents) if rule.startswith("*.") else (rules,)
                rule = rule.removeprefix("*.")
                forms = {rule.lower()}
                try:
                    forms.add(rule.encode("idna").decode("ascii").lower())
                except UnicodeError:
                    pass
                for target in targets:
                    target.update(forms)
                # publicsuffix2 also finds a rule's parents (`za` for `co.za`): candidates too.
                for form in forms:
                    while "." in form:
                        form = form.partition(".")[2]
                        rules.add(form)
            _suffix_lists = _SuffixLists(
                icann=publicsuffix2.PublicSuffixList(lines[:cut]),
                every=publicsuffix2.PublicSuffixList(lines),
                rules=frozenset(rules),
                wildcard_parents=frozenset(wildcard_parents),
            )
        return _suffix_lists


def public_suffix_kind(name: str) -> str | None:
    """"icann" when the normalised `name` is an ICANN public suffix (fr, co.uk), "private" when it
    is one only in the list's private section (github.io, blogspot.com), else None."""
    lists = _load_suffix_lists()
    if name not in lists.rules and name.partition(".")[2] not in lists.wildcard_parents:
        return None
    if lists.icann.get_tld(name, strict=True) == name:
        return "icann"
    if lists.every.get_tld(name, strict=True) == name:
        return "private"
    return None


# --- the parser -------------------------------------------------------------------------------


def _names(values: Iterable[str]) -> str:
    return ", ".join(values)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f"did you mean '{close[0]}'? " if close else ""


class _Parser:
    def __init__(
        self,
        source: str,
        known_categories: Collection[str] | None,
        known_services: Collection[str] | None,
        *,
        allow_open: bool = False,
    ) -> None:
        self.source = source
        self.allow_open = allow_open
        self.categories = None if known_categories is None else frozenset(known_categories)
        self.services = None if known_services is None else frozenset(known_services)
        self.errors: list[tuple[int, str]] = []
        self.known_class_ids: list[str] | None = None  # every class id written, valid or not

    def error(self, line: int, message: str) -> None:
        self.errors.append((line, message))

    # --- generic shapes

    def mapping(
        self,
        value: Any,
        line: int,
        what: str,
        allowed: tuple[str, ...],
        misplaced: dict[str, str] | None = None,
    ) -> dict:
        """`value` as a mapping with only `allowed` keys; None is an empty mapping.

        `misplaced` gives a better message for keys that are valid elsewhere."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(line, f"{what} must be a mapping of keys ({_names(allowed)}), "
                             f"not {_describe(value)}")
            return {}
        for key in value:
            if misplaced and key in misplaced:
                self.error(key_line(value, key, line), misplaced[key])
            elif key not in allowed:
                self.error(
                    key_line(value, key, line),
                    f"unknown key {str(key)!r} in {what} ({_suggest(str(key), allowed)}"
                    f"allowed: {_names(allowed)})",
                )
        return value

    def text_list(self, container: Any, key: str, what: str) -> list[tuple[str, int]]:
        """The list under `key` as (text, line) pairs: a YAML list, or one comma-separated text."""
        value = container.get(key)
        line = key_line(container, key)
        if value is None:
            return []
        if isinstance(value, str):
            return [(part.strip(), line) for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            self.error(line, f"{key} in {what} must be a list, e.g. {key}: [a, b]; "
                             f"not {_describe(value)}")
            return []
        items = []
        for index, item in enumerate(value):
            item_at = item_line(value, index, line)
            if isinstance(item, str) and item.strip():
                items.append((item.strip(), item_at))
            else:
                self.error(item_at, f"{key} in {what}: expected a name, got {_describe(item)}")
        return items

    def text(self, container: Any, key: str, what: str, default: str = "") -> str:
        value = container.get(key)
        if value is None:
            return default
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        self.error(key_line(container, key),
                   f"{key} in {what} must be text, not {_describe(value)}")
        return default

    def boolean(self, container: Any, key: str, what: str, default: bool) -> bool:
        value = container.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        self.error(key_line(container, key), f"{key} in {what} must be true or false, "
                                             f"not {_describe(value)}")
        return default

    def identifier(self, value: Any, line: int, what: str) -> str | None:
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            shown = value if isinstance(value, str) else _describe(value)
            self.error(line, f"invalid {what} id {shown!r}: use 1 to 64 letters, digits, '.', "
                             "'_' or '-', starting with a letter or digit")
            return None
        return value

    def categories_in(self, container: Any, key: str, what: str) -> tuple[str, ...]:
        result: dict[str, None] = {}  # ordered, and a duplicate found in O(1)
        for name, line in self.text_list(container, key, what):
            if self.categories is not None and name not in self.categories:
                self.error(line, f"unknown category {name!r} "
                                 f"({_suggest(name, self.categories)}{CATEGORY_HINT})")
            else:
                result[name] = None
        return tuple(result)

    def services_in(self, container: Any, key: str, what: str) -> tuple[str, ...]:
        result: dict[str, None] = {}  # ordered, and a duplicate found in O(1)
        for name, line in self.text_list(container, key, what):
            if self.services is not None and name not in self.services:
                self.error(line, f"unknown service {name!r} "
                                 f"({_suggest(name, self.services)}{SERVICE_HINT})")
            else:
                result[name] = None
        return tuple(result)

    def domains_in(self, container: Any, key: str, what: str, *, allowing: bool) -> tuple[str, ...]:
        """Domain names, normalised; public suffixes refused (private ones only when allowing)."""
        result: dict[str, None] = {}  # ordered, and a duplicate found in O(1)
        for text, line in self.text_list(container, key, what):
            name = self.domain(text, line, key, allowing=allowing)
            if name is not None:
                result[name] = None
        return tuple(result)

    def domain(self, text: str, line: int, key: str, *, allowing: bool) -> str | None:
        if "://" in text or "/" in text:
            host = text.split("://", 1)[-1].split("/", 1)[0]
            self.error(line, f"{key}: {text!r} is not a domain name; write the name only, "
                             f"e.g. {host!r}")
            return None
        if text.startswith("*."):
            self.error(line, f"{key}: write {text[2:]!r} instead of {text!r} "
                             "(an entry always covers its subdomains)")
            return None
        name = normalize_domain(text)
        if name is None:
            self.error(line, f"{key}: invalid domain name {text!r}")
            return None
        if name.replace(".", "").isdigit():  # a normalised name is an address only if all digits
            try:
                ipaddress.ip_address(name)
            except ValueError:
                pass
            else:
                self.error(line, f"{key}: {text!r} is an address; {key} takes domain names")
                return None
        kind = public_suffix_kind(name)
        if kind == "icann":
            self.error(line, f"{key}: {text!r} is a public suffix (the names under it belong to "
                             f"unrelated owners); list one domain such as 'example.{name}'")
            return None
        if kind == "private" and allowing:
            self.error(line, f"{key}: {text!r} is a shared hosting suffix where anyone can "
                             f"publish a site; allow one site such as 'example.{name}' instead "
                             "(blocking the whole suffix with deny is allowed)")
            return None
        return name

    # --- the file

    def policy(self, data: Any) -> Policy:
        if data is None:
            return Policy(source=self.source)
        top = self.mapping(data, getattr(data, "line", 0), "the policy", TOP_KEYS)
        always_allow = self.domains_in(top, "always_allow", "the policy", allowing=True)
        locked = self.categories_in(top, "locked_categories", "the policy")
        exceptions = self.exceptions(top)
        bypass = self.boolean(top, "bypass_protection", "the policy", True)
        classes = self.classes(top)
        devices = self.devices(top, classes)

        default_class = None
        if "default_class" in top:
            value = top["default_class"]
            line = key_line(top, "default_class")
            if not isinstance(value, str):
                self.error(line, f"default_class must be a class id, not {_describe(value)}")
            elif value not in classes and self.known_class_ids is not None \
                    and value not in self.known_class_ids:
                self.error(line, f"default_class {value!r} is not a class "
                                 f"({_suggest(value, self.known_class_ids)}"
                                 f"classes: {_names(self.known_class_ids) or 'none'})")
            else:
                default_class = value

        return Policy(
            classes=classes,
            devices=DeviceBook(devices.values()),
            default_class=default_class,
            always_allow=always_allow,
            locked_categories=locked,
            exceptions=exceptions,
            bypass_protection=bypass,
            source=self.source,
        )

    def exceptions(self, top: dict) -> tuple[Exception_, ...]:
        value = top.get("exceptions")
        line = key_line(top, "exceptions")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(line, "exceptions must be a list of {date: YYYY-MM-DD} or "
                             "{from: YYYY-MM-DD, to: YYYY-MM-DD}")
            return ()
        result = []
        for index, item in enumerate(value):
            at = item_line(value, index, line)
            if not isinstance(item, dict):
                self.error(at, f"an exception must be {{date: YYYY-MM-DD}} or {{from: YYYY-MM-DD, "
                               f"to: YYYY-MM-DD}}, not {_describe(item)}")
                continue
            entry = self.mapping(item, at, "an exception", EXCEPTION_KEYS)
            name = self.text(entry, "name", "an exception")
            if "date" in entry:
                if "from" in entry or "to" in entry:
                    self.error(at, "an exception has either date: or from: and to:, not both")
                    continue
                day = self.date(entry, "date")
                if day is not None:
                    result.append(Exception_(first=day, last=day, name=name))
            elif "from" in entry or "to" in entry:
                if "from" not in entry or "to" not in entry:
                    missing = "to" if "from" in entry else "from"
                    self.error(at, f"an exception with a range needs both from: and to: "
                                   f"({missing}: is missing)")
                    continue
                first, last = self.date(entry, "from"), self.date(entry, "to")
                if first is not None and last is not None:
                    if first > last:
                        self.error(key_line(entry, "to", at), f"exception ends ({last}) before "
                                                              f"it starts ({first})")
                    else:
                        result.append(Exception_(first=first, last=last, name=name))
            else:
                self.error(at, "an exception needs date: or from: and to:")
        return tuple(result)

    def date(self, entry: dict, key: str) -> dt.date | None:
        value = entry[key]
        line = key_line(entry, key)
        if isinstance(value, dt.datetime):
            self.error(line, f"{key}: {value} has a time of day; write only the date, YYYY-MM-DD")
            return None
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str) and DATE_PATTERN.fullmatch(value.strip()):
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError:
                pass
        self.error(line, f"{key}: {_describe(value)} is not a date; write YYYY-MM-DD, "
                         "e.g. 2027-05-01")
        return None

    def classes(self, top: dict) -> dict[str, ClassPolicy]:
        value = top.get("classes")
        line = key_line(top, "classes")
        if value is None:
            self.known_class_ids = []
            return {}
        if not isinstance(value, dict):
            self.error(line, f"classes must be a mapping of class id to rules, "
                             f"not {_describe(value)}")
            self.known_class_ids = None
            return {}
        self.known_class_ids = [str(key) for key in value]
        networks_seen: dict[IPNetwork, tuple[str, int]] = {}
        result = {}
        for class_id, body in value.items():
            at = key_line(value, class_id, line)
            if self.identifier(class_id, at, "class") is None:
                continue
            cls = self.class_policy(class_id, body, at, networks_seen)
            if cls is not None:
                result[class_id] = cls
        return result

    def class_policy(
        self, class_id: str, body: Any, at: int, networks_seen: dict[IPNetwork, tuple[str, int]]
    ) -> ClassPolicy | None:
        what = f"class {class_id!r}"
        entry = self.mapping(body, at, what, CLASS_KEYS)
        networks = self.networks(entry, what, class_id, networks_seen)
        rules = self.rules(entry, what, overlay=False)
        screen_time = self.screen_time(entry, what)
        home = None
        if "home" in entry:
            home_what = f"home: of {what}"
            misplaced = {
                key: f"{key} cannot be set in home: (it belongs to the class itself); "
                     f"home: takes {_names(RULE_KEYS)}"
                for key in CLASS_KEYS if key not in RULE_KEYS
            }
            home_line = key_line(entry, "home", at)
            home_entry = self.mapping(entry["home"], home_line, home_what, RULE_KEYS, misplaced)
            home = self.rules(home_entry, home_what, overlay=True)
        return ClassPolicy(
            id=class_id,
            name=self.text(entry, "name", what),
            school=self.text(entry, "school", what),
            networks=networks,
            rules=rules,
            screen_time_minutes=screen_time,
            home=home,
            line=at,
        )

    def networks(
        self,
        entry: dict,
        what: str,
        class_id: str,
        seen: dict[IPNetwork, tuple[str, int]],
    ) -> tuple[IPNetwork, ...]:
        result: dict[IPNetwork, None] = {}
        for text, line in self.text_list(entry, "networks", what):
            network = self.network(text, line)
            if network is None or network in result:
                continue
            if not self.allow_open and _covers_the_internet(network):
                self.error(line, f"networks: {text!r} covers addresses anywhere on the internet: "
                                 "classguard would answer anyone (an open resolver); list the "
                                 "school's own networks, or set dns.allow_open: true in the "
                                 "configuration if that is really meant")
                continue
            owner = seen.get(network)
            if owner is not None:
                self.error(line, f"network {network} is already in class {owner[0]!r} "
                                 f"(line {owner[1]}); a network belongs to one class")
                continue
            seen[network] = (class_id, line)
            result[network] = None
        return tuple(result)

    def network(self, text: str, line: int) -> IPNetwork | None:
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError:
            pass
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            self.error(line, f"networks: invalid network {text!r}; write an address with its "
                             "prefix length, e.g. 10.12.3.0/24 or 2001:db8:12:3::/64")
            return None
        self.error(line, f"networks: {text!r} has host bits set; did you mean '{loose}'?")
        return None

    def rules(self, entry: dict, what: str, *, overlay: bool) -> Rules:
        return Rules(
            block=self.categories_in(entry, "block", what),
            block_services=self.services_in(entry, "block_services", what),
            allow=self.domains_in(entry, "allow", what, allowing=True),
            deny=self.domains_in(entry, "deny", what, allowing=False),
            allow_only=self.categories_in(entry, "allow_only", what),
            safe_search=self.safe_search(entry, what, None if overlay else "off"),
            schedule=self.schedule(entry, what),
        )

    def safe_search(self, entry: dict, what: str, default: str | None) -> str | None:
        if "safe_search" not in entry:
            return default
        value = entry["safe_search"]
        if value is False:  # YAML 1.1: an unquoted `off` is the boolean false
            return "off"
        if isinstance(value, str) and value.strip().lower() in SAFE_SEARCH_MODES:
            return value.strip().lower()
        self.error(key_line(entry, "safe_search"),
                   f"safe_search in {what} must be off, moderate or strict, not {_describe(value)}")
        return default

    def screen_time(self, entry: dict, what: str) -> int | None:
        if "screen_time" not in entry:
            return None
        line = key_line(entry, "screen_time")
        if isinstance(entry["screen_time"], int) and not isinstance(entry["screen_time"], bool):
            self.error(line, f"screen_time in {what} is a mapping: write "
                             f"screen_time: {{daily_minutes: {entry['screen_time']}}}")
            return None
        body = self.mapping(entry["screen_time"], line, f"screen_time of {what}", SCREEN_TIME_KEYS)
        if "daily_minutes" not in body:
            if isinstance(entry["screen_time"], dict) or entry["screen_time"] is None:
                self.error(line, f"screen_time in {what} needs daily_minutes, "
                                 "e.g. {daily_minutes: 120}")
            return None
        value = body["daily_minutes"]
        at = key_line(body, "daily_minutes", line)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1440:
            self.error(at, f"daily_minutes must be a whole number of minutes from 1 to 1440, "
                           f"not {_describe(value)}")
            return None
        return value

    def schedule(self, entry: dict, what: str) -> tuple[Window, ...]:
        if "schedule" not in entry or entry["schedule"] is None:
            return ()
        value = entry["schedule"]
        line = key_line(entry, "schedule")
        if isinstance(value, dict):
            value = [value]  # one window written without the list
        if not isinstance(value, list):
            self.error(line, f"schedule in {what} must be a list of windows, "
                             "e.g. - {days: mon-fri, from: \"08:30\", to: \"16:30\", closed: true}")
            return ()
        windows = []
        for index, item in enumerate(value):
            at = item_line(value, index, line)
            window = self.window(item, at, f"a schedule window of {what}")
            if window is not None:
                windows.append(window)
        return tuple(windows)

    def window(self, item: Any, at: int, what: str) -> Window | None:
        if not isinstance(item, dict):
            self.error(at, f"{what} must be a mapping like {{days: mon-fri, from: \"08:30\", "
                           f"to: \"16:30\", closed: true}}, not {_describe(item)}")
            return None
        before = len(self.errors)
        entry = self.mapping(item, at, what, WINDOW_KEYS)
        days = self.days(entry, at)
        start = self.time(entry, "from", at)
        end = self.time(entry, "to", at)
        block = self.categories_in(entry, "block", what)
        block_services = self.services_in(entry, "block_services", what)
        closed = self.boolean(entry, "closed", what, False)
        school_days_only = self.boolean(entry, "school_days_only", what, False)
        if start == 1440:
            self.error(key_line(entry, "from", at), "from: 24:00 is not a start time; "
                                                    "use 00:00 (the window starts at midnight)")
            start = None
        if start is not None and end is not None and start == end:
            self.error(at, f"the window starts and ends at the same time "
                           f"({_clock(start)}); it would be empty")
            start = None
        if not closed and not entry.get("block") and not entry.get("block_services") \
                and not entry.get("closed"):
            self.error(at, "window does nothing: add closed: true, block: [...] "
                           "or block_services: [...]")
        if days is None or start is None or end is None or len(self.errors) != before:
            return None
        return Window(
            days=days,
            start=start,
            end=end if end != 0 else 1440,  # `to: 00:00` is midnight, the end of the day
            block=block,
            block_services=block_services,
            closed=closed,
            school_days_only=school_days_only,
            line=at,
        )

    def days(self, entry: dict, at: int) -> frozenset[int] | None:
        if "days" not in entry:
            self.error(at, "a schedule window needs days: (e.g. mon-fri, [mon, wed], or all)")
            return None
        line = key_line(entry, "days", at)
        value = entry["days"]
        if isinstance(value, str):
            parts = [(part, line) for part in value.split(",")]
        elif isinstance(value, list) and not value:
            self.error(line, "days: is empty; use mon..sun, a range like mon-fri, or all")
            return None
        elif isinstance(value, list):
            parts = []
            for index, item in enumerate(value):
                item_at = item_line(value, index, line)
                if not isinstance(item, str):
                    self.error(item_at, f"days: {_describe(item)} is not a day; use mon..sun, "
                                        "a range like mon-fri, or all")
                    return None
                parts.extend((part, item_at) for part in item.split(","))
        else:
            self.error(line, f"days must be mon..sun, a range like mon-fri, a list, or all; "
                             f"not {_describe(value)}")
            return None
        result: set[int] = set()
        for part, part_line in parts:
            found = _parse_days(part.strip().lower())
            if found is None:
                self.error(part_line, f"days: {part.strip()!r} is not a day; use mon, tue, wed, "
                                      "thu, fri, sat, sun, a range like mon-fri, or all")
                return None
            result |= found
        return frozenset(result)

    def time(self, entry: dict, key: str, at: int) -> int | None:
        """Minutes after midnight, 0..1440; None (and an error) when missing or invalid."""
        if key not in entry:
            self.error(at, f"a schedule window needs {key}: (HH:MM, e.g. \"08:30\")")
            return None
        value = entry[key]
        line = key_line(entry, key, at)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML 1.1 reads 21:00 as 1260; LineLoader keeps it text, other loaders do not.
            self.error(line, f"quote the time: {key}: YAML read it as the number {value}; "
                             f"write it as \"HH:MM\", e.g. {key}: \"21:00\"")
            return None
        match = TIME_PATTERN.fullmatch(value.strip()) if isinstance(value, str) else None
        if match:
            hours, minutes = int(match.group(1)), int(match.group(2))
            if minutes < 60 and (hours < 24 or (hours == 24 and minutes == 0)):
                return hours * 60 + minutes
        self.error(line, f"{key}: {_describe(value)} is not a time; write HH:MM from 00:00 "
                         "to 24:00, e.g. \"08:30\"")
        return None

    def devices(self, top: dict, classes: dict[str, ClassPolicy]) -> dict[str, Device]:
        value = top.get("devices")
        line = key_line(top, "devices")
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(line, f"devices must be a mapping of device id to {{class: ..., "
                             f"token: ...}}, not {_describe(value)}")
            return {}
        tokens: dict[str, tuple[str, int]] = {}
        addresses: dict[IPAddress, tuple[str, int]] = {}
        result = {}
        for device_id, body in value.items():
            at = key_line(value, device_id, line)
            if self.identifier(device_id, at, "device") is None:
                continue
            device = self.device(device_id, body, at, tokens, addresses)
            if device is not None:
                result[device_id] = device
        return result

    def device(
        self,
        device_id: str,
        body: Any,
        at: int,
        tokens: dict[str, tuple[str, int]],
        addresses: dict[IPAddress, tuple[str, int]],
    ) -> Device | None:
        what = f"device {device_id!r}"
        before = len(self.errors)
        entry = self.mapping(body, at, what, DEVICE_KEYS)
        if body is not None and not isinstance(body, dict):
            return None

        class_id = entry.get("class")
        if class_id is None:
            self.error(at, f"{what} needs class: (the id of its class)")
        elif not isinstance(class_id, str):
            self.error(key_line(entry, "class", at), f"class of {what} must be a class id, "
                                                     f"not {_describe(class_id)}")
        elif self.known_class_ids is not None and class_id not in self.known_class_ids:
            self.error(key_line(entry, "class", at),
                       f"{what} names class {class_id!r}, which does not exist "
                       f"({_suggest(class_id, self.known_class_ids)}"
                       f"classes: {_names(self.known_class_ids) or 'none'})")

        digest = self.token_digest(entry, what, at)
        if digest is not None:
            token_line = key_line(entry, "token" if "token" in entry else "token_sha256", at)
            owner = tokens.get(digest)
            if owner is not None:
                self.error(token_line, f"{what} has the same token as device {owner[0]!r} "
                                       f"(line {owner[1]}); every device needs its own token")
            else:
                tokens[digest] = (device_id, token_line)

        device_addresses: dict[IPAddress, None] = {}
        for text, line in self.text_list(entry, "addresses", what):
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                self.error(line, f"addresses of {what}: {text!r} is not an IP address")
                continue
            owner = addresses.get(address)
            if owner is not None and owner[0] != device_id:
                self.error(line, f"address {address} already belongs to device {owner[0]!r} "
                                 f"(line {owner[1]}); an address identifies one device")
                continue
            addresses[address] = (device_id, line)
            device_addresses[address] = None

        if len(self.errors) != before:
            return None
        return Device(
            id=device_id,
            class_id=class_id,
            token_sha256=digest,
            addresses=tuple(device_addresses),
            line=at,
        )

    def token_digest(self, entry: dict, what: str, at: int) -> str | None:
        if "token" in entry and "token_sha256" in entry:
            self.error(key_line(entry, "token_sha256", at),
                       f"{what} has both token and token_sha256; keep one")
            return None
        if "token" in entry:
            value = entry["token"]
            line = key_line(entry, "token", at)
            if not isinstance(value, str):
                self.error(line, f"token of {what} must be quoted text, not {_describe(value)}")
                return None
            if not TOKEN.fullmatch(value):
                self.error(line, f"token of {what} must be 22 to 63 characters, each a "
                                 f"lowercase letter a-z or a digit (this one: {len(value)} "
                                 "characters)")
                return None
            return token_sha256(value)
        if "token_sha256" in entry:
            value = entry["token_sha256"]
            line = key_line(entry, "token_sha256", at)
            if isinstance(value, str) and SHA256.fullmatch(value.strip().lower()):
                return value.strip().lower()
            self.error(line, f"token_sha256 of {what} must be 64 hexadecimal digits "
                             "(the SHA-256 of the token)")
        return None


# Shorter prefixes than these hold far more public addresses than any school has (a /8 is 16
# million): such a class network makes classguard answer the internet.
_OPEN_PREFIX = {4: 8, 6: 16}


def _covers_the_internet(network: IPNetwork) -> bool:
    """0.0.0.0/0, ::/0 and other networks that hold a large share of public addresses; private
    ranges (10.0.0.0/8, fc00::/7) of any size are fine."""
    return network.prefixlen < _OPEN_PREFIX[network.version] and not network.is_private


def _parse_days(text: str) -> frozenset[int] | None:
    if text == "all":
        return frozenset(range(7))
    if text in WEEKDAYS:
        return frozenset({WEEKDAYS.index(text)})
    first, sep, last = text.partition("-")
    first, last = first.strip(), last.strip()
    if sep and first in WEEKDAYS and last in WEEKDAYS:
        start, end = WEEKDAYS.index(first), WEEKDAYS.index(last)
        count = (end - start) % 7 + 1  # fri-mon wraps over the weekend
        return frozenset((start + i) % 7 for i in range(count))
    return None


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"

