"""The decision for one name and one class: SPEC §2.3, first match wins, with its explanation."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from blocklists.bundled import Bundled
from blocklists.compiled import CompiledLists
from policies.model import ClassPolicy, Policy, Rules


class Action(enum.Enum):
    RESOLVE = "resolve"  # forward (through the cache) to the upstreams
    BLOCK = "block"  # the block answer of dns.block_response
    REWRITE = "rewrite"  # safe search: CNAME to `target`
    NXDOMAIN = "nxdomain"  # fixed answers of bypass protection
    NODATA = "nodata"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    step: str  # the step of SPEC §2.3 that decided, e.g. "9 category"
    rule: str  # what matched, in words a user can look up
    reason: str | None = None  # block reason carried in the EDE text, e.g. "category:adult"
    target: str | None = None  # safe-search host for REWRITE
    inspect: bool = False  # whether the upstream answer must pass answer inspection

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK


class SuffixMap:
    """Names that match themselves and their subdomains, looked up by walking the parents."""

    __slots__ = ("_entries",)

    def __init__(self, entries: dict[str, str] | None = None):
        self._entries = entries or {}

    def find(self, name: str) -> tuple[str, str] | None:
        """(matched entry, its value) for the most specific entry covering `name`."""
        entries = self._entries
        if not entries:
            return None
        while True:
            value = entries.get(name)
            if value is not None:
                return name, value
            dot = name.find(".")
            if dot < 0:
                return None
            name = name[dot + 1:]


@dataclass(frozen=True, slots=True)
class _EffectiveRules:
    """A class's rules for one scope, ready for lookups."""

    allow: SuffixMap
    deny: SuffixMap
    block: frozenset[str]
    block_services: frozenset[str]
    allow_only: frozenset[str]
    safe_search: str


FORWARD = Decision(Action.RESOLVE, "11 forward", "no rule matched", inspect=True)
DECISION_CACHE_LIMIT = 200_000


class PolicyEngine:
    """Immutable for one (policy, lists) pair; a change builds a new engine and swaps it in."""

    def __init__(self, policy: Policy, lists: CompiledLists | None, bundled: Bundled,
                 own_names: frozenset[str] = frozenset()):
        self.policy = policy
        self.lists = lists
        self.bundled = bundled
        self._always_allow = SuffixMap({name: "always_allow" for name in policy.always_allow})
        self._own = SuffixMap({name: "classguard's own name" for name in own_names}
                              | {name: "connectivity check" for name in bundled.connectivity})
        service_domains: dict[str, list[str]] = {}
        for service in bundled.services.values():
            for domain in service.domains:
                service_domains.setdefault(domain, []).append(service.id)
        self._services = SuffixMap({domain: ",".join(ids) for domain, ids in service_domains.items()})
        self._rules: dict[tuple[str, str], _EffectiveRules] = {}
        for class_policy in policy.classes.values():
            for scope in ("school", "home"):
                self._rules[(class_policy.id, scope)] = self._effective(class_policy, scope)
        self._cache: dict[tuple[str, str, str], Decision] = {}

    def _effective(self, class_policy: ClassPolicy, scope: str) -> _EffectiveRules:
        base = class_policy.rules
        overlay = class_policy.home if scope == "home" else None
        layers: tuple[Rules, ...] = (base, overlay) if overlay else (base,)
        safe_search = base.safe_search or "off"
        allow_only = base.allow_only
        if overlay is not None:
            safe_search = overlay.safe_search or safe_search
            allow_only = overlay.allow_only or allow_only
        block = {category for layer in layers for category in layer.block}
        if safe_search == "strict":
            block.add("nosafesearch")  # engines with no enforced safe mode
        return _EffectiveRules(
            allow=SuffixMap({name: "allow" for layer in layers for name in layer.allow}),
            deny=SuffixMap({name: "deny" for layer in layers for name in layer.deny}),
            block=frozenset(block),
            block_services=frozenset(service for layer in layers for service in layer.block_services),
            allow_only=frozenset(allow_only),
            safe_search=safe_search,
        )

    def decide(self, name: str, class_id: str, scope: str = "school") -> Decision:
        key = (class_id, scope, name)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide(name, class_id, scope)
            if len(self._cache) >= DECISION_CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = decision
        return decision

    def _decide(self, name: str, class_id: str, scope: str) -> Decision:
        bundled = self.bundled
        # 1. Bypass protection: answers that keep browsers and OSes on this resolver.
        if self.policy.bypass_protection:
            if name in bundled.nxdomain:
                return Decision(Action.NXDOMAIN, "1 bypass_protection", f"bypass protection: {name}")
            if name in bundled.nodata:
                return Decision(Action.NODATA, "1 bypass_protection", f"bypass protection: {name}")
        # 2. classguard's own names and the OS connectivity checks always resolve.
        found = self._own.find(name)
        if found:
            return Decision(Action.RESOLVE, "2 own_names", f"{found[1]}: {found[0]}")
        rules = self._rules.get((class_id, scope))
        if rules is None:
            return Decision(Action.BLOCK, "0 unknown_class", f"class {class_id!r} is not in the policy",
                            reason="unknown_class")
        # 3. Safe search: no allow list switches it off.
        if rules.safe_search != "off":
            target = bundled.safe_search_target(name, rules.safe_search)
            if target is not None and target != name:
                return Decision(Action.REWRITE, "3 safe_search", f"safe_search {rules.safe_search}: {name} -> {target}",
                                target=target)
        # 4. Global infrastructure (MDM, OS updates).
        found = self._always_allow.find(name)
        if found:
            return Decision(Action.RESOLVE, "4 always_allow", f"always_allow: {found[0]}")
        # 6. The class's own allow list.
        found = rules.allow.find(name)
        if found:
            return Decision(Action.RESOLVE, "6 allow", f"class {class_id} allow: {found[0]}")
        # 7. The class's deny list.
        found = rules.deny.find(name)
        if found:
            return Decision(Action.BLOCK, "7 deny", f"class {class_id} deny: {found[0]}", reason="deny")
        lists = self.lists
        if lists is None:
            # 10. Fail closed until the lists are loaded (/readyz says 503 meanwhile).
            if rules.allow_only or rules.block:
                return Decision(Action.BLOCK, "10 lists_unavailable", "lists not loaded yet",
                                reason="lists_unavailable")
            categories = {}
        else:
            categories = lists.categories_of(name)
        # 8. Allowlist-only classes.
        if rules.allow_only and not any(category in categories for category in rules.allow_only):
            return Decision(Action.BLOCK, "8 allow_only",
                            f"class {class_id} allow_only {sorted(rules.allow_only)}: {name} is in none",
                            reason="not_in_allowlist")
        # 9. Blocked categories, then blocked services.
        for category in sorted(rules.block):
            entry = categories.get(category)
            if entry is not None:
                return Decision(Action.BLOCK, "9 category", f"category {category}: {entry}",
                                reason=f"category:{category}")
        if rules.block_services:
            found = self._services.find(name)
            if found:
                for service in found[1].split(","):
                    if service in rules.block_services:
                        return Decision(Action.BLOCK, "9 service", f"service {service}: {found[0]}",
                                        reason=f"service:{service}")
        # 11. Forward.
        return FORWARD

    def blocked_address(self, address: str, class_id: str, scope: str = "school") -> Decision | None:
        """Answer inspection of an address: blocked when a category the class blocks lists it."""
        if self.lists is None:
            return None
        rules = self._rules.get((class_id, scope))
        if rules is None or not rules.block:
            return None
        for category in sorted(self.lists.categories_of_address(address) & rules.block):
            return Decision(Action.BLOCK, "answer inspection", f"category {category}: address {address}",
                            reason=f"category:{category}")
        return None
