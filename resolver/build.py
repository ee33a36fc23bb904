"""The one place that assembles the resolver chain; its order is the product's behaviour."""

from __future__ import annotations

from resolver.cache import CacheLink
from resolver.chain import Resolver, chain, find_link
from resolver.clients import IdentifyLink
from resolver.fastpath import FastPath
from resolver.filtering import FilteringLink
from resolver.forwarding import ForwardingResolver
from resolver.local_zones import LocalZonesLink
from resolver.settings import DnsSettings
from resolver.state import RuntimeState
from resolver.upstream import UpstreamGroup


def build_chain(dns: DnsSettings, state: RuntimeState, upstreams: UpstreamGroup,
                zones: dict[str, UpstreamGroup]) -> Resolver:
    return chain(
        # Who is asking decides everything below; an unknown client is refused here (never an open
        # resolver), before any work is spent on it.
        IdentifyLink(state),
        # Local names never leave: localhost, RFC 6761 special-use names, RFC 6303 private reverse
        # zones (unless a school forwards one of them to its own server).
        LocalZonesLink(frozenset(zones)),
        # The class's policy, above the cache: the cache only ever holds upstream answers, so one
        # class's decision cannot leak into another class's answer. Answers coming back pass
        # answer inspection here too, cached or not.
        FilteringLink(state, dns.block_response, dns.block_ttl, dns.policy_ttl),
        # Upstream answers with their TTLs; identical questions in flight share one upstream query.
        CacheLink(dns.cache_size),
        # The upstreams, or the server of a forward zone.
        ForwardingResolver(upstreams, zones),
    )


def build_fast_path(head: Resolver, state: RuntimeState) -> FastPath:
    """The shortcut through the same links, for queries whose answer is already known."""
    return FastPath(state, find_link(head, LocalZonesLink), find_link(head, FilteringLink),
                    find_link(head, CacheLink))
