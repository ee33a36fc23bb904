"""Dashboard accounts in both stores (SPEC §7): users, API tokens and sessions, each audited
without a secret; in Redis they are shared by every instance."""

from __future__ import annotations

import dataclasses
import json
import time

from dashboard import auth
from store.records import Session
from store.redis_backend import RedisStore
from tests.dashboard_fixtures import quick_user
from tests.test_redis_store import needs_redis, redis_server, store  # noqa: F401 (fixtures)


async def test_users_are_stored_listed_and_audited_without_their_hash(store):
    assert await store.get_user("tom") is None and await store.users() == []
    tom = quick_user("tom", "teacher", ("cm2-a", "cm2-b"))
    await store.put_user(tom, actor="admin-os-user", action="user.add")
    await store.put_user(quick_user("alice", "admin"), actor="admin-os-user", action="user.add")
    assert await store.get_user("tom") == tom  # the classes come back as a tuple
    assert sorted(user.name for user in await store.users()) == ["alice", "tom"]
    reset = dataclasses.replace(tom, password_hash=auth.hash_password("x" * 12, n=2 ** 10),
                                sessions_after=time.time())
    await store.put_user(reset, actor="admin-os-user", action="user.reset")
    assert await store.get_user("tom") == reset
    entries = await store.audit(3)
    assert [entry.action for entry in entries] == ["user.reset", "user.add", "user.add"]
    assert entries[0].after == "user tom, role teacher, classes cm2-a, cm2-b"
    assert "scrypt$" not in json.dumps([dataclasses.asdict(entry) for entry in entries])


async def test_tokens_are_known_by_their_hash_and_revocable(store):
    text, record = await auth.create_token(store, "ci", actor="alice")
    assert await store.get_token(auth.sha256(text)) == record
    assert (await auth.token_user(store, text)).name == "ci"
    assert text not in repr(await store.tokens())
    await auth.revoke_token(store, record.id, actor="alice")
    assert await auth.token_user(store, text) is None
    [stored] = await store.tokens()
    assert stored.revoked and stored.id == record.id
    assert [entry.action for entry in await store.audit(2)] == ["token.revoke", "token.create"]


async def test_sessions_expire_and_end(store):
    live = Session(sha256="a" * 64, user="tom", csrf="c", expires=time.time() + 60)
    gone = Session(sha256="b" * 64, user="tom", csrf="c", expires=time.time() - 1)
    await store.put_session(live)
    await store.put_session(gone)
    assert await store.get_session(live.sha256) == live
    assert await store.get_session(gone.sha256) is None
    await store.delete_session(live.sha256)
    assert await store.get_session(live.sha256) is None
    assert await store.audit() == []  # sessions are not changes anyone audits


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


async def test_changed_and_removed_users_keep_their_language_and_are_audited(store):
    tom = dataclasses.replace(quick_user("tom", "teacher", ("cm2-a",)), language="en")
    await store.put_user(tom, actor="alice", action="user.add")
    await store.put_user(quick_user("alice", "admin"), actor="t", action="user.add")
    changed = await auth.change_user(store, "tom", actor="alice (dashboard)", known_classes=None,
                                     classes=["cm2-b"], disabled=True)
    assert await store.get_user("tom") == changed
    assert changed.language == "en" and changed.disabled and changed.classes == ("cm2-b",)
    [entry] = await store.audit(1)
    assert (entry.action, entry.actor) == ("user.change", "alice (dashboard)")
    assert entry.before == "user tom, role teacher, classes cm2-a, language en"
    assert entry.after == "user tom, role teacher, classes cm2-b, language en, disabled"
    version = await store.version()
    await auth.remove_user(store, "tom", actor="alice (dashboard)")
    assert await store.get_user("tom") is None
    if isinstance(store, RedisStore):  # every watcher re-reads the accounts; no rebuild revives tom
        assert await store.version() > version and "tom" not in store._users
    assert [user.name for user in await store.users()] == ["alice"]
    [entry] = await store.audit(1)
    assert (entry.action, entry.after) == ("user.remove", "")
    assert entry.before.startswith("user tom, role teacher, classes cm2-b")
    await store.delete_user("tom", actor="alice")  # nobody there: nothing audited
    assert (await store.audit(1))[0].action == "user.remove"
    assert len(await store.audit(10)) == 4


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
