"""Dashboard accounts in the Redis store (SPEC §7): shared by every instance, one key each, and
the failed logins counted for all of them. What both stores do with accounts (users, API
tokens, sessions, audited without a secret) is test_store_contract.py's."""

from __future__ import annotations

import time

from dashboard import auth
from store.records import Session
from store.redis_backend import RedisStore
from tests.dashboard_fixtures import quick_user
from tests.store_fixtures import needs_redis, redis_server  # noqa: F401 (fixtures)


@needs_redis
async def test_redis_accounts_are_one_key_each_and_their_writes_move_the_version(redis_server):
    redis_server.command("FLUSHALL")
    first, second = RedisStore(redis_server.url), RedisStore(redis_server.url)
    try:
        await first.put_user(quick_user("tom", "teacher", ("cm2-a",)), actor="t", action="user.add")
        text, _record = await auth.create_token(first, "ci", actor="t")
        await first.put_session(Session(sha256="c" * 64, user="tom", csrf="x",
                                         expires=time.time() + 30))
        # another instance sees them at once
        assert (await second.get_user("tom")).classes == ("cm2-a",)
        assert (await auth.token_user(second, text)).name == "ci"
        assert (await second.get_session("c" * 64)).user == "tom"
        # a user or a token written moves the version (a session does not): every instance's
        # watcher then holds the accounts, which a rebuild of a lost store writes back
        assert await second.version() == 2
        ttl = int(redis_server.command("PTTL", "classguard:session:" + "c" * 64)[1:].strip())
        assert 0 < ttl <= 30_000  # the session's key ends with the session
        assert redis_server.command("EXISTS", "classguard:user:tom").strip() == b":1"
    finally:
        await first.close()
        await second.close()


@needs_redis
async def test_a_removed_user_moves_the_version_and_no_rebuild_revives_it(redis_server):
    redis_server.command("FLUSHALL")
    store = RedisStore(redis_server.url)
    try:
        await store.put_user(quick_user("tom", "teacher", ("cm2-a",)), actor="t", action="user.add")
        await store.remember()  # as a watcher does after a change: tom is held for a rebuild
        assert "tom" in store._users
        version = await store.version()
        await auth.remove_user(store, "tom", actor="alice (dashboard)")
        # every watcher re-reads the accounts; what this instance holds no longer has tom
        assert await store.version() > version and "tom" not in store._users
        assert redis_server.command("EXISTS", "classguard:user:tom").strip() == b":0"
    finally:
        await store.close()


@needs_redis
async def test_redis_throttle_is_shared_by_instances_and_expires(redis_server):
    redis_server.command("FLUSHALL")
    first, second = RedisStore(redis_server.url), RedisStore(redis_server.url)
    try:
        one, other = auth.throttle_for(first), auth.throttle_for(second)
        assert isinstance(one, auth.StoreThrottle)
        for _ in range(3):
            await one.failed("Tom", "192.0.2.1")
        # the fourth attempt, through the other instance, waits about base * 2^0 = 1 s
        assert 0.5 < await other.retry_after("tom", "192.0.2.1") <= 1.0
        assert await other.retry_after("tom", "192.0.2.2") == 0  # another address: free
        assert await other.retry_after("alice", "192.0.2.1") == 0  # another account: free
        await other.failed("tom", "192.0.2.1")
        assert 1.5 < await one.retry_after("tom", "192.0.2.1") <= 2.0  # it grows
        [key] = [item for item in redis_server.command("KEYS", "classguard:failures:*").split()
                 if item.startswith(b"classguard:")]
        ttl = int(redis_server.command("PTTL", key.decode())[1:].strip())
        assert (one.forget + 1.5) * 1000 < ttl <= (one.forget + 2) * 1000  # the key ends itself
        await one.succeeded("tom", "192.0.2.1")
        assert await other.retry_after("tom", "192.0.2.1") == 0
    finally:
        await first.close()
        await second.close()
