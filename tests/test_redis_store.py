"""What only the Redis store does: several instances on one store, outages, a Redis that comes
back empty, buffered minutes, compiled lists in chunks. The Store contract, on both stores, is
test_store_contract.py's."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from store.records import ApiToken, StoreError, User, VersionConflict
from store.redis_backend import LIST_CHUNK_BYTES, RedisStore, StoreUnavailable
from tests.redis_server import RedisServer
from tests.store_fixtures import needs_redis, pause, redis_server  # noqa: F401 (fixtures)


@pytest.fixture
async def redis_store(redis_server):
    redis_server.command("FLUSHALL")
    store = RedisStore(redis_server.url)
    yield store
    await store.close()


@needs_redis
async def test_two_clients_one_store_and_keys_expire(redis_server, redis_store):
    other = RedisStore(redis_server.url)
    try:
        await redis_store.put_policy("classes: {}\n", actor="a")
        assert (await other.get_policy()).text == "classes: {}\n"
        assert await other.version() == await redis_store.version()
        with pytest.raises(VersionConflict):
            await other.put_policy("classes: {z: {}}\n", actor="b", expected_version=0)
        override = pause(minutes=1)
        await other.add_override(override, actor="t")
        assert [item.id for item in await redis_store.overrides()] == [override.id]
        ttl = int(redis_server.command("PTTL", "classguard:overrides").split(b":")[1])
        assert 60_000 < ttl <= 121_000  # Redis forgets it a minute after the last one ends
        await redis_store.merge_active_minutes("2026-03-02", {"tab": b"\x01"})
        assert 0 < int(redis_server.command("TTL", "classguard:minutes:2026-03-02:tab")[1:]) <= 2 * 86400
    finally:
        await other.close()


@needs_redis
async def test_redis_away_fails_fast_then_resynchronises(tmp_path, caplog):
    server = RedisServer(tmp_path / "redis").start()
    store = RedisStore(server.url)
    try:
        await store.put_policy("classes: {}\n", actor="a")
        server.stop()
        started = time.monotonic()
        for _ in range(5):
            with pytest.raises(StoreUnavailable):
                await store.version()
        assert time.monotonic() - started < 3  # the backoff answers at once, never a pile of waits
        assert store.counters["outages"] == 1
        assert sum("unreachable" in r.message for r in caplog.records) == 1  # said once
        # minutes written meanwhile are held, then merged when Redis is back
        assert await store.merge_active_minutes("2026-03-02", {"tab": b"\x01"}) == {"tab": b"\x01"}
        server.start()  # with its data (appendonly)
        for _ in range(50):
            try:
                version = await store.version()
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        assert version == 1 and store.available
        assert await store.merge_active_minutes("2026-03-02", {"tab": b"\x02"}) == {"tab": b"\x03"}
    finally:
        await store.close()
        server.stop()


@needs_redis
async def test_minutes_buffer_is_bounded_and_drops_are_counted(tmp_path, monkeypatch):
    import store.redis_backend.minutes as module

    monkeypatch.setattr(module, "MINUTES_BUFFER_MAX", 2)
    store = RedisStore(f"redis://127.0.0.1:{RedisServer(tmp_path).port}/0")  # nobody listens there
    await store.merge_active_minutes("2026-03-02", {"a": b"\x01", "b": b"\x01", "c": b"\x01"})
    assert store.counters["minutes_dropped"] == 1
    await store.close()


@needs_redis
async def test_a_redis_that_comes_back_empty_is_rebuilt_by_the_newest_instance(tmp_path):
    server = RedisServer(tmp_path / "redis", persistence=False).start()
    ahead, behind = RedisStore(server.url), RedisStore(server.url)
    try:
        await ahead.put_policy("classes: {a: {}}\n", actor="a")
        override = pause(minutes=5)
        await ahead.add_override(override, actor="t")
        for store in (ahead, behind):  # what each watcher does
            await store.version(), await store.get_policy(), await store.overrides()
        await behind.put_policy("classes: {b: {}}\n", actor="b")
        for store in (ahead,):
            await store.version(), await store.get_policy(), await store.overrides()
        await behind.version()
        newest = await ahead.version()
        server.stop()
        server.start()  # no persistence: empty
        assert await ahead.version() == newest  # noticed, written back
        assert ahead.counters["lost_store"] == 1 and ahead.counters["restored"] == 1
        assert await behind.version() == newest  # the store holds as much: nothing to write
        assert behind.counters["restored"] == 0
        assert (await behind.get_policy()).text == "classes: {b: {}}\n"
        assert [item.id for item in await behind.overrides()] == [override.id]
        assert (await behind.audit(1))[0].action == "store.restore"
        # a write by a client that knew the old store goes on from there
        stored = await behind.put_policy("classes: {c: {}}\n", actor="c", expected_version=2)
        assert stored.version == 3
    finally:
        await ahead.close(), await behind.close()
        server.stop()


@needs_redis
async def test_the_change_channel_nudges_others_not_the_writer(redis_server, redis_store):
    other = RedisStore(redis_server.url)
    try:
        theirs, ours = other.subscribe(), redis_store.subscribe()
        await asyncio.wait_for(theirs.wait(), 5)
        await asyncio.wait_for(ours.wait(), 5)  # each is set once on subscribing
        await asyncio.sleep(0.1)
        theirs.clear(), ours.clear()
        await redis_store.put_policy("classes: {n: {}}\n", actor="a")
        await asyncio.wait_for(theirs.wait(), 2)
        await asyncio.sleep(0.2)
        assert not ours.is_set()  # our own echo is ignored
    finally:
        await other.close()


@needs_redis
async def test_lists_are_chunked_with_a_manifest_and_checked(tmp_path, redis_server, redis_store):
    artifact = tmp_path / "a" / "lists.bin"
    artifact.parent.mkdir()
    data = bytes(range(256)) * (LIST_CHUNK_BYTES // 256 * 2 + 10)  # a bit more than two chunks
    artifact.write_bytes(data)
    manifest = await redis_store.publish_lists(artifact, built_at=123.0, status='{"checked_at": 120}')
    assert manifest["chunks"] == 3 and manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["size"] == len(data) and manifest["built_at"] == 123.0
    for index in range(3):
        size = int(redis_server.command("STRLEN", f"classguard:lists:{manifest['sha256']}:{index}")[1:])
        assert size <= 1 << 20
    target = tmp_path / "b" / "lists.bin"
    status = tmp_path / "b" / "lists-status.json"
    assert (await redis_store.fetch_lists(target, status))["sha256"] == manifest["sha256"]
    assert target.read_bytes() == data and redis_store.counters["lists_fetched"] == 1
    assert status.read_text() == '{"checked_at": 120}'  # the publisher's schedule comes along
    assert await redis_store.fetch_lists(target) == manifest  # the same: nothing fetched
    assert redis_store.counters["lists_fetched"] == 1
    artifact.write_bytes(b"newer")
    second = await redis_store.publish_lists(artifact)
    assert redis_server.command("EXISTS", f"classguard:lists:{manifest['sha256']}:0") == b":0\r\n"
    redis_server.command("SET", f"classguard:lists:{second['sha256']}:0", "tampered")
    with pytest.raises(StoreError, match="checksum"):
        await redis_store.fetch_lists(target)
    assert target.read_bytes() == data  # the file in use stays


@needs_redis
async def test_a_new_client_writing_first_learns_the_existing_store(redis_server, redis_store):
    await redis_store.put_policy("classes: {}\n", actor="a")
    late = RedisStore(redis_server.url)  # its first call is a write, on a store made by another
    try:
        await late.put_policy("classes: {l: {}}\n", actor="l")
        await late.add_override(pause(), actor="l")
        await late.put_policy("classes: {m: {}}\n", actor="l")
        assert late.counters["lost_store"] == 0 and (await late.get_policy()).version == 3
    finally:
        await late.close()


# --- a lost store: instances converge on the highest version, accounts included ------------------

ALICE = User(name="alice", role="admin", password_hash="scrypt$x", created_at=1.0)
CI_TOKEN = ApiToken(id="t1", name="ci", sha256="ab" * 32, created_at=1.0, created_by="test")


async def watch(store: RedisStore) -> int:
    """What a server's watcher does on each look (ControlPlane.sync)."""
    version = await store.version()
    await store.get_policy(), await store.overrides(), await store.remember()
    return version


@needs_redis
async def test_a_newcomer_that_seeded_a_lost_store_adopts_the_highest_version(tmp_path):
    server = RedisServer(tmp_path / "redis", persistence=False).start()
    ahead = RedisStore(server.url)
    newcomer = RedisStore(server.url)
    try:
        await ahead.put_policy("classes: {a: {}}\n", actor="a")
        await ahead.put_user(ALICE, actor="test", action="user.add")
        await ahead.put_token(CI_TOKEN, actor="test", action="token.create")
        held = await watch(ahead)
        assert held == 3  # a user or a token written moves the version
        server.stop()
        server.start()  # no persistence: empty
        # the newcomer finds no store and seeds one (version 1, a new marker) from its own file
        await newcomer.put_policy("classes: {n: {}}\n", actor="n", expected_version=0)
        await watch(newcomer)
        for _ in range(3):  # neither flip-flops: one event each, then a stable store
            assert await watch(ahead) == held
            assert await watch(newcomer) == held
        assert ahead.counters["lost_store"] == 1 and ahead.counters["restored"] == 1
        assert newcomer.counters["lost_store"] == 1 and newcomer.counters["restored"] == 0
        assert newcomer.generation == 1  # its watcher reads everything again
        assert (await newcomer.get_policy()).text == "classes: {a: {}}\n"
        assert await newcomer.get_user("alice") == ALICE
        assert await newcomer.get_token(CI_TOKEN.sha256) == CI_TOKEN
        assert [user.name for user in await newcomer.users()] == ["alice"]
        assert (await newcomer.audit(1))[0].action == "store.restore"
        await newcomer.put_policy("classes: {c: {}}\n", actor="c")  # writes go on, from either
        assert await watch(ahead) == held + 1 and ahead.counters["lost_store"] == 1
    finally:
        await ahead.close(), await newcomer.close()
        server.stop()


@needs_redis
async def test_a_tie_between_two_stores_is_settled_by_the_one_stored(tmp_path):
    server = RedisServer(tmp_path / "redis", persistence=False).start()
    first, second = RedisStore(server.url), RedisStore(server.url)
    try:
        await first.put_policy("classes: {a: {}}\n", actor="a")
        await watch(first)
        server.stop()
        server.start()
        await second.put_policy("classes: {b: {}}\n", actor="b")  # version 1 too, its own marker
        await watch(second)
        for _ in range(3):
            assert await watch(first) == 1 and await watch(second) == 1
        assert first.counters["lost_store"] == 1 and first.counters["restored"] == 0
        assert second.counters["lost_store"] == 0
        assert (await first.get_policy()).text == "classes: {b: {}}\n"
    finally:
        await first.close(), await second.close()
        server.stop()


@needs_redis
async def test_a_start_on_a_lost_store_writes_back_the_copy_under_state_dir(tmp_path):
    server = RedisServer(tmp_path / "redis", persistence=False).start()
    state_dir = tmp_path / "state"
    before = RedisStore(server.url, state_dir=state_dir)
    try:
        await before.put_policy("classes: {a: {}}\n", actor="a")
        await before.put_user(ALICE, actor="test", action="user.add")
        await before.add_override(pause("a", 5), actor="t")
        await before.put_policy("classes: {gone: {}}\n", actor="a")
        await watch(before)
        copy = state_dir / "redis-snapshot.json"
        assert "gone" in copy.read_text() and copy.stat().st_mode & 0o777 == 0o600
        await before.put_policy("classes: {a: {}}\n", actor="a")
        held = await watch(before)
        assert "gone" not in copy.read_text() and "alice" in copy.read_text()  # follows changes
    finally:
        await before.close()
    server.stop()
    server.start()
    after = RedisStore(server.url, state_dir=state_dir)
    other = RedisStore(server.url, state_dir=tmp_path / "other")  # no copy of its own
    try:
        assert not await other.restore_saved()
        assert await after.restore_saved()
        assert await after.version() == held
        assert (await after.get_policy()).text == "classes: {a: {}}\n"
        assert await after.get_user("alice") == ALICE
        assert [item.class_id for item in await after.overrides()] == ["a"]
        assert after.counters == {**after.counters, "lost_store": 1, "restored": 1}
        # a second instance with an older copy finds the store ahead of it: nothing written
        again = RedisStore(server.url, state_dir=state_dir)
        await after.put_policy("classes: {b: {}}\n", actor="b")
        assert not await again.restore_saved()
        assert (await again.get_policy()).text == "classes: {b: {}}\n"
        await again.close()
    finally:
        await after.close(), await other.close()
        server.stop()
