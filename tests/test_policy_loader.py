"""The policy file loader: SPEC §5 examples load, and every mistake is named with its line."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from policies.loader import PolicyError, load_policy, parse_policy, public_suffix_kind
from policies.yaml_lines import LineDict, LineList, YamlError, load_yaml, parse_yaml

CATEGORIES = {
    "adult", "gambling", "malware", "phishing", "social_networks", "games", "ads", "streaming",
    "vpn", "doh", "dating", "chat", "nosafesearch", "child",
}
SERVICES = {"tiktok", "roblox"}
EXAMPLE = Path(__file__).resolve().parent.parent / "policies" / "example.yaml"

TOKEN = "k7q2m9x4v8w1z6r3t5y0p2a9"
HASH_43 = hashlib.sha256(b"a" * 22).hexdigest()

SPEC_POLICY = f"""\
default_class: visitors           # needed only with unknown_clients: default
always_allow: [apple.com, mzstatic.com, gstatic.com]
locked_categories: [adult, malware, phishing]   # teachers' temporary allows can never open these
exceptions:                       # school holidays and public holidays (Europe/Paris dates)
  - {{from: 2026-12-19, to: 2027-01-04, name: "vacances de Noël"}}
  - {{date: 2027-05-01}}
classes:
  cm2-a:
    name: "CM2 A, école Jean Jaurès"
    school: jean-jaures
    networks: ["10.12.3.0/24", "2001:db8:12:3::/64"]
    block: [adult, gambling, social_networks, games, doh, vpn]
    block_services: [tiktok, roblox]   # bundled service definitions (the domains of one app)
    allow: [wikipedia.org, lumni.fr]
    deny: [tiktok.com]
    safe_search: strict            # off | moderate | strict
    schedule:
      - {{days: mon-fri, from: "08:30", to: "16:30", block: [streaming], school_days_only: true}}
      - {{days: all, from: "21:00", to: "07:00", closed: true}}              # bedtime
    screen_time: {{daily_minutes: 120}}  # per device, then closed until local midnight
    home: {{block: [games]}}             # overlay applied when the scope is home
  cp-b:
    allow_only: [child]               # youngest pupils: only the UT1 `child` allowlist resolves
  visitors:
    block: [adult, gambling, malware, phishing]
devices:
  tablet-0042: {{class: cm2-a, token: "{TOKEN}", addresses: ["10.12.3.42"]}}
  tablet-0043: {{class: cm2-a, token_sha256: "{HASH_43}"}}   # export writes the hash
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(path: Path):
    return load_policy(path, known_categories=CATEGORIES, known_services=SERVICES)


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load(path)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return [error.removeprefix(f"{path}:") for error in caught.value.errors]


# --- what loads -------------------------------------------------------------------------------


def test_spec_example_loads(tmp_path):
    policy = load(write(tmp_path, SPEC_POLICY))
    assert policy.source == str(tmp_path / "policies.yaml")
    assert policy.default_class == "visitors"
    assert policy.always_allow == ("apple.com", "mzstatic.com", "gstatic.com")
    assert policy.locked_categories == ("adult", "malware", "phishing")
    assert policy.bypass_protection is True
    assert [(e.first, e.last, e.name) for e in policy.exceptions] == [
        (dt.date(2026, 12, 19), dt.date(2027, 1, 4), "vacances de Noël"),
        (dt.date(2027, 5, 1), dt.date(2027, 5, 1), ""),
    ]
    cm2 = policy.classes["cm2-a"]
    assert cm2.line == 8
    assert cm2.name == "CM2 A, école Jean Jaurès"
    assert cm2.school == "jean-jaures"
    assert cm2.networks == (
        ipaddress.ip_network("10.12.3.0/24"), ipaddress.ip_network("2001:db8:12:3::/64"))
    assert cm2.rules.block == ("adult", "gambling", "social_networks", "games", "doh", "vpn")
    assert cm2.rules.block_services == ("tiktok", "roblox")
    assert cm2.rules.allow == ("wikipedia.org", "lumni.fr")
    assert cm2.rules.deny == ("tiktok.com",)
    assert cm2.rules.safe_search == "strict"
    school, bedtime = cm2.rules.schedule
    assert (school.days, school.start, school.end) == (frozenset(range(5)), 510, 990)
    assert school.block == ("streaming",) and school.school_days_only and not school.closed
    assert school.line == 18
    assert (bedtime.days, bedtime.start, bedtime.end) == (frozenset(range(7)), 1260, 420)
    assert bedtime.closed and bedtime.line == 19
    assert cm2.screen_time_minutes == 120
    assert cm2.home is not None and cm2.home.block == ("games",)
    assert cm2.home.safe_search is None  # an overlay without safe_search keeps the base's
    assert policy.classes["cp-b"].rules.allow_only == ("child",)
    assert policy.classes["cp-b"].rules.safe_search == "off"
    assert policy.classes["visitors"].home is None
    tablet = policy.devices["tablet-0042"]
    assert tablet.class_id == "cm2-a" and tablet.line == 27
    assert tablet.token_sha256 == hashlib.sha256(TOKEN.encode("ascii")).hexdigest()
    assert tablet.addresses == (ipaddress.ip_address("10.12.3.42"),)
    assert policy.devices["tablet-0043"].token_sha256 == HASH_43


def test_bundled_example_loads():
    policy = load(EXAMPLE)
    local = policy.classes["local"]
    assert ipaddress.ip_network("127.0.0.0/8") in local.networks
    assert ipaddress.ip_network("::1/128") in local.networks
    assert local.rules.safe_search == "strict"
    assert {"adult", "gambling", "malware", "phishing", "social_networks", "games", "dating",
            "vpn", "doh"} <= set(local.rules.block)
    assert "apple.com" in policy.always_allow
    assert policy.default_class in policy.classes


def test_unquoted_times_and_safe_search_off(tmp_path):
    policy = load(write(tmp_path, """\
        classes:
          a:
            safe_search: off
            schedule:
              - {days: all, from: 21:00, to: 7:00, closed: true}
              - {days: [sat, sun], from: 08:30, to: 24:00, block: [games]}
              - {days: "mon,wed", from: 00:00, to: 00:00X, closed: true}
        """.replace("00:00X", "12:00")))
    rules = policy.classes["a"].rules
    assert rules.safe_search == "off"
    bedtime, weekend, short = rules.schedule
    assert (bedtime.start, bedtime.end) == (21 * 60, 7 * 60)
    assert (weekend.days, weekend.start, weekend.end) == (frozenset({5, 6}), 510, 1440)
    assert (short.days, short.start, short.end) == (frozenset({0, 2}), 0, 720)


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("mon", {0}),
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("fri-mon", {4, 5, 6, 0}),
        ('"mon,wed, fri"', {0, 2, 4}),
        ("all", set(range(7))),
        ("[mon, tue-wed]", {0, 1, 2}),
        ("Sat", {5}),
    ],
)
def test_days(tmp_path, days, expected):
    policy = load(write(tmp_path, f"""\
        classes:
          a:
            schedule:
              - {{days: {days}, from: "08:00", to: "09:00", closed: true}}
        """))
    assert policy.classes["a"].rules.schedule[0].days == frozenset(expected)


def test_to_midnight_is_end_of_day(tmp_path):
    policy = load(write(tmp_path, """\
        classes:
          a:
            schedule:
              - {days: all, from: "20:00", to: "00:00", closed: true}
              - {days: all, from: "00:00", to: "24:00", block: [games]}
        """))
    evening, whole_day = policy.classes["a"].rules.schedule
    assert (evening.start, evening.end) == (1200, 1440)
    assert (whole_day.start, whole_day.end) == (0, 1440)


def test_home_overlay_safe_search_and_plain_data():
    data = {
        "bypass_protection": False,
        "classes": {"a": {"safe_search": "moderate", "home": {"safe_search": False,
                                                              "deny": ["Example.COM."]}}},
    }
    policy = parse_policy(data, source="api", known_categories=CATEGORIES,
                          known_services=SERVICES)
    assert policy.bypass_protection is False
    assert policy.classes["a"].rules.safe_search == "moderate"
    assert policy.classes["a"].home.safe_search == "off"
    assert policy.classes["a"].home.deny == ("example.com",)


def test_names_are_normalised(tmp_path):
    policy = load(write(tmp_path, """\
        always_allow: ["Apple.COM.", école.fr]
        classes:
          a: {deny: [blogspot.com, "xn--cole-9oa.fr"]}
        """))
    assert policy.always_allow == ("apple.com", "xn--cole-9oa.fr")
    # A private-section suffix may be blocked as a whole.
    assert policy.classes["a"].rules.deny == ("blogspot.com", "xn--cole-9oa.fr")


def test_empty_file_is_an_empty_policy(tmp_path):
    policy = load(write(tmp_path, "# nothing yet\n"))
    assert policy.classes == {} and policy.devices == {}


def test_unknown_lists_can_be_skipped():
    policy = parse_policy({"classes": {"a": {"block": ["anything"]}}}, source="x",
                          known_categories=None, known_services=None)
    assert policy.classes["a"].rules.block == ("anything",)


def test_public_suffix_kinds():
    assert public_suffix_kind("fr") == "icann"
    assert public_suffix_kind("co.uk") == "icann"
    assert public_suffix_kind("github.io") == "private"
    assert public_suffix_kind("blogspot.com") == "private"
    assert public_suffix_kind("example.co.uk") is None
    assert public_suffix_kind("ecole.local") is None


# --- every mistake, with its line ---------------------------------------------------------------

ERROR_CASES = [
    pytest.param(
        """\
        classes:
          a:
            block: [adult, gambl]
        """,
        ["3: unknown category 'gambl' (did you mean 'gambling'? known: see docs/categories or "
         "classguard lists)"],
        id="unknown-category",
    ),
    pytest.param(
        """\
        locked_categories: [adult, nope]
        classes:
          a:
            allow_only: [kids]
            schedule:
              - {days: all, from: "08:00", to: "09:00", block: [films]}
        """,
        ["1: unknown category 'nope'", "4: unknown category 'kids'",
         "6: unknown category 'films'"],
        id="unknown-category-everywhere",
    ),
    pytest.param(
        """\
        classes:
          a:
            block_services:
              - tiktok
              - fortnite
            schedule:
              - {days: all, from: "08:00", to: "09:00", block_services: [snap]}
        """,
        ["5: unknown service 'fortnite'", "7: unknown service 'snap'"],
        id="unknown-service",
    ),
    pytest.param(
        """\
        clases:
          a: {}
        """,
        ["1: unknown key 'clases' in the policy (did you mean 'classes'?"],
        id="unknown-top-key",
    ),
    pytest.param(
        """\
        classes:
          a:
            name: A
            blocks: [adult]
            screen_time: {daily_minutes: 60, weekly: 3}
            schedule:
              - days: all
                from: "08:00"
                to: "09:00"
                closed: true
                teacher: x
        """,
        ["4: unknown key 'blocks' in class 'a' (did you mean 'block'?",
         "5: unknown key 'weekly' in screen_time of class 'a'",
         "11: unknown key 'teacher' in a schedule window of class 'a'"],
        id="unknown-nested-keys",
    ),
    pytest.param(
        """\
        classes:
          a:
            networks: ["10.12.3.5/24"]
        """,
        ["3: networks: '10.12.3.5/24' has host bits set; did you mean '10.12.3.0/24'?"],
        id="host-bits",
    ),
    pytest.param(
        """\
        classes:
          a:
            networks:
              - 10.12.3.0/24
              - 10.12.300.0/24
              - school
        """,
        ["5: networks: invalid network '10.12.300.0/24'", "6: networks: invalid network 'school'"],
        id="invalid-network",
    ),
    pytest.param(
        """\
        classes:
          a:
            networks: [10.12.3.0/24]
          b:
            networks: [10.12.0.0/16, 10.12.3.0/24]
        """,
        ["5: network 10.12.3.0/24 is already in class 'a' (line 3); a network belongs to one "
         "class"],
        id="network-in-two-classes",
    ),
    pytest.param(
        """\
        classes:
          a:
            schedule:
              - {days: all, from: "24:00", to: "07:00", closed: true}
        """,
        ["4: from: 24:00 is not a start time"],
        id="from-24",
    ),
    pytest.param(
        """\
        classes:
          a:
            schedule:
              - {days: all, from: "08:00", to: "08:00", closed: true}
        """,
        ["4: the window starts and ends at the same time (08:00)"],
        id="from-equals-to",
    ),
    pytest.param(
        """\
        classes:
          a:
            schedule:
              - days: all
                from: "8h30"
                to: "25:00"
                closed: true
              - {days: all, from: "08:60", to: "09:00", closed: true}
        """,
        ["5: from: '8h30' is not a time; write HH:MM", "6: to: '25:00' is not a time",
         "8: from: '08:60' is not a time"],
        id="bad-times",
    ),
    pytest.param(
        """\
        classes:
          a:
            schedule:
              - {days: all, from: 1230, to: 9.30, closed: true}
        """,
        ["4: quote the time: from:", "4: quote the time: to:"],
        id="time-as-number",
    ),
    pytest.param(
        """\
        classes:
          a:
            schedule:
              - {days: mon-fry, from: "08:00", to: "09:00", closed: true}
              - {days: [mon, monday], from: "08:00", to: "09:00", closed: true}
              - {from: "08:00", to: "09:00", closed: true}
              - {days: [], from: "08:00", to: "09:00", closed: true}
        """,
        ["4: days: 'mon-fry' is not a day", "5: days: 'monday' is not a day",
         "6: a schedule window needs days:", "7: days: is empty"],
        id="bad-days",
    ),
    pytest.param(
        """\
        classes:
          a:
            schedule:
              - {days: all, from: "08:00", to: "09:00"}
              - {days: all, from: "08:00", to: "09:00", closed: false, block: []}
        """,
        ["4: window does nothing", "5: window does nothing"],
        id="window-does-nothing",
    ),
    pytest.param(
        """\
        classes:
          a:
            schedule:
              - {days: all, from: "08:00", to: "09:00", closed: yes, school_days_only: "no"}
        """,
        ["4: school_days_only in a schedule window of class 'a' must be true or false"],
        id="window-booleans",
    ),
    pytest.param(
        """\
        classes:
          a:
            screen_time: {daily_minutes: 0}
          b:
            screen_time:
              daily_minutes: 1441
          c:
            screen_time: {}
        """,
        ["3: daily_minutes must be a whole number of minutes from 1 to 1440",
         "6: daily_minutes must be a whole number of minutes from 1 to 1440",
         "8: screen_time in class 'c' needs daily_minutes"],
        id="screen-time",
    ),
    pytest.param(
        """\
        classes:
          a:
            home:
              block: [games]
              networks: [10.0.0.0/8]
              screen_time: {daily_minutes: 30}
              bedtime: true
        """,
        ["5: networks cannot be set in home:", "6: screen_time cannot be set in home:",
         "7: unknown key 'bedtime' in home: of class 'a'"],
        id="home-overlay-keys",
    ),
    pytest.param(
        """\
        classes:
          a:
            safe_search: on
          b:
            safe_search: maximum
        """,
        ["3: safe_search in class 'a' must be off, moderate or strict, not true/false",
         "5: safe_search in class 'b' must be off, moderate or strict, not 'maximum'"],
        id="safe-search",
    ),
    pytest.param(
        """\
        classes:
          a: {}
        devices:
          t1: {class: b}
          t2: {token: "abcdefghijklmnopqrstuvwx"}
        """,
        ["4: device 't1' names class 'b', which does not exist", "5: device 't2' needs class:"],
        id="device-missing-class",
    ),
    pytest.param(
        """\
        classes:
          "a b": {}
          ok: {}
        devices:
          "-t1": {class: ok}
        """,
        ["2: invalid class id 'a b'", "5: invalid device id '-t1'"],
        id="bad-ids",
    ),
    pytest.param(
        """\
        classes:
          a: {}
        devices:
          t1: {class: a, token: "short"}
          t2: {class: a, token: "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
          t3: {class: a, token: 12345678901234567890123}
          t4: {class: a, token_sha256: "xyz"}
          t5:
            class: a
            token: "abcdefghijklmnopqrstuvwx"
            token_sha256: "%s"
        """ % ("0" * 64),
        ["4: token of device 't1' must be 22 to 63 characters",
         "5: token of device 't2' must be 22 to 63 characters",
         "6: token of device 't3' must be quoted text",
         "7: token_sha256 of device 't4' must be 64 hexadecimal digits",
         "11: device 't5' has both token and token_sha256"],
        id="bad-tokens",
    ),
    pytest.param(
        """\
        classes:
          a: {}
        devices:
          t1: {class: a, token: "abcdefghijklmnopqrstuvwx"}
          t2:
            class: a
            token_sha256: "%s"
        """ % hashlib.sha256(b"abcdefghijklmnopqrstuvwx").hexdigest(),
        ["7: device 't2' has the same token as device 't1' (line 4)"],
        id="duplicate-token",
    ),
    pytest.param(
        """\
        classes:
          a: {}
        devices:
          t1: {class: a, addresses: ["10.0.0.1", "10.0.0.300"]}
          t2: {class: a, addresses: ["10.0.0.1"]}
        """,
        ["4: addresses of device 't1': '10.0.0.300' is not an IP address",
         "5: address 10.0.0.1 already belongs to device 't1' (line 4)"],
        id="device-addresses",
    ),
    pytest.param(
        """\
        default_class: visiters
        classes:
          visitors: {}
        """,
        ["1: default_class 'visiters' is not a class (did you mean 'visitors'?"],
        id="default-class",
    ),
    pytest.param(
        """\
        always_allow:
          - apple.com
          - fr
          - github.io
        classes:
          a:
            allow: [co.uk, blogspot.com, "exa mple.org"]
            deny: [com, github.io]
        """,
        ["3: always_allow: 'fr' is a public suffix",
         "4: always_allow: 'github.io' is a shared hosting suffix",
         "7: allow: 'co.uk' is a public suffix",
         "7: allow: 'blogspot.com' is a shared hosting suffix",
         "7: allow: invalid domain name 'exa mple.org'",
         "8: deny: 'com' is a public suffix"],
        id="public-suffixes-and-bad-domains",
    ),
    pytest.param(
        """\
        classes:
          a:
            allow: ["https://lumni.fr/video", "*.wikipedia.org", "10.0.0.1"]
        """,
        ["3: allow: 'https://lumni.fr/video' is not a domain name; write the name only, e.g. "
         "'lumni.fr'",
         "3: allow: write 'wikipedia.org' instead of '*.wikipedia.org'",
         "3: allow: '10.0.0.1' is an address"],
        id="domain-hints",
    ),
    pytest.param(
        """\
        exceptions:
          - {date: 2027-05-01, from: 2027-05-01, to: 2027-05-02}
          - {from: 2027-05-08}
          - {from: 2027-01-04, to: 2026-12-19}
          - {date: "1 May"}
          - {name: "nothing"}
          - {date: 2027-02-30}
        """,
        ["2: an exception has either date: or from: and to:, not both",
         "3: an exception with a range needs both from: and to: (to: is missing)",
         "4: exception ends (2026-12-19) before it starts (2027-01-04)",
         "5: date: '1 May' is not a date; write YYYY-MM-DD",
         "6: an exception needs date: or from: and to:",
         "7: date: '2027-02-30' is not a date"],
        id="exceptions",
    ),
    pytest.param(
        """\
        bypass_protection: "no"
        classes: [a, b]
        """,
        ["1: bypass_protection in the policy must be true or false",
         "2: classes must be a mapping of class id to rules"],
        id="top-level-types",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_errors(tmp_path, text, expected):
    errors = errors_of(tmp_path, text)
    assert len(errors) == len(expected), errors
    for error, wanted in zip(errors, expected):
        assert error.startswith(wanted), (error, wanted)


def test_all_errors_are_collected_in_file_order(tmp_path):
    errors = errors_of(tmp_path, """\
        classes:
          a:
            block: [gambl]
            networks: ["10.0.0.1/8"]
        devices:
          t: {class: zz}
        """)
    assert [e.split(":")[0] for e in errors] == ["3", "4", "6"]


def test_error_format_names_the_file(tmp_path):
    path = write(tmp_path, "classes:\n  a:\n    block: [gambl]\n")
    with pytest.raises(PolicyError) as caught:
        load(path)
    assert caught.value.errors[0].startswith(f"{path}:3: unknown category 'gambl'")


def test_plain_data_reports_line_zero():
    with pytest.raises(PolicyError) as caught:
        parse_policy({"classes": {"a": {"block": ["gambl"]}}}, source="api",
                     known_categories=CATEGORIES, known_services=SERVICES)
    assert caught.value.errors[0].startswith("api:0: unknown category 'gambl'")


def test_plain_yaml_numbers_are_refused_with_a_hint():
    # yaml.safe_load reads 21:00 as 1260; the loader cannot undo that, so it asks for quotes.
    data = yaml.safe_load("classes: {a: {schedule: [{days: all, from: 21:00, to: '07:00', "
                          "closed: true}]}}")
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, source="x", known_categories=CATEGORIES, known_services=SERVICES)
    assert caught.value.errors == [
        "x:0: quote the time: from: YAML read it as the number 1260; write it as \"HH:MM\", "
        "e.g. from: \"21:00\""]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("classes:\n  a: {}\n  a: {}\n", "3: duplicate key 'a' (first on line 2)"),
        ("classes:\n  a: [\n", "3: expected the node content, but found '<stream end>'"),
        ("classes:\n\ta: {}\n", "2: found character '\\t' that cannot start any token"),
        ("classes:\n  a:\n    name: \"x\u009by\"\n", "3: character #x009b is not allowed in YAML"),
    ],
)
def test_yaml_errors(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load(path)
    assert caught.value.errors[0].startswith(f"{path}:{expected}"), caught.value.errors


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError) as caught:
        load(tmp_path / "nope.yaml")
    assert "cannot read" in str(caught.value)


# --- the YAML loader ----------------------------------------------------------------------------


def test_yaml_lines_and_sexagesimal():
    data = parse_yaml("a: 21:00\nb: 7:00\nc:\n  - x\n  - 1_000\nd: off\ne: 0x10\nf: 1.5\n", "t")
    assert isinstance(data, LineDict) and data.line == 1
    assert data == {"a": "21:00", "b": "7:00", "c": ["x", 1000], "d": False, "e": 16, "f": 1.5}
    assert data.key_lines == {"a": 1, "b": 2, "c": 3, "d": 6, "e": 7, "f": 8}
    assert isinstance(data["c"], LineList)
    assert data["c"].line == 4 and data["c"].item_lines == [4, 5]


def test_yaml_merge_keys_may_be_overridden():
    data = parse_yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n", "t")
    assert data["c"] == {"x": 1, "y": 3}
    assert data["c"].key_lines["y"] == 4


def test_load_yaml_returns_text(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a: 1\n", encoding="utf-8")
    assert load_yaml(path) == ({"a": 1}, "a: 1\n")
    path.write_text("a: 1\na: 2\n", encoding="utf-8")
    with pytest.raises(YamlError, match=r"x\.yaml:2: duplicate key 'a'"):
        load_yaml(path)


# ---- issue 20, item 6: validation is linear in the size of the lists -----------------------


def test_a_300k_always_allow_validates_in_about_a_second() -> None:
    public_suffix_kind("warm.example")  # the suffix list loads once per process
    names = [f"site{number}.school{number % 97}.example" for number in range(300_000)]
    data = {"always_allow": names + names[:1000],  # repeats are dropped, the first kept
            "classes": {"big": {"networks": [f"10.{n // 256}.{n % 256}.0/24" for n in range(20000)],
                                "allow": names[:50_000], "deny": names[50_000:100_000]}}}
    started = time.process_time()
    policy = parse_policy(data, source="big.yaml", known_categories=CATEGORIES,
                          known_services=SERVICES)
    seconds = time.process_time() - started
    assert policy.always_allow == tuple(names)
    assert len(policy.classes["big"].networks) == 20000
    assert seconds < 2.5, seconds  # about 1 s here; quadratic checks took minutes


def test_public_suffix_shortcut_agrees_with_the_list() -> None:
    # The shortcut (names no rule can match are no suffix) must not change a single answer.
    from policies.loader import PUBLIC_SUFFIX_FILE, _load_suffix_lists

    lists = _load_suffix_lists()
    checked = 0
    for line in PUBLIC_SUFFIX_FILE.read_text(encoding="utf-8").splitlines()[::7]:
        rule = line.strip().lstrip("!").removeprefix("*.")
        if not rule or rule.startswith("//"):
            continue
        for text in (rule, f"x.{rule}", rule.partition(".")[2], f"a.b.{rule}"):
            try:
                name = text.encode("idna").decode("ascii").lower()
            except UnicodeError:
                continue
            if not name:
                continue
            expected = ("icann" if lists.icann.get_tld(name, strict=True) == name
                        else "private" if lists.every.get_tld(name, strict=True) == name else None)
            assert public_suffix_kind(name) == expected, name
            checked += 1
    assert checked > 4000
