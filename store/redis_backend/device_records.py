"""The Redis store's devices: one key each (`device:ID`, JSON) with their indexes (by token
digest, address and class) and a log of what changed (store.redis_backend.scripts,
CHANGE_DEVICES); what is read is held for a rebuild of a lost store."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from policies.model import Device
from store.records import (
    AuditEntry, DeviceConflict, StoreError, device_from_record, device_to_record,
)
from store.redis_backend.recovery import LostStoreRecovery
from store.redis_backend.scripts import AUDIT_KEPT, CHANGE_DEVICES

READ_CHUNK = 1000  # device keys read by one MGET


class DeviceRecords(LostStoreRecovery):
    """`device:ID` records, `devices` (the ids, sorted), `devices:token`, `devices:address`,
    `devices:class:CLASS`, `devices:log` (id -> sequence of its last change) and
    `devices:seq`."""

    async def devices(self) -> tuple[list[Device], int]:
        async def read(r):
            async with r.pipeline(transaction=True) as pipe:
                pipe.get(self.key("devices:seq"))
                pipe.zrange(self.key("devices"), 0, -1)
                seq, ids = await pipe.execute()
            records = []
            for start in range(0, len(ids), READ_CHUNK):
                chunk = ids[start:start + READ_CHUNK]
                records.extend(await r.mget([self.key(f"device:{i.decode()}") for i in chunk]))
            return int(seq or 0), records

        seq, records = await self.run(read)
        devices = [device_from_record(json.loads(raw)) for raw in records if raw is not None]
        self._devices = {device.id: device for device in devices}
        self._devices_seq = seq
        return devices, seq

    async def device_changes(self, since: int) -> tuple[list[tuple[str, Device | None]], int] | None:
        async def read(r):
            async with r.pipeline(transaction=True) as pipe:
                pipe.get(self.key("devices:seq"))
                pipe.get(self.key("devices:floor"))
                pipe.zrangebyscore(self.key("devices:log"), f"({since}", "+inf")
                seq, floor, ids = await pipe.execute()
            seq, floor = int(seq or 0), int(floor or 0)
            if since > seq or since < floor:
                return None
            ids = [item.decode() for item in ids]
            records = await r.mget([self.key(f"device:{i}") for i in ids]) if ids else []
            return seq, ids, records

        result = await self.run(read)
        if result is None:
            return None
        seq, ids, records = result
        changes = [(device_id, None if raw is None else device_from_record(json.loads(raw)))
                   for device_id, raw in zip(ids, records)]
        for device_id, device in changes:  # held for a rebuild of a lost store
            if device is None:
                self._devices.pop(device_id, None)
            else:
                self._devices[device_id] = device
        self._devices_seq = seq
        return changes, seq

    async def get_device(self, device_id: str) -> Device | None:
        raw = await self.run(lambda r: r.get(self.key(f"device:{device_id}")))
        return None if raw is None else device_from_record(json.loads(raw))

    async def change_devices(self, put: list[Device], remove: list[str] = (), *, mode: str,
                             actor: str, action: str, before: str = "", after: str = "",
                             forget: bool = False) -> int:
        puts = json.dumps([_indexed(device) for device in put])
        entry = json.dumps(asdict(AuditEntry(at=time.time(), actor=actor, action=action,
                                             before=before, after=after)))
        known, new = self._markers()
        result = await self.run(lambda r: r.eval(
            CHANGE_DEVICES, 9, self.key("version"), self.key("marker"), self.key("audit"),
            self.key("changes"), self.key("devices:seq"), self.key("devices:log"),
            self.key("devices"), self.key("devices:token"), self.key("devices:address"),
            known, new, mode, puts, json.dumps(list(remove)), entry, AUDIT_KEPT, self.instance,
            self.prefix, "1" if forget else ""))
        status = result[0].decode()
        if status == "lost":
            raise StoreError("the Redis store was lost and is being rebuilt; try again in a second")
        if status == "conflict":
            raise DeviceConflict(result[1].decode())
        if self._marker is None:
            self._marker = result[3].decode()
        return int(result[1])


def _indexed(device: Device) -> dict:
    """A device as CHANGE_DEVICES and RESTORE_DEVICES take it: its record and what indexes it."""
    record = device_to_record(device)
    return {"id": device.id, "class": device.class_id, "token": device.token_sha256 or "",
            "addresses": record["addresses"], "json": json.dumps(record)}
