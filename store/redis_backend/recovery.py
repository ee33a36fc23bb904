"""Recovery of a lost Redis store (SPEC §7): noticing it (the marker, a version going back), and
the instance holding the highest version writing its state back, from memory or from its copy
under state_dir; the others adopt what the store then holds."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import asdict
from pathlib import Path

from policies.model import Device, Override
from store.embedded import write_atomically
from store.records import (
    ApiToken, AuditEntry, StoredPolicy, User, device_from_record, device_to_record,
)
from store.redis_backend.connection import PREFIX, RedisConnection
from store.redis_backend.scripts import RESTORE, RESTORE_DEVICES

log = logging.getLogger("classguard.store.redis")

SNAPSHOT_FILE = "redis-snapshot.json"  # under state_dir: what this instance last read from Redis
SNAPSHOT_FORMAT = 1


class LostStoreRecovery(RedisConnection):
    """What this instance last read (policy, overrides, accounts), held to rebuild a lost store.
    The parts that read those keep it up to date; `remember` reads the accounts through
    RedisStore's `users` and `tokens` (store.redis_backend.accounts)."""

    def __init__(self, url: str, *, prefix: str = PREFIX, state_dir: Path | str | None = None) -> None:
        super().__init__(url, prefix=prefix, state_dir=state_dir)
        # where this instance keeps a copy of what it last read (SNAPSHOT_FILE): a server that
        # starts on a Redis that lost the store writes that back instead of seeding the file
        self.snapshot_path = None if state_dir is None else Path(state_dir) / SNAPSHOT_FILE
        self._marker: str | None = None  # the store's id as first seen
        self._seen_version = 0
        self._policy: StoredPolicy | None = None  # the snapshot last read: what we write back
        self._overrides: list[Override] = []
        # the dashboard accounts as last read (small): a rebuild writes them back too
        self._users: dict[str, User] = {}
        self._tokens: dict[str, ApiToken] = {}
        # the devices as last read (store.redis_backend.device_records), and their sequence
        self._devices: dict[str, Device] = {}
        self._devices_seq = 0
        self._snapshot_written: str | None = None
        # moves when this instance adopts another instance's store (a lost store someone else
        # rebuilt): the watcher then reads everything again, even at an equal version
        self.generation = 0

    async def version(self) -> int:
        version, marker = await self.run(lambda r: r.mget(self.key("version"), self.key("marker")))
        version = int(version or 0)
        marker = marker.decode() if marker is not None else None
        if self._marker is None:
            self._marker = marker
        elif marker != self._marker or version < self._seen_version:
            version = await self._lost(version, marker)
        self._seen_version = max(self._seen_version, version)
        return version

    def _holds_state(self) -> bool:
        return self._seen_version > 0 and bool(
            self._policy is not None or self._overrides or self._users or self._tokens
            or self._devices)

    async def _lost(self, version: int, marker: str | None) -> int:
        """Redis came back without our store (restarted without persistence, a failover to a
        replica that lagged, or another instance seeded it meanwhile): keep serving; write our
        state back when our version is the highest, else adopt the stored one. Said once and
        counted once per event: afterwards the store's marker is ours or the one we adopted."""
        self.counters["lost_store"] += 1
        what = "missing" if marker is None else \
            ("changed" if marker != self._marker else "kept, version went backwards")
        if self._holds_state():
            result = await self._write_back(
                before=f"store lost (marker {what}, version {version})",
                after=f"version {self._seen_version} written back")
            if result[0]:
                self.counters["restored"] += 1
                log.error("the Redis store was lost (marker %s, version %d); this instance holds "
                          "the highest version (%d): rebuilt from this instance's snapshot "
                          "(Redis needs persistence: appendonly yes)",
                          what, version, self._seen_version)
                return self._seen_version
            version, marker = int(result[1]), result[2].decode()
        if marker is None:  # nothing to write back and nothing stored: wait for a writer
            log.error("the Redis store was lost (marker missing, version %d) and this instance "
                      "holds nothing to write back (Redis needs persistence: appendonly yes)",
                      version)
            self._marker, self._seen_version = None, 0
            self.generation += 1
            return version
        log.error("the Redis store was lost (marker %s); the store now holds version %d, not "
                  "below this instance's %d: adopting it (Redis needs persistence: "
                  "appendonly yes)", what, version, self._seen_version)
        self._marker, self._seen_version = marker, version
        self.generation += 1
        return version

    async def _write_back(self, *, before: str, after: str) -> list:
        """The RESTORE script with this instance's state: [1] when written, else [0, the stored
        version, the stored marker]."""
        policy = self._policy
        entry = json.dumps(asdict(AuditEntry(
            at=time.time(), actor=f"classguard instance {self.instance}", action="store.restore",
            before=before, after=after)))
        now = time.time()
        overrides = [{"id": item.id, "until": item.until, "json": json.dumps(asdict(item))}
                     for item in self._overrides if item.until > now]
        users = [{"name": name, "json": json.dumps(asdict(user))}
                 for name, user in sorted(self._users.items())]
        tokens = [{"name": sha256, "json": json.dumps(asdict(token))}
                  for sha256, token in sorted(self._tokens.items())]
        # A rebuilt store is a new one: a new marker, so that every other instance notices the
        # loss too (and says it adopts this version), even one whose copy equals ours.
        marker = secrets.token_hex(8)
        result = await self.run(lambda r: r.eval(
            RESTORE, 8, self.key("version"), self.key("policy"), self.key("overrides"),
            self.key("marker"), self.key("audit"), self.key("changes"), self.key("users"),
            self.key("tokens"),
            marker, self._seen_version,
            "" if policy is None else policy.text, 0 if policy is None else policy.version,
            0 if policy is None else repr(policy.updated_at), "" if policy is None else policy.updated_by,
            json.dumps(overrides), entry, self.instance, json.dumps(users),
            json.dumps(tokens), self.prefix))
        if result[0]:
            self._marker = marker
            devices = [{"id": device.id, "class": device.class_id,
                        "token": device.token_sha256 or "",
                        "addresses": [str(address) for address in device.addresses],
                        "json": json.dumps(device_to_record(device))}
                       for _, device in sorted(self._devices.items())]
            await self.run(lambda r: r.eval(
                RESTORE_DEVICES, 6, self.key("devices:seq"), self.key("devices:log"),
                self.key("devices"), self.key("devices:token"), self.key("devices:address"),
                self.key("devices:floor"), self.prefix, self._devices_seq, json.dumps(devices)))
        return result

    async def remember(self) -> None:
        """Read the accounts (users, tokens) into memory, and save what this instance holds
        (marker, version, policy, overrides, accounts) under state_dir when it changed. The
        server's watcher calls this after each change it applied; never the DNS path."""
        users, tokens = await self.users(), await self.tokens()
        marker = await self.run(lambda r: r.get(self.key("marker")))
        if marker is None or marker.decode() != self._marker:
            return  # lost meanwhile: keep what we hold for the rebuild the next look makes
        self._users = {user.name: user for user in users}
        self._tokens = {token.sha256: token for token in tokens}
        if self.snapshot_path is None or self._marker is None:
            return
        held = {
            "format": SNAPSHOT_FORMAT, "marker": self._marker, "version": self._seen_version,
            "policy": None if self._policy is None else asdict(self._policy),
            "overrides": [asdict(item) for item in self._overrides],
            "users": [asdict(user) for _, user in sorted(self._users.items())],
            "tokens": [asdict(token) for _, token in sorted(self._tokens.items())],
            "devices_seq": self._devices_seq,
            "devices": list(self._devices.values()),  # made JSON in the thread (thousands)
        }
        path = self.snapshot_path
        try:
            self._snapshot_written = await asyncio.to_thread(
                _save_snapshot, path, held, self._snapshot_written)
        except OSError as exc:
            log.warning("cannot save this instance's copy of the store in %s: %s", path, exc)

    async def restore_saved(self) -> bool:
        """At startup, when Redis holds no policy: write back the state this instance saved
        under state_dir (SPEC §7: a lost store is never re-seeded from the policy file) when
        its version is the highest. True when written; False when there is no saved state or
        the store holds as much (the caller then uses what the store holds)."""
        if self.snapshot_path is None:
            return False
        try:
            text = await asyncio.to_thread(self.snapshot_path.read_text)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cannot read this instance's copy of the store in %s: %s",
                        self.snapshot_path, exc)
            return False
        try:
            data = json.loads(text)
            if data.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            marker, version = str(data["marker"]), int(data["version"])
            policy = None if data["policy"] is None else StoredPolicy(**data["policy"])
            overrides = [Override(**item) for item in data["overrides"]]
            users = {item["name"]: User.from_record(item) for item in data["users"]}
            tokens = {item["sha256"]: ApiToken(**item) for item in data["tokens"]}
            devices = {item["id"]: device_from_record(item) for item in data.get("devices", ())}
            devices_seq = int(data.get("devices_seq", 0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s is unreadable (%s): not used", self.snapshot_path, exc)
            return False
        self._marker, self._seen_version = marker, version
        self._policy, self._overrides, self._users, self._tokens = policy, overrides, users, tokens
        self._devices, self._devices_seq = devices, devices_seq
        result = await self._write_back(before="store empty at startup",
                                        after=f"version {version} written back from "
                                              f"{self.snapshot_path}")
        if result[0]:
            self.counters["lost_store"] += 1
            self.counters["restored"] += 1
            log.error("the Redis store was lost (it holds no policy): rebuilt from this "
                      "instance's copy in %s (version %d), not seeded from the policy file "
                      "(Redis needs persistence: appendonly yes)", self.snapshot_path, version)
            return True
        # the store holds as much already (another instance wrote first): start from it
        self._marker, self._seen_version = None, 0
        self._policy, self._overrides, self._users, self._tokens = None, [], {}, {}
        self._devices, self._devices_seq = {}, 0
        return False

    def _markers(self) -> tuple[str, str]:
        """(the marker a write must find, or '' when this client has seen none; a new one)."""
        return self._marker or "", self._marker or secrets.token_hex(8)


def _save_snapshot(path: Path, held: dict, written: str | None) -> str:
    """Write what this instance holds under state_dir when it changed; the text written."""
    held = {**held, "devices": [device_to_record(device) for device in held["devices"]]}
    text = json.dumps(held, ensure_ascii=False, indent=1) + "\n"
    if text != written:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text)
    return text
