"""Everything classguard holds about one device, and its erasure (SPEC §3 `device data` /
`device erase`, GDPR art. 15 and 17), for either store.

A device's data lives in: its record in the stored policy (class, addresses, token digest), its
screen-time minutes (per local day), and, in `query_log.mode: full`, its query-log entries under
each kept day's pseudonym; the per-device counts of the export are computed from those entries
(the aggregate counts are per class, not per device). The audit trail keeps who added, changed
or erased a device (its id), as the controller's record of the processing.

`EmbeddedStore.device_data()` / `erase_device()` and `RedisStore.device_data()` /
`erase_device()` answer with the same shape, so the CLI and the REST API say the same:

    device_data  -> {"device_record": {...} | None, "screen_time_minutes": {DAY: [minute, ...]},
                     "query_log": {"pseudonyms": {DAY: PSEUDONYM}, "entries": [...]},
                     "stats": {DAY: {RESULT: n}}}
    erase_device -> {"device_record": bool, "screen_time_days": n, "query_log_entries": n}
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import yaml

from resolver.querylog import QueryLogStore, pseudonym, subject_of

ERASE_RETRIES = 5  # times a record's removal is tried again when the policy changed meanwhile


def device_record(policy_text: str | None, device_id: str) -> dict | None:
    """The device's record in a stored policy, its token (or digest) shown as ***."""
    if policy_text is None:
        return None
    found = ((yaml.safe_load(policy_text) or {}).get("devices") or {}).get(device_id)
    if not isinstance(found, dict):
        return None
    return {key: ("***" if "token" in key else value) for key, value in found.items()}


def policy_without(policy_text: str, device_id: str) -> str | None:
    """The policy text with the device's record removed; None when it has none."""
    data = yaml.safe_load(policy_text) or {}
    devices = data.get("devices") or {}
    if device_id not in devices:
        return None
    del devices[device_id]
    if not devices:
        data.pop("devices", None)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def minutes_of(bits: bytes) -> list[int]:
    """A screen-time bitmap as the minutes after local midnight it marks."""
    value = int.from_bytes(bits, "little")
    return [minute for minute in range(value.bit_length()) if value >> minute & 1]


# --- the query log's part -----------------------------------------------------------------------


async def _pseudonyms(store: QueryLogStore, device: str) -> dict[str, str]:
    subject = subject_of(device)
    return {day: pseudonym(key, subject) for day, key in (await store.keys()).items()}


async def query_log_data(store: QueryLogStore, device: str) -> dict[str, Any]:
    """The device's entries under every kept day's pseudonym, those pseudonyms, and its counts
    per day and result computed from the entries."""
    pseudonyms = await _pseudonyms(store, device)
    entries = await store.find(pseudonyms)
    day_of = {name: day for day, name in pseudonyms.items()}
    held: dict[str, str] = {}
    stats: dict[str, dict[str, int]] = {}
    for entry in entries:
        day = day_of[entry["device"]]
        held[day] = entry["device"]
        counted = stats.setdefault(day, {})
        counted[entry["result"]] = counted.get(entry["result"], 0) + 1
    return {"query_log": {"pseudonyms": held, "entries": entries}, "stats": stats}


async def erase_query_log(store: QueryLogStore, device: str) -> int:
    """Delete the device's entries of every kept day; how many went."""
    return await store.erase(await _pseudonyms(store, device))


# --- the Redis store's part (RedisStore.device_data / erase_device call these) -------------------


def _minutes_pattern(store, device_id: str) -> str:
    """SCAN pattern of the device's screen-time keys (minutes:DAY:DEVICE), glob characters of the
    id escaped."""
    escaped = "".join(f"\\{char}" if char in "*?[]\\" else char for char in device_id)
    return store.key("minutes:") + "????-??-??:" + escaped


async def _redis_minutes(store, device_id: str) -> dict[str, bytes]:
    async def read(r) -> dict[str, bytes]:
        keys = sorted({key async for key in r.scan_iter(match=_minutes_pattern(store, device_id),
                                                         count=1000)})
        values = await r.mget(keys) if keys else []
        prefix = len(store.key("minutes:"))
        return {key.decode()[prefix:prefix + 10]: value
                for key, value in zip(keys, values) if value is not None}

    return await store._run(read)


async def redis_device_data(store, device_id: str) -> dict[str, Any]:
    from resolver.redis_querylog import RedisQueryLogStore

    policy = await store.get_policy()
    minutes = await _redis_minutes(store, device_id)
    return {
        "device_record": device_record(None if policy is None else policy.text, device_id),
        "screen_time_minutes": {day: minutes_of(bits) for day, bits in sorted(minutes.items())},
        **await query_log_data(RedisQueryLogStore(store), device_id),
    }


async def redis_erase_device(store, device_id: str, actor: str) -> dict[str, Any]:
    from resolver.redis_querylog import RedisQueryLogStore
    from resolver.store import VersionConflict

    erased: dict[str, Any] = {"device_record": False, "screen_time_days": 0,
                              "query_log_entries": 0}
    erased["query_log_entries"] = await erase_query_log(RedisQueryLogStore(store), device_id)
    days = await _redis_minutes(store, device_id)

    async def erase_minutes(r) -> None:
        # every day's index of devices too, even one whose bitmap key has already expired
        indexes = {key async for key in r.scan_iter(match=store.key("minutes:????-??-??"),
                                                     count=1000)}
        async with r.pipeline(transaction=True) as pipe:
            for day in days:
                pipe.delete(store.key(f"minutes:{day}:{device_id}"))
            for index in indexes:
                pipe.srem(index, device_id)
            await pipe.execute()

    await store._run(erase_minutes)
    erased["screen_time_days"] = len(days)
    for _ in range(ERASE_RETRIES):
        policy = await store.get_policy()
        text = None if policy is None else policy_without(policy.text, device_id)
        if text is None:
            break
        try:
            await store.put_policy(text, actor=actor, expected_version=policy.version,
                                   action="device.erase", before=f"device {device_id}",
                                   after="erased")
        except VersionConflict:
            await asyncio.sleep(0.05)
            continue
        erased["device_record"] = True
        break
    else:
        from resolver.store import StoreError

        raise StoreError("the policy kept changing while the device's record was removed; "
                         "run device erase again")
    return erased


# --- an erasure reaches every running process (its buffers too) ---------------------------------

ERASE_AUDIT_LOOK = 200  # newest audit entries searched for the erasure behind a device's removal
CLOCK_SKEW = 300.0  # seconds: an erasure audited on another host may carry a slightly older time


async def device_erase(commands, request: dict, actor: str) -> dict[str, Any]:
    """The `device.erase` control operation (CLI through the control socket, REST API): what
    this process has buffered is written first, so that the counts include it; then the store's
    erase (record, screen-time minutes, query-log entries). Every process that follows the store
    (this one included, at `after_write`) sees the record go, drops what it buffers of the
    device and erases again: see `forget_erased`."""
    from policies.loader import ID_PATTERN
    from resolver.control import ControlError
    from resolver.querylog import subject_of

    device_id = request.get("id")
    if not isinstance(device_id, str) or not (
            ID_PATTERN.fullmatch(device_id) or subject_of(device_id).startswith("ip:")):
        raise ControlError(f"{device_id!r} is neither a device id nor an IP address")
    flush = getattr(commands, "flush_buffers", None)
    if flush is not None:
        await flush()
    erased = await commands.store.erase_device(device_id, actor=actor)
    if commands.after_write is not None:
        await commands.after_write()  # the record's removal applies here at once
    return {"device": device_id, "query_log_entries": erased.pop("query_log_entries"),
            "store": erased}


async def erased_among(store, removed: set[str], since: float) -> set[str]:
    """Those of the devices just removed from the policy whose removal was an erasure (the
    audit says `device.erase`), not a plain `device remove` (which keeps their data)."""
    wanted = {f"device {device_id}": device_id for device_id in removed}
    return {wanted[entry.before] for entry in await store.audit(ERASE_AUDIT_LOOK)
            if entry.action == "device.erase" and entry.before in wanted
            and entry.at >= since - CLOCK_SKEW}


async def forget_erased(store, device_ids: set[str], *, query_log, screen_time) -> None:
    """In one process, once the policy it runs no longer has these erased devices (so no new
    answer is counted for them): drop what it buffers of them, then erase what is stored.

    Under the query log's and the screen tracker's locks, no write of theirs is under way, so
    nothing held before this point can be written after it: once every process has done this,
    nothing of the device is left anywhere, whichever process wrote last."""
    async with contextlib.AsyncExitStack() as locks:
        if query_log is not None:
            await locks.enter_async_context(query_log.lock)
            query_log.forget(device_ids)
        await locks.enter_async_context(screen_time.lock)
        screen_time.forget(device_ids)
        for device_id in sorted(device_ids):
            await store.erase_device(device_id, actor="device.erase")
