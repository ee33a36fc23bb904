"""Screen time: which minutes of the local day each device was in use, counted once everywhere.

A device's minute is active when it asked for a name that counts (not always_allow, not
classguard's own names, not the bundled background list). Minutes are bits of a per-device,
per-day bitmap: marking one here is a set bit in memory on the DNS path; a periodic flush merges
the new bits into the store (bitwise OR), so a minute seen by several workers or instances
counts once, and the count survives a restart. The day is the local day of the configured
time zone; a device whose budget is spent is closed until the next local midnight.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Protocol
from zoneinfo import ZoneInfo

log = logging.getLogger("classguard.screentime")

BITMAP_BYTES = 188  # 1,500 minutes: a local day lasts 25 hours on the night the clocks go back


class MinuteStore(Protocol):
    async def merge_active_minutes(self, day: str, minutes: dict[str, bytes]) -> dict[str, bytes]:
        """OR the bitmaps into the stored ones for `day`; return every device's merged bitmap."""


def count_bits(bitmap: bytes | bytearray) -> int:
    return int.from_bytes(bitmap, "little").bit_count()


class ScreenTime:
    def __init__(self, timezone: str = "UTC", store: MinuteStore | None = None):
        self.tz = ZoneInfo(timezone)
        self.store = store
        self.day = ""
        self.day_start = 0.0
        self.day_end = 0.0  # the next local midnight: when a spent device opens again
        self._bitmaps: dict[str, bytearray] = {}
        self._counts: dict[str, int] = {}
        self._pending: dict[str, bytearray] = {}
        self.lock = asyncio.Lock()  # one flush at a time; an erasure waits for the one under way

    def _roll(self, now: float) -> None:
        local = dt.datetime.fromtimestamp(now, self.tz)
        midnight = dt.datetime.combine(local.date(), dt.time(), self.tz)
        following = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), self.tz)
        self.day = local.date().isoformat()
        self.day_start, self.day_end = midnight.timestamp(), following.timestamp()
        self._bitmaps, self._counts, self._pending = {}, {}, {}

    def observe(self, device_id: str, now: float) -> int:
        """Mark `now`'s minute as active for the device; the device's active minutes today."""
        if not self.day_start <= now < self.day_end:
            self._roll(now)
        minute = int(now - self.day_start) // 60
        byte, bit = minute >> 3, 1 << (minute & 7)
        bitmap = self._bitmaps.get(device_id)
        if bitmap is None:
            bitmap = self._bitmaps[device_id] = bytearray(BITMAP_BYTES)
        if not bitmap[byte] & bit:
            bitmap[byte] |= bit
            pending = self._pending.get(device_id)
            if pending is None:
                pending = self._pending[device_id] = bytearray(BITMAP_BYTES)
            pending[byte] |= bit
            self._counts[device_id] = self._counts.get(device_id, 0) + 1
        return self._counts[device_id]

    def used(self, device_id: str, now: float) -> int:
        if not self.day_start <= now < self.day_end:
            self._roll(now)
        return self._counts.get(device_id, 0)

    def count(self, device_id: str, now: float, active: bool) -> int:
        """The device's minutes today once this query is counted: an active query marks its minute."""
        return self.observe(device_id, now) if active else self.used(device_id, now)

    def peek(self, device_id: str, now: float, active: bool) -> int:
        """What `count` would say, changing nothing (not even the day held): for `classguard
        check` and the dashboard. Of another day than the one held, nothing is known."""
        if not self.day_start <= now < self.day_end:
            return 1 if active else 0
        used = self._counts.get(device_id, 0)
        if active:
            minute = int(now - self.day_start) // 60
            bitmap = self._bitmaps.get(device_id)
            if bitmap is None or not bitmap[minute >> 3] & 1 << (minute & 7):
                used += 1
        return used

    def minutes(self, device_id: str) -> list[int]:
        """Today's active minutes of a device (minutes after local midnight), for its data export."""
        bitmap = self._bitmaps.get(device_id, b"")
        return [index * 8 + bit for index, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1]

    def forget(self, device_ids) -> None:
        """Drop what is held of erased devices (their minutes, marked or waiting to be written)."""
        for device_id in device_ids:
            for held in (self._bitmaps, self._counts, self._pending):
                held.pop(device_id, None)

    async def flush(self, now: float) -> None:
        """Merge the new minutes into the store and take in what other workers and instances saw."""
        if self.store is None:
            return
        async with self.lock:
            await self._flush(now)

    async def _flush(self, now: float) -> None:
        if not self.day_start <= now < self.day_end:
            self._roll(now)
        day, pending = self.day, self._pending
        self._pending = {}
        try:
            merged = await self.store.merge_active_minutes(
                day, {device: bytes(bits) for device, bits in pending.items()})
        except Exception:
            if day == self.day:  # keep them for the next flush
                for device, bits in pending.items():
                    again = self._pending.setdefault(device, bytearray(BITMAP_BYTES))
                    for index, value in enumerate(bits):
                        again[index] |= value
            raise
        if day != self.day:
            return  # midnight passed while the store answered: that day is over
        for device, stored in merged.items():
            bitmap = self._bitmaps.get(device)
            combined = bytearray(stored.ljust(BITMAP_BYTES, b"\x00")[:BITMAP_BYTES])
            if bitmap is not None:  # minutes marked here while the flush was under way stay
                for index, value in enumerate(bitmap):
                    combined[index] |= value
            self._bitmaps[device] = combined
            self._counts[device] = count_bits(combined)

    async def load(self, now: float) -> None:
        """At start: today's minutes as the store holds them, so a restart forgets nothing."""
        await self.flush(now)
