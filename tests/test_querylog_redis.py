"""The query log and a device's data with the Redis store (SPEC §7, §8), on a real redis-server:
counts and entries written to Redis off the DNS path with TTLs for retention_days, the purge on
the log's clock, Redis going away (answers never wait, what waits is bounded and counted), and
`device data` then `device erase` leaving nothing of the device in any Redis key or value."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import textwrap
import time

import pytest

from privacy import gdpr
from privacy.querylog import pseudonym, subject_of
from store.redis_backend import RedisStore
from tests.conftest import PUPILS, STAFF
from tests.redis_server import MISSING_REASON, REDIS_SERVER, RedisServer
from tests.test_metrics import DEVICE_ADDRESS, DEVICE_ID, POLICY_WITH_DEVICE
from tests.test_querylog import BASE, DAY, SCREEN_TIME_POLICY, Clock, day_of, run_cli, wait_for

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=MISSING_REASON)

PREFIX = "classguard:qlog:"
FULL = {"mode": "full", "retention_days": 7, "scope": "school"}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server):
    redis_server.command("FLUSHALL")
    return redis_server


def resp_items(reply: bytes) -> list[str]:
    """The bulk strings of a RESP array reply (KEYS, LRANGE, SMEMBERS, ...)."""
    lines = reply.split(b"\r\n")
    return [lines[index + 1].decode(errors="replace") for index, line in enumerate(lines)
            if line.startswith(b"$") and line != b"$-1"]


def every_key(redis: RedisServer) -> list[str]:
    return sorted(resp_items(redis.command("KEYS", "*")))


def every_value(redis: RedisServer, key: str) -> str:
    """Whatever a key holds, as text (strings, lists, sets, hashes, sorted sets)."""
    kind = redis.command("TYPE", key).decode().strip("+\r\n")
    command = {"string": ("GET",), "list": ("LRANGE", "0", "-1"), "set": ("SMEMBERS",),
               "hash": ("HGETALL",), "zset": ("ZRANGE", "0", "-1")}[kind]
    return "\n".join(resp_items(redis.command(command[0], key, *command[1:])))


async def redis_resolver(make_resolver, redis, policy=POLICY_WITH_DEVICE, query_log=None, **extra):
    settings = {"store": redis.url, "query_log": query_log or FULL}
    return await make_resolver(policy, settings=settings, **extra)


async def test_counts_and_entries_go_to_redis_with_ttls(make_resolver, redis):
    resolver = await redis_resolver(make_resolver, redis)
    log = resolver.service.query_log
    log.clock = Clock(BASE)
    await resolver.query("example.com", source=DEVICE_ADDRESS)
    await resolver.query("adult.example", source=DEVICE_ADDRESS)
    await resolver.query("www.adult.example", source=PUPILS)
    await resolver.query("example.com", source=STAFF)
    await log.flush()

    day = day_of(BASE)
    key = (await log.store.keys())[day]
    device = pseudonym(key, DEVICE_ID)
    lines = resp_items(redis.command("LRANGE", f"{PREFIX}full:{day}:{device}", "0", "-1"))
    assert [(entry["name"], entry["result"]) for entry in map(json.loads, lines)] == [
        ("example.com", "forwarded"), ("adult.example", "blocked")]
    assert await log.store.aggregates(day) == {
        "day": day,
        "hours": {"pupils": {"10": {"forwarded": 1, "category:adult": 2}},
                  "staff": {"10": {"cached": 1}}},
        "top_blocked": {"pupils": {"adult.example": 2}},
    }
    # Every key of the day expires when the day leaves the retention period, even if no server
    # runs then: the end of the day (UTC here) plus 7 days.
    keep_until = log.store.keep_until(day)
    assert keep_until == int(BASE - BASE % DAY + DAY + 7 * DAY)
    keys = [key for key in every_key(redis) if key.startswith(PREFIX)]
    assert [name.removeprefix(PREFIX).split(":")[0] for name in keys] == [
        "counts", "days", "devices", "full", "full", "full", "key", "top", "topclasses"]
    for name in keys:
        ttl = int(redis.command("TTL", name)[1:])
        assert 0 < ttl <= keep_until - time.time() + 1, name
    for secret in (DEVICE_ID, DEVICE_ADDRESS, PUPILS, STAFF):
        assert not any(secret in every_value(redis, name) or secret in name for name in keys)


async def test_retention_purge_on_the_logs_clock(make_resolver, redis):
    clock = Clock(BASE)
    resolver = await redis_resolver(make_resolver, redis)
    log = resolver.service.query_log
    log.clock, log.drain_interval = clock, 0.02
    await resolver.query("example.com", source=DEVICE_ADDRESS)
    await wait_for(lambda: log.entries_written == 1)
    clock.now = BASE + 3 * DAY
    await resolver.query("adult.example", source=DEVICE_ADDRESS)
    await wait_for(lambda: log.entries_written == 2)
    await log.flush()
    first, later = day_of(BASE), day_of(BASE + 3 * DAY)
    assert await log.store.days() == [first, later]

    clock.now = BASE + 8 * DAY  # the first day is now more than 7 days old
    await wait_for(lambda: log.purged == 1)
    assert await log.store.days() == [later]
    assert not [key for key in every_key(redis) if first in key]  # its key went with it
    clock.now = BASE + 3 * DAY + 7 * DAY + 1  # the later entry is now older than 7 × 24 h
    await wait_for(lambda: log.purged == 2)
    assert await log.store.find({later: pseudonym((await log.store.keys())[later], DEVICE_ID)}) == []


async def test_redis_away_answers_do_not_wait_and_what_waits_is_bounded(make_resolver, tmp_path,
                                                                       caplog):
    caplog.set_level(logging.INFO, logger="classguard.querylog")
    redis = RedisServer(tmp_path / "redis-away").start()
    try:
        resolver = await redis_resolver(make_resolver, redis)
        service = resolver.service
        log = service.query_log
        log.clock, log.drain_interval = Clock(BASE), 0.02
        await resolver.query("example.com", source=DEVICE_ADDRESS)
        await wait_for(lambda: log.entries_written == 1)
        redis.stop()
        started = time.monotonic()
        for name in ("www.example.com", "adult.example", "gambling.example"):
            assert (await resolver.query(name, source=DEVICE_ADDRESS, timeout=2)).answer
        assert time.monotonic() - started < 2  # nothing on the DNS path waits for Redis
        await wait_for(lambda: log.logged == 4)
        await asyncio.sleep(0.1)
        assert log.entries_written == 1 and sum(map(len, log._unwritten.values())) == 3
        log.buffer_limit = 4  # what waits for the store is bounded: beyond, dropped and counted
        for _ in range(3):
            await resolver.query("example.com", source=DEVICE_ADDRESS)
        await wait_for(lambda: log.store_dropped == 2)
        redis.start()  # with its data (append-only)
        await wait_for(lambda: log.entries_written == 5, seconds=10)
        await log.flush()
        day = day_of(BASE)
        device = pseudonym((await log.store.keys())[day], DEVICE_ID)
        assert len(await log.store.find({day: device})) == 5
        counts = (await log.store.aggregates(day))["hours"]["pupils"]["10"]
        assert sum(counts.values()) == 7  # every answer counted: counts waited, whole
        messages = [record.getMessage() for record in caplog.records
                    if record.name == "classguard.querylog"]
        assert messages.count("query log: the store cannot be written now; entries and counts "
                              "wait in memory (bounded) until it can") == 1  # once per outage
        assert messages.count("query log: writing again") == 1
    finally:
        redis.stop()


async def test_device_data_then_erase_leaves_nothing_in_redis(make_resolver, redis, tmp_path):
    clock = Clock(BASE)
    resolver = await redis_resolver(make_resolver, redis, SCREEN_TIME_POLICY, clock=clock)
    service = resolver.service
    log = service.query_log
    log.clock = clock
    await resolver.query("example.com", source=DEVICE_ADDRESS)
    await resolver.query("adult.example", source=DEVICE_ADDRESS)
    await resolver.query("gambling.example", source=PUPILS)
    await log.flush()
    await service.state.screen_time.flush(clock())
    clock.now = BASE + DAY
    await resolver.query("www.example.com", source=DEVICE_ADDRESS)
    await log.flush()
    await service.state.screen_time.flush(clock())
    (tmp_path / "classguard.yaml").write_text(textwrap.dedent(f"""\
        store: {redis.url}
        state_dir: state
        policies: policy.yaml
        query_log: {{mode: full, retention_days: 7}}
        """))
    before = every_key(redis)
    assert any(DEVICE_ID in key for key in before)  # its screen-time minutes

    code, out, err = await run_cli(tmp_path, "device", "data", DEVICE_ID)
    assert code == 0, err
    data = json.loads(out)
    assert [entry["name"] for entry in data["query_log"]["entries"]] == [
        "example.com", "adult.example", "www.example.com"]
    assert data["stats"] == {day_of(BASE): {"forwarded": 1, "blocked": 1},
                             day_of(BASE + DAY): {"forwarded": 1}}
    assert data["device_record"] == {"class": "pupils", "addresses": [DEVICE_ADDRESS]}
    minute = int(BASE % DAY) // 60
    assert data["screen_time_minutes"] == {day_of(BASE): [minute], day_of(BASE + DAY): [minute]}
    assert data["query_log"]["mode"] == "full"
    pseudonyms = list(data["query_log"]["pseudonyms"].values())
    assert len(pseudonyms) == 2

    code, out, err = await run_cli(tmp_path, "device", "erase", DEVICE_ID)
    assert (code, out) == (0, f"device {DEVICE_ID}: 3 query log entries erased; its record "
                              "removed from the policy; its screen-time minutes of 2 day(s) "
                              "erased\n"), err

    # Nothing of the device in any key's name or value; the audit trail says it was erased.
    secrets = (DEVICE_ID, DEVICE_ADDRESS, *pseudonyms)
    for key in every_key(redis):
        text = every_value(redis, key)
        if key == "classguard:audit":
            assert [line for line in text.splitlines() if DEVICE_ID in line] == [
                line for line in text.splitlines() if '"device.erase"' in line]
            continue
        for secret in secrets:
            assert secret not in key and secret not in text, (key, secret)
    code, out, _ = await run_cli(tmp_path, "device", "data", DEVICE_ID)
    after = json.loads(out)
    assert after["query_log"]["entries"] == [] and after["screen_time_minutes"] == {}
    assert after["device_record"] is None
    # Another pupil's entries stay: a client known by its network is found by its address.
    code, out, _ = await run_cli(tmp_path, "device", "data", PUPILS)
    assert [entry["name"] for entry in json.loads(out)["query_log"]["entries"]] == [
        "gambling.example"]
    assert subject_of(PUPILS) == f"ip:{PUPILS}"


async def test_the_running_servers_store_answers_the_same(make_resolver, redis):
    """What the REST API calls: privacy.gdpr's device_data / erase_device on the server's own store."""
    resolver = await redis_resolver(make_resolver, redis)
    log = resolver.service.query_log
    log.clock = Clock(BASE)
    await resolver.query("example.com", source=DEVICE_ADDRESS)
    await log.flush()
    store = resolver.service.store
    data = await gdpr.device_data(store, DEVICE_ID)
    assert [entry["name"] for entry in data["query_log"]["entries"]] == ["example.com"]
    # a day's index of devices that outlived the device's bitmap is cleaned too
    redis.command("SADD", "classguard:minutes:2026-11-28", DEVICE_ID)
    assert await gdpr.erase_device(store, DEVICE_ID) == {
        "device_record": True, "screen_time_days": 0, "query_log_entries": 1}
    assert redis.command("SISMEMBER", "classguard:minutes:2026-11-28", DEVICE_ID) == b":0\r\n"
    assert (await gdpr.device_data(store, DEVICE_ID))["query_log"]["entries"] == []
    other = RedisStore(redis.url)  # and another instance finds nothing either
    try:
        assert (await other.device_data(DEVICE_ID))["device_record"] is None
    finally:
        await other.close()


async def test_a_backlog_after_an_outage_is_written_in_chunks(tmp_path):
    """12,000 entries gathered while Redis was away (their day key unknown, so they wait with
    the device id, in memory): pseudonymised with the day's one key and written when it returns."""
    from privacy.querylog import WRITE_CHUNK, QueryLog, QueryLogSettings
    from resolver.chain import Client
    from store.records import StoreError

    redis = RedisServer(tmp_path / "redis")
    store = RedisStore(redis.url)
    log = QueryLog(QueryLogSettings("full", 7, "school"), gdpr.query_log_store_for(store),
                   clock=Clock(BASE))
    tablet = Client("pupils", DEVICE_ID, "school", "device address")
    count = 2 * WRITE_CHUNK + 2000
    try:
        for _ in range(count):
            log.offer("udp", tablet, DEVICE_ADDRESS, "example.com", "forwarded", None)
        with pytest.raises(StoreError):  # nobody listens yet
            await log.drain()
        assert log.entries_written == 0 and log.store_dropped == 0
        redis.start()
        for _ in range(50):  # the store tries again after its backoff
            with contextlib.suppress(StoreError):
                await log.drain()
                break
            await asyncio.sleep(0.1)
        assert log.entries_written == count
        day = day_of(BASE)
        device = pseudonym((await log.store.keys())[day], DEVICE_ID)
        assert redis.command("LLEN", f"{PREFIX}full:{day}:{device}") == f":{count}\r\n".encode()
    finally:
        await store.close()
        redis.stop()


async def test_entries_waiting_for_redis_are_dropped_when_their_device_is_erased(make_resolver,
                                                                                 tmp_path):
    """What a process holds while Redis is away (entries already under the day's pseudonym)
    goes when it learns of the erasure: written when Redis is back, it would bring them back."""
    redis = RedisServer(tmp_path / "redis-erase").start()
    try:
        resolver = await redis_resolver(make_resolver, redis)
        log = resolver.service.query_log
        log.clock, log.drain_interval = Clock(BASE), 0.02
        await resolver.query("example.com", source=DEVICE_ADDRESS)
        await wait_for(lambda: log.entries_written == 1)  # the day's key is known from here on
        redis.stop()
        await resolver.query("www.example.com", source=DEVICE_ADDRESS, timeout=2)
        await resolver.query("gambling.example", source=PUPILS, timeout=2)
        await wait_for(lambda: sum(map(len, log._unwritten.values())) == 2)
        async with log.lock:
            assert log.forget({DEVICE_ID}) == 1
        redis.start()  # with its data (append-only)
        await wait_for(lambda: log.entries_written == 2, seconds=10)
        day = day_of(BASE)
        key = (await log.store.keys())[day]
        kept = await log.store.find({day: pseudonym(key, DEVICE_ID)})
        assert [entry["name"] for entry in kept] == ["example.com"]
        pupil = await log.store.find({day: pseudonym(key, subject_of(PUPILS))})
        assert [entry["name"] for entry in pupil] == ["gambling.example"]
    finally:
        redis.stop()
