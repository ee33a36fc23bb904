"""The query log (SPEC §8): off, counts per class (aggregate), or per-device entries under a
pseudonym (full); kept `retention_days`, then purged by the server.

The DNS path only calls `QueryLog.offer()`: one append to a bounded list, or one count when the
list is full. A background task takes the list every `drain_interval`, does the work in a
thread (Public Suffix lookups, keyed hashes, files) and never holds an answer back.

Pseudonyms: an entry's device is `HMAC-SHA256(key of the day, subject)`, where the subject is
the device id, or `ip:ADDRESS` for a client known only by its network. The key changes every
(local) day and is kept as long as that day's entries, so `device data` / `device erase` can
recompute every pseudonym a device had, and after the retention period nothing links back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from blocklists.names import wire_name_to_text
from policies.loader import _load_suffix_lists
from store.records import StoreError

log = logging.getLogger("classguard.querylog")

FOLDER = "querylog"
KEYS_FILE = "keys.json"
LOCK_FILE = "lock"
BUFFER_LIMIT = 100_000  # events waiting for the background task; beyond, dropped and counted
ACCOUNT_SLICE = 100  # events accounted between two turns of the event loop (under ~0.4 ms)
DRAIN_INTERVAL = 1.0  # seconds between two takes of the buffer
FLUSH_INTERVAL = 60.0  # seconds between two writes of the aggregate counts
PURGE_INTERVAL = 3600.0  # seconds (of the log's clock) between two retention purges
REGISTRABLE_MEMO_LIMIT = 20_000  # blocked names whose registrable domain is remembered
TOP_KEPT = 1000  # blocked registrable domains kept per class and day (the most blocked)
PSEUDONYM_HEX = 32  # 128 bits of the HMAC-SHA256
WRITE_CHUNK = 5000  # entries per write to the store (one file append, one Redis pipeline)


QUERY_LOG_DEFAULTS = {"mode": "aggregate", "retention_days": 7, "scope": "school"}


@dataclass(frozen=True, slots=True)
class QueryLogSettings:
    mode: str = QUERY_LOG_DEFAULTS["mode"]  # off | aggregate | full
    retention_days: int = QUERY_LOG_DEFAULTS["retention_days"]
    scope: str = QUERY_LOG_DEFAULTS["scope"]  # school | all

    @classmethod
    def from_section(cls, section: dict | None) -> QueryLogSettings:
        """From the configuration's `query_log` section (None: every default)."""
        return cls(**{**QUERY_LOG_DEFAULTS, **(section or {})})


def subject_of(device: str) -> str:
    """What a pseudonym is computed from: a device id as is, an address as `ip:ADDRESS`."""
    try:
        return f"ip:{ipaddress.ip_address(device.split('%', 1)[0])}"
    except ValueError:
        return device


def pseudonym(key: bytes, subject: str) -> str:
    return hmac.new(key, subject.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def text_name(qname) -> str:
    """A queried name as the log keeps it: text, lowercase, no final dot (the fast path hands
    over the wire form)."""
    if isinstance(qname, bytes):
        qname = wire_name_to_text(qname)
    return qname.rstrip(".").lower()


def outcome(result: str, reason: str | None) -> str:
    """The aggregate's category: the block reason ("category:adult", "deny", ...) of a block,
    else the result ("forwarded", "cached", "refused", ...)."""
    return (reason or "blocked") if result == "blocked" else result


# --- where the log is kept -----------------------------------------------------------------------


class QueryLogStore(Protocol):
    """What the log needs of a store; the embedded one keeps files under state_dir/querylog.
    A Redis store implements the same (day keys with TTLs do the purge there)."""

    async def day_key(self, day: str) -> bytes:
        """The key of `day`, created when there is none yet (the first one created wins)."""

    async def keys(self) -> dict[str, bytes]:
        """Every day key still kept, by day."""

    async def write(self, day: str, entries: list[dict], counts: dict, top: dict) -> None:
        """Append per-device entries and add counts ({class: {hour: {outcome: n}}}) and blocked
        domains ({class: {domain: n}}) to `day`."""

    async def aggregates(self, day: str) -> dict | None: ...

    async def days(self) -> list[str]:
        """Days holding anything, oldest first."""

    async def find(self, pseudonyms: dict[str, str]) -> list[dict]:
        """The entries of each day whose device is that day's pseudonym."""

    async def erase(self, pseudonyms: dict[str, str]) -> int:
        """Delete those entries; how many were deleted."""

    async def purge(self, first_kept_day: str, oldest_kept: float) -> int:
        """Delete days before `first_kept_day` (entries, counts, keys) and entries older than
        `oldest_kept` (POSIX time); how many entries were deleted."""


class EmbeddedQueryLogStore:
    """Files under state_dir/querylog (owner-only): `full-DAY.jsonl` (one entry a line),
    `aggregate-DAY.json`, and `keys.json`; every change under an exclusive flock on `lock`,
    so that the server and `classguard device erase` never undo each other's work."""

    def __init__(self, state_dir: Path | str) -> None:
        self.folder = Path(state_dir) / FOLDER

    def __repr__(self) -> str:
        return f"EmbeddedQueryLogStore({str(self.folder)!r})"

    async def day_key(self, day: str) -> bytes:
        return await asyncio.to_thread(self._day_key, day)

    async def keys(self) -> dict[str, bytes]:
        return await asyncio.to_thread(self._keys)

    async def write(self, day: str, entries: list[dict], counts: dict, top: dict) -> None:
        await asyncio.to_thread(self._write, day, entries, counts, top)

    async def aggregates(self, day: str) -> dict | None:
        return await asyncio.to_thread(self._read_json, self.folder / f"aggregate-{day}.json")

    async def days(self) -> list[str]:
        return await asyncio.to_thread(self._days)

    async def find(self, pseudonyms: dict[str, str]) -> list[dict]:
        return await asyncio.to_thread(self._find, pseudonyms)

    async def erase(self, pseudonyms: dict[str, str]) -> int:
        return await asyncio.to_thread(self._erase, pseudonyms)

    async def purge(self, first_kept_day: str, oldest_kept: float) -> int:
        return await asyncio.to_thread(self._purge, first_kept_day, oldest_kept)

    # -- blocking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _keys(self) -> dict[str, bytes]:
        data = self._read_json(self.folder / KEYS_FILE) or {}
        return {day: bytes.fromhex(key) for day, key in data.items()}

    def _day_key(self, day: str) -> bytes:
        keys = self._keys()
        if day in keys:
            return keys[day]
        with self._locked():
            keys = self._keys()
            if day not in keys:
                keys[day] = secrets.token_bytes(32)
                self._write_json(self.folder / KEYS_FILE,
                                 {name: key.hex() for name, key in sorted(keys.items())})
            return keys[day]

    def _write(self, day: str, entries: list[dict], counts: dict, top: dict) -> None:
        with self._locked():
            if entries:
                path = self.folder / f"full-{day}.jsonl"
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with open(fd, "a", encoding="utf-8") as file:
                    file.write("".join(json.dumps(entry, ensure_ascii=False) + "\n"
                                       for entry in entries))
            if counts or top:
                path = self.folder / f"aggregate-{day}.json"
                data = self._read_json(path) or {"day": day, "hours": {}, "top_blocked": {}}
                for class_id, hours in counts.items():
                    stored = data["hours"].setdefault(class_id, {})
                    for hour, outcomes in hours.items():
                        slot = stored.setdefault(hour, {})
                        for name, count in outcomes.items():
                            slot[name] = slot.get(name, 0) + count
                for class_id, domains in top.items():
                    stored = data["top_blocked"].setdefault(class_id, {})
                    for domain, count in domains.items():
                        stored[domain] = stored.get(domain, 0) + count
                    if len(stored) > TOP_KEPT:
                        kept = sorted(stored.items(), key=lambda item: -item[1])[:TOP_KEPT]
                        data["top_blocked"][class_id] = dict(kept)
                self._write_json(path, data)

    def _days(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        days = {path.stem.split("-", 1)[1] for path in self.folder.glob("full-*.jsonl")}
        days |= {path.stem.split("-", 1)[1] for path in self.folder.glob("aggregate-*.json")}
        return sorted(days)

    def _entries(self, day: str) -> list[dict]:
        try:
            lines = (self.folder / f"full-{day}.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash
        return entries

    def _find(self, pseudonyms: dict[str, str]) -> list[dict]:
        found = []
        for day, device in sorted(pseudonyms.items()):
            found.extend(entry for entry in self._entries(day) if entry.get("device") == device)
        return found

    def _rewrite_entries(self, day: str, keep) -> int:
        """Keep the entries of `day` for which keep(entry) is true; how many went."""
        path = self.folder / f"full-{day}.jsonl"
        if not path.exists():
            return 0
        entries = self._entries(day)
        kept = [entry for entry in entries if keep(entry)]
        if len(kept) == len(entries):
            return 0
        if kept:
            self._write_text(path, "".join(json.dumps(entry, ensure_ascii=False) + "\n"
                                           for entry in kept))
        else:
            path.unlink()
        return len(entries) - len(kept)

    def _erase(self, pseudonyms: dict[str, str]) -> int:
        with self._locked():
            return sum(self._rewrite_entries(day, lambda entry, device=device:
                                             entry.get("device") != device)
                       for day, device in pseudonyms.items())

    def _purge(self, first_kept_day: str, oldest_kept: float) -> int:
        with self._locked():
            deleted = 0
            for day in self._days():
                if day < first_kept_day:
                    deleted += len(self._entries(day))
                    for path in (self.folder / f"full-{day}.jsonl",
                                 self.folder / f"aggregate-{day}.json"):
                        path.unlink(missing_ok=True)
                elif day == first_kept_day:
                    deleted += self._rewrite_entries(day, lambda entry: entry["t"] >= oldest_kept)
            keys = self._keys()
            if any(day < first_kept_day for day in keys):
                self._write_json(self.folder / KEYS_FILE,
                                 {day: key.hex() for day, key in sorted(keys.items())
                                  if day >= first_kept_day})
            return deleted

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.error("%s is unreadable (%s); starting it again", path, exc)
            return None

    def _write_json(self, path: Path, data: Any) -> None:
        self._write_text(path, json.dumps(data, ensure_ascii=False, sort_keys=True))

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)


# --- the server side -----------------------------------------------------------------------------


class QueryLog:
    """The running server's query log. `clock` (POSIX time) decides the day and hour of every
    event and when the retention purge runs; tests set it."""

    def __init__(self, settings: QueryLogSettings, store: QueryLogStore, *,
                 timezone: str = "UTC", clock=time.time) -> None:
        self.settings = settings
        self.store = store
        self.zone = ZoneInfo(timezone)
        self.clock = clock
        self.buffer_limit = BUFFER_LIMIT
        self.drain_interval = DRAIN_INTERVAL
        self.flush_interval = FLUSH_INTERVAL
        self.purge_interval = PURGE_INTERVAL
        self.dropped = 0  # events lost because the buffer was full
        self.logged = 0  # events taken from the buffer and counted
        self.entries_written = 0  # per-device entries written (full mode)
        self.purged = 0  # entries deleted by retention
        self.store_dropped = 0  # entries lost because the store was away longer than they fit
        self._full = settings.mode == "full"
        self._home_too = settings.scope == "all"
        self._buffer: list[tuple] = []  # full mode: every answer, for its entry
        self._tally: dict[tuple, int] = {}  # aggregate mode: (class, result, reason) -> answers
        self._blocked: list[tuple] = []  # aggregate mode: (class, name) of each block
        self._counts: dict[str, dict] = {}  # day -> class -> hour -> outcome -> n, not yet written
        self._top: dict[str, dict] = {}  # day -> class -> domain -> n
        self._pseudonyms: dict[tuple[str, str], str] = {}  # (day, subject) -> pseudonym
        self._day_keys: dict[str, bytes] = {}  # the keys read or created, by day
        # Entries the store could not take yet (Redis away), by day; at most buffer_limit in all.
        # An entry whose day key could not be read waits with its subject, pseudonymised once
        # the key is known, so that every entry of a day is under that day's one key.
        self._unwritten: dict[str, list[dict]] = {}
        self._store_failing = False
        self._registrable: dict[str, str] = {}  # name -> its registrable domain (one string each)
        self._domains: dict[str, str] = {}
        self._next_flush = 0.0
        self._next_purge = 0.0
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()  # one drain, flush or purge at a time

    @property
    def enabled(self) -> bool:
        """Whether the DNS path hands events to this log (mode aggregate or full)."""
        return self.settings.mode != "off"

    def offer(self, protocol: str, client, client_ip: str, qname, result: str,
              reason: str | None) -> None:
        """Called on the DNS path for every answer: never blocks, never awaits. In aggregate
        mode an answer is a dict increment here; only a block's name waits for the drain (its
        registrable domain, for the top blocked)."""
        if self._full:
            buffer = self._buffer
            if len(buffer) < self.buffer_limit:
                buffer.append((protocol, client, client_ip, qname, result, reason))
            else:
                self.dropped += 1
            return
        class_id = client.class_id if client is not None else None
        tally = self._tally
        key = (class_id, result, reason)
        tally[key] = tally.get(key, 0) + 1
        if result == "blocked":
            blocked = self._blocked
            if len(blocked) < self.buffer_limit:
                blocked.append((class_id, qname))
            else:
                self.dropped += 1

    @property
    def lock(self) -> asyncio.Lock:
        """Held by every drain, flush and purge: while a caller holds it, nothing is written."""
        return self._lock

    def forget(self, device_ids) -> int:
        """Drop the entries of erased devices not written yet (call it holding `lock`); how many
        went. The counts per class stay: they name no device."""
        erased = set(device_ids)
        dropped = len(self._buffer)
        self._buffer = [event for event in self._buffer
                        if event[1] is None or event[1].device_id not in erased]
        dropped -= len(self._buffer)
        for day, entries in self._unwritten.items():
            key = self._day_keys.get(day)
            names = {pseudonym(key, subject_of(device)) for device in erased} if key else set()
            kept = [entry for entry in entries if entry.get("subject") not in erased
                    and entry.get("device") not in names]
            dropped += len(entries) - len(kept)
            entries[:] = kept
        self._pseudonyms = {item: value for item, value in self._pseudonyms.items()
                            if item[1] not in erased}
        return dropped

    async def start(self) -> None:
        now = self.clock()
        self._next_flush = now + self.flush_interval
        self._next_purge = now  # at once: a server that was stopped for a while catches up
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Let the background task finish what it is doing, then write everything gathered."""
        if self._task is not None:
            self._stopping.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush()
        except StoreError as exc:
            waiting = sum(len(entries) for entries in self._unwritten.values())
            self.store_dropped += waiting
            log.warning("query log: the store cannot be written at stop (%s): %d entries and "
                        "the last counts are lost", exc, waiting)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.drain_interval)
            try:
                await self.drain()
                now = self.clock()
                if now >= self._next_flush:
                    await self.flush()
                if now >= self._next_purge:
                    await self.purge()
                if self._store_failing:
                    self._store_failing = False
                    log.info("query log: writing again")
            except StoreError as exc:  # Redis away: said once; what waits is kept, bounded
                if not self._store_failing:
                    self._store_failing = True
                    # The store logs why (once per outage); this says what the log does.
                    log.warning("query log: the store cannot be written now; entries and "
                                "counts wait in memory (bounded) until it can")
                    log.debug("query log: %s", exc)
            except Exception:  # a disk error or a bug must not end the log
                log.exception("query log: writing failed; will try again")

    async def drain(self) -> None:
        """Take what the DNS path handed over: count it, and write per-device entries."""
        async with self._lock:
            await self._drain()

    async def _drain(self) -> None:
        if self._tally or self._blocked:
            tally, blocked, self._tally, self._blocked = self._tally, self._blocked, {}, []
            now = self.clock()
            day = self.day(now)
            self._add_tally(tally, now, day)
            top = self._top.setdefault(day, {})
            for start in range(0, len(blocked), ACCOUNT_SLICE):  # see below: a slice at a time
                for class_id, qname in blocked[start:start + ACCOUNT_SLICE]:
                    self._count_blocked(top, class_id or "unknown", qname)
                await asyncio.sleep(0)
        if self._buffer:
            batch, self._buffer = self._buffer, []
            now = self.clock()
            day = self.day(now)
            key = None
            if self._full:
                with contextlib.suppress(StoreError):  # the entries wait with their subjects
                    key = await self._day_key(day)
            # On the loop, a slice at a time: in a thread, the accounting would hold the GIL
            # for up to 5 ms at a stretch (the interpreter's switch interval) while answers wait.
            entries = []
            for start in range(0, len(batch), ACCOUNT_SLICE):
                entries += self._account(batch[start:start + ACCOUNT_SLICE], now, day, key)
                await asyncio.sleep(0)
            if entries:
                self._hold(day, entries)
        await self._write_unwritten()

    async def _day_key(self, day: str) -> bytes:
        key = self._day_keys.get(day)
        if key is None:
            key = self._day_keys[day] = await self.store.day_key(day)
        return key

    def _hold(self, day: str, entries: list[dict]) -> None:
        """Entries to write; beyond buffer_limit waiting in all, dropped and counted."""
        room = self.buffer_limit - sum(len(items) for items in self._unwritten.values())
        if len(entries) > room:
            self.store_dropped += len(entries) - max(room, 0)
            entries = entries[:max(room, 0)]
        if entries:
            self._unwritten.setdefault(day, []).extend(entries)

    async def _write_unwritten(self) -> None:
        """Write the entries waiting, day by day and WRITE_CHUNK at a time (after an outage up
        to buffer_limit wait: the loop gets its turn between chunks); what fails stays for the
        next drain."""
        for day in sorted(self._unwritten):
            entries = self._unwritten[day]
            if any("subject" in entry for entry in entries):
                key = await self._day_key(day)
                for start in range(0, len(entries), ACCOUNT_SLICE):
                    for entry in entries[start:start + ACCOUNT_SLICE]:
                        subject = entry.pop("subject", None)
                        if subject is not None:
                            entry["device"] = self._pseudonym(day, key, subject)
                    await asyncio.sleep(0)
            while entries:
                chunk = entries[:WRITE_CHUNK]
                await self.store.write(day, chunk, {}, {})
                del entries[:len(chunk)]
                self.entries_written += len(chunk)
            del self._unwritten[day]

    async def flush(self) -> None:
        """Write the counts gathered since the last flush (also at stop). Counts the store
        cannot take now are kept for the next flush (they are per class and hour: small)."""
        async with self._lock:
            self._next_flush = self.clock() + self.flush_interval
            await self._drain()
            counts, tops, self._counts, self._top = self._counts, self._top, {}, {}
            days = sorted(set(counts) | set(tops))
            for index, day in enumerate(days):
                try:
                    await self.store.write(day, [], counts.get(day, {}), tops.get(day, {}))
                except StoreError:
                    for later in days[index:]:
                        self._keep_counts(later, counts.get(later, {}), tops.get(later, {}))
                    raise

    def _keep_counts(self, day: str, counts: dict, top: dict) -> None:
        """Counts not written, merged back into those gathered since."""
        pending = self._counts.setdefault(day, {})
        for class_id, hours in counts.items():
            for hour, outcomes in hours.items():
                slot = pending.setdefault(class_id, {}).setdefault(hour, {})
                for name, count in outcomes.items():
                    slot[name] = slot.get(name, 0) + count
        pending_top = self._top.setdefault(day, {})
        for class_id, domains in top.items():
            merged = pending_top.setdefault(class_id, {})
            for domain, count in domains.items():
                merged[domain] = merged.get(domain, 0) + count
            if len(merged) > TOP_KEPT:  # while the store is away, only the most blocked wait
                pending_top[class_id] = dict(sorted(merged.items(),
                                                    key=lambda item: -item[1])[:TOP_KEPT])

    async def purge(self) -> int:
        """Delete what is older than retention_days (entries, counts, and the day keys)."""
        async with self._lock:
            now = self.clock()
            self._next_purge = now + self.purge_interval
            oldest_kept = now - self.settings.retention_days * 86400
            first_kept_day = self.day(oldest_kept)
            deleted = await self.store.purge(first_kept_day, oldest_kept)
            self._pseudonyms = {item: value for item, value in self._pseudonyms.items()
                                if item[0] >= first_kept_day}
            self._day_keys = {day: key for day, key in self._day_keys.items()
                              if day >= first_kept_day}
            for pending in (self._counts, self._top, self._unwritten):
                for day in [day for day in pending if day < first_kept_day]:
                    del pending[day]
        if deleted:
            self.purged += deleted
            log.info("query log: %d entries older than %d days deleted", deleted,
                     self.settings.retention_days)
        return deleted

    def day(self, moment: float) -> str:
        return dt.datetime.fromtimestamp(moment, self.zone).date().isoformat()

    def _account(self, batch: list[tuple], now: float, day: str,
                 key: bytes | None) -> list[dict]:
        """The counts (kept in memory until the next flush) and the entries (with
        the device's subject instead of its pseudonym when the day's key is not known yet)."""
        hour = f"{dt.datetime.fromtimestamp(now, self.zone).hour:02d}"
        counts = self._counts.setdefault(day, {})
        top = self._top.setdefault(day, {})
        entries = []
        full, home_too = self._full, self._home_too
        for protocol, client, client_ip, qname, result, reason in batch:
            class_id = (client.class_id if client is not None else None) or "unknown"
            slot = counts.setdefault(class_id, {}).setdefault(hour, {})
            name = outcome(result, reason)
            slot[name] = slot.get(name, 0) + 1
            if result == "blocked":
                self._count_blocked(top, class_id, qname)
            if full:
                qname = text_name(qname)
            if full and client is not None and (home_too or client.scope == "school"):
                subject = client.device_id or subject_of(client_ip or "")
                entry = {
                    "t": round(now, 3), "device": None,
                    "class": class_id, "scope": client.scope, "protocol": protocol,
                    "name": qname, "result": result, "reason": reason,
                }
                if key is None:
                    entry["subject"] = subject
                else:
                    entry["device"] = self._pseudonym(day, key, subject)
                entries.append(entry)
        self.logged += len(batch)
        return entries

    def _add_tally(self, tally: dict[tuple, int], now: float, day: str) -> None:
        """Fold the counts made on the DNS path since the last drain into the hour of `now`
        (one reading of the clock for the day and the hour, as _account)."""
        hour = f"{dt.datetime.fromtimestamp(now, self.zone).hour:02d}"
        counts = self._counts.setdefault(day, {})
        for (class_id, result, reason), count in tally.items():
            slot = counts.setdefault(class_id or "unknown", {}).setdefault(hour, {})
            name = outcome(result, reason)
            slot[name] = slot.get(name, 0) + count
            self.logged += count

    def _count_blocked(self, top: dict, class_id: str, qname) -> None:
        """A blocked name counted under its registrable domain."""
        domain = self.registrable(qname)
        if domain:
            domains = top.setdefault(class_id, {})
            domains[domain] = domains.get(domain, 0) + 1

    def _pseudonym(self, day: str, key: bytes, subject: str) -> str:
        known = self._pseudonyms.get((day, subject))
        if known is None:
            if len(self._pseudonyms) >= 100_000:
                self._pseudonyms.clear()
            known = self._pseudonyms[(day, subject)] = pseudonym(key, subject)
        return known

    def registrable(self, qname: str | bytes) -> str:
        """The registrable domain (eTLD+1) of a name by the Public Suffix List in
        policies/data (private section included: one blogspot.com blog is one domain).

        The fast path hands over its memoised wire names: the memo here is keyed by those very
        bytes, so that an entry costs a dict slot, and a hit no conversion to text."""
        known = self._registrable.get(qname)
        if known is None:

            name = text_name(qname)
            if not name:  # the root
                return ""
            # The suffix with the PSL's default rule (an unlisted TLD is a suffix, as `*`
            # says), plus one label: publicsuffix2's get_sld drops that label for unlisted TLDs.
            suffix = _load_suffix_lists().every.get_tld(name) or ""
            labels = name.split(".")
            known = ".".join(labels[-(suffix.count(".") + 2):]) if suffix and name != suffix \
                else name
            if len(self._registrable) >= REGISTRABLE_MEMO_LIMIT:
                self._registrable.clear()
                self._domains.clear()
            known = self._registrable[qname] = self._domains.setdefault(known, known)
        return known
