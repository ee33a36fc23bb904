"""The running snapshot: policy, lists and what is compiled from them, replaced whole on change."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from blocklists.bundled import Bundled
from blocklists.compiled import CompiledLists
from policies.engine import PolicyEngine
from policies.model import Override, Policy
from resolver.clients import ClientIndex
from resolver.screentime import ScreenTime

log = logging.getLogger("classguard.state")


@dataclass(frozen=True, slots=True)
class Snapshot:
    policy: Policy
    lists: CompiledLists | None
    overrides: tuple[Override, ...]
    engine: PolicyEngine
    clients: ClientIndex


class RuntimeState:
    """Readers take `state.snapshot` (or `.engine`, `.clients`) without locks: a change rebinds it.

    `clock` is the wall clock every decision is taken at (schedules, overrides); tests set it.
    """

    def __init__(self, policy: Policy, lists: CompiledLists | None, bundled: Bundled,
                 unknown_clients: str = "refuse", own_names: frozenset[str] = frozenset(),
                 overrides: tuple[Override, ...] = (), timezone: str = "UTC", clock=time.time):
        self.bundled = bundled
        self.unknown_clients = unknown_clients
        self.own_names = own_names
        self.timezone = timezone
        self.clock = clock
        self.screen_time = ScreenTime(timezone)  # the service gives it the store
        self.snapshot = self._build(policy, lists, overrides)

    def _build(self, policy: Policy, lists: CompiledLists | None, overrides: tuple[Override, ...]) -> Snapshot:
        engine = PolicyEngine(policy, lists, self.bundled, self.own_names, overrides, self.timezone)
        return Snapshot(policy, lists, overrides, engine, ClientIndex(policy, self.unknown_clients))

    @property
    def engine(self) -> PolicyEngine:
        return self.snapshot.engine

    @property
    def clients(self) -> ClientIndex:
        return self.snapshot.clients

    @property
    def overrides(self) -> tuple[Override, ...]:
        return self.snapshot.overrides

    @property
    def lists_loaded(self) -> bool:
        return self.snapshot.lists is not None

    def replace_policy(self, policy: Policy) -> None:
        snapshot = self.snapshot
        self.snapshot = self._build(policy, snapshot.lists, snapshot.overrides)

    def apply_devices(self, changes) -> set[str]:
        """Device changes, (id, device or None when removed), applied to the running book in
        place: the client index forgets the addresses they touch; the policy, its engine and
        the decisions remembered stay. The ids removed."""
        book = self.snapshot.policy.devices
        touched, removed = [], set()
        for device_id, device in changes:
            old = book.remove(device_id) if device is None else book.put(device)
            if old is not None:
                touched.extend(old.addresses)
            if device is None:
                if old is not None:
                    removed.add(device_id)
            else:
                touched.extend(device.addresses)
        self.snapshot.clients.forget(touched)
        return removed

    def replace_lists(self, lists: CompiledLists) -> None:
        snapshot = self.snapshot
        self.snapshot = self._build(snapshot.policy, lists, snapshot.overrides)

    def replace_overrides(self, overrides: tuple[Override, ...]) -> None:
        snapshot = self.snapshot
        self.snapshot = self._build(snapshot.policy, snapshot.lists, tuple(overrides))
