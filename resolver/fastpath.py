"""The fast path: the chain's answer for the common cases, read and written as raw bytes.

A query whose decision is known (per class state, i.e. class, scope and the span of time until
its next schedule boundary or override end, and per name) and whose answer is a
block or a fresh cache entry is answered here without parsing or packing a message. Anything
else returns None and takes the chain, which stays the reference: the bytes are the same.
"""

from __future__ import annotations

import math
from time import perf_counter

from blocklists.names import wire_name_to_text
from policies.engine import Action
from resolver.answers import udp_limit
from resolver.cache import CacheLink
from resolver.chain import Client
from resolver.filtering import FilteringLink
from resolver.local_zones import LocalZonesLink
from resolver.state import RuntimeState
from resolver.stats import QueryStats
from resolver.wire import RawQuery, read_query

QTYPE_ANY = 255
DECISION_MEMO_LIMIT = 200_000
QUERY_MEMO_LIMIT = 20_000  # distinct queries read once and kept (all forgotten when full): ~6 MB
_SLOW = object()  # memo value: this name always takes the chain (a local zone)


class FastPath:
    def __init__(self, state: RuntimeState, local_zones: LocalZonesLink, filtering: FilteringLink,
                 cache: CacheLink):
        self.state = state
        self.local_zones = local_zones
        self.filtering = filtering
        self.cache = cache
        self._queries: dict[bytes, RawQuery] = {}
        # The replies made during the current second (by the cache's clock), by query bytes:
        # a popular name asked again in the same class state is one dict lookup and a copy.
        self._rendered: dict[bytes, tuple] = {}
        self._rendered_until = 0.0
        self._rendered_true_until = 0.0
        self._blocks: dict[tuple, object] = {}  # (reason, active) -> the first such block decision
        self.stats = QueryStats()  # shared with the chain's handler: one set of counters
        # The outcome of the query being answered, for the counters (the path never awaits).
        self._class_id: str | None = None
        self._result = ""
        self._reason: str | None = None
        self._client: Client | None = None
        self._qname = b""
        self.query_log = None  # privacy.querylog.QueryLog, set by the service: offer() only

    def answer(self, data: bytes, client_ip: str, protocol: str = "udp", client: Client | None = None) -> bytes | None:
        started = perf_counter()
        wire = self._answer(data, client_ip, protocol, client)
        if wire is not None:
            stats = self.stats
            stats.fast_answers += 1
            stats.record(protocol, self._class_id, self._result, self._reason, perf_counter() - started)
            query_log = self.query_log
            if query_log is not None:  # a list append; the log's own task does the rest
                query_log.offer(protocol, self._client, client_ip, self._qname, self._result,
                                self._reason)
        return wire

    def _decision(self, engine, class_state, qname: bytes, spent: bool):
        """The decision for a wire name in a class state, memoised there; _SLOW for a local zone."""
        memo = class_state.spent_wire_decisions if spent else class_state.wire_decisions
        decision = memo.get(qname)
        if decision is None:
            name = wire_name_to_text(qname)
            if self.local_zones.local_zone(name) is not None:
                decision = _SLOW
            else:
                decision = engine.evaluate_in(class_state, name, spent)
                if decision.action is Action.BLOCK:
                    # A block's bytes depend on its reason alone: one shared object per reason
                    # instead of one per name (a million listed names stay cheap to remember).
                    decision = self._blocks.setdefault((decision.reason, decision.active), decision)
            if len(memo) >= DECISION_MEMO_LIMIT:
                memo.clear()
            memo[qname] = decision
        return decision

    def _answer(self, data: bytes, client_ip: str, protocol: str, client: Client | None) -> bytes | None:
        snapshot = self.state.snapshot
        if client is None:
            client = snapshot.clients.identify(client_ip)
            if client is None:
                return None
        now = self.state.clock()
        engine = snapshot.engine
        class_state = engine.class_state(client.class_id, client.scope, now)
        if class_state is None:
            return None
        ttl_cap = class_state.ttl_cap(now, self.filtering.policy_ttl) if class_state.timed else None
        tail = data[2:]  # clients repeat the same bytes but for the id
        cache_now = self.cache.clock()
        if class_state.screen_time is not None:  # every query counts a device's minutes
            return self._render(data, tail, client, engine, class_state, now, cache_now, ttl_cap,
                                protocol)
        if cache_now >= self._rendered_until:  # the replies of the second before are forgotten
            self._rendered.clear()
            self._rendered_until = cache_now + 1.0
        rendered = self._rendered.get(tail)
        if rendered is not None and rendered[0] is class_state and rendered[1] == ttl_cap \
                and rendered[2] == protocol and cache_now < rendered[3]:
            # The same query, in the same class state, while its bytes are still true.
            _state, _cap, _protocol, _until, reply, qname, result, reason = rendered
            self._class_id, self._client, self._qname = client.class_id, client, qname
            self._result, self._reason = result, reason
            if result == "cached":
                self.cache.hits += 1
            return data[0:2] + reply
        wire = self._render(data, tail, client, engine, class_state, now, cache_now, ttl_cap,
                            protocol)
        if wire is not None:
            self._rendered[tail] = (class_state, ttl_cap, protocol, self._rendered_true_until,
                                    wire[2:], self._qname, self._result, self._reason)
        return wire

    def _render(self, data: bytes, tail: bytes, client: Client, engine, class_state, now: float,
                cache_now: float, ttl_cap: int | None, protocol: str) -> bytes | None:
        """The reply made from the memoised query, decision and cache entry; notes in
        _rendered_true_until when its bytes stop being true (an entry's TTL ticks)."""
        raw = self._queries.get(tail)
        if raw is None:
            raw = read_query(data)
            if raw is None or raw.qtype == QTYPE_ANY:
                return None
            if len(self._queries) >= QUERY_MEMO_LIMIT:
                self._queries.clear()
            self._queries[tail] = raw
        decision = self._decision(engine, class_state, raw.qname, False)
        if decision is _SLOW:
            return None
        if class_state.screen_time is not None and client.device_id is not None:
            tracker = self.state.screen_time
            used = tracker.observe(client.device_id, now) if decision.active else tracker.used(client.device_id, now)
            if used > class_state.screen_time:
                decision = self._decision(engine, class_state, raw.qname, True)
                ttl_cap = min(ttl_cap, max(0, int(tracker.day_end - now)))
        action = decision.action
        self._class_id = client.class_id
        self._client, self._qname = client, raw.qname
        cache = self.cache
        self._rendered_true_until = math.inf  # a block's bytes do not age
        if action is Action.BLOCK:
            self._result, self._reason = "blocked", decision.reason
            return self.filtering.render_block(data, raw, decision, ttl_cap)
        if action is not Action.RESOLVE:
            return None
        entry = cache.lookup(raw.cache_key, cache_now)
        if entry is None:
            return None
        if decision.inspect:
            verdict = self.filtering.entry_verdict(engine, entry, class_state)
            if verdict is not None:
                self._result, self._reason = "blocked", verdict.reason
                return self.filtering.render_block(data, raw, verdict, ttl_cap)
        self._result, self._reason = "cached", None
        # Its TTLs drop by one when a whole second more has passed since it was stored.
        stored_at = entry.stored_at
        self._rendered_true_until = min(stored_at + int(cache_now - stored_at) + 1, stored_at + entry.ttl)
        return entry.render(data, cache_now, raw.rd, raw.edns_payload, raw.dnssec_ok,
                            udp_limit(raw.edns_payload) if protocol == "udp" else None, ttl_cap)
