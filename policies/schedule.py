"""A class's schedule at a given instant: which windows are in force, and until when (SPEC §2.2,
§2.6, §5).

Pure: no I/O and no clock of its own; every call takes the instant as a POSIX timestamp.

How wall-clock windows become instants (the choices, in the configured IANA zone):

* A window runs from its `from` (inclusive) to its `to` (exclusive) in *local wall-clock time*
  on each day listed in `days`, which are the days on which it **starts**. A window whose `to`
  is before its `from` crosses midnight: `days: fri, 21:00-07:00` runs from Friday 21:00 to
  Saturday 07:00. `to: 24:00` (and `to: 00:00`, which the loader turns into 24:00) is the next
  local midnight.
* On the nights the clocks change the window keeps its local times, so its length changes: a
  21:00-07:00 bedtime is 9 h long on the spring-forward night and 11 h on the fall-back night in
  Europe/Paris.
* A local time that does not exist (02:30 on the spring-forward night) is taken as the first
  instant at or after it, i.e. the moment the clocks jump (03:00 in Europe/Paris). Either
  boundary can move that way; a window whose both ends fall in the gap (02:00-02:30 that night)
  does not occur at all that night.
* A local time that occurs twice (02:30 on the fall-back night) is taken at its first occurrence
  (fold=0), for `from` and `to` alike: a window ending at 02:30 ends at the first 02:30, and one
  starting at 02:30 is already running during the repeated hour.
* Holidays (`exceptions`, inclusive local date ranges) suspend the windows marked
  `school_days_only`. The date that counts is the local date on which the occurrence *starts*:
  a school-days-only window crossing midnight into the first day of a holiday keeps running until
  its end, and one that would start on a holiday does not start, even if it would run into a
  school day. Since holidays only switch whole occurrences on or off, a local midnight by itself
  never changes the state; only the instants at which occurrences start or end do.

`ClassTimeState.valid_until` is exact: the earliest instant after `at` at which `state_at` returns
a different state (a different set of active windows, even if the effect is the same), or
math.inf when the state never changes again. It is found by sweeping the start and end instants
of the occurrences in time order, day by day from the local date of `at`; when nothing has changed
for eight full days and the holiday status is steady, the sweep skips ahead to the next holiday
boundary (the state is then weekly periodic, and a steady state over a whole week means it is
steady until the holidays change).
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from policies.model import Exception_, Window

__all__ = ["ClassTimeState", "Timetable"]

_DAY = dt.timedelta(days=1)
_STEADY_DAYS = 8  # full local days without a change before the weekly pattern counts as steady
_MAX_SWEEP_DAYS = 3700  # never expected; past it the sweep returns a safe, early bound
_CACHE_DAYS = 512  # days of occurrences kept (memoised; cleared when full)

_Occurrence = tuple[float, float, int]  # start, end (POSIX timestamps), window index


@dataclass(frozen=True, slots=True)
class ClassTimeState:
    active: tuple[Window, ...]  # windows in force at `at`, in policy order
    closed: bool  # any active window with closed=True
    extra_block: frozenset[str]  # categories added by active windows
    extra_block_services: frozenset[str]
    valid_until: float  # POSIX timestamp of the next change; math.inf if none ever comes


class Timetable:
    """One class's schedule windows with the policy's holidays, in one time zone."""

    __slots__ = ("windows", "tz", "_school_only", "_holiday_firsts", "_holiday_lasts",
                 "_transitions", "_midnights", "_occurrences", "_states")

    def __init__(
        self,
        windows: Sequence[Window],
        exceptions: Sequence[Exception_],
        tz: dt.tzinfo,
    ) -> None:
        self.windows = tuple(windows)
        self.tz = tz
        self._school_only = any(window.school_days_only for window in self.windows)
        # Holidays matter only to school-days-only windows; merged into disjoint, non-adjacent
        # ranges so that every range edge is a real change of the holiday status.
        merged: list[list[dt.date]] = []
        if self._school_only:
            for first, last in sorted((e.first, e.last) for e in exceptions):
                if merged and first <= merged[-1][1] + _DAY:
                    merged[-1][1] = max(merged[-1][1], last)
                else:
                    merged.append([first, last])
        self._holiday_firsts = [first for first, _ in merged]
        self._holiday_lasts = [last for _, last in merged]
        # Dates whose holiday status differs from the day before's.
        self._transitions = [day for first, last in merged for day in (first, last + _DAY)]
        self._midnights: dict[int, tuple[float, bool]] = {}
        self._occurrences: dict[int, tuple[_Occurrence, ...]] = {}
        self._states: dict[tuple[int, ...], tuple] = {}

    # --- public

    def state_at(self, at: float) -> ClassTimeState:
        """The windows in force at `at` (a POSIX timestamp) and the instant that may change."""
        at = float(at)
        if not self.windows:
            return self._state((), math.inf)
        day = self._local_date(at)
        key = self._active_key(at, day)
        return self._state(key, self._next_change(at, day, key))

    def next_change(self, at: float) -> float:
        """The first instant after `at` at which `state_at` differs; math.inf if never."""
        return self.state_at(at).valid_until

    # --- the sweep

    def _active_key(self, at: float, day: dt.date) -> tuple[int, ...]:
        # An occurrence lasts at most one local day, so only those starting the day before or
        # on the day of `at` can be running.
        found = {index for start, end, index in self._occurrences_on(day - _DAY)
                 + self._occurrences_on(day) if start <= at < end}
        return tuple(sorted(found))

    def _next_change(self, at: float, day: dt.date, reference: tuple[int, ...]) -> float:
        swept = 0
        while True:  # once, or again after skipping ahead to a holiday boundary
            counts = [0] * len(self.windows)
            for index in reference:
                counts[index] = 1
            events: list[tuple[float, int, int]] = []
            current = day - _DAY
            while True:
                for start, end, index in self._occurrences_on(current):
                    if start > at:
                        heapq.heappush(events, (start, 1, index))
                    if end > at:
                        heapq.heappush(events, (end, -1, index))
                # Occurrences starting later begin at or after the next local midnight.
                horizon = self._midnight(current + _DAY)[0]
                while events and events[0][0] < horizon:
                    instant = events[0][0]
                    while events and events[0][0] == instant:
                        _, delta, index = heapq.heappop(events)
                        counts[index] += delta
                    if tuple(i for i, count in enumerate(counts) if count) != reference:
                        return instant
                swept += 1
                if swept > _MAX_SWEEP_DAYS:
                    return horizon
                if (current - day).days >= _STEADY_DAYS and self._steady(current):
                    following = self._next_transition(current)
                    if following is None:
                        return math.inf
                    if (following - current).days >= 2:
                        # Unchanged until the occurrences starting on `following`.
                        day = following - _DAY
                        at = max(at, self._midnight(day)[0])
                        if self._active_key(at, day) != reference:
                            return at  # cannot happen (the state is steady); a safe bound
                        break
                current += _DAY

    def _steady(self, day: dt.date) -> bool:
        """No holiday-status change in the nine days up to `day` (its week and the day before)."""
        index = bisect.bisect_right(self._transitions, day - 9 * _DAY)
        return index == len(self._transitions) or self._transitions[index] > day

    def _next_transition(self, day: dt.date) -> dt.date | None:
        index = bisect.bisect_right(self._transitions, day)
        return self._transitions[index] if index < len(self._transitions) else None

    def _is_holiday(self, day: dt.date) -> bool:
        index = bisect.bisect_right(self._holiday_firsts, day) - 1
        return index >= 0 and day <= self._holiday_lasts[index]

    # --- occurrences and local times

    def _occurrences_on(self, day: dt.date) -> tuple[_Occurrence, ...]:
        """The windows starting on local date `day`, as (start, end, index) instants."""
        key = day.toordinal()
        cached = self._occurrences.get(key)
        if cached is not None:
            return cached
        holiday = self._school_only and self._is_holiday(day)
        weekday = day.weekday()
        found = []
        for index, window in enumerate(self.windows):
            if weekday not in window.days or (holiday and window.school_days_only):
                continue
            start = self._instant(day, window.start)
            if window.end > window.start:
                end = self._instant(day, window.end)
            else:
                end = self._instant(day + _DAY, window.end)
            if end > start:  # both ends in a spring-forward gap: no occurrence that night
                found.append((start, end, index))
        if len(self._occurrences) >= _CACHE_DAYS:
            self._occurrences.clear()
        result = tuple(found)
        self._occurrences[key] = result
        return result

    def _instant(self, day: dt.date, minute: int) -> float:
        """The instant of local `day` + `minute` (0..1440), under the module's DST rules."""
        if minute >= 1440:
            return self._midnight(day + _DAY)[0]
        midnight, exact = self._midnight(day)
        following, following_exact = self._midnight(day + _DAY)
        if exact and following_exact and following - midnight == 86400:
            # No clock change that day (a pair cancelling out within one day is not handled).
            return midnight + minute * 60
        return self._exact_instant(day, minute)[0]

    def _midnight(self, day: dt.date) -> tuple[float, bool]:
        key = day.toordinal()
        cached = self._midnights.get(key)
        if cached is None:
            if len(self._midnights) >= 2 * _CACHE_DAYS:
                self._midnights.clear()
            cached = self._midnights[key] = self._exact_instant(day, 0)
        return cached

    def _exact_instant(self, day: dt.date, minute: int) -> tuple[float, bool]:
        """(instant, whether the local time exists): fold=0 when it occurs twice, the first
        instant after it when it falls in a gap."""
        wall = dt.datetime(day.year, day.month, day.day, minute // 60, minute % 60)
        local = wall.replace(tzinfo=self.tz)
        instant = local.timestamp()
        if self._wall(instant) == wall:
            return instant, True
        # In a gap: fold=0 (offset before) gives an instant after the jump, fold=1 (offset
        # after) one before it; the jump is the first whole second whose wall time is past.
        low, high = sorted((int(local.replace(fold=1).timestamp()), int(math.ceil(instant))))
        while low < high:
            middle = (low + high) // 2
            if self._wall(middle) >= wall:
                high = middle
            else:
                low = middle + 1
        return float(low), False

    def _wall(self, instant: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(instant, self.tz).replace(tzinfo=None)

    def _local_date(self, at: float) -> dt.date:
        return dt.datetime.fromtimestamp(at, self.tz).date()

    def _state(self, key: tuple[int, ...], valid_until: float) -> ClassTimeState:
        parts = self._states.get(key)
        if parts is None:
            active = tuple(self.windows[index] for index in key)
            parts = (
                active,
                any(window.closed for window in active),
                frozenset(name for window in active for name in window.block),
                frozenset(name for window in active for name in window.block_services),
            )
            self._states[key] = parts  # at most one entry per set of windows seen
        return ClassTimeState(*parts, valid_until)
