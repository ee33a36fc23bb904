"""Screen time: a device's active minutes per local day, closed past its budget until midnight."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from resolver.screentime import ScreenTime
from tests.conftest import ede

PARIS = ZoneInfo("Europe/Paris")

POLICY = """\
always_allow: [mdm.example.net]
classes:
  pupils:
    networks: ["127.0.0.0/24"]
    allow: [allowed.gambling.example]
    screen_time: {daily_minutes: 2}
devices:
  tablet-1: {class: pupils, addresses: ["127.0.0.2"]}
  tablet-2: {class: pupils, addresses: ["127.0.0.3"]}
"""


class Clock:
    def __init__(self, moment: dt.datetime):
        self.now = moment.timestamp()

    def __call__(self) -> float:
        return self.now


def at(hour: int, minute: int, second: int = 0, day: int = 1) -> float:
    return dt.datetime(2026, 12, day, hour, minute, second, tzinfo=PARIS).timestamp()


def addresses(message) -> list[str]:
    return [item.to_text() for rrset in message.answer for item in rrset if rrset.rdtype in (1, 28)]


async def test_a_device_is_closed_past_its_minutes_and_opens_at_midnight(make_resolver, upstream):
    upstream.add("time.apple.com", "A", "17.253.1.2")
    clock = Clock(dt.datetime(2026, 12, 1, 10, 0, tzinfo=PARIS))
    resolver = await make_resolver(POLICY, timezone="Europe/Paris", clock=clock)
    for moment in (at(10, 0, 5), at(10, 0, 40), at(10, 1, 10)):  # two distinct minutes
        clock.now = moment
        assert addresses(await resolver.query("example.com")) == ["93.184.215.14"]
    # Background names (OS time, push, updates) do not make a minute active.
    for minute in range(2, 6):
        clock.now = at(10, minute)
        assert addresses(await resolver.query("time.apple.com")) == ["17.253.1.2"]
    assert resolver.service.state.screen_time.used("tablet-1", clock.now) == 2
    clock.now = at(10, 7)  # a third minute: past the budget of two
    spent = await resolver.query("example.com", use_edns=0)
    assert addresses(spent) == ["0.0.0.0"] and ede(spent) == [(15, "screen_time")]
    # The class allow list and always_allow still resolve; another tablet is not affected.
    assert addresses(await resolver.query("allowed.gambling.example")) == ["198.51.100.3"]
    assert addresses(await resolver.query("mdm.example.net")) == ["192.0.2.10"]
    assert addresses(await resolver.query("example.com", source="127.0.0.3")) == ["93.184.215.14"]
    clock.now = at(23, 59, 59)
    late = await resolver.query("example.com", use_edns=0)
    assert ede(late) == [(15, "screen_time")] and late.answer[0].ttl <= 1
    clock.now = at(0, 0, 0, day=2)  # local midnight: a new day, a new budget
    assert addresses(await resolver.query("example.com")) == ["93.184.215.14"]


def test_minutes_count_once_and_days_follow_local_midnight():
    tracker = ScreenTime("Europe/Paris")
    assert tracker.observe("t", at(9, 0, 1)) == 1
    assert tracker.observe("t", at(9, 0, 59)) == 1
    assert tracker.observe("t", at(9, 1, 0)) == 2
    assert tracker.minutes("t") == [540, 541]
    assert tracker.used("t", at(23, 59)) == 2
    assert tracker.used("t", at(0, 0, 1, day=2)) == 0
    # The night the clocks go back has 25 hours: its last minutes still have a place.
    assert tracker.observe("t", dt.datetime(2026, 10, 25, 23, 59, tzinfo=PARIS).timestamp()) == 1
    assert tracker.minutes("t") == [1499]


async def test_minutes_seen_by_two_processes_count_once_and_survive_a_restart(tmp_path):
    import subprocess
    import sys
    import textwrap

    from store.embedded import EmbeddedStore

    here = ScreenTime("Europe/Paris", EmbeddedStore(tmp_path))
    for moment in (at(9, 0, 1), at(9, 1, 1)):
        here.observe("tablet-1", moment)
    # Another process (another worker or instance) saw minutes 9:01 and 9:02 of the same tablet.
    other = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parent.parent)!r})
        from resolver.screentime import ScreenTime
        from store.embedded import EmbeddedStore
        tracker = ScreenTime("Europe/Paris", EmbeddedStore({str(tmp_path)!r}))
        for moment in ({at(9, 1, 30)}, {at(9, 2, 5)}):
            tracker.observe("tablet-1", moment)
        asyncio.run(tracker.flush({at(9, 2, 6)}))
        print(tracker.used("tablet-1", {at(9, 2, 6)}))
        """)
    result = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    await here.flush(at(9, 3))
    assert here.used("tablet-1", at(9, 3)) == 3  # 9:00, 9:01 (seen twice), 9:02
    restarted = ScreenTime("Europe/Paris", EmbeddedStore(tmp_path))
    await restarted.load(at(9, 5))
    assert restarted.used("tablet-1", at(9, 5)) == 3
    assert restarted.minutes("tablet-1") == [540, 541, 542]


async def test_a_devices_minutes_are_in_its_data_export_and_gone_after_erasure(tmp_path):
    from store.embedded import EmbeddedStore

    store = EmbeddedStore(tmp_path)
    tracker = ScreenTime("Europe/Paris", store)
    tracker.observe("tablet-1", at(9, 0, 1))
    tracker.observe("tablet-2", at(9, 0, 2))
    await tracker.flush(at(9, 1))
    assert (await store.device_data("tablet-1"))["screen_time_minutes"] == {"2026-12-01": [540]}
    erased = await store.erase_device("tablet-1")
    assert erased["screen_time_days"] == 1
    assert (await store.device_data("tablet-1"))["screen_time_minutes"] == {}
    assert (await store.device_data("tablet-2"))["screen_time_minutes"] == {"2026-12-01": [540]}
    assert "tablet-1" not in "".join(p.read_text() for p in (tmp_path / "screen-time").glob("*.json"))
