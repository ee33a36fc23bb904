"""Screen-time minutes in Redis: each device's bitmap of a day, merged by every instance with
BITOP OR and kept two days; held in a bounded buffer while Redis is away."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from store.records import StoreUnavailable
from store.redis_backend.connection import PREFIX, RedisConnection

MINUTES_TTL = 2 * 86400  # seconds: today and yesterday, as the embedded store keeps
MINUTES_BUFFER_MAX = 200_000  # device-days of minutes held while Redis is away; more are dropped


class ScreenTimeMinutes(RedisConnection):
    """`minutes:DAY:DEVICE` (a bitmap) and `minutes:DAY` (the day's devices)."""

    def __init__(self, url: str, *, prefix: str = PREFIX, state_dir: Path | str | None = None) -> None:
        super().__init__(url, prefix=prefix, state_dir=state_dir)
        self._minutes_buffer: dict[str, dict[str, bytes]] = {}

    async def merge_active_minutes(self, day: str, minutes: dict[str, bytes]) -> dict[str, bytes]:
        """BITOP OR into `minutes:DAY:DEVICE`; while Redis is away the bits wait in a bounded
        buffer (what does not fit is dropped and counted) and the caller gets what it gave."""
        waiting = self._minutes_buffer.pop(day, {})
        for device, bits in minutes.items():
            waiting[device] = _or(waiting.get(device, b""), bits)
        for old_day in [d for d in self._minutes_buffer if d < day]:
            del self._minutes_buffer[old_day]  # a past day's minutes no longer count
        try:
            return await self.run(lambda r: self._merge(r, day, waiting))
        except StoreUnavailable:
            held = sum(len(devices) for devices in self._minutes_buffer.values())
            kept: dict[str, bytes] = {}
            for device, bits in waiting.items():
                if held < MINUTES_BUFFER_MAX:
                    kept[device] = bits
                    held += 1
                else:
                    self.counters["minutes_dropped"] += 1
            self._minutes_buffer[day] = kept
            return dict(minutes)

    async def _merge(self, r: aioredis.Redis, day: str, minutes: dict[str, bytes]) -> dict[str, bytes]:
        index = self.key(f"minutes:{day}")
        scratch = self.key(f"minutes:scratch:{self.instance}")
        async with r.pipeline(transaction=True) as pipe:
            for device, bits in minutes.items():
                target = self.key(f"minutes:{day}:{device}")
                pipe.set(scratch, bits)
                pipe.bitop("OR", target, target, scratch)
                pipe.expire(target, MINUTES_TTL)
                pipe.sadd(index, device)
            pipe.delete(scratch)
            pipe.expire(index, MINUTES_TTL)
            pipe.smembers(index)
            results = await pipe.execute()
        devices = sorted(item.decode() for item in results[-1])
        if not devices:
            return {}
        values = await r.mget([self.key(f"minutes:{day}:{device}") for device in devices])
        return {device: value for device, value in zip(devices, values) if value is not None}

    async def _device_minutes(self, device_id: str) -> dict[str, bytes]:
        """The device's screen-time bitmaps (keys minutes:DAY:DEVICE) by day."""
        # SCAN pattern: glob characters of the id escaped
        pattern = self.key("minutes:") + "????-??-??:" + "".join(
            f"\\{char}" if char in "*?[]\\" else char for char in device_id)

        async def read(r) -> dict[str, bytes]:
            keys = sorted({key async for key in r.scan_iter(match=pattern, count=1000)})
            values = await r.mget(keys) if keys else []
            prefix = len(self.key("minutes:"))
            return {key.decode()[prefix:prefix + 10]: value
                    for key, value in zip(keys, values) if value is not None}

        return await self.run(read)


def _or(a: bytes, b: bytes) -> bytes:
    size = max(len(a), len(b))
    return (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(size, "little")
