"""The embedded store's devices: one row each in `devices.sqlite` under state_dir (SQLite, WAL,
synchronous=FULL: a committed change survives a crash), indexed by token digest, address,
class, and the sequence of the change that last wrote it, so a watcher reads only what changed.

A removed device leaves a tombstone (its id and the sequence of its removal, nothing else), so
that other processes learn of the removal; the oldest tombstones are pruned past
TOMBSTONES_KEPT, and a reader further behind than that reads the devices whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path

from policies.model import Device
from store.records import ADD, SET, UPDATE, DeviceConflict, StoreError, device_from_record

DEVICES_FILE = "devices.sqlite"
TOMBSTONES_KEPT = 1000
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another one (as the store's lock)

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    class TEXT,
    token_sha256 TEXT UNIQUE,
    addresses TEXT NOT NULL DEFAULT '[]',
    seq INTEGER NOT NULL,
    live INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_seq ON devices (seq);
CREATE INDEX IF NOT EXISTS devices_class ON devices (class, id);
CREATE TABLE IF NOT EXISTS device_addresses (address TEXT PRIMARY KEY, id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class DeviceTable:
    """The device rows; blocking calls (the store runs them in threads, or the CLI directly).
    Each thread has its own connection."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / DEVICES_FILE
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()

    def _connection(self, create: bool = True) -> sqlite3.Connection | None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        if not self.path.exists():
            if not create:
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # owner-only before SQLite opens it
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA secure_delete=ON")  # an erased device leaves no bytes
            connection.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: unreadable ({exc})") from None
        self._local.connection = connection
        with self._all_lock:
            self._all.append(connection)
        return connection

    def close(self) -> None:
        with self._all_lock:
            for connection in self._all:
                connection.close()
            self._all.clear()
        self._local = threading.local()

    def seq(self) -> int:
        """The sequence of the last change (0: none yet). Cheap: the watcher's poll asks it."""
        connection = self._connection(create=False)
        if connection is None:
            return 0
        return _meta(connection, "seq")

    def devices(self) -> tuple[list[Device], int]:
        connection = self._connection(create=False)
        if connection is None:
            return [], 0
        with _read(connection):
            rows = connection.execute(
                "SELECT id, class, token_sha256, addresses FROM devices WHERE live ORDER BY id"
            ).fetchall()
            seq = _meta(connection, "seq")
        return [_device(row) for row in rows], seq

    def get(self, device_id: str) -> Device | None:
        connection = self._connection(create=False)
        if connection is None:
            return None
        row = connection.execute("SELECT id, class, token_sha256, addresses FROM devices "
                                 "WHERE id = ? AND live", (device_id,)).fetchone()
        return None if row is None else _device(row)

    def changes(self, since: int) -> tuple[list[tuple[str, Device | None]], int] | None:
        connection = self._connection(create=False)
        if connection is None:
            return ([], 0) if since == 0 else None
        with _read(connection):
            seq = _meta(connection, "seq")
            if since > seq or since < _meta(connection, "floor"):
                return None  # a store that went back, or tombstones pruned since
            rows = connection.execute(
                "SELECT id, class, token_sha256, addresses, live FROM devices WHERE seq > ? "
                "ORDER BY seq", (since,)).fetchall()
        return [(row[0], _device(row[:4]) if row[4] else None) for row in rows], seq

    def change(self, put: list[Device], remove: list[str], mode: str, *,
               forget: bool = False) -> int:
        """One transaction: `remove`, then `put` (see Store.change_devices); the new sequence.
        `forget`: the removed rows go whole (their bytes zeroed: secure_delete, and the WAL
        emptied after), and readers behind this sequence read the devices whole."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            seq = _meta(connection, "seq") + 1
            for device_id in remove:
                if not _live(connection, device_id):
                    raise DeviceConflict(f"no device {device_id!r}")
                _bury(connection, device_id, seq)
                if forget:
                    connection.execute("DELETE FROM devices WHERE id = ?", (device_id,))
            for device in put:
                exists = _live(connection, device.id)
                if mode == ADD and exists:
                    raise DeviceConflict(f"device {device.id!r} exists already")
                if mode == UPDATE and not exists:
                    raise DeviceConflict(f"no device {device.id!r}")
                connection.execute("DELETE FROM device_addresses WHERE id = ?", (device.id,))
                if device.token_sha256 is not None:
                    owner = connection.execute(
                        "SELECT id FROM devices WHERE token_sha256 = ? AND id != ?",
                        (device.token_sha256, device.id)).fetchone()
                    if owner is not None:
                        raise DeviceConflict(f"that token belongs to device {owner[0]!r}")
                for address in device.addresses:
                    owner = connection.execute("SELECT id FROM device_addresses WHERE address = ?",
                                               (str(address),)).fetchone()
                    if owner is not None:
                        raise DeviceConflict(f"address {address} already belongs to device "
                                             f"{owner[0]!r}")
                    connection.execute("INSERT OR IGNORE INTO device_addresses VALUES (?, ?)",
                                       (str(address), device.id))
                connection.execute(
                    "INSERT INTO devices (id, class, token_sha256, addresses, seq, live) "
                    "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (id) DO UPDATE SET class = excluded.class, "
                    "token_sha256 = excluded.token_sha256, addresses = excluded.addresses, "
                    "seq = excluded.seq, live = 1",
                    (device.id, device.class_id, device.token_sha256,
                     json.dumps([str(address) for address in device.addresses]), seq))
            _set_meta(connection, "seq", seq)
            if forget and remove:
                _set_meta(connection, "floor", seq)
            _prune(connection)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        if forget:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return seq


@contextlib.contextmanager
def _read(connection: sqlite3.Connection):
    """One consistent reading (a read transaction)."""
    connection.execute("BEGIN")
    try:
        yield
    finally:
        connection.execute("COMMIT")


def _meta(connection: sqlite3.Connection, key: str) -> int:
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return 0 if row is None else int(row[0])


def _set_meta(connection: sqlite3.Connection, key: str, value: int) -> None:
    connection.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                       "value = excluded.value", (key, value))


def _live(connection: sqlite3.Connection, device_id: str) -> bool:
    return connection.execute("SELECT 1 FROM devices WHERE id = ? AND live",
                              (device_id,)).fetchone() is not None


def _bury(connection: sqlite3.Connection, device_id: str, seq: int) -> None:
    """The row becomes a tombstone: its id and the sequence of its removal, nothing else."""
    connection.execute("DELETE FROM device_addresses WHERE id = ?", (device_id,))
    connection.execute("UPDATE devices SET class = NULL, token_sha256 = NULL, addresses = '[]', "
                       "seq = ?, live = 0 WHERE id = ?", (seq, device_id))


def _prune(connection: sqlite3.Connection) -> None:
    dead = connection.execute("SELECT count(*) FROM devices WHERE NOT live").fetchone()[0]
    if dead <= 2 * TOMBSTONES_KEPT:
        return
    cut = connection.execute("SELECT seq FROM devices WHERE NOT live ORDER BY seq DESC "
                             "LIMIT 1 OFFSET ?", (TOMBSTONES_KEPT,)).fetchone()[0]
    connection.execute("DELETE FROM devices WHERE NOT live AND seq <= ?", (cut,))
    _set_meta(connection, "floor", cut)


def _device(row) -> Device:
    return device_from_record({"id": row[0], "class": row[1], "token_sha256": row[2],
                               "addresses": json.loads(row[3])})
