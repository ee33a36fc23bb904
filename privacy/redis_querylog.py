"""The query log in Redis (SPEC §7, §8): what `privacy.querylog.EmbeddedQueryLogStore` keeps in
files, kept in the Redis store every instance shares, each key expiring when its day leaves the
retention period.

Keys (under the store's prefix, `classguard:`), DAY being a local date (YYYY-MM-DD):

    qlog:days                 sorted set of the days held (score: when the day's data expires)
    qlog:key:DAY              that day's pseudonym key (32 random bytes; the first writer wins)
    qlog:devices:DAY          set of the pseudonyms with entries that day
    qlog:full:DAY:PSEUDONYM   list of that pseudonym's entries (JSON), oldest first
    qlog:counts:DAY           hash "CLASS US HOUR US OUTCOME" -> count (US: \\x1f)
    qlog:topclasses:DAY       set of the classes with blocked domains that day
    qlog:top:DAY:CLASS        sorted set domain -> times blocked (the TOP_KEPT most blocked)

Every key of a day gets EXPIREAT (end of the day, in the configured timezone) + retention_days:
Redis deletes the day even when no classguard runs. The server's hourly purge (QueryLog.purge)
also deletes, on its own clock, the days before the first kept one and the entries of that day
older than exactly retention_days, as the embedded store does.

Only the query log's background task, `device data` and `device erase` call this; never the
DNS path. While Redis is away each call raises StoreUnavailable at once (store.redis_backend).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from zoneinfo import ZoneInfo

from privacy.querylog import TOP_KEPT

SEP = "\x1f"
DAY_SECONDS = 86400
ENCODE_SLICE = 200  # entries encoded between two turns of the event loop

# EXPIRE only when it lengthens the key's life (EXPIRE ... GT needs Redis 7; this works on 6).
# KEYS[1] the key, ARGV[1] the POSIX second it may expire at.
_EXPIRE_NOT_SOONER = """
local wanted = tonumber(ARGV[1])
local left = redis.call('TTL', KEYS[1])
local now = tonumber(redis.call('TIME')[1])
if left == -1 or (left >= 0 and now + left < wanted) then
  redis.call('EXPIREAT', KEYS[1], wanted)
end
return 0
"""

# Entries of one list older than ARGV[1] (their `t`), from the head (entries are appended in
# time order); how many went. KEYS[1] the list.
_TRIM_OLDER = """
local cutoff = tonumber(ARGV[1])
local n = 0
while true do
  local first = redis.call('LINDEX', KEYS[1], n)
  if not first or cjson.decode(first)['t'] >= cutoff then break end
  n = n + 1
end
if n > 0 then redis.call('LTRIM', KEYS[1], n, -1) end
return n
"""


class RedisQueryLogStore:
    """`privacy.querylog.QueryLogStore` on a `store.redis_backend.RedisStore` (its connection,
    prefix and outage handling). `retention_days` and `timezone` set each day's expiry."""

    def __init__(self, store, *, retention_days: int = 7, timezone: str = "UTC") -> None:
        self.store = store
        self.retention_days = retention_days
        self.zone = ZoneInfo(timezone)

    def __repr__(self) -> str:
        return f"RedisQueryLogStore({self.store!r})"

    def key(self, name: str) -> str:
        return self.store.key(f"qlog:{name}")

    def keep_until(self, day: str) -> int:
        """The POSIX second at which everything of `day` has been kept retention_days."""
        date = dt.date.fromisoformat(day) + dt.timedelta(days=1)
        end = dt.datetime(date.year, date.month, date.day, tzinfo=self.zone).timestamp()
        return int(end) + self.retention_days * DAY_SECONDS

    def _note_day(self, pipe, day: str) -> None:
        """Record `day` in the days index, the index living as long as its newest day."""
        until = self.keep_until(day)
        pipe.zadd(self.key("days"), {day: until})
        pipe.eval(_EXPIRE_NOT_SOONER, 1, self.key("days"), until)

    async def _run(self, operation):
        return await self.store.run(operation)

    # -- the QueryLogStore interface

    async def day_key(self, day: str) -> bytes:
        async def create(r) -> bytes:
            async with r.pipeline(transaction=True) as pipe:
                pipe.set(self.key(f"key:{day}"), secrets.token_bytes(32), nx=True,
                         exat=self.keep_until(day))
                pipe.get(self.key(f"key:{day}"))
                self._note_day(pipe, day)
                results = await pipe.execute()
            return results[1]

        return await self._run(create)

    async def keys(self) -> dict[str, bytes]:
        async def read(r) -> dict[str, bytes]:
            days = sorted(item.decode() for item in await r.zrange(self.key("days"), 0, -1))
            if not days:
                return {}
            values = await r.mget([self.key(f"key:{day}") for day in days])
            return {day: value for day, value in zip(days, values) if value is not None}

        return await self._run(read)

    async def write(self, day: str, entries: list[dict], counts: dict, top: dict) -> None:
        until = self.keep_until(day)
        by_device: dict[str, list[str]] = {}
        for start in range(0, len(entries), ENCODE_SLICE):  # on the loop: let answers through
            for entry in entries[start:start + ENCODE_SLICE]:
                by_device.setdefault(entry["device"], []).append(
                    json.dumps(entry, ensure_ascii=False))
            await asyncio.sleep(0)

        async def write(r) -> None:
            async with r.pipeline(transaction=False) as pipe:
                for device, lines in by_device.items():
                    target = self.key(f"full:{day}:{device}")
                    pipe.rpush(target, *lines)
                    pipe.expireat(target, until)
                if by_device:
                    pipe.sadd(self.key(f"devices:{day}"), *by_device)
                    pipe.expireat(self.key(f"devices:{day}"), until)
                for class_id, hours in counts.items():
                    for hour, outcomes in hours.items():
                        for name, count in outcomes.items():
                            pipe.hincrby(self.key(f"counts:{day}"),
                                         SEP.join((class_id, hour, name)), count)
                if counts:
                    pipe.expireat(self.key(f"counts:{day}"), until)
                for class_id, domains in top.items():
                    target = self.key(f"top:{day}:{class_id}")
                    for domain, count in domains.items():
                        pipe.zincrby(target, count, domain)
                    pipe.zremrangebyrank(target, 0, -(TOP_KEPT + 1))  # keep the most blocked
                    pipe.expireat(target, until)
                if top:
                    pipe.sadd(self.key(f"topclasses:{day}"), *top)
                    pipe.expireat(self.key(f"topclasses:{day}"), until)
                self._note_day(pipe, day)
                await pipe.execute()

        if entries or counts or top:
            await self._run(write)

    async def aggregates(self, day: str) -> dict | None:
        async def read(r) -> dict | None:
            counted = await r.hgetall(self.key(f"counts:{day}"))
            classes = sorted(item.decode() for item in await r.smembers(self.key(f"topclasses:{day}")))
            async with r.pipeline(transaction=False) as pipe:
                for class_id in classes:
                    pipe.zrange(self.key(f"top:{day}:{class_id}"), 0, -1, withscores=True)
                tops = await pipe.execute()
            if not counted and not any(tops):
                return None
            hours: dict = {}
            for field, count in counted.items():
                class_id, hour, name = field.decode().split(SEP)
                hours.setdefault(class_id, {}).setdefault(hour, {})[name] = int(count)
            top_blocked = {class_id: {domain.decode(): int(count) for domain, count in items}
                           for class_id, items in zip(classes, tops) if items}
            return {"day": day, "hours": hours, "top_blocked": top_blocked}

        return await self._run(read)

    async def days(self) -> list[str]:
        async def read(r) -> list[str]:
            return sorted(item.decode() for item in await r.zrange(self.key("days"), 0, -1))

        return await self._run(read)

    async def find(self, pseudonyms: dict[str, str]) -> list[dict]:
        days = sorted(pseudonyms)

        async def read(r) -> list[dict]:
            async with r.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.lrange(self.key(f"full:{day}:{pseudonyms[day]}"), 0, -1)
                lists = await pipe.execute()
            return [json.loads(line) for lines in lists for line in lines]

        return await self._run(read) if days else []

    async def erase(self, pseudonyms: dict[str, str]) -> int:
        days = sorted(pseudonyms)

        async def erase(r) -> int:
            async with r.pipeline(transaction=True) as pipe:
                for day in days:
                    pipe.llen(self.key(f"full:{day}:{pseudonyms[day]}"))
                    pipe.delete(self.key(f"full:{day}:{pseudonyms[day]}"))
                    pipe.srem(self.key(f"devices:{day}"), pseudonyms[day])
                results = await pipe.execute()
            return sum(results[0::3])

        return await self._run(erase) if days else 0

    async def purge(self, first_kept_day: str, oldest_kept: float) -> int:
        async def purge(r) -> int:
            days = sorted(item.decode() for item in await r.zrange(self.key("days"), 0, -1))
            deleted = 0
            for day in days:
                if day > first_kept_day:
                    break
                devices = [item.decode() for item in await r.smembers(self.key(f"devices:{day}"))]
                if day < first_kept_day:
                    classes = [item.decode()
                               for item in await r.smembers(self.key(f"topclasses:{day}"))]
                    async with r.pipeline(transaction=True) as pipe:
                        for device in devices:
                            pipe.llen(self.key(f"full:{day}:{device}"))
                        pipe.delete(*[self.key(f"full:{day}:{device}") for device in devices],
                                    *[self.key(f"top:{day}:{item}") for item in classes],
                                    self.key(f"devices:{day}"), self.key(f"topclasses:{day}"),
                                    self.key(f"counts:{day}"), self.key(f"key:{day}"))
                        pipe.zrem(self.key("days"), day)
                        results = await pipe.execute()
                    deleted += sum(results[:len(devices)])
                else:  # the first day kept: its entries older than exactly retention_days go
                    for device in devices:
                        target = self.key(f"full:{day}:{device}")
                        deleted += int(await r.eval(_TRIM_OLDER, 1, target, repr(oldest_kept)))
                        if not await r.exists(target):
                            await r.srem(self.key(f"devices:{day}"), device)
            return deleted

        return await self._run(purge)
