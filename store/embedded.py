"""The embedded store: state under state_dir in files, for one server (or several on one machine)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from policies.model import Device, Override
from store.device_table import DeviceTable
from store.records import (
    ApiToken, AuditEntry, DeviceConflict, DiskFull, NotFound, Session, StoredPolicy, StoreError,
    User, VersionConflict, describe_override, describe_token, describe_user, device_record,
    minutes_of,
)

log = logging.getLogger("classguard.store")

STATE_FILE = "store.json"  # policy, overrides, versions: one file, replaced whole
AUDIT_FILE = "audit.jsonl"  # one JSON object a line, appended
AUTH_FILE = "auth.json"  # dashboard users, API tokens (hashed) and sessions (hashed), replaced whole
LOCK_FILE = "store.lock"  # fcntl.flock around every read-modify-write
FORMAT = 1
LOCK_TIMEOUT = 10.0  # seconds a writer waits for another one before giving up


# --- the embedded store -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _State:
    version: int
    policy: StoredPolicy | None
    overrides: tuple[Override, ...]

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "version": self.version,
            "policy": None if self.policy is None else asdict(self.policy),
            "overrides": [asdict(override) for override in self.overrides],
        }, ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> _State:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise StoreError(f"{where}: format {data.get('format')!r} is not one this "
                                 f"version of classguard reads ({FORMAT})")
            policy = data["policy"]
            return cls(
                version=int(data["version"]),
                policy=None if policy is None else StoredPolicy(**policy),
                overrides=tuple(Override(**item) for item in data["overrides"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{where}: unreadable ({exc}); it was not written by classguard, "
                             "or the disk lost it") from None


EMPTY = _State(version=0, policy=None, overrides=())


SCREEN_TIME_DIR = "screen-time"
SCREEN_TIME_DAYS_KEPT = 1  # today and yesterday (a day's budget never needs more)


def _days_before(day: str, count: int) -> str:
    return (dt.date.fromisoformat(day) - dt.timedelta(days=count)).isoformat()


class EmbeddedStore:
    """The store as files under `state_dir`, for one host (the default, SPEC §7).

    `store.json` holds the policy, the overrides and the versions, and is replaced whole:
    written to a temporary file, fsynced, renamed over the old one, and the folder fsynced, so a
    crash leaves either the old state or the new one, both complete. `audit.jsonl` is appended
    and fsynced before a write is acknowledged (a line torn by a crash is skipped on reading).
    Every read-modify-write holds an exclusive flock on `store.lock`, so a CLI and a server (or
    two threads) writing at once never lose each other's change. Reads take no lock.
    """

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        self.audit_path = self.state_dir / AUDIT_FILE
        self.lock_path = self.state_dir / LOCK_FILE
        self._cached: tuple[tuple[int, int, int, int], _State] | None = None
        self._cache_lock = threading.Lock()
        self.device_table = DeviceTable(self.state_dir)  # devices.sqlite: one row a device

    def __repr__(self) -> str:
        return f"EmbeddedStore({str(self.state_dir)!r})"

    # -- the Store interface: blocking work runs in a thread, off the event loop

    async def version(self) -> int:
        # A stat, and a read only when the file changed since the last call; plus the devices'
        # sequence (one indexed row of SQLite): both only grow, so their sum moves on any write.
        return (await self._state_async()).version + self.device_table.seq()

    async def get_policy(self) -> StoredPolicy | None:
        return (await self._state_async()).policy

    async def put_policy(self, text: str, *, actor: str, expected_version: int | None = None,
                         action: str = "policy.import", before: str = "",
                         after: str = "") -> StoredPolicy:
        return await asyncio.to_thread(self.put_policy_now, text, actor=actor,
                                       expected_version=expected_version, action=action,
                                       before=before, after=after)

    async def overrides(self) -> list[Override]:
        now = time.time()
        return [item for item in (await self._state_async()).overrides if item.until > now]

    async def add_override(self, override: Override, *, actor: str) -> Override:
        return await asyncio.to_thread(self.add_override_now, override, actor=actor)

    async def cancel_override(self, override_id: str, *, actor: str) -> Override:
        return await asyncio.to_thread(self.cancel_override_now, override_id, actor=actor)

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        return await asyncio.to_thread(self.read_audit, limit)

    async def import_audit(self, entries: list[AuditEntry]) -> int:
        return await asyncio.to_thread(self.import_audit_now, entries)

    def import_audit_now(self, entries: list[AuditEntry]) -> int:
        with self._locked():
            held = list(reversed(self.read_audit(limit=10 ** 9)))  # oldest first
            known = set(held)
            added = [entry for entry in entries if entry not in known]
            if added:
                merged = sorted(held + added, key=lambda entry: entry.at)
                write_atomically(self.audit_path, "".join(
                    json.dumps(asdict(entry), ensure_ascii=False) + "\n" for entry in merged))
        return len(added)

    async def close(self) -> None:
        self.device_table.close()

    async def merge_active_minutes(self, day: str, minutes: dict[str, bytes]) -> dict[str, bytes]:
        return await asyncio.to_thread(self.merge_active_minutes_now, day, minutes)

    async def get_user(self, name: str) -> User | None:
        return (await asyncio.to_thread(self.read_auth))["users"].get(name)

    async def users(self) -> list[User]:
        return list((await asyncio.to_thread(self.read_auth))["users"].values())

    async def put_user(self, user: User, *, actor: str, action: str, before: str = "") -> User:
        return await asyncio.to_thread(self.put_user_now, user, actor=actor, action=action,
                                       before=before)

    async def delete_user(self, name: str, *, actor: str) -> None:
        await asyncio.to_thread(self.delete_user_now, name, actor=actor)

    async def get_token(self, sha256: str) -> ApiToken | None:
        return (await asyncio.to_thread(self.read_auth))["tokens"].get(sha256)

    async def tokens(self) -> list[ApiToken]:
        return list((await asyncio.to_thread(self.read_auth))["tokens"].values())

    async def put_token(self, token: ApiToken, *, actor: str, action: str) -> ApiToken:
        return await asyncio.to_thread(self.put_token_now, token, actor=actor, action=action)

    async def get_session(self, sha256: str) -> Session | None:
        session = (await asyncio.to_thread(self.read_auth))["sessions"].get(sha256)
        return session if session is not None and session.expires > time.time() else None

    async def put_session(self, session: Session) -> None:
        await asyncio.to_thread(self._auth_change, lambda auth: auth["sessions"].__setitem__(
            session.sha256, session))

    async def delete_session(self, sha256: str) -> None:
        await asyncio.to_thread(self._auth_change, lambda auth: auth["sessions"].pop(sha256, None))

    # -- a device's data as this store holds it (GDPR art. 15 and 17; privacy.gdpr adds the
    # query log's part)

    async def device_data(self, device_id: str) -> dict:
        return await asyncio.to_thread(self.device_data_now, device_id)

    async def erase_device(self, device_id: str, *, actor: str = "device.erase") -> dict:
        return await asyncio.to_thread(self.erase_device_now, device_id, actor)

    # -- devices: rows of their own (store.device_table)

    async def devices(self) -> tuple[list[Device], int]:
        return await asyncio.to_thread(self.device_table.devices)

    async def device_changes(self, since: int) -> tuple[list[tuple[str, Device | None]], int] | None:
        return await asyncio.to_thread(self.device_table.changes, since)

    async def change_devices(self, put: list[Device], remove: list[str] = (), *, mode: str,
                             actor: str, action: str, before: str = "", after: str = "",
                             forget: bool = False) -> int:
        return await asyncio.to_thread(self.change_devices_now, list(put), list(remove),
                                       mode=mode, actor=actor, action=action, before=before,
                                       after=after, forget=forget)

    def change_devices_now(self, put: list[Device], remove: list[str], *, mode: str, actor: str,
                           action: str, before: str = "", after: str = "",
                           forget: bool = False) -> int:
        with self._locked():
            seq = self.device_table.change(put, remove, mode, forget=forget)
            self._append_audit(AuditEntry(at=time.time(), actor=actor, action=action,
                                          before=before, after=after))
        return seq

    # -- the same, blocking (for threads and the command line)

    def put_user_now(self, user: User, *, actor: str, action: str, before: str = "") -> User:
        def change(auth: dict) -> None:
            auth["users"][user.name] = user
        self._auth_change(change, AuditEntry(at=time.time(), actor=actor, action=action,
                                             before=before, after=describe_user(user)))
        return user

    def delete_user_now(self, name: str, *, actor: str) -> None:
        removed: list[User] = []

        def change(auth: dict) -> None:
            user = auth["users"].pop(name, None)
            if user is not None:
                removed.append(user)
                auth["sessions"] = {key: item for key, item in auth["sessions"].items()
                                    if item.user != name}
        self._auth_change(change, lambda: AuditEntry(  # only when there was someone to remove
            at=time.time(), actor=actor, action="user.remove", before=describe_user(removed[0]),
            after="") if removed else None)

    def put_token_now(self, token: ApiToken, *, actor: str, action: str) -> ApiToken:
        def change(auth: dict) -> None:
            auth["tokens"][token.sha256] = token
        self._auth_change(change, AuditEntry(at=time.time(), actor=actor, action=action, before="",
                                             after=describe_token(token)))
        return token

    def read_auth(self) -> dict:
        path = self.state_dir / AUTH_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        except ValueError as exc:
            raise StoreError(f"{path}: unreadable ({exc})") from None
        return {
            "users": {name: User.from_record(item) for name, item in data.get("users", {}).items()},
            "tokens": {key: ApiToken(**item) for key, item in data.get("tokens", {}).items()},
            "sessions": {key: Session(**item) for key, item in data.get("sessions", {}).items()},
        }

    def _auth_change(self, change, audit: AuditEntry | Callable[[], AuditEntry | None] | None = None
                     ) -> None:
        """`change(auth)` under the lock; `audit` may be a function of what the change did."""
        with self._locked():
            auth = self.read_auth()
            change(auth)
            now = time.time()
            auth["sessions"] = {key: item for key, item in auth["sessions"].items()
                                if item.expires > now}  # ended ones pruned
            write_atomically(self.state_dir / AUTH_FILE, json.dumps(
                {kind: {key: asdict(item) for key, item in records.items()}
                 for kind, records in auth.items()}, ensure_ascii=False, indent=1) + "\n")
            if callable(audit):
                audit = audit()
            if audit is not None:
                self._append_audit(audit)


    def device_data_now(self, device_id: str) -> dict:
        minutes = {}
        for path in sorted((self.state_dir / SCREEN_TIME_DIR).glob("*.json")):
            bits = json.loads(path.read_text()).get(device_id)
            if bits:
                minutes[path.stem] = minutes_of(bytes.fromhex(bits))
        return {"device_record": device_record(self.device_table.get(device_id)),
                "screen_time_minutes": minutes}

    def erase_device_now(self, device_id: str, actor: str) -> dict:
        erased = {"device_record": False, "screen_time_days": 0}
        with self._locked():
            for path in sorted((self.state_dir / SCREEN_TIME_DIR).glob("*.json")):
                stored = json.loads(path.read_text())
                if stored.pop(device_id, None) is not None:
                    write_atomically(path, json.dumps(stored, sort_keys=True))
                    erased["screen_time_days"] += 1
            try:
                self.device_table.change([], [device_id], "update", forget=True)
            except DeviceConflict:
                pass  # no record: nothing to erase there
            else:
                self._append_audit(AuditEntry(at=time.time(), actor=actor, action="device.erase",
                                              before=f"device {device_id}", after="erased"))
                erased["device_record"] = True
        return erased

    def merge_active_minutes_now(self, day: str, minutes: dict[str, bytes]) -> dict[str, bytes]:
        """OR each device's new minute bits into the stored bitmaps of `day` (a local date,
        YYYY-MM-DD); returns every device's merged bitmap. Days older than yesterday go."""
        folder = self.state_dir / SCREEN_TIME_DIR
        path = folder / f"{day}.json"
        with self._locked():
            folder.mkdir(exist_ok=True, mode=0o700)
            try:
                stored = {device: bytes.fromhex(bits) for device, bits in json.loads(path.read_text()).items()}
            except FileNotFoundError:
                stored = {}
            except (ValueError, AttributeError) as exc:
                log.error("%s is unreadable (%s); this day's minutes start again", path, exc)
                stored = {}
            changed = False
            for device, bits in minutes.items():
                old = stored.get(device, b"")
                size = max(len(old), len(bits))
                merged = (int.from_bytes(old, "little") | int.from_bytes(bits, "little")).to_bytes(size, "little")
                if merged != old:
                    stored[device], changed = merged, True
            if changed:
                write_atomically(path, json.dumps({device: bits.hex() for device, bits in stored.items()},
                                                   sort_keys=True))
            for old_day in folder.glob("*.json"):
                if old_day.stem < _days_before(day, SCREEN_TIME_DAYS_KEPT):
                    old_day.unlink()
        return stored

    def put_policy_now(self, text: str, *, actor: str, expected_version: int | None = None,
                       action: str = "policy.import", before: str = "",
                       after: str = "") -> StoredPolicy:
        with self._locked() as state:
            current = state.policy
            current_version = 0 if current is None else current.version
            if expected_version is not None and expected_version != current_version:
                raise VersionConflict(expected_version, current_version)
            if current is not None and current.text == text:
                return current
            stored = StoredPolicy(text=text, version=current_version + 1, updated_at=time.time(),
                                  updated_by=actor)
            self._commit(state, policy=stored)
            self._append_audit(AuditEntry(
                at=stored.updated_at, actor=actor, action=action,
                before=before or ("" if current is None else f"version {current_version}"),
                after=after or f"version {stored.version}"))
            return stored

    def add_override_now(self, override: Override, *, actor: str) -> Override:
        with self._locked() as state:
            if any(item.id == override.id for item in state.overrides):
                raise StoreError(f"an override with id {override.id} exists already")
            self._commit(state, overrides=(*state.overrides, override))
            self._append_audit(AuditEntry(at=time.time(), actor=actor, action="override.add",
                                          before="", after=describe_override(override)))
            return override

    def cancel_override_now(self, override_id: str, *, actor: str) -> Override:
        with self._locked() as state:
            now = time.time()
            found = next((item for item in state.overrides
                          if item.id == override_id and item.until > now), None)
            if found is None:
                raise NotFound(f"no override {override_id!r} in force "
                               "(see classguard override list)")
            self._commit(state, overrides=tuple(item for item in state.overrides
                                                if item.id != override_id))
            self._append_audit(AuditEntry(at=now, actor=actor, action="override.cancel",
                                          before=describe_override(found), after="cancelled"))
            return found

    def read_state(self) -> _State:
        """The state as last committed (cached while the file is unchanged)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return EMPTY
        signature = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._cache_lock:
            if self._cached is not None and self._cached[0] == signature:
                return self._cached[1]
        try:
            with open(self.path, encoding="utf-8") as file:
                # The signature of what is read: the name may be renamed over meanwhile.
                stat = os.fstat(file.fileno())
                text = file.read()
        except FileNotFoundError:
            return EMPTY
        state = _State.from_json(text, self.path)
        with self._cache_lock:
            self._cached = ((stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size), state)
        return state

    def read_audit(self, limit: int = 100) -> list[AuditEntry]:
        try:
            lines = self.audit_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries: list[AuditEntry] = []
        for line in reversed(lines):
            if len(entries) >= limit:
                break
            try:
                entries.append(AuditEntry(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line torn by a crash before it was acknowledged
        return entries

    # -- internals

    async def _state_async(self) -> _State:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return EMPTY
        signature = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._cached
        if cached is not None and cached[0] == signature:
            return cached[1]
        return await asyncio.to_thread(self.read_state)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_State]:
        """Hold the store's lock; yields the current state, read under the lock."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() > deadline:
                        raise StoreError(f"{self.lock_path} is held by another process for more "
                                         f"than {LOCK_TIMEOUT:.0f} s; is it stuck?") from None
                    time.sleep(0.005)
            self._remove_leftovers()
            yield self.read_state()
        finally:
            os.close(fd)  # releases the lock

    def _commit(self, state: _State, *, policy: StoredPolicy | None = None,
                overrides: tuple[Override, ...] | None = None) -> _State:
        now = time.time()
        kept = state.overrides if overrides is None else overrides
        new = _State(
            version=state.version + 1,
            policy=state.policy if policy is None else policy,
            overrides=tuple(item for item in kept if item.until > now),  # ended ones pruned
        )
        write_atomically(self.path, new.to_json())
        return new

    def _append_audit(self, entry: AuditEntry) -> None:
        line = json.dumps(asdict(entry), ensure_ascii=False) + "\n"
        created = not self.audit_path.exists()
        fd = os.open(self.audit_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "a+b") as file:
            if file.tell() > 0:
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":  # a line torn by a crash: end it, keep ours whole
                    line = "\n" + line
            try:
                file.write(line.encode("utf-8"))
                file.flush()
                os.fsync(file.fileno())
            except OSError as exc:
                if exc.errno not in DISK_FULL:
                    raise
                raise DiskFull(f"the disk under {self.state_dir} is full: the change is saved, "
                               "its audit entry is not (free some space)") from None
        if created:
            _fsync_dir(self.state_dir)

    def _remove_leftovers(self) -> None:
        """Temporary files of writers that died before their rename (we hold the lock)."""
        for leftover in self.state_dir.glob(f".{STATE_FILE}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_atomically(path: Path, content: str | bytes) -> None:
    """Owner-only, fsynced, renamed over `path`, the folder fsynced: old or new, never half."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise DiskFull(f"cannot write {path.name}: the disk under {path.parent} is full; "
                           "nothing was changed (free some space and try again)") from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
