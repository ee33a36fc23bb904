"""The Redis store's policy, overrides and audit log: each write one script, compare-and-set
included."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from policies.model import Override
from store.records import (
    AuditEntry, NotFound, StoredPolicy, StoreError, VersionConflict, describe_override,
)
from store.redis_backend.recovery import LostStoreRecovery
from store.redis_backend.scripts import AUDIT_KEPT, OVERRIDE, PUT_POLICY


class PolicyAndOverrides(LostStoreRecovery):
    """`policy` (a hash), `overrides` (a hash id -> JSON, expiring with the last one to end) and
    `audit` (a capped list, newest first); what is read is held for a rebuild of a lost store."""

    async def get_policy(self) -> StoredPolicy | None:
        held = self._policy
        if held is not None:  # version and time first: the text (100 KB or more) only if they moved
            version, at, by = await self.run(lambda r: r.hmget(
                self.key("policy"), "version", "updated_at", "updated_by"))
            if version is not None and (int(version), float(at), by.decode()) == \
                    (held.version, held.updated_at, held.updated_by):
                return held
        fields = await self.run(lambda r: r.hgetall(self.key("policy")))
        if not fields:
            policy = None
        else:
            policy = StoredPolicy(text=fields[b"text"].decode(), version=int(fields[b"version"]),
                                  updated_at=float(fields[b"updated_at"]),
                                  updated_by=fields[b"updated_by"].decode())
        if policy is not None or self._policy is None:
            self._policy = policy
        return policy

    async def put_policy(self, text: str, *, actor: str, expected_version: int | None = None,
                         action: str = "policy.import", before: str = "",
                         after: str = "") -> StoredPolicy:
        known, new = self._markers()
        now = time.time()
        result = await self.run(lambda r: r.eval(
            PUT_POLICY, 5, self.key("version"), self.key("policy"), self.key("audit"),
            self.key("marker"), self.key("changes"),
            text, actor, "" if expected_version is None else expected_version, repr(now), action,
            before, after, AUDIT_KEPT, known, new, self.instance))
        status, current = result[0].decode(), int(result[1])
        if status == "lost":
            raise StoreError("the Redis store was lost and is being rebuilt; try again in a second")
        if status == "conflict":
            raise VersionConflict(expected_version, current)
        if status == "same":
            return await self.get_policy()
        if self._marker is None:
            self._marker = result[3].decode()  # the store's, which may predate this write
        stored = StoredPolicy(text=text, version=current, updated_at=now, updated_by=actor)
        return stored

    async def overrides(self) -> list[Override]:
        fields = await self.run(lambda r: r.hgetall(self.key("overrides")))
        now = time.time()
        items = sorted((Override(**json.loads(value)) for value in fields.values()),
                       key=lambda item: (item.created_at, item.id))
        self._overrides = items
        return [item for item in items if item.until > now]

    async def _override_op(self, op: str, override_id: str, payload: str, entry: str) -> list:
        known, new = self._markers()
        result = await self.run(lambda r: r.eval(
            OVERRIDE, 5, self.key("version"), self.key("overrides"), self.key("audit"),
            self.key("marker"), self.key("changes"),
            op, override_id, payload, repr(time.time()), entry, AUDIT_KEPT, known, new,
            self.instance))
        status = result[0].decode()
        if status == "lost":
            raise StoreError("the Redis store was lost and is being rebuilt; try again in a second")
        if self._marker is None and status == "ok":
            self._marker = result[3].decode()
        return [status, *result[1:]]

    async def add_override(self, override: Override, *, actor: str) -> Override:
        entry = json.dumps(asdict(AuditEntry(at=time.time(), actor=actor, action="override.add",
                                             before="", after=describe_override(override))))
        status, *_ = await self._override_op("add", override.id, json.dumps(asdict(override)), entry)
        if status == "exists":
            raise StoreError(f"an override with id {override.id} exists already")
        return override

    async def cancel_override(self, override_id: str, *, actor: str) -> Override:
        current = {item.id: item for item in await self.overrides()}
        found = current.get(override_id)
        if found is None:
            raise NotFound(f"no override {override_id!r} in force (see classguard override list)")
        entry = json.dumps(asdict(AuditEntry(at=time.time(), actor=actor, action="override.cancel",
                                             before=describe_override(found), after="cancelled")))
        status, *_ = await self._override_op("cancel", override_id, "", entry)
        if status == "missing":
            raise NotFound(f"no override {override_id!r} in force (see classguard override list)")
        return found

    async def import_audit(self, entries: list[AuditEntry]) -> int:
        held = await self.audit(AUDIT_KEPT)
        known = set(held)
        added = [entry for entry in entries if entry not in known]
        if not added:
            return 0
        merged = sorted(held + added, key=lambda entry: entry.at, reverse=True)[:AUDIT_KEPT]
        lines = [json.dumps(asdict(entry)) for entry in merged]

        async def write(r) -> None:
            async with r.pipeline(transaction=True) as pipe:  # MULTI: all of it or nothing
                pipe.delete(self.key("audit"))
                pipe.rpush(self.key("audit"), *lines)
                await pipe.execute()
        await self.run(write)
        return len(added)

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        lines = await self.run(lambda r: r.lrange(self.key("audit"), 0, limit - 1))
        entries = []
        for line in lines:
            try:
                entries.append(AuditEntry(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return entries
