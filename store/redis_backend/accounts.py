"""The Redis store's dashboard accounts: users, API tokens, sessions, and the counts of failed
logins every instance shares."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict

import redis.asyncio as aioredis

from store.records import (
    ApiToken, AuditEntry, Session, StoreError, User, describe_token, describe_user,
)
from store.redis_backend.recovery import LostStoreRecovery
from store.redis_backend.scripts import (
    AUDIT_KEPT, COUNT_FAILURE, FAILURE_WINDOWS, RECORD, REMOVE_RECORD,
)


class Accounts(LostStoreRecovery):
    """Users, tokens and sessions; the accounts written are held for a rebuild of a lost store."""

    # SPEC §7: every instance accepts the same login and the same token. One record a key:
    # `user:NAME` and `token:SHA256` (JSON) with the sets `users` and `tokens` naming them,
    # `session:SHA256` expiring with the session.
    # Writing a user or a token moves `version`: every instance's watcher then reads them again
    # (remember()) and a rebuild of a lost store writes them back. Sessions are not kept: a
    # Redis that comes back empty has lost them and users log in again (docs/scaling.md).

    async def get_user(self, name: str) -> User | None:
        raw = await self.run(lambda r: r.get(self.key(f"user:{name}")))
        return None if raw is None else _user(raw)

    async def users(self) -> list[User]:
        return [_user(raw) for raw in await self._records("users", "user")]

    async def put_user(self, user: User, *, actor: str, action: str, before: str = "") -> User:
        await self._put_record("users", "user", user.name, json.dumps(asdict(user)),
                               actor=actor, action=action, before=before,
                               after=describe_user(user))
        self._users[user.name] = user
        return user

    async def delete_user(self, name: str, *, actor: str) -> None:
        """The record and its name in the index go with the audit entry in one script
        (REMOVE_RECORD), which moves `version` like any account write; every instance's next
        request with one of the account's sessions finds no account."""
        key = self.key(f"user:{name}")
        while True:
            raw = await self.run(lambda r: r.get(key))
            if raw is None:
                self._users.pop(name, None)
                return
            entry = AuditEntry(at=time.time(), actor=actor, action="user.remove",
                               before=describe_user(_user(raw)), after="")
            known, _new = self._markers()
            result = await self.run(lambda r: r.eval(
                REMOVE_RECORD, 6, self.key("marker"), key, self.key("users"), self.key("audit"),
                self.key("version"), self.key("changes"), known, raw, name,
                json.dumps(asdict(entry)), AUDIT_KEPT, self.instance))
            outcome = result[0].decode()
            if outcome == "lost":
                raise StoreError("the Redis store was lost and is being rebuilt; try again in a second")
            if outcome == "ok":
                self._users.pop(name, None)
                return

    async def get_token(self, sha256: str) -> ApiToken | None:
        raw = await self.run(lambda r: r.get(self.key(f"token:{sha256}")))
        return None if raw is None else ApiToken(**json.loads(raw))

    async def tokens(self) -> list[ApiToken]:
        return [ApiToken(**json.loads(raw)) for raw in await self._records("tokens", "token")]

    async def put_token(self, token: ApiToken, *, actor: str, action: str) -> ApiToken:
        await self._put_record("tokens", "token", token.sha256, json.dumps(asdict(token)),
                               actor=actor, action=action, after=describe_token(token))
        self._tokens[token.sha256] = token
        return token

    async def get_session(self, sha256: str) -> Session | None:
        raw = await self.run(lambda r: r.get(self.key(f"session:{sha256}")))
        if raw is None:
            return None
        session = Session(**json.loads(raw))
        return session if session.expires > time.time() else None

    async def put_session(self, session: Session) -> None:
        key, value = self.key(f"session:{session.sha256}"), json.dumps(asdict(session))
        await self.run(lambda r: r.set(key, value, pxat=math.ceil(session.expires * 1000)))

    async def delete_session(self, sha256: str) -> None:
        await self.run(lambda r: r.delete(self.key(f"session:{sha256}")))

    async def _records(self, index: str, kind: str) -> list[bytes]:
        async def read(r: aioredis.Redis) -> list[bytes]:
            names = sorted(item.decode() for item in await r.smembers(self.key(index)))
            if not names:
                return []
            return [raw for raw in await r.mget([self.key(f"{kind}:{name}") for name in names])
                    if raw is not None]
        return await self.run(read)

    async def _put_record(self, index: str, kind: str, name: str, value: str, *, actor: str,
                          action: str, after: str, before: str = "") -> None:
        """The record, its name in the index and the audit entry, in one script (RECORD)."""
        entry = AuditEntry(at=time.time(), actor=actor, action=action, before=before, after=after)
        known, new = self._markers()
        result = await self.run(lambda r: r.eval(
            RECORD, 6, self.key("marker"), self.key(f"{kind}:{name}"), self.key(index),
            self.key("audit"), self.key("version"), self.key("changes"),
            known, new, value, name, json.dumps(asdict(entry)), AUDIT_KEPT, self.instance))
        if result[0].decode() == "lost":
            raise StoreError("the Redis store was lost and is being rebuilt; try again in a second")
        if self._marker is None:
            self._marker = result[2].decode()

    # -- failed logins (dashboard.auth.StoreThrottle): one counter a (account, address) pair,
    # shared by every instance, expiring on its own

    async def count_failure(self, name: str, window_ms: Callable[[int], int]) -> int:
        """Add one to the counter `name` and set its time to live to `window_ms(new count)`, in
        one call (a script: INCR and PEXPIRE together, so no instance sees one without the
        other). The script gets the windows of the counts 1 to FAILURE_WINDOWS, computed here."""
        key = self.key(f"failures:{name}")
        windows = [max(1, int(window_ms(count))) for count in range(1, FAILURE_WINDOWS + 1)]
        return int(await self.run(lambda r: r.eval(COUNT_FAILURE, 1, key, *windows)))

    async def failures(self, name: str) -> tuple[int, int]:
        """(count, milliseconds it has left to live); (0, 0) when there is none."""
        key = self.key(f"failures:{name}")

        async def read(r: aioredis.Redis) -> tuple[int, int]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                raw, ttl = await pipe.execute()
            return (0, 0) if raw is None or ttl < 0 else (int(raw), int(ttl))
        return await self.run(read)

    async def forget_failures(self, name: str) -> None:
        await self.run(lambda r: r.delete(self.key(f"failures:{name}")))


def _user(raw: bytes | str) -> User:
    return User.from_record(json.loads(raw))
