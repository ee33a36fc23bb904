"""The decision for one name, one class and one moment: SPEC §2.3, first match wins, explained.

The policy is compiled once per change. What depends on the clock (schedule windows, teacher
overrides) is gathered per class and scope into a `ClassState` that is valid until the next
boundary; decisions are cached inside it, so the common path is one dict lookup.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import time
import zoneinfo
from dataclasses import dataclass, field

from blocklists.bundled import Bundled
from blocklists.compiled import CompiledLists
from policies.model import ClassPolicy, Override, Policy, Rules, Window
from policies.schedule import Timetable


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
    active: bool = True  # a query for this name makes its minute an active one (screen time)

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK


class SuffixMap:
    """Names that match themselves and their subdomains, looked up by walking the parents."""

    __slots__ = ("_entries",)

    def __init__(self, entries: dict[str, str] | None = None):
        self._entries = entries or {}

    def __bool__(self) -> bool:
        return bool(self._entries)

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
    windows: tuple[Window, ...]
    # Every name-keyed rule of the class in one table, so a name's parents are walked once:
    # name -> ((kind, value), ...) with kind own | always_allow | allow | deny | service.
    lookups: dict = field(default_factory=dict)


@dataclass(slots=True)
class ClassState:
    """One class in one scope from now until `valid_until`: what the clock adds to its rules."""

    class_id: str
    scope: str
    rules: _EffectiveRules
    block: frozenset[str]  # categories, the class's and its active windows'
    block_services: frozenset[str]
    closed: str | None  # None, or the block reason while closed: "closed" | "paused"
    closed_rule: str
    temporary_allow: SuffixMap  # active temporary allows (services expanded to their domains)
    valid_from: float  # when it was computed: a clock set back (check --at, tests) recomputes
    valid_until: float
    timed: bool  # has windows, overrides or screen time: answers' TTLs are capped (SPEC §2.6)
    screen_time: int | None = None  # daily minutes per device, then closed until local midnight
    decisions: dict = field(default_factory=dict)  # name -> Decision
    wire_decisions: dict = field(default_factory=dict)  # the fast path's memo, by wire name
    # The same for a device whose screen time is spent today.
    spent_decisions: dict = field(default_factory=dict)
    spent_wire_decisions: dict = field(default_factory=dict)

    def ttl_cap(self, now: float, policy_ttl: int) -> int | None:
        """The longest TTL an answer may carry now, or None when the class is not time-bound."""
        if not self.timed:
            return None
        if self.valid_until == math.inf:
            return policy_ttl
        return max(0, min(policy_ttl, math.floor(self.valid_until - now)))


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    in_force: str | None  # the closing rule in force (a pause, a closed window), if any
    until: float | None  # when the class's state changes (schedule boundary, override end), if it will


FORWARD = Decision(Action.RESOLVE, "11 forward", "no rule matched", inspect=True)
DECISION_CACHE_LIMIT = 200_000


def describe_window(window: Window) -> str:
    days = ",".join(("mon", "tue", "wed", "thu", "fri", "sat", "sun")[day] for day in sorted(window.days))
    span = f"{window.start // 60:02d}:{window.start % 60:02d}-{window.end // 60:02d}:{window.end % 60:02d}"
    effect = "closed" if window.closed else "block " + ",".join(window.block + window.block_services)
    return f"window {days} {span} {effect}" + (" (school days)" if window.school_days_only else "")


class PolicyEngine:
    """Immutable for one (policy, lists, overrides); a change builds a new engine and swaps it in."""

    def __init__(self, policy: Policy, lists: CompiledLists | None, bundled: Bundled,
                 own_names: frozenset[str] = frozenset(), overrides: tuple[Override, ...] = (),
                 timezone: str = "UTC"):
        self.policy = policy
        self.lists = lists
        self.bundled = bundled
        self.overrides = overrides
        self.tz = zoneinfo.ZoneInfo(timezone)
        self._locked = frozenset(policy.locked_categories)
        self._always_allow_entries = {name: "always_allow" for name in policy.always_allow}
        self._own_entries = ({name: "connectivity check" for name in bundled.connectivity}
                             | {name: "classguard's own name" for name in own_names})
        service_domains: dict[str, list[str]] = {}
        for service in bundled.services.values():
            for domain in service.domains:
                service_domains.setdefault(domain, []).append(service.id)
        self._service_entries = {domain: tuple(ids) for domain, ids in service_domains.items()}
        # OS push, time, update and telemetry names: asking for them is not using the tablet.
        self._background_entries = {name: "background" for name in bundled.background}
        self._rules: dict[tuple[str, str], _EffectiveRules] = {}
        self._timetables: dict[tuple[str, str], Timetable] = {}
        for class_policy in policy.classes.values():
            for scope in ("school", "home"):
                rules = self._effective(class_policy, scope)
                self._rules[(class_policy.id, scope)] = rules
                if rules.windows:
                    self._timetables[(class_policy.id, scope)] = Timetable(rules.windows, policy.exceptions, self.tz)
        self._screen_time = {class_policy.id: class_policy.screen_time_minutes
                             for class_policy in policy.classes.values()
                             if class_policy.screen_time_minutes is not None}
        self._overrides_by_class: dict[str, list[Override]] = {}
        for override in overrides:
            self._overrides_by_class.setdefault(override.class_id, []).append(override)
        self._states: dict[tuple[str, str], ClassState] = {}

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
        allow = {name: "allow" for layer in layers for name in layer.allow}
        deny = {name: "deny" for layer in layers for name in layer.deny}
        lookups: dict[str, list] = {}
        for kind, entries in (("own", self._own_entries), ("always_allow", self._always_allow_entries),
                              ("allow", allow), ("deny", deny), ("service", self._service_entries),
                              ("background", self._background_entries)):
            for entry, value in entries.items():
                lookups.setdefault(entry, []).append((kind, value))
        return _EffectiveRules(
            allow=SuffixMap(allow),
            deny=SuffixMap(deny),
            lookups={entry: tuple(found) for entry, found in lookups.items()},
            block=frozenset(block),
            block_services=frozenset(service for layer in layers for service in layer.block_services),
            allow_only=frozenset(allow_only),
            safe_search=safe_search,
            windows=tuple(window for layer in layers for window in layer.schedule),
        )

    # -- the clock's part -----------------------------------------------------------------------

    def class_state(self, class_id: str, scope: str, now: float) -> ClassState | None:
        """The class's state at `now`, reused until its next boundary; None for an unknown class."""
        key = (class_id, scope)
        state = self._states.get(key)
        if state is not None and state.valid_from <= now < state.valid_until:
            return state
        rules = self._rules.get(key)
        if rules is None:
            return None
        state = self._compute_state(class_id, scope, rules, now)
        self._states[key] = state
        return state

    def _compute_state(self, class_id: str, scope: str, rules: _EffectiveRules, now: float) -> ClassState:
        block, block_services = rules.block, rules.block_services
        closed: str | None = None
        closed_rule = ""
        valid_until = math.inf
        timetable = self._timetables.get((class_id, scope))
        if timetable is not None:
            windows = timetable.state_at(now)
            valid_until = windows.valid_until
            block = block | windows.extra_block
            block_services = block_services | windows.extra_block_services
            if windows.closed:
                closed = "closed"
                closed_rule = next(describe_window(w) for w in windows.active if w.closed)
        allows: dict[str, str] = {}
        overrides = self._overrides_by_class.get(class_id, ())
        for override in overrides:
            if override.until <= now:
                continue
            if override.created_at > now:  # not yet in force (a clock set back in a check --at)
                valid_until = min(valid_until, override.created_at)
                continue
            valid_until = min(valid_until, override.until)
            until = self._local_time(override.until)
            if override.kind == "pause":
                closed = "paused"
                closed_rule = f"paused until {until}" + (f" by {override.created_by}" if override.created_by else "")
            elif override.kind == "allow" and override.target:
                label = f"temporary allow of {override.target} until {until}"
                if override.target_kind == "service":
                    service = self.bundled.services.get(override.target)
                    for domain in service.domains if service else ():
                        allows.setdefault(domain, label)
                else:
                    allows.setdefault(override.target, label)
        screen_time = self._screen_time.get(class_id)
        return ClassState(class_id, scope, rules, block, block_services, closed, closed_rule, SuffixMap(allows),
                          now, valid_until, timed=timetable is not None or bool(overrides) or screen_time is not None,
                          screen_time=screen_time)

    def _local_time(self, instant: float) -> str:
        return dt.datetime.fromtimestamp(instant, self.tz).strftime("%H:%M")

    # -- decisions ------------------------------------------------------------------------------

    def decide(self, name: str, class_id: str, scope: str = "school", now: float | None = None) -> Decision:
        state = self.class_state(class_id, scope, time.time() if now is None else now)
        if state is None:
            return Decision(Action.BLOCK, "0 unknown_class", f"class {class_id!r} is not in the policy",
                            reason="unknown_class")
        return self.decide_in(state, name)

    def explain(self, name: str, class_id: str, scope: str, now: float) -> Explanation | None:
        """`classguard check` and the dashboard's "why is this blocked?": the decision and what
        is in force, until when; None for an unknown class."""
        state = self.class_state(class_id, scope, now)
        if state is None:
            return None
        until = state.valid_until if state.timed and state.valid_until != math.inf else None
        return Explanation(self.decide_in(state, name), state.closed_rule if state.closed else None,
                           until)

    def decide_in(self, state: ClassState, name: str, spent: bool = False) -> Decision:
        """The decision in a class state; `spent`: for a device whose screen time is used up."""
        decisions = state.spent_decisions if spent else state.decisions
        decision = decisions.get(name)
        if decision is None:
            decision = self.evaluate_in(state, name, spent)
            if len(decisions) >= DECISION_CACHE_LIMIT:
                decisions.clear()
            decisions[name] = decision
        return decision

    def evaluate_in(self, state: ClassState, name: str, spent: bool = False) -> Decision:
        """decide_in without its memo: for a caller that keeps its own (the fast path)."""
        decision = self._decide_step(name, state, spent)
        if state.screen_time is not None and self._is_background(name, state):
            return Decision(decision.action, decision.step, decision.rule, decision.reason, decision.target,
                            decision.inspect, active=False)
        return decision

    @staticmethod
    def _is_background(name: str, state: ClassState) -> bool:
        lookups = state.rules.lookups
        while True:
            for kind, _value in lookups.get(name, ()):
                if kind in ("background", "own", "always_allow"):
                    return True
            dot = name.find(".")
            if dot < 0:
                return False
            name = name[dot + 1:]

    def _decide_step(self, name: str, state: ClassState, spent: bool) -> Decision:
        bundled = self.bundled
        rules = state.rules
        class_id = state.class_id
        # 1. Bypass protection: answers that keep browsers and OSes on this resolver.
        if self.policy.bypass_protection:
            if name in bundled.nxdomain:
                return Decision(Action.NXDOMAIN, "1 bypass_protection", f"bypass protection: {name}")
            if name in bundled.nodata:
                return Decision(Action.NODATA, "1 bypass_protection", f"bypass protection: {name}")
        # The most specific entry of each kind of rule that covers the name, in one walk.
        hits: dict[str, tuple[str, object]] = {}
        lookups = rules.lookups
        suffix = name
        while True:
            found = lookups.get(suffix)
            if found is not None:
                for kind, value in found:
                    if kind not in hits:
                        hits[kind] = (suffix, value)
            dot = suffix.find(".")
            if dot < 0:
                break
            suffix = suffix[dot + 1:]
        # 2. classguard's own names and the OS connectivity checks always resolve.
        hit = hits.get("own")
        if hit:
            return Decision(Action.RESOLVE, "2 own_names", f"{hit[1]}: {hit[0]}")
        # 3. Safe search: no allow list switches it off.
        if rules.safe_search != "off":
            target = bundled.safe_search_target(name, rules.safe_search)
            if target is not None and target != name:
                return Decision(Action.REWRITE, "3 safe_search", f"safe_search {rules.safe_search}: {name} -> {target}",
                                target=target)
        # 4. Global infrastructure (MDM, OS updates).
        hit = hits.get("always_allow")
        if hit:
            return Decision(Action.RESOLVE, "4 always_allow", f"always_allow: {hit[0]}")
        # 5 and 6. The class's allow list and the teacher's temporary allows (never for a name in
        # a locked category); while closed, they are all that resolves.
        hit = hits.get("allow")
        if hit:
            return Decision(Action.RESOLVE, "6 allow", f"class {class_id} allow: {hit[0]}")
        lists = self.lists
        categories = lists.categories_of(name) if lists is not None else {}
        found = state.temporary_allow.find(name)
        if found and not self._locked.intersection(categories):
            return Decision(Action.RESOLVE, "6 temporary allow", f"{found[1]}: {found[0]}")
        if state.closed is not None:
            return Decision(Action.BLOCK, "5 closed", state.closed_rule, reason=state.closed)
        if spent:
            return Decision(Action.BLOCK, "5 closed", f"screen time: {state.screen_time} minutes used today",
                            reason="screen_time")
        # 7. The class's deny list.
        hit = hits.get("deny")
        if hit:
            return Decision(Action.BLOCK, "7 deny", f"class {class_id} deny: {hit[0]}", reason="deny")
        if lists is None and (rules.allow_only or state.block):
            # 10. Fail closed until the lists are loaded (/readyz says 503 meanwhile).
            return Decision(Action.BLOCK, "10 lists_unavailable", "lists not loaded yet", reason="lists_unavailable")
        # 8. Allowlist-only classes.
        if rules.allow_only and not any(category in categories for category in rules.allow_only):
            return Decision(Action.BLOCK, "8 allow_only",
                            f"class {class_id} allow_only {sorted(rules.allow_only)}: {name} is in none",
                            reason="not_in_allowlist")
        # 9. Blocked categories, then blocked services (the class's and its active windows').
        if categories:
            for category in sorted(state.block.intersection(categories)):
                return Decision(Action.BLOCK, "9 category", f"category {category}: {categories[category]}",
                                reason=f"category:{category}")
        hit = hits.get("service")
        if hit and state.block_services:
            for service in hit[1]:
                if service in state.block_services:
                    return Decision(Action.BLOCK, "9 service", f"service {service}: {hit[0]}",
                                    reason=f"service:{service}")
        # 11. Forward.
        return FORWARD

    def blocked_address(self, address: str, state: ClassState) -> Decision | None:
        """Answer inspection of an address: blocked when a category the class blocks lists it."""
        if self.lists is None or not state.block:
            return None
        for category in sorted(self.lists.categories_of_address(address) & state.block):
            return Decision(Action.BLOCK, "answer inspection", f"category {category}: address {address}",
                            reason=f"category:{category}")
        return None
