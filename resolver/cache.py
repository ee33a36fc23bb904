"""The answer cache: upstream answers only, TTLs honoured, LRU-bounded, identical queries coalesced."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, RR, DNSRecord

from resolver.answers import EDE_STALE_ANSWER, OPT, copy_reply, empty_reply
from resolver.chain import Link, Request, Response

MAX_TTL = 86400
STALE_WINDOW = 86400  # RFC 8767: serve an expired answer for up to a day while upstreams are down
STALE_TTL = 30  # RFC 8767 §4: the TTL of a stale answer


@dataclass(slots=True)
class CacheEntry:
    rcode: int
    answer: list[RR]
    authority: list[RR]
    additional: list[RR]
    stored_at: float
    ttl: int

    def reply_for(self, query: DNSRecord, now: float, stale: bool = False) -> DNSRecord:
        elapsed = int(now - self.stored_at)
        reply = empty_reply(query, self.rcode)

        def aged(records: list[RR]) -> list[RR]:
            # No record outlives the entry: a negative answer's SOA carries the negative TTL
            # (RFC 2308 §5), and a record's TTL above MAX_TTL is cut to it.
            return [RR(r.rname, r.rtype, r.rclass,
                       STALE_TTL if stale else max(0, min(r.ttl, self.ttl) - elapsed), r.rdata)
                    for r in records]

        reply.rr, reply.auth, reply.ar = aged(self.answer), aged(self.authority), aged(self.additional)
        return reply


def cache_ttl(reply: DNSRecord) -> int:
    """How long an upstream answer may be kept: the smallest TTL, or RFC 2308's for negatives."""
    rcode = reply.header.rcode
    if rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN) or reply.header.tc:
        return 0
    if rcode == RCODE.NOERROR and reply.rr:
        return min(MAX_TTL, min(record.ttl for record in reply.rr))
    for record in reply.auth:  # negative answer: RFC 2308 §5, min(SOA TTL, SOA MINIMUM)
        if record.rtype == QTYPE.SOA:
            return min(MAX_TTL, record.ttl, record.rdata.times[-1])
    return 0


class CacheLink(Link):
    def __init__(self, max_entries: int = 100_000, clock=time.monotonic):
        self.max_entries = max_entries
        self.clock = clock
        self.entries: OrderedDict[tuple, CacheEntry] = OrderedDict()
        self.inflight: dict[tuple, asyncio.Future[CacheEntry | None]] = {}
        self.hits = self.misses = 0

    async def resolve(self, request: Request) -> Response:
        query = request.query
        key = (request.qname, request.qtype, query.q.qclass, request.dnssec_ok, request.checking_disabled)
        now = self.clock()
        entry = self.entries.get(key)
        if entry is not None and entry.stored_at + entry.ttl > now:
            self.entries.move_to_end(key)
            self.hits += 1
            return Response(entry.reply_for(query, now), "cache")
        self.misses += 1
        pending = self.inflight.get(key)
        if pending is not None:
            # Someone is already asking the upstream this very question: wait for that answer.
            response = await asyncio.shield(pending)
            if response is None:
                return self._stale(key, query) or Response(empty_reply(query, RCODE.SERVFAIL), "servfail")
            return self._answer(key, query, response)
        pending = asyncio.get_running_loop().create_future()
        self.inflight[key] = pending
        try:
            response = await self.next.resolve(request)
        except BaseException:
            pending.set_result(None)
            raise
        finally:
            del self.inflight[key]
        self._store(key, response.reply)
        pending.set_result(response)
        return self._answer(key, query, response)

    def _answer(self, key: tuple, query: DNSRecord, response: Response) -> Response:
        """One client's copy of an upstream answer: from the cache, stale, or copied as it came."""
        now = self.clock()
        entry = self.entries.get(key)
        if entry is not None and entry.stored_at + entry.ttl > now:
            return Response(entry.reply_for(query, now), response.source)
        if response.reply.header.rcode == RCODE.SERVFAIL:
            stale = self._stale(key, query)
            if stale is not None:
                return stale
        return Response(copy_reply(response.reply, query), response.source, ede=response.ede)

    def _store(self, key: tuple, reply: DNSRecord) -> CacheEntry | None:
        ttl = cache_ttl(reply)
        if ttl <= 0:
            return None
        entry = CacheEntry(reply.header.rcode, list(reply.rr), list(reply.auth),
                           [r for r in reply.ar if r.rtype != OPT], self.clock(), ttl)
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return entry

    def _stale(self, key: tuple, query: DNSRecord) -> Response | None:
        entry = self.entries.get(key)
        if entry is None or entry.stored_at + entry.ttl + STALE_WINDOW <= self.clock():
            return None
        return Response(entry.reply_for(query, self.clock(), stale=True), "stale",
                        ede=(EDE_STALE_ANSWER, "stale answer: upstreams unreachable"))
