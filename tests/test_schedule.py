"""Schedule windows at a given instant (policies/schedule.py): table-driven, with explicit instants
built from zoneinfo datetimes; no clock, no sleeping."""

from __future__ import annotations

import datetime as dt
import math
import random
import zoneinfo

import pytest

from policies.loader import parse_policy
from policies.model import Exception_, Window
from policies.schedule import ClassTimeState, Timetable
from policies.yaml_lines import parse_yaml

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
UTC = zoneinfo.ZoneInfo("UTC")
ALL = frozenset(range(7))
MON_FRI = frozenset(range(5))
MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


def at(*fields: int, tz: dt.tzinfo = PARIS, fold: int = 0) -> float:
    """The POSIX timestamp of a local time (fold=1: the second of a repeated time)."""
    return dt.datetime(*fields, tzinfo=tz, fold=fold).timestamp()


def hm(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def window(line: int, days, start: str, end: str, **kwargs) -> Window:
    """A window identified by `line` in assertions; `to: 00:00` is 24:00 as in the loader."""
    return Window(days=frozenset(days), start=hm(start), end=hm(end) or 1440, line=line, **kwargs)


def lines(state: ClassTimeState) -> tuple[int, ...]:
    return tuple(w.line for w in state.active)


def holidays(*ranges: tuple[str, str] | str) -> list[Exception_]:
    result = []
    for item in ranges:
        first, last = (item, item) if isinstance(item, str) else item
        result.append(Exception_(dt.date.fromisoformat(first), dt.date.fromisoformat(last)))
    return result


SCHOOL = window(1, MON_FRI, "08:30", "16:30", block=("streaming",), school_days_only=True)
LUNCH = window(2, MON_FRI, "12:00", "13:30", block=("games",), block_services=("roblox",),
               school_days_only=True)
BEDTIME = window(3, ALL, "21:00", "07:00", closed=True)
HOLIDAYS = holidays("2026-05-01", ("2026-12-19", "2027-01-04"))
DAY_TABLE = Timetable([SCHOOL, LUNCH, BEDTIME], HOLIDAYS, PARIS)


# --- which windows are in force ---------------------------------------------------------------

# 2026-05-04 is a Monday, 2026-05-01 a Friday (a holiday), 2026-12-18 a Friday.
DAY_CASES = [
    # several windows a day, `from` inclusive, `to` exclusive
    ((2026, 5, 4, 8, 29, 59), (), False, set()),
    ((2026, 5, 4, 8, 30), (1,), False, {"streaming"}),
    ((2026, 5, 4, 12, 0), (1, 2), False, {"streaming", "games"}),
    ((2026, 5, 4, 13, 29, 59), (1, 2), False, {"streaming", "games"}),
    ((2026, 5, 4, 13, 30), (1,), False, {"streaming"}),
    ((2026, 5, 4, 16, 29, 59), (1,), False, {"streaming"}),
    ((2026, 5, 4, 16, 30), (), False, set()),
    ((2026, 5, 4, 20, 59, 59), (), False, set()),
    ((2026, 5, 4, 21, 0), (3,), True, set()),
    ((2026, 5, 5, 0, 0), (3,), True, set()),
    ((2026, 5, 5, 6, 59, 59), (3,), True, set()),
    ((2026, 5, 5, 7, 0), (), False, set()),
    # weekends: mon-fri windows do not run, bedtime (all) does
    ((2026, 5, 9, 10, 0), (), False, set()),
    ((2026, 5, 9, 12, 30), (), False, set()),
    ((2026, 5, 10, 23, 0), (3,), True, set()),
    ((2026, 5, 10, 3, 0), (3,), True, set()),
    # holidays: a single date suspends the school windows, not bedtime
    ((2026, 5, 1, 10, 0), (), False, set()),
    ((2026, 5, 1, 12, 30), (), False, set()),
    ((2026, 5, 1, 22, 0), (3,), True, set()),
    ((2026, 4, 30, 10, 0), (1,), False, {"streaming"}),
    # a range: first and last days included
    ((2026, 12, 18, 12, 30), (1, 2), False, {"streaming", "games"}),
    ((2026, 12, 21, 12, 30), (), False, set()),
    ((2027, 1, 4, 12, 30), (), False, set()),
    ((2027, 1, 4, 23, 0), (3,), True, set()),
    ((2027, 1, 5, 12, 30), (1, 2), False, {"streaming", "games"}),
]


@pytest.mark.parametrize(("local", "active", "closed", "block"), DAY_CASES)
def test_windows_in_force(local, active, closed, block):
    state = DAY_TABLE.state_at(at(*local))
    assert lines(state) == active
    assert state.closed is closed
    assert state.extra_block == block
    assert state.extra_block_services == ({"roblox"} if 2 in active else set())
    assert state.valid_until > at(*local)


FRIDAY_NIGHT = Timetable([window(1, [FRI], "21:00", "07:00", closed=True)], [], PARIS)


@pytest.mark.parametrize(("local", "closed"), [
    ((2026, 5, 7, 23, 0), False),  # Thursday night: the window starts on Fridays only
    ((2026, 5, 8, 6, 0), False),  # Friday morning: Thursday's night, not Friday's
    ((2026, 5, 8, 20, 59, 59), False),
    ((2026, 5, 8, 21, 0), True),
    ((2026, 5, 9, 0, 0), True),  # after midnight: still Friday's window
    ((2026, 5, 9, 6, 59, 59), True),
    ((2026, 5, 9, 7, 0), False),
    ((2026, 5, 9, 22, 0), False),  # Saturday night
    ((2026, 5, 10, 3, 0), False),
])
def test_window_across_midnight_belongs_to_its_start_day(local, closed):
    assert FRIDAY_NIGHT.state_at(at(*local)).closed is closed


EVENING = window(1, [SAT, SUN], "20:00", "24:00", block=("games",))


@pytest.mark.parametrize(("local", "active", "until"), [
    ((2026, 5, 9, 19, 59), (), (2026, 5, 9, 20, 0)),
    ((2026, 5, 9, 20, 0), (1,), (2026, 5, 10, 0, 0)),
    ((2026, 5, 9, 23, 59, 59), (1,), (2026, 5, 10, 0, 0)),
    ((2026, 5, 10, 0, 0), (), (2026, 5, 10, 20, 0)),  # 24:00 is exclusive
    ((2026, 5, 10, 22, 0), (1,), (2026, 5, 11, 0, 0)),  # Sunday's ends on Monday 00:00
    ((2026, 5, 11, 0, 0), (), (2026, 5, 16, 20, 0)),
])
def test_window_ending_at_24_00(local, active, until):
    state = Timetable([EVENING], [], PARIS).state_at(at(*local))
    assert lines(state) == active
    assert state.valid_until == at(*until)


def test_windows_meeting_at_midnight_are_a_change_but_one_window_every_day_is_not():
    evening = window(1, [SAT], "20:00", "24:00", closed=True)
    morning = window(2, [SUN], "00:00", "09:00", closed=True)
    state = Timetable([evening, morning], [], PARIS).state_at(at(2026, 5, 9, 23, 0))
    assert state.closed and state.valid_until == at(2026, 5, 10, 0, 0)  # another window
    state = Timetable([evening, morning], [], PARIS).state_at(at(2026, 5, 10, 0, 0))
    assert lines(state) == (2,) and state.valid_until == at(2026, 5, 10, 9, 0)

    always = Timetable([window(1, ALL, "00:00", "24:00", closed=True)], [], PARIS)
    for local in [(2026, 5, 9, 23, 59, 59), (2026, 3, 29, 2, 0), (2026, 10, 25, 2, 30)]:
        state = always.state_at(at(*local))
        assert state.closed and state.valid_until == math.inf


def test_no_windows_never_change():
    state = Timetable([], HOLIDAYS, PARIS).state_at(at(2026, 5, 4, 12, 0))
    assert state == ClassTimeState((), False, frozenset(), frozenset(), math.inf)
    assert Timetable([], [], UTC).next_change(0.0) == math.inf


# --- valid_until --------------------------------------------------------------------------------

@pytest.mark.parametrize(("local", "until"), [
    ((2026, 5, 4, 7, 0), (2026, 5, 4, 8, 30)),  # the instant a window ends: the next boundary
    ((2026, 5, 4, 8, 30), (2026, 5, 4, 12, 0)),  # the instant a window starts: the next one
    ((2026, 5, 4, 12, 0, 0, 500000), (2026, 5, 4, 13, 30)),
    ((2026, 5, 4, 16, 0), (2026, 5, 4, 16, 30)),
    ((2026, 5, 4, 16, 30), (2026, 5, 4, 21, 0)),
    ((2026, 5, 4, 22, 0), (2026, 5, 5, 7, 0)),
    ((2026, 5, 8, 17, 0), (2026, 5, 8, 21, 0)),
    ((2026, 5, 9, 7, 0), (2026, 5, 9, 21, 0)),  # weekend: bedtime only
    ((2026, 4, 30, 22, 0), (2026, 5, 1, 7, 0)),
    ((2026, 5, 1, 7, 0), (2026, 5, 1, 21, 0)),  # a holiday: the school windows skipped
])
def test_valid_until_is_the_next_boundary(local, until):
    assert DAY_TABLE.state_at(at(*local)).valid_until == at(*until)


@pytest.mark.parametrize(("local", "until"), [
    ((2026, 5, 8, 17, 0), (2026, 5, 11, 8, 30)),  # over a weekend
    ((2026, 4, 30, 17, 0), (2026, 5, 4, 8, 30)),  # over a holiday and a weekend
    ((2026, 12, 18, 17, 0), (2027, 1, 5, 8, 30)),  # over the Christmas holidays
    ((2026, 12, 25, 9, 0), (2027, 1, 5, 8, 30)),
    ((2027, 1, 5, 8, 0), (2027, 1, 5, 8, 30)),
])
def test_valid_until_over_weekends_and_holidays(local, until):
    school_only = Timetable([SCHOOL], HOLIDAYS, PARIS)
    assert school_only.state_at(at(*local)).valid_until == at(*until)
    assert school_only.next_change(at(*local)) == at(*until)


def test_valid_until_far_ahead_after_a_long_holiday():
    summer = holidays(("2026-07-04", "2026-08-31"))
    table = Timetable([SCHOOL], summer, PARIS)
    assert table.state_at(at(2026, 7, 3, 17, 0)).valid_until == at(2026, 9, 1, 8, 30)
    # one window every day of the holiday does not hide the school window coming back
    always = window(2, ALL, "00:00", "24:00", block=("ads",))
    table = Timetable([SCHOOL, always], summer, PARIS)
    state = table.state_at(at(2026, 7, 20, 12, 0))
    assert lines(state) == (2,) and state.valid_until == at(2026, 9, 1, 8, 30)
    # after the last holiday, nothing ever changes again
    table = Timetable([window(1, ALL, "00:00", "24:00", school_days_only=True, closed=True)],
                      summer, PARIS)
    assert table.state_at(at(2026, 7, 1, 12, 0)).valid_until == at(2026, 7, 4, 0, 0)
    assert table.state_at(at(2026, 7, 4, 0, 0)).valid_until == at(2026, 9, 1, 0, 0)
    assert table.state_at(at(2026, 9, 1, 0, 0)).valid_until == math.inf


def test_school_window_across_midnight_into_a_holiday_keeps_running():
    # Friday 18 December 2026 is a school day, the holidays start on Saturday 19 December.
    late = window(1, ALL, "22:00", "02:00", block=("games",), school_days_only=True)
    table = Timetable([late], HOLIDAYS, PARIS)
    state = table.state_at(at(2026, 12, 18, 23, 0))
    assert lines(state) == (1,) and state.valid_until == at(2026, 12, 19, 2, 0)
    assert lines(table.state_at(at(2026, 12, 19, 1, 59))) == (1,)  # on a holiday, still running
    state = table.state_at(at(2026, 12, 19, 2, 0))
    assert lines(state) == () and state.valid_until == at(2027, 1, 5, 22, 0)
    # one starting on the last holiday (4 January) does not start, though it ends on a school day
    assert lines(table.state_at(at(2027, 1, 4, 23, 0))) == ()
    assert lines(table.state_at(at(2027, 1, 5, 1, 0))) == ()
    assert lines(table.state_at(at(2027, 1, 5, 22, 0))) == (1,)


def test_overlapping_and_adjacent_exceptions_merge():
    table = Timetable([SCHOOL], holidays(("2026-05-04", "2026-05-06"), ("2026-05-07", "2026-05-07"),
                                         ("2026-05-05", "2026-05-08")), PARIS)
    assert table.state_at(at(2026, 5, 1, 17, 0)).valid_until == at(2026, 5, 11, 8, 30)
    assert lines(table.state_at(at(2026, 5, 7, 9, 0))) == ()


# --- the nights the clocks change (Europe/Paris, 2026) -------------------------------------------

# 29 March: 02:00 CET -> 03:00 CEST; 25 October: 03:00 CEST -> 02:00 CET.
BED = Timetable([BEDTIME], [], PARIS)


@pytest.mark.parametrize(("instant", "closed", "until"), [
    (at(2026, 3, 28, 20, 59, 59), False, at(2026, 3, 28, 21, 0)),
    (at(2026, 3, 28, 21, 0), True, at(2026, 3, 29, 7, 0)),
    (at(2026, 3, 29, 1, 59, 59), True, at(2026, 3, 29, 7, 0)),
    (at(2026, 3, 29, 3, 0), True, at(2026, 3, 29, 7, 0)),
    (at(2026, 3, 29, 6, 59, 59), True, at(2026, 3, 29, 7, 0)),
    (at(2026, 3, 29, 7, 0), False, at(2026, 3, 29, 21, 0)),
    (at(2026, 10, 24, 21, 0), True, at(2026, 10, 25, 7, 0)),
    (at(2026, 10, 25, 2, 30), True, at(2026, 10, 25, 7, 0)),
    (at(2026, 10, 25, 2, 30, fold=1), True, at(2026, 10, 25, 7, 0)),
    (at(2026, 10, 25, 6, 59, 59), True, at(2026, 10, 25, 7, 0)),
    (at(2026, 10, 25, 7, 0), False, at(2026, 10, 25, 21, 0)),
])
def test_bedtime_keeps_local_times_on_dst_nights(instant, closed, until):
    state = BED.state_at(instant)
    assert state.closed is closed
    assert state.valid_until == until


def test_bedtime_lengths_on_dst_nights_in_utc():
    spring_start = dt.datetime(2026, 3, 28, 20, 0, tzinfo=dt.timezone.utc).timestamp()  # 21:00
    spring_end = dt.datetime(2026, 3, 29, 5, 0, tzinfo=dt.timezone.utc).timestamp()  # 07:00 CEST
    autumn_start = dt.datetime(2026, 10, 24, 19, 0, tzinfo=dt.timezone.utc).timestamp()
    autumn_end = dt.datetime(2026, 10, 25, 6, 0, tzinfo=dt.timezone.utc).timestamp()  # 07:00 CET
    assert BED.state_at(spring_start - 60).valid_until == spring_start
    assert BED.state_at(spring_start).valid_until == spring_end == spring_start + 9 * 3600
    assert BED.state_at(autumn_start).valid_until == autumn_end == autumn_start + 11 * 3600
    assert not BED.state_at(spring_end).closed and BED.state_at(spring_end - 1).closed
    assert not BED.state_at(autumn_end).closed and BED.state_at(autumn_end - 1).closed
    # the next evenings are back to 10 hours
    assert BED.state_at(spring_end).valid_until == at(2026, 3, 29, 21, 0)
    assert BED.state_at(at(2026, 3, 29, 21, 0)).valid_until - at(2026, 3, 29, 21, 0) == 36000


def test_a_start_in_the_spring_gap_is_the_jump():
    early = Timetable([window(1, [SUN], "02:30", "04:00", block=("games",))], [], PARIS)
    jump = at(2026, 3, 29, 3, 0)  # 01:00 UTC, when 02:00 CET becomes 03:00 CEST
    assert jump == dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.timezone.utc).timestamp()
    assert early.state_at(at(2026, 3, 29, 1, 0)).valid_until == jump
    assert lines(early.state_at(jump - 1)) == ()
    state = early.state_at(jump)
    assert lines(state) == (1,) and state.valid_until == at(2026, 3, 29, 4, 0)
    # an ordinary Sunday: 02:30
    assert early.state_at(at(2026, 3, 29, 4, 0)).valid_until == at(2026, 4, 5, 2, 30)


def test_a_window_wholly_in_the_spring_gap_does_not_occur():
    gap = Timetable([window(1, [SUN], "02:00", "02:30", closed=True)], [], PARIS)
    assert gap.state_at(at(2026, 3, 29, 0, 0)).valid_until == at(2026, 4, 5, 2, 0)
    assert not gap.state_at(at(2026, 3, 29, 3, 0)).closed
    # ending in the gap: the window ends at the jump
    ends = Timetable([window(1, [SAT], "22:00", "02:30", closed=True)], [], PARIS)
    assert ends.state_at(at(2026, 3, 28, 23, 0)).valid_until == at(2026, 3, 29, 3, 0)


def test_boundaries_at_the_repeated_hour_use_the_first_occurrence():
    first_half = window(1, [SUN], "01:00", "02:30", block=("games",))
    second_half = window(2, [SUN], "02:30", "05:00", block=("chat",))
    table = Timetable([first_half, second_half], [], PARIS)
    state = table.state_at(at(2026, 10, 25, 1, 30))
    assert lines(state) == (1,) and state.valid_until == at(2026, 10, 25, 2, 30, fold=0)
    state = table.state_at(at(2026, 10, 25, 2, 30, fold=0))
    assert lines(state) == (2,) and state.valid_until == at(2026, 10, 25, 5, 0)
    assert lines(table.state_at(at(2026, 10, 25, 2, 15, fold=1))) == (2,)  # the second 02:15
    assert at(2026, 10, 25, 5, 0) - at(2026, 10, 25, 2, 30, fold=0) == 3.5 * 3600


# --- other zones and the policy file ------------------------------------------------------------

def test_utc_zone():
    table = Timetable([BEDTIME, SCHOOL], [], UTC)
    state = table.state_at(1774728000.0)  # 2026-03-28T20:00:00Z, a Saturday
    assert not state.closed and state.valid_until == 1774731600.0  # 21:00Z
    state = table.state_at(1774731600.0)
    assert state.closed and state.valid_until == 1774767600.0  # 2026-03-29T07:00Z: 10 hours
    assert table.state_at(1774767600.0).valid_until == 1774818000.0  # Sunday 21:00Z
    # Monday 30 March: school at 08:30Z
    assert table.state_at(at(2026, 3, 30, 7, 0, tz=UTC)).valid_until == at(2026, 3, 30, 8, 30,
                                                                               tz=UTC)


SPEC_SCHEDULE = """\
exceptions:
  - {from: 2026-12-19, to: 2027-01-04, name: "vacances de Noël"}
  - {date: 2027-05-01}
classes:
  cm2-a:
    schedule:
      - {days: mon-fri, from: "08:30", to: "16:30", block: [streaming], school_days_only: true}
      - {days: all, from: "21:00", to: "07:00", closed: true}
      - {days: [sat, sun], from: "10:00", to: "24:00", block_services: [roblox]}
      - {days: "wed, fri-sat", from: 13:00, to: "14:00", block: [games]}
"""


@pytest.mark.parametrize(("local", "closed", "block", "services", "until"), [
    ((2026, 12, 16, 13, 30), False, {"streaming", "games"}, set(), (2026, 12, 16, 14, 0)),
    ((2026, 12, 17, 13, 30), False, {"streaming"}, set(), (2026, 12, 17, 16, 30)),
    ((2026, 12, 18, 22, 0), True, set(), set(), (2026, 12, 19, 7, 0)),
    ((2026, 12, 19, 13, 30), False, {"games"}, {"roblox"}, (2026, 12, 19, 14, 0)),
    ((2026, 12, 19, 23, 0), True, set(), {"roblox"}, (2026, 12, 20, 0, 0)),
    ((2026, 12, 20, 0, 0), True, set(), set(), (2026, 12, 20, 7, 0)),
    ((2026, 12, 23, 13, 30), False, {"games"}, set(), (2026, 12, 23, 14, 0)),  # holidays
    ((2027, 1, 6, 9, 0), False, {"streaming"}, set(), (2027, 1, 6, 13, 0)),
])
def test_windows_from_the_policy_file(local, closed, block, services, until):
    policy = parse_policy(parse_yaml(SPEC_SCHEDULE), source="policies.yaml",
                          known_categories=None, known_services=None)
    table = Timetable(policy.classes["cm2-a"].rules.schedule, policy.exceptions, PARIS)
    state = table.state_at(at(*local))
    assert (state.closed, state.extra_block, state.extra_block_services) == (closed, block,
                                                                                services)
    assert state.valid_until == at(*until)


# --- cross-check against a plain wall-clock reading ---------------------------------------------

def reference_lines(windows, exceptions, tz, instant):
    """Active windows by comparing local wall-clock times (right except in the repeated hour)."""
    local = dt.datetime.fromtimestamp(instant, tz).replace(tzinfo=None)
    off = {d for e in exceptions for d in
           (e.first + dt.timedelta(days=n) for n in range((e.last - e.first).days + 1))}
    found = []
    for w in windows:
        for day in (local.date() - dt.timedelta(days=1), local.date()):
            if day.weekday() not in w.days or (w.school_days_only and day in off):
                continue
            start = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=w.start)
            end = dt.datetime.combine(day, dt.time()) + dt.timedelta(
                minutes=w.end if w.end > w.start else w.end + 1440)
            if start <= local < end:
                found.append(w.line)
                break
    return tuple(found)


@pytest.mark.parametrize("seed", range(6))
def test_random_schedules_agree_with_wall_clock_and_valid_until_is_exact(seed):
    rng = random.Random(seed)
    windows = []
    for line in range(1, rng.randint(1, 6) + 1):
        start = rng.randrange(0, 1440, 30)
        end = rng.choice([e for e in range(30, 1441, 30) if e != start])
        days = frozenset(rng.sample(range(7), rng.randint(1, 7)))
        windows.append(Window(days=days, start=start, end=end, closed=rng.random() < 0.3,
                              block=("games",), school_days_only=rng.random() < 0.5, line=line))
    exceptions = holidays(("2026-03-25", "2026-03-27"), "2026-04-01")
    table = Timetable(windows, exceptions, PARIS)
    instant = at(2026, 3, 20, 0, 0)
    end = at(2026, 4, 10, 0, 0)
    while instant < end:
        state = table.state_at(instant)
        assert lines(state) == reference_lines(windows, exceptions, PARIS, instant)
        assert state.valid_until > instant
        limit = min(state.valid_until, end)
        probe = instant + 900
        while probe < limit:  # boundaries are on the half hour: nothing changes in between
            assert lines(table.state_at(probe)) == lines(state)
            probe += 900
        if state.valid_until < end:
            assert lines(table.state_at(state.valid_until - 1)) == lines(state)
            assert lines(table.state_at(state.valid_until)) != lines(state)
        instant = limit if state.valid_until < end else end
