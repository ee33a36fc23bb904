"""Backup and restore of the whole state of a store, in one versioned JSON document: the policy,
the devices, the dashboard's users, the API tokens, the overrides in force, today's (and
yesterday's) screen-time minutes and the audit log. The same for both stores, through the Store
protocol only: a backup of the embedded store restores into Redis (a migration) and back.

A restore writes through the store's ordinary, audited writes: every change moves the store's
version, so a server running on it applies the restored state at once (its watcher).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from admin.errors import ControlError
from policies.model import Override
from store.protocol import Store
from store.records import (
    SET, UPDATE, ApiToken, AuditEntry, DiskFull, User, device_from_record, device_to_record,
)

FORMAT = "classguard-backup"
VERSION = 1
AUDIT_ALL = 10 ** 9  # a backup keeps the whole audit log the store holds
RESTORE_ACTOR_SUFFIX = " (store restore)"


async def backup(store: Store, *, days: tuple[str, ...]) -> dict[str, Any]:
    """The document of everything `store` holds; `days` the local days whose screen-time
    minutes it keeps (today, yesterday)."""
    stored = await store.get_policy()
    devices, _seq = await store.devices()
    minutes: dict[str, dict[str, list[int]]] = {}
    for device in devices:
        data = await store.device_data(device.id)
        for day, used in (data.get("screen_time_minutes") or {}).items():
            if day in days and used:
                minutes.setdefault(day, {})[device.id] = list(used)
    now = time.time()
    return {
        "format": FORMAT, "version": VERSION, "created_at": now,
        "store": type(store).__name__,
        "policy": None if stored is None else dataclasses.asdict(stored),
        "devices": [device_to_record(device) for device in devices],
        "users": [dataclasses.asdict(user) for user in await store.users()],
        "tokens": [dataclasses.asdict(token) for token in await store.tokens()],
        "overrides": [dataclasses.asdict(item) for item in await store.overrides()
                      if item.until > now],
        "screen_time_minutes": minutes,
        "audit": [dataclasses.asdict(entry)
                  for entry in reversed(await store.audit(AUDIT_ALL))],  # oldest first
    }


def write_backup(path: Path, text: str) -> None:
    """Owner-only (0600) from its creation; refuses to write over a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ControlError(f"{path} exists already; give a new file name (nothing was written)") \
            from None
    try:
        with open(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (28, 122):  # ENOSPC, EDQUOT
            raise DiskFull(f"cannot write {path}: the disk is full (nothing was written)") from None
        raise


def read_backup(data: Any, source: str) -> dict[str, Any]:
    """The document checked: its format and version, and every record readable (ControlError
    naming the place at fault; nothing is changed)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ControlError(f"{source}: not a classguard backup (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ControlError(f"{source}: backup format version {data.get('version')!r} is not one "
                           f"this classguard reads ({VERSION})")
    for key in ("devices", "users", "tokens", "overrides", "audit"):
        if not isinstance(data.get(key), list):
            raise ControlError(f"{source}: \"{key}\" must be a list")
    place = source
    try:
        for index, item in enumerate(data["devices"]):
            place = f"{source}: devices[{index}]"
            device_from_record(item)
        for index, item in enumerate(data["users"]):
            place = f"{source}: users[{index}]"
            User.from_record(item)
        for index, item in enumerate(data["tokens"]):
            place = f"{source}: tokens[{index}]"
            ApiToken(**item)
        for index, item in enumerate(data["overrides"]):
            place = f"{source}: overrides[{index}]"
            Override(**item)
        for index, item in enumerate(data["audit"]):
            place = f"{source}: audit[{index}]"
            AuditEntry(**item)
        place = f"{source}: policy"
        policy = data.get("policy")
        if policy is not None and not isinstance(policy.get("text"), str):
            raise TypeError("no text")
        place = f"{source}: screen_time_minutes"
        for day, devices in (data.get("screen_time_minutes") or {}).items():
            dt.date.fromisoformat(day)
            for used in devices.values():
                if not all(isinstance(minute, int) and 0 <= minute < 1440 for minute in used):
                    raise ValueError("a minute is a number from 0 to 1439")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ControlError(f"{place}: unreadable ({exc}); nothing was changed") from None
    return data


async def holds(store: Store) -> dict[str, int]:
    """What the store holds now, counted (what a restore replaces)."""
    devices, _seq = await store.devices()
    stored = await store.get_policy()
    return {"policy version": 0 if stored is None else stored.version,
            "devices": len(devices), "users": len(await store.users()),
            "tokens": len(await store.tokens()), "overrides": len(await store.overrides())}


def describe(counts: dict[str, int]) -> str:
    version = counts["policy version"]
    return (f"{'no policy' if not version else f'policy version {version}'}, "
            f"{counts['devices']} devices, {counts['users']} users, {counts['tokens']} API "
            f"tokens, {counts['overrides']} overrides")


def empty(counts: dict[str, int]) -> bool:
    return not any(counts.values())


def counts_of(data: dict[str, Any]) -> dict[str, int]:
    policy = data.get("policy")
    return {"policy version": 0 if policy is None else int(policy.get("version") or 1),
            "devices": len(data["devices"]), "users": len(data["users"]),
            "tokens": len(data["tokens"]), "overrides": len(data["overrides"])}


async def restore(store: Store, data: dict[str, Any], *, actor: str) -> dict[str, int]:
    """Make `store` hold what `data` holds (checked by read_backup): each part replaced through
    the store's audited writes, so that a running server applies it. What was restored."""
    who = actor + RESTORE_ACTOR_SUFFIX
    now = time.time()
    policy = data.get("policy")
    if policy is not None:
        await store.put_policy(policy["text"], actor=who, action="store.restore",
                               after=f"policy from a backup (its version {policy.get('version')})")
    # devices: the current ones out, the backup's in (two changes: a token or an address may
    # move from one device to another)
    current, _seq = await store.devices()
    backup_devices = [device_from_record(item) for item in data["devices"]]
    if current:
        await store.change_devices([], [device.id for device in current], mode=UPDATE, actor=who,
                                   action="store.restore", before=f"{len(current)} devices",
                                   after="replaced by a backup's")
    if backup_devices:
        await store.change_devices(backup_devices, [], mode=SET, actor=who, action="store.restore",
                                   after=f"{len(backup_devices)} devices from a backup")
    # accounts: the backup's users and tokens; others removed (users) or revoked (tokens)
    users = {item["name"]: User.from_record(item) for item in data["users"]}
    for user in await store.users():
        if user.name not in users:
            await store.delete_user(user.name, actor=who)
    for user in users.values():
        await store.put_user(user, actor=who, action="store.restore")
    tokens = {item["sha256"]: ApiToken(**item) for item in data["tokens"]}
    for token in await store.tokens():
        if token.sha256 not in tokens and not token.revoked:
            await store.put_token(dataclasses.replace(token, revoked=True), actor=who,
                                  action="store.restore")
    for token in tokens.values():
        await store.put_token(token, actor=who, action="store.restore")
    # overrides: those in force in the backup and not ended since
    wanted = {item["id"]: Override(**item) for item in data["overrides"]
              if item["until"] > now}
    for item in await store.overrides():
        if item.id not in wanted:
            await store.cancel_override(item.id, actor=who)
    held = {item.id for item in await store.overrides()}
    for item in wanted.values():
        if item.id not in held:
            await store.add_override(item, actor=who)
    # today's screen-time minutes, added to what the store counts
    for day, devices in (data.get("screen_time_minutes") or {}).items():
        bitmaps = {device_id: _bitmap(used) for device_id, used in devices.items()}
        if bitmaps:
            await store.merge_active_minutes(day, bitmaps)
    audited = await store.import_audit([AuditEntry(**item) for item in data["audit"]])
    return {**counts_of(data), "audit entries": audited}


def _bitmap(minutes: list[int]) -> bytes:
    value = 0
    for minute in minutes:
        value |= 1 << minute
    return value.to_bytes(180, "little")

