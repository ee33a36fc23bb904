"""Everything classguard holds about one device, and its erasure (SPEC §3 `device data` /
`device erase`, GDPR art. 15 and 17), for either store.

A device's data lives in: its record in the stored policy (class, addresses, token digest), its
screen-time minutes (per local day), and, in `query_log.mode: full`, its query-log entries under
each kept day's pseudonym; the per-device counts of the export are computed from those entries
(the aggregate counts are per class, not per device). The audit trail keeps who added, changed
or erased a device (its id), as the controller's record of the processing.

`device_data()` and `erase_device()` here add the query log's part to what the store holds
(`Store.device_data()` / `erase_device()`), with the same shape for either store, so the CLI and
the REST API say the same:

    device_data  -> {"device_record": {...} | None, "screen_time_minutes": {DAY: [minute, ...]},
                     "query_log": {"pseudonyms": {DAY: PSEUDONYM}, "entries": [...]},
                     "stats": {DAY: {RESULT: n}}}
    erase_device -> {"device_record": bool, "screen_time_days": n, "query_log_entries": n}
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from privacy.querylog import (
    EmbeddedQueryLogStore, QueryLogSettings, QueryLogStore, pseudonym, subject_of,
)
from privacy.redis_querylog import RedisQueryLogStore
from store.protocol import FileBacked, RedisKeyspace, Store

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


# --- the whole of it: the store's part and the query log's


def query_log_store_for(store: Store, *, retention_days: int = 7,
                        timezone: str = "UTC") -> QueryLogStore:
    """Where the query log lives with this store: the Redis server's keys (expiring with
    retention, shared by every instance), else files under the embedded store's state_dir."""
    if isinstance(store, RedisKeyspace):
        return RedisQueryLogStore(store, retention_days=retention_days, timezone=timezone)
    assert isinstance(store, FileBacked), store  # the two backends there are
    return EmbeddedQueryLogStore(store.state_dir)


async def device_data(store: Store, device_id: str) -> dict[str, Any]:
    """Everything held about one device: its record, its minutes, its query-log entries."""
    return {**await store.device_data(device_id),
            **await query_log_data(query_log_store_for(store), device_id)}


async def device_report(store: Store, settings: QueryLogSettings, device_id: str) -> dict:
    """`classguard device data ID` and the API's `/devices/ID/data` (GDPR art. 15): everything
    held about one device, as JSON-ready data, with the query log's settings."""
    held = await device_data(store, device_id)
    return {
        "device": device_id,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **held,
        "query_log": {"mode": settings.mode, "retention_days": settings.retention_days,
                      **held["query_log"]},
    }


async def erase_device(store: Store, device_id: str, *, actor: str = "device.erase") -> dict[str, Any]:
    """Delete the device's query-log entries, then its minutes and its record (audited)."""
    entries = await erase_query_log(query_log_store_for(store), device_id)
    return {**await store.erase_device(device_id, actor=actor), "query_log_entries": entries}


# --- an erasure reaches every running process (its buffers too) ---------------------------------

ERASE_AUDIT_LOOK = 200  # newest audit entries searched for the erasure behind a device's removal
CLOCK_SKEW = 300.0  # seconds: an erasure audited on another host may carry a slightly older time


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
            await erase_device(store, device_id)
