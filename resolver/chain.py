"""The resolver chain: one request type, one response type, links that answer or pass on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dnslib import DNSRecord

from policies.engine import Decision


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
    received: float = 0.0  # perf_counter() when the bytes arrived: the latency the counters see
    # A question asked to explain a decision (`classguard check`, the dashboard's "why"): decided
    # at `at` (None: now), counting no screen-time minute, neither counted nor logged.
    explain: bool = False
    at: float | None = None
    # EDNS options (wire bytes) the answer's OPT record carries besides ours: the client subnet
    # echoed to a trusted forwarder (resolver.client_subnet).
    options: bytes = b""


@dataclass(slots=True)
class Response:
    """An answer on its way back to the client; the listener adds OPT and packs it."""

    reply: DNSRecord  # never holds an OPT record
    source: str  # upstream | cache | stale | blocked | local | refused | servfail | rewrite | fixed
    reason: str | None = None  # block reason, e.g. "category:adult"
    ede: tuple[int, str] | None = None  # RFC 8914 extended error (code, text)
    entry: object | None = None  # the cache entry this answer is (resolver.cache.CacheEntry)
    ttl_cap: int | None = None  # no record's TTL above this (a class whose rules follow the clock)
    decision: Decision | None = None  # what decided (step and rule), for check and "why"


class Resolver(Protocol):
    async def resolve(self, request: Request) -> Response: ...


class FastQuery:
    """One query on the fast path, and what its steps learn of it: one object reused for every
    query (the fast path never awaits, so one query is on it at a time)."""

    __slots__ = ("data", "raw", "client_ip", "protocol", "client", "mono", "ttl_cap",
                 "entry", "result", "reason", "true_until", "on_repeat")

    def __init__(self) -> None:
        self.data = b""  # the query's bytes
        self.raw = None  # resolver.wire.RawQuery: the question, read once per distinct bytes
        self.client_ip = ""
        self.protocol = "udp"
        self.client: Client | None = None
        self.mono = 0.0  # the fast path's monotonic clock (the cache's), read once per query
        self.ttl_cap: int | None = None
        self.entry = None  # the cache entry an answer was made from
        self.result = ""  # what the query came to, for the counters (common.results)
        self.reason: str | None = None
        self.true_until = 0.0  # until when (by `mono`) the answer's bytes stay true
        self.on_repeat: Callable[[], None] | None = None  # what a repeat of the answer must redo


# A step of the fast path: the answer's bytes, or None for "take the chain" (which starts over).
FastStep = Callable[[FastQuery], "bytes | None"]


class Link:
    """A resolver that may answer by itself or hand the request to the next one.

    Each link also says what it does on the fast path, with its own rules:
    - `fast_step(following)` returns the synchronous step for each query (it may return
      `following` itself when it has nothing to do there);
    - `fast_question(raw) -> bool` says whether a question (resolver.wire.RawQuery) may take the
      fast path at all, asked once per distinct query bytes (what depends on the question alone);
    - or `slow_path_only = True`: the fast path stops before this link.
    resolver.fastpath.derive refuses a chain where a link does none of these.
    """

    next: Resolver
    slow_path_only = False

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


def failure(exc: BaseException) -> str:
    """An exception as one short line for the log: its type and where it was raised, never its
    message (which may hold a queried name) nor a traceback a client could make us write."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else ""
    return f"{type(exc).__name__}{where}"
