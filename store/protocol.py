"""The Store protocol: what every backend offers, and the abilities only some backends have."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from policies.model import Device, Override
from store.records import ApiToken, AuditEntry, Session, StoredPolicy, User


class Store(Protocol):
    """What every store offers (embedded today, Redis next): small, async, whole values.

    The DNS path never calls a store: a server answers from its in-memory snapshot and only its
    watcher reads the store (`version()` every poll, the rest when the version moved).
    """

    async def version(self) -> int:
        """A number that changes on every write of any kind (cheap: the watcher polls it)."""

    async def get_policy(self) -> StoredPolicy | None: ...

    async def put_policy(self, text: str, *, actor: str, expected_version: int | None = None,
                         action: str = "policy.import", before: str = "",
                         after: str = "") -> StoredPolicy:
        """Replace the policy. `expected_version` (0: none stored yet) refuses a stale write with
        VersionConflict. The same text again is no change: no new version, nothing audited."""

    async def overrides(self) -> list[Override]:
        """The overrides that have not ended, oldest first."""

    async def add_override(self, override: Override, *, actor: str) -> Override: ...

    async def cancel_override(self, override_id: str, *, actor: str) -> Override:
        """End an override now; NotFound when there is no such override (or it has ended)."""

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` entries, newest first."""

    async def import_audit(self, entries: list[AuditEntry]) -> int:
        """Add these entries (a backup's) to the audit log, in time order with those it holds;
        one already there (same time, actor, action, before, after) is not added twice. How many
        were added. Moves no version."""

    async def close(self) -> None: ...

    async def merge_active_minutes(self, day: str, minutes: dict[str, bytes]) -> dict[str, bytes]:
        """Screen time: OR these minute bitmaps into `day`'s; every device's merged bitmap."""

    # Dashboard accounts (SPEC §3, §6). One record a key, so each maps to one Redis key
    # (user:NAME, token:SHA256, session:SHA256 with the session's TTL). These writes do not move
    # `version()`: nothing on the DNS path depends on them.

    async def get_user(self, name: str) -> User | None: ...

    async def users(self) -> list[User]: ...

    async def put_user(self, user: User, *, actor: str, action: str, before: str = "") -> User:
        """Create or replace an account; audited (`action`: user.add, user.reset, user.change,
        user.language; `before`: describe_user of what it replaces), no hash in it."""

    async def delete_user(self, name: str, *, actor: str) -> None:
        """Remove an account (audited as user.remove); nothing happens when there is none."""

    async def get_token(self, sha256: str) -> ApiToken | None: ...

    async def tokens(self) -> list[ApiToken]: ...

    async def put_token(self, token: ApiToken, *, actor: str, action: str) -> ApiToken:
        """Create a token or store its revocation; audited."""

    async def get_session(self, sha256: str) -> Session | None:
        """The session, or None when there is none or it has expired."""

    async def put_session(self, session: Session) -> None: ...

    async def delete_session(self, sha256: str) -> None: ...

    # Devices: records of their own (one key or row each), indexed by token digest, address and
    # class, outside the policy's text. Every change moves `version()` and the devices' own
    # sequence, so a watcher reads only what changed since the sequence it applied.

    async def devices(self) -> tuple[list[Device], int]:
        """Every enrolled device, and the devices' sequence this reading is at."""

    async def device_changes(self, since: int) -> tuple[list[tuple[str, Device | None]], int] | None:
        """What changed after sequence `since`: (device id, the device as it is now, or None
        when it was removed), oldest first, and the sequence reached; None when the store no
        longer knows what changed since then (read `devices()` whole)."""

    async def change_devices(self, put: list[Device], remove: list[str] = (), *, mode: str,
                             actor: str, action: str, before: str = "", after: str = "",
                             forget: bool = False) -> int:
        """Store these devices and remove those ids in one audited, atomic change (nothing
        happens unless all of it can): `mode` (records.ADD, UPDATE or SET) says whether a put
        device must be new, stored already, or either; a removed id must be stored; a token or
        an address another device holds is refused (DeviceConflict). `forget` (an erasure) leaves
        no trace of the removed ids, not even in what changed: readers behind read the devices
        whole. The new sequence."""

    # A device's data as the store holds it (GDPR art. 15 and 17): privacy.gdpr adds the query
    # log's part and says the shape.

    async def device_data(self, device_id: str) -> dict:
        """{"device_record": {...} | None, "screen_time_minutes": {DAY: [minute, ...]}}"""

    async def erase_device(self, device_id: str, *, actor: str = "device.erase") -> dict:
        """Delete its minutes and its record (audited as device.erase, "device ID"):
        {"device_record": bool, "screen_time_days": n}"""


@runtime_checkable
class RedisKeyspace(Protocol):
    """A store that is a Redis server (store.redis_backend.RedisStore): the query log keeps its
    entries under the same keys, with the same connection."""

    def key(self, name: str) -> str:
        """The full key of `name`, under this store's prefix."""

    async def run(self, operation: Callable[[Any], Awaitable[Any]]) -> Any:
        """`operation(client)`, with the store's reconnection and its StoreUnavailable."""


@runtime_checkable
class FileBacked(Protocol):
    """A store that keeps its state in files under `state_dir` (store.embedded.EmbeddedStore)."""

    state_dir: Path


# What only a store shared by many instances (Redis) can do. Callers never probe a store for
# these: the composition root (classguard.service) finds them once, as StoreAbilities, and
# hands each part the abilities it uses.


@runtime_checkable
class SharesLists(Protocol):
    """A store that carries the compiled lists between instances: one compiles and publishes,
    the others fetch instead of compiling."""

    async def lists_manifest(self) -> dict | None:
        """What is published (sha256, size, chunks, built_at, by, status), or None."""

    async def publish_lists(self, path: Path, built_at: float | None = None,
                            status: str | None = None) -> dict:
        """The artifact at `path` (with the refresh report `status`) for every instance; the
        manifest."""

    async def fetch_lists(self, path: Path, status_path: Path | None = None) -> dict | None:
        """The published artifact written to `path` (its report to `status_path`) when it
        differs; the manifest, or None when nothing is published."""


@runtime_checkable
class CountsLoginFailures(Protocol):
    """A store that counts failed logins for every instance (dashboard.auth.StoreThrottle):
    one counter a name, expiring on its own."""

    async def count_failure(self, name: str, window_ms: Callable[[int], int]) -> int:
        """One more failure; the counter then lives `window_ms(new count)` ms. The new count."""

    async def failures(self, name: str) -> tuple[int, int]:
        """(count, milliseconds it has left to live); (0, 0) when there is none."""

    async def forget_failures(self, name: str) -> None: ...


@runtime_checkable
class ReportsHealth(Protocol):
    """A store that can be away while the server answers from its snapshot: /readyz reports
    that as a note rather than as a reason (classguard.metrics.ReadinessProbe)."""

    async def health(self) -> str | None:
        """None while the store answers; else that it is away, and for how long."""


@runtime_checkable
class KeepsCounters(Protocol):
    """A store that counts its outages, losses and dropped writes (classguard_store_*_total)."""

    counters: dict[str, int]

    @property
    def available(self) -> bool:
        """False while the store is away."""


@runtime_checkable
class RecoversLostStore(Protocol):
    """A store that can lose its state behind the server's back (a Redis that came back empty)
    and be rebuilt from what an instance holds (SPEC §7)."""

    generation: int  # moves when this instance adopted a store another instance rebuilt

    async def remember(self) -> None:
        """Hold (and save under state_dir) what was read, for a rebuild; after each change."""

    async def restore_saved(self) -> bool:
        """At startup on an empty store: write back this instance's saved copy when its version
        is the highest. True when written."""


@runtime_checkable
class PublishesChanges(Protocol):
    """A store that tells the other instances when it was written: the watcher reads at once
    instead of at its next poll."""

    def subscribe(self) -> asyncio.Event:
        """An event set when another instance writes."""


@dataclass(frozen=True, slots=True)
class StoreAbilities:
    """What a store offers beyond `Store`, found once where the store is wired: each field is
    the store itself when it has that ability, else None."""

    shares_lists: SharesLists | None = None
    login_failures: CountsLoginFailures | None = None
    health: ReportsHealth | None = None
    counters: KeepsCounters | None = None
    recovery: RecoversLostStore | None = None
    changes: PublishesChanges | None = None

    @classmethod
    def of(cls, store: Store | None) -> StoreAbilities:
        def able(protocol: type) -> Any:
            return store if isinstance(store, protocol) else None

        return cls(shares_lists=able(SharesLists), login_failures=able(CountsLoginFailures),
                   health=able(ReportsHealth), counters=able(KeepsCounters),
                   recovery=able(RecoversLostStore), changes=able(PublishesChanges))
