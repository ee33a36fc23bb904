"""Dashboard accounts in both stores (SPEC §7): users, API tokens and sessions, each audited
without a secret; in Redis they are shared by every instance."""

from __future__ import annotations

import dataclasses
import json
import time

from dashboard import auth
from resolver.redis_store import RedisStore
from resolver.store import Session
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
