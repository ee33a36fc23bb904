"""A device's data in the Redis store (GDPR art. 15 and 17): its record and its
screen-time minutes; privacy.gdpr adds the query log's part, kept under this store's keys too."""

from __future__ import annotations

from store.records import DeviceConflict, device_record, minutes_of
from store.redis_backend.device_records import DeviceRecords
from store.redis_backend.minutes import ScreenTimeMinutes
from store.redis_backend.policy import PolicyAndOverrides


class DeviceData(PolicyAndOverrides, DeviceRecords, ScreenTimeMinutes):
    """A device's record and minutes, read and erased."""

    async def device_data(self, device_id: str) -> dict:
        """The device's policy record (no token) and its screen-time minutes per day."""
        record = await self.get_device(device_id)
        minutes = await self._device_minutes(device_id)
        return {
            "device_record": device_record(record),
            "screen_time_minutes": {day: minutes_of(bits) for day, bits in sorted(minutes.items())},
        }

    async def erase_device(self, device_id: str, *, actor: str = "device.erase") -> dict:
        """Delete the device's screen-time keys and its record (audited)."""
        erased: dict = {"device_record": False, "screen_time_days": 0}
        days = await self._device_minutes(device_id)

        async def erase_minutes(r) -> None:
            # every day's index of devices too, even one whose bitmap key has already expired
            indexes = {key async for key in r.scan_iter(match=self.key("minutes:????-??-??"),
                                                         count=1000)}
            async with r.pipeline(transaction=True) as pipe:
                for day in days:
                    pipe.delete(self.key(f"minutes:{day}:{device_id}"))
                for index in indexes:
                    pipe.srem(index, device_id)
                await pipe.execute()

        await self.run(erase_minutes)
        erased["screen_time_days"] = len(days)
        try:
            await self.change_devices([], [device_id], mode="update", actor=actor,
                                      action="device.erase", before=f"device {device_id}",
                                      after="erased", forget=True)
        except DeviceConflict:
            return erased  # no record: nothing to erase there
        erased["device_record"] = True
        return erased
