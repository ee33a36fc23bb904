"""Rules that follow the clock: windows, bedtime, holidays, teachers' overrides, TTLs that keep time."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from zoneinfo import ZoneInfo

from blocklists.settings import ListSource
from policies.model import Override
from tests.conftest import STAFF, ede
from tests.serving import CLASSGUARD

PARIS = ZoneInfo("Europe/Paris")

TIMED_POLICY = """\
always_allow: [mdm.example.net]
locked_categories: [adult]
exceptions:
  - {from: 2026-12-19, to: 2027-01-04, name: "vacances de Noël"}
classes:
  pupils:
    networks: ["127.0.0.2/32"]
    block: [adult]
    allow: [allowed.gambling.example]
    schedule:
      - {days: mon-fri, from: "08:30", to: "16:30", block: [gambling], school_days_only: true}
      - {days: all, from: 21:00, to: 07:00, closed: true}
  staff:
    networks: ["127.0.0.3/32"]
"""

STREAMING = ListSource(name="test-streaming", format="domains", category="streaming", domains=("video.example",))


class Clock:
    def __init__(self, moment: dt.datetime):
        self.now = moment.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, moment: dt.datetime) -> None:
        self.now = moment.timestamp()


def paris(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=PARIS)


def addresses(message) -> list[str]:
    return [item.to_text() for rrset in message.answer for item in rrset if rrset.rdtype in (1, 28)]


async def timed_resolver(make_resolver, moment: dt.datetime, policy: str = TIMED_POLICY):
    clock = Clock(moment)
    resolver = await make_resolver(policy, timezone="Europe/Paris", clock=clock)
    return resolver, clock


async def test_bedtime_closes_the_class_and_morning_opens_it(make_resolver):
    resolver, clock = await timed_resolver(make_resolver, paris(2026, 12, 1, 22, 0))  # a Tuesday night
    night = await resolver.query("example.com", use_edns=0)
    assert addresses(night) == ["0.0.0.0"] and ede(night) == [(15, "closed")]
    # Only the class allow list and always_allow resolve while closed.
    assert addresses(await resolver.query("allowed.gambling.example")) == ["198.51.100.3"]
    assert addresses(await resolver.query("mdm.example.net")) == ["192.0.2.10"]
    # Another class is not affected.
    assert addresses(await resolver.query("example.com", source=STAFF)) == ["93.184.215.14"]
    clock.set(paris(2026, 12, 2, 6, 59, 59))
    assert ede(await resolver.query("example.com", use_edns=0)) == [(15, "closed")]
    clock.set(paris(2026, 12, 2, 7, 0))
    morning = await resolver.query("example.com", use_edns=0)
    assert addresses(morning) == ["93.184.215.14"] and ede(morning) == []


async def test_answers_never_outlive_the_next_boundary(make_resolver):
    resolver, clock = await timed_resolver(make_resolver, paris(2026, 12, 1, 20, 59, 30))
    before = await resolver.query("example.com")
    assert before.answer[0].ttl == 30  # bedtime starts in 30 s; the upstream said 300
    clock.set(paris(2026, 12, 1, 12, 0))  # school hours: still time-bound, policy_ttl (60 s)
    noon = await resolver.query("example.com")
    assert noon.answer[0].ttl == 60
    blocked = await resolver.query("gambling.example", use_edns=0)
    assert ede(blocked) == [(15, "category:gambling")] and blocked.answer[0].ttl == 60
    # A class with no schedule keeps the upstream's TTL.
    assert (await resolver.query("example.com", source=STAFF)).answer[0].ttl == 300


async def test_school_hours_rules_are_suspended_in_the_holidays(make_resolver):
    resolver, clock = await timed_resolver(make_resolver, paris(2026, 12, 15, 10, 0))  # a school Tuesday
    assert ede(await resolver.query("gambling.example", use_edns=0)) == [(15, "category:gambling")]
    clock.set(paris(2026, 12, 22, 10, 0))  # a Tuesday in the Christmas holidays
    assert addresses(await resolver.query("gambling.example")) == ["198.51.100.2"]
    clock.set(paris(2026, 12, 15, 17, 0))  # after school on a school day
    assert addresses(await resolver.query("gambling.example")) == ["198.51.100.2"]


async def test_a_pause_blocks_everything_but_temporary_allows_until_it_ends(make_resolver, upstream):
    upstream.add("lesson.example", "A", "192.0.2.33")
    resolver, clock = await timed_resolver(make_resolver, paris(2026, 12, 1, 10, 0))
    now = clock.now
    resolver.service.state.replace_overrides((
        Override("p1", "pupils", "pause", until=now + 600, created_at=now, created_by="teacher-a"),
        Override("a1", "pupils", "allow", until=now + 300, target="lesson.example", target_kind="domain",
                 created_at=now),
    ))
    paused = await resolver.query("example.com", use_edns=0)
    assert ede(paused) == [(15, "paused")]
    assert paused.answer[0].ttl <= 60
    assert addresses(await resolver.query("lesson.example")) == ["192.0.2.33"]
    clock.now = now + 301  # the temporary allow has ended, the pause has not
    assert ede(await resolver.query("lesson.example", use_edns=0)) == [(15, "paused")]
    clock.now = now + 600  # the pause ends on time, with no restart and no new policy
    assert addresses(await resolver.query("example.com")) == ["93.184.215.14"]


async def test_a_temporary_allow_never_opens_a_locked_category(make_resolver):
    resolver, clock = await timed_resolver(make_resolver, paris(2026, 12, 1, 10, 0))
    now = clock.now
    resolver.service.state.replace_overrides((
        Override("a1", "pupils", "allow", until=now + 600, target="adult.example", target_kind="domain", created_at=now),
        Override("a2", "pupils", "allow", until=now + 600, target="gambling.example", target_kind="domain", created_at=now),
    ))
    assert ede(await resolver.query("adult.example", use_edns=0)) == [(15, "category:adult")]
    assert addresses(await resolver.query("gambling.example")) == ["198.51.100.2"]


async def test_a_temporary_service_allow_opens_every_domain_of_the_app(make_resolver, upstream):
    upstream.add("www.youtube.com", "A", "142.250.1.10")
    upstream.add("r1.googlevideo.com", "A", "142.250.1.11")
    policy = TIMED_POLICY.replace("block: [adult]", "block: [adult]\n    block_services: [youtube]")
    resolver, clock = await timed_resolver(make_resolver, paris(2026, 12, 1, 10, 0), policy)
    assert ede(await resolver.query("r1.googlevideo.com", use_edns=0)) == [(15, "service:youtube")]
    now = clock.now
    resolver.service.state.replace_overrides((
        Override("a1", "pupils", "allow", until=now + 600, target="youtube", target_kind="service", created_at=now),))
    assert addresses(await resolver.query("r1.googlevideo.com")) == ["142.250.1.11"]
    assert addresses(await resolver.query("www.youtube.com")) == ["142.250.1.10"]




def test_check_at_explains_a_window(tmp_path):
    (tmp_path / "policies.yaml").write_text(TIMED_POLICY.replace("    allow: [allowed.gambling.example]\n", ""))
    (tmp_path / "classguard.yaml").write_text(
        "timezone: Europe/Paris\npolicies: policies.yaml\nstate_dir: state\n"
        "blocklists:\n  sources:\n    - {name: t, domains: [gambling.example], format: domains, category: gambling}\n")

    def check(*args):
        result = subprocess.run([CLASSGUARD, "check", *args], cwd=tmp_path, capture_output=True, text=True,
                                timeout=60, env={**os.environ, "CLASSGUARD_CONFIG": ""})
        assert result.returncode == 0, result.stderr
        return result.stdout

    night = check("example.com", "--class", "pupils", "--at", "2026-12-01T22:15")
    assert "decision: block" in night and "step: 5 closed" in night
    assert "in force: window mon,tue,wed,thu,fri,sat,sun 21:00-07:00 closed" in night
    assert "until: 2026-12-02T07:00+01:00" in night
    lesson = check("www.gambling.example", "--class", "pupils", "--at", "2026-12-01T10:00")
    assert "step: 9 category" in lesson and "EDE text: category:gambling" in lesson
    holiday = check("www.gambling.example", "--class", "pupils", "--at", "2026-12-22T10:00")
    assert "decision: resolve" in holiday
