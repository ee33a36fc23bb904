"""The resolver chain: one request type, one response type, links that answer or pass on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dnslib import DNSRecord


@dataclass(slots=True)
class Client:
    """Who asked: the outcome of client identification."""

    class_id: str | None
    device_id: str | None = None
    scope: str = "school"  # school | home
    matched_by: str = ""  # "device address", "network 10.0.0.0/24", "default_class", ...


@dataclass(slots=True)
class Request:
    query: DNSRecord
    qname: str  # lowercase, no trailing dot, as on the wire (IDNA already ASCII)
    qtype: int
    client_ip: str
    protocol: str = "udp"  # udp | tcp | doh | dot
    edns_payload: int | None = None  # None: the client sent no OPT record
    dnssec_ok: bool = False
    checking_disabled: bool = False
    client: Client | None = None
    internal: bool = False  # a query classguard makes for itself (safe-search target)


@dataclass(slots=True)
class Response:
    """An answer on its way back to the client; the listener adds OPT and packs it."""

    reply: DNSRecord  # never holds an OPT record
    source: str  # upstream | cache | stale | blocked | local | refused | servfail | rewrite | fixed
    reason: str | None = None  # block reason, e.g. "category:adult"
    ede: tuple[int, str] | None = None  # RFC 8914 extended error (code, text)
    entry: object | None = None  # the cache entry this answer is (resolver.cache.CacheEntry)
    ttl_cap: int | None = None  # no record's TTL above this (a class whose rules follow the clock)


class Resolver(Protocol):
    async def resolve(self, request: Request) -> Response: ...


class Link:
    """A resolver that may answer by itself or hand the request to the next one."""

    next: Resolver

    async def resolve(self, request: Request) -> Response:  # pragma: no cover - interface
        return await self.next.resolve(request)


def chain(*links: Link | Resolver) -> Resolver:
    """Wire links in order; the last one must answer by itself."""
    for link, following in zip(links, links[1:]):
        link.next = following  # type: ignore[union-attr]
    return links[0]


def find_link(head: Resolver | None, kind: type):
    """The first link of a chain that is a `kind` (walking `.next`), or None."""
    link = head
    while link is not None and not isinstance(link, kind):
        link = getattr(link, "next", None)
    return link
