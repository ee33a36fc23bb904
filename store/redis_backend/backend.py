"""RedisStore: the Store of many instances, composed of the Redis store's parts, one job each."""

from __future__ import annotations

from store.redis_backend.accounts import Accounts
from store.redis_backend.connection import redacted_url
from store.redis_backend.devices import DeviceData
from store.redis_backend.lists import SharedLists


class RedisStore(DeviceData, Accounts, SharedLists):
    """The store in one Redis shared by every instance (SPEC §7): `RedisStore(url, prefix=...,
    state_dir=...)`, state_dir holding this instance's copy for a lost store. Its parts:
    the connection (store.redis_backend.connection), the recovery of a lost store (recovery),
    the policy, overrides and audit (policy), the accounts (accounts), the screen-time minutes
    (minutes), a device's data (devices) and the compiled lists (lists)."""

    def __repr__(self) -> str:
        return f"RedisStore({redacted_url(self.url)!r})"
