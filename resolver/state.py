"""The running snapshot: policy, lists and what is compiled from them, replaced whole on change."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from blocklists.bundled import Bundled
from blocklists.compiled import CompiledLists
from policies.engine import PolicyEngine
from policies.model import Policy
from resolver.clients import ClientIndex

log = logging.getLogger("classguard.state")


@dataclass(frozen=True, slots=True)
class Snapshot:
    policy: Policy
    lists: CompiledLists | None
    engine: PolicyEngine
    clients: ClientIndex


class RuntimeState:
    """Readers take `state.engine` / `state.clients` without locks: a change rebinds one attribute."""

    def __init__(self, policy: Policy, lists: CompiledLists | None, bundled: Bundled,
                 unknown_clients: str = "refuse", own_names: frozenset[str] = frozenset()):
        self.bundled = bundled
        self.unknown_clients = unknown_clients
        self.own_names = own_names
        self.snapshot = self._build(policy, lists)

    def _build(self, policy: Policy, lists: CompiledLists | None) -> Snapshot:
        return Snapshot(policy, lists, PolicyEngine(policy, lists, self.bundled, self.own_names),
                        ClientIndex(policy, self.unknown_clients))

    @property
    def engine(self) -> PolicyEngine:
        return self.snapshot.engine

    @property
    def clients(self) -> ClientIndex:
        return self.snapshot.clients

    @property
    def lists_loaded(self) -> bool:
        return self.snapshot.lists is not None

    def replace_policy(self, policy: Policy) -> None:
        self.snapshot = self._build(policy, self.snapshot.lists)

    def replace_lists(self, lists: CompiledLists) -> None:
        self.snapshot = self._build(self.snapshot.policy, lists)
