"""A device's data in the Redis store (GDPR art. 15 and 17): its record in the policy and its
screen-time minutes; privacy.gdpr adds the query log's part, kept under this store's keys too."""

from __future__ import annotations

import asyncio

from store.records import StoreError, VersionConflict, device_record, minutes_of, policy_without
from store.redis_backend.minutes import ScreenTimeMinutes
from store.redis_backend.policy import PolicyAndOverrides

ERASE_RETRIES = 5  # times a record's removal is tried again when the policy changed meanwhile


class DeviceData(PolicyAndOverrides, ScreenTimeMinutes):
    """A device's record and minutes, read and erased."""

    async def device_data(self, device_id: str) -> dict:
        """The device's policy record (no token) and its screen-time minutes per day."""
        policy = await self.get_policy()
        minutes = await self._device_minutes(device_id)
        return {
            "device_record": device_record(None if policy is None else policy.text, device_id),
            "screen_time_minutes": {day: minutes_of(bits) for day, bits in sorted(minutes.items())},
        }

    async def erase_device(self, device_id: str, *, actor: str = "device.erase") -> dict:
        """Delete the device's screen-time keys and its record in the policy (audited)."""
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
        for _ in range(ERASE_RETRIES):
            policy = await self.get_policy()
            text = None if policy is None else policy_without(policy.text, device_id)
            if text is None:
                return erased
            try:
                await self.put_policy(text, actor=actor, expected_version=policy.version,
                                      action="device.erase", before=f"device {device_id}",
                                      after="erased")
            except VersionConflict:
                await asyncio.sleep(0.05)
                continue
            erased["device_record"] = True
            return erased
        raise StoreError("the policy kept changing while the device's record was removed; "
                         "run device erase again")
