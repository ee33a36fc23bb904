"""`classguard check` says what the running server answers: one corpus, asked both ways.

The server runs on real sockets (plain DNS, and DoH for a device at home); `classguard check`
runs as the admin runs it, a process on the same config and state_dir (same store: the stored
policy, the teachers' overrides, the screen-time minutes). For each case the decision and the
block reason must be the same.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import textwrap
import time
from zoneinfo import ZoneInfo

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype

from classguard.config import DOH_DEFAULTS
from tests.conftest import ede
from tests.serving import cli

TIMEZONE = "Europe/Paris"
TOKEN = "k7q2m9x4v8w1z6r3t5y0p2a9"  # tablet-1's DoH token
HOME = "127.0.0.1"  # in no class network: a family's router
UNKNOWN = "127.0.0.9"


def policy_for(today: str) -> str:
    return f"""\
always_allow: [mdm.example.net]
locked_categories: [adult]
exceptions:
  - {{date: {today}, name: "pont"}}
classes:
  pupils:
    networks: ["127.0.0.2/31"]
    block: [adult, gambling]
    safe_search: strict
    home: {{deny: [home-only.example]}}
  staff:
    networks: ["127.0.0.16/29"]
  minutes:
    screen_time: {{daily_minutes: 2}}
  club:
    networks: ["127.0.0.5/32"]
    schedule:
      - {{days: mon-sun, from: "00:00", to: "23:59", block: [gambling], school_days_only: true}}
  reading:
    networks: ["127.0.0.6/32"]
    allow_only: [gambling]
  paused:
    networks: ["127.0.0.7/32"]
    block: [gambling]
devices:
  tablet-1: {{class: pupils, addresses: ["127.0.0.2"], token: "{TOKEN}"}}
  teacher-tablet: {{class: staff, addresses: ["127.0.0.3"]}}
  tablet-2: {{class: minutes, addresses: ["127.0.0.4"]}}
"""


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def server_outcome(name: str, answer: dns.message.Message) -> tuple[str, str | None]:
    """(decision, block reason) as a client sees the server's answer."""
    if answer.rcode() == dns.rcode.REFUSED:
        return "refused", None
    for code, text in ede(answer):
        if code == 15:
            return "block", text
    if answer.rcode() == dns.rcode.NXDOMAIN and any(
            rrset.rdtype == dns.rdatatype.SOA and rrset[0].mname.to_text() == "localhost."
            for rrset in answer.authority):
        return "local", None  # our own SOA: a local zone answered here
    addresses = [item.to_text() for rrset in answer.answer for item in rrset
                 if rrset.rdtype == dns.rdatatype.A]
    if addresses == ["127.0.0.1"] and name == "localhost":
        return "local", None
    if answer.answer and answer.answer[0].rdtype == dns.rdatatype.CNAME \
            and answer.answer[0].name.to_text().rstrip(".") == name:
        return "rewrite", None
    return "resolve", None


def check_outcome(stdout: str) -> tuple[str, str | None]:
    """(decision, block reason) as `classguard check` says them."""
    fields = dict(line.strip().split(": ", 1) for line in stdout.splitlines()[1:] if ": " in line)
    decision = fields["decision"].split()[0]
    return decision, fields.get("EDE text") if decision == "block" else None


async def test_check_gives_the_servers_decision_and_reason_for_the_whole_corpus(
        make_resolver, upstream, tmp_path):
    upstream.add("www.google.com", "A", "142.250.0.1")
    upstream.add("casino.example", "A", "198.51.100.7")
    upstream.add("home-only.example", "A", "198.51.100.8")
    zone = ZoneInfo(TIMEZONE)
    clock = Clock(time.time())
    today = dt.datetime.fromtimestamp(clock.now, zone).date().isoformat()
    resolver = await make_resolver(policy_for(today), timezone=TIMEZONE, clock=clock, settings={
        "doh": {**DOH_DEFAULTS, "listen": "127.0.0.1:0"}})
    service = resolver.service
    (tmp_path / "adult.txt").write_text("adult.example\ncdn-adult.example\n")
    (tmp_path / "gambling.txt").write_text("gambling.example\ncasino.example\n")
    (tmp_path / "classguard.yaml").write_text(textwrap.dedent(f"""\
        timezone: {TIMEZONE}
        policies: policy.yaml
        state_dir: state
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{upstream.url}"]
          upstream_timeout: 1
        blocklists:
          bundled: false
          sources:
            - {{name: test-adult, path: adult.txt, format: domains, category: adult}}
            - {{name: test-gambling, path: gambling.txt, format: domains, category: gambling}}
        """))

    # A teacher's pause, with a temporary allow that opens one name during it.
    commands = service.control.commands
    await commands.override_add({"class": "paused", "kind": "pause", "minutes": 30}, "test")
    await commands.override_add({"class": "paused", "kind": "allow", "minutes": 30,
                                 "target": "casino.example"}, "test")
    # tablet-2 uses three minutes of its two; the minutes reach the store as the server flushes.
    for minute in range(3):
        await resolver.query("example.com", source="127.0.0.4")
        clock.now += 60
    clock.now -= 60  # still in the third minute
    await service.state.screen_time.flush(clock.now)
    at = dt.datetime.fromtimestamp(clock.now, zone).isoformat()

    async def over_doh(name: str) -> dns.message.Message:
        query = dns.message.make_query(name, "A", use_edns=0)
        return await dns.asyncquery.https(query, f"{service.doh.url}/{TOKEN}", source=HOME,
                                          timeout=5)

    cases = [  # (what, name, where the server is asked from, how check is asked)
        ("localhost", "localhost", "127.0.0.2", ["--client", "127.0.0.2"]),
        ("special-use name", "printer.test", "127.0.0.2", ["--client", "127.0.0.2"]),
        ("private reverse zone", "1.0.168.192.in-addr.arpa", "127.0.0.2", ["--client", "127.0.0.2"]),
        ("forwarded", "example.com", "127.0.0.2", ["--client", "127.0.0.2"]),
        ("locked category", "adult.example", "127.0.0.2", ["--client", "127.0.0.2"]),
        ("category", "casino.example", "127.0.0.2", ["--client", "127.0.0.2"]),
        ("safe search", "www.google.com", "127.0.0.2", ["--client", "127.0.0.2"]),
        ("CNAME inspection", "sneaky.example.org", "127.0.0.2", ["--client", "127.0.0.2"]),
        ("device, not its class network", "adult.example", "127.0.0.3", ["--client", "127.0.0.3"]),
        ("the same device by name", "adult.example", "127.0.0.3", ["--device", "teacher-tablet"]),
        ("class network", "adult.example", "127.0.0.17", ["--client", "127.0.0.17"]),
        ("screen time spent", "example.com", "127.0.0.4", ["--device", "tablet-2"]),
        ("screen time spent, by address", "example.com", "127.0.0.4", ["--client", "127.0.0.4"]),
        ("holiday", "gambling.example", "127.0.0.5", ["--client", "127.0.0.5"]),
        ("allow_only", "example.com", "127.0.0.6", ["--client", "127.0.0.6"]),
        ("allow_only, listed", "casino.example", "127.0.0.6", ["--client", "127.0.0.6"]),
        ("paused", "example.com", "127.0.0.7", ["--client", "127.0.0.7"]),
        ("paused, temporary allow", "casino.example", "127.0.0.7", ["--client", "127.0.0.7"]),
        ("paused, locked category", "adult.example", "127.0.0.7", ["--client", "127.0.0.7"]),
        ("home scope", "home-only.example", "doh", ["--device", "tablet-1", "--home"]),
        ("school scope", "home-only.example", "127.0.0.2", ["--device", "tablet-1"]),
        ("unknown client", "example.com", UNKNOWN, ["--client", UNKNOWN]),
    ]
    served = {}
    for what, name, source, _args in cases:
        answer = await over_doh(name) if source == "doh" else \
            await resolver.query(name, source=source, use_edns=0)
        served[what] = server_outcome(name, answer)
    # Spot checks that the server does what each case is about (else the corpus proves little).
    assert served["screen time spent"] == ("block", "screen_time")
    assert served["special-use name"] == ("local", None) and served["localhost"] == ("local", None)
    assert served["device, not its class network"] == ("resolve", None)
    assert served["paused, temporary allow"] == ("resolve", None)
    assert served["paused, locked category"] == ("block", "paused")
    assert served["holiday"] == ("resolve", None)
    assert served["allow_only"] == ("block", "not_in_allowlist")
    assert served["CNAME inspection"] == ("block", "category:adult")
    assert served["safe search"] == ("rewrite", None)
    assert served["home scope"] == ("block", "deny") and served["school scope"] == ("resolve", None)
    assert served["unknown client"] == ("refused", None)

    results = await asyncio.gather(*(cli(tmp_path, "check", name, *args, "--at", at)
                                     for _what, name, _source, args in cases))
    disagreements = []
    for (what, name, _source, _args), result in zip(cases, results):
        assert result.returncode == 0, (what, result.stderr)
        checked = check_outcome(result.stdout)
        if checked != served[what]:
            disagreements.append(f"{what} ({name}): server {served[what]}, check {checked}\n"
                                 f"{result.stdout}")
    assert not disagreements, "\n".join(disagreements)
