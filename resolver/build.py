"""The one place that assembles what a query goes through; its order is the product's behaviour.

Read `build_chain` as the table of contents of a query. The fast path is derived from that
chain (resolver.fastpath.derive), and `classguard check` and the dashboard's "why" ask the same
chain (resolver.explain), so the three cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from resolver.cache import CacheLink
from resolver.chain import Resolver, chain, find_link
from resolver.client_subnet import ClientSubnetLink
from resolver.clients import IdentifyLink
from resolver.fastpath import FastPath
from resolver.filtering import FilteringLink
from resolver.forwarding import ForwardingResolver
from resolver.local_zones import LocalZonesLink
from resolver.ratelimit import RateLimiter, RateLimitLink
from resolver.record import RecordLink
from resolver.server import QueryHandler
from resolver.settings import DnsSettings
from resolver.state import RuntimeState
from resolver.stats import QueryStats
from resolver.upstream import UpstreamGroup


def build_chain(dns: DnsSettings, state: RuntimeState, upstreams: UpstreamGroup,
                zones: dict[str, UpstreamGroup], stats: QueryStats | None = None) -> Resolver:
    stats = stats if stats is not None else QueryStats()
    limiter = None
    if dns.rate_limit is not None:
        limiter = RateLimiter(dns.rate_limit.qps, dns.rate_limit.burst, dns.trusted_forwarders,
                              identify=lambda address: state.snapshot.clients.identify(address))
    return chain(
        # A flood is refused first and cheapest: checked by every listener at the door, before
        # the query is even read (each transport refuses in its own way).
        RateLimitLink(limiter, stats),
        # On the way back, every answer is counted and handed to the query log (a list append),
        # whatever link gave it; an error below becomes SERVFAIL here.
        RecordLink(stats),
        # A school's own forwarder says who really asked (ECS), before anyone is identified.
        ClientSubnetLink(dns.trusted_forwarders),
        # Who is asking decides everything below; an unknown client is refused here (never an open
        # resolver), before any work is spent on it.
        IdentifyLink(state),
        # Local names never leave: localhost, RFC 6761 special-use names, RFC 6303 private reverse
        # zones (unless a school forwards one of them to its own server).
        LocalZonesLink(frozenset(zones)),
        # The class's policy and the device's screen time, above the cache: the cache only ever
        # holds upstream answers, so one class's decision cannot leak into another class's
        # answer. Answers coming back pass answer inspection here too, cached or not; the TTL
        # cap of a class whose rules follow the clock is set here, once.
        FilteringLink(state, dns.block_response, dns.block_ttl, dns.policy_ttl),
        # Upstream answers with their TTLs; identical questions in flight share one upstream query.
        CacheLink(dns.cache_size),
        # The upstreams, or the server of a forward zone.
        ForwardingResolver(upstreams, zones, trust_ad=dns.upstream_ad == "trust"),
    )


@dataclass
class QueryPath:
    """What the listeners answer with, and the parts the service hands things to."""

    chain: Resolver
    handler: QueryHandler
    fast_path: FastPath | None
    stats: QueryStats

    @property
    def rate_limiter(self) -> RateLimiter | None:
        return find_link(self.chain, RateLimitLink).limiter

    @property
    def record(self) -> RecordLink:
        """Where the service hands the query log."""
        return find_link(self.chain, RecordLink)


def build_query_path(dns: DnsSettings, state: RuntimeState, upstreams: UpstreamGroup,
                     zones: dict[str, UpstreamGroup]) -> QueryPath:
    stats = QueryStats()  # one set of counters for both paths
    head = build_chain(dns, state, upstreams, zones, stats)
    cache = find_link(head, CacheLink)
    # The shortcut through the same links, for queries whose answer is already known; it ages
    # answers by the cache's clock.
    fast_path = FastPath(head, cache, stats) if dns.fast_path else None
    handler = QueryHandler(head, fast_path, cache, stats, find_link(head, RateLimitLink))
    return QueryPath(head, handler, fast_path, stats)
