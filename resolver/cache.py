"""The answer cache: upstream answers only, TTLs honoured, LRU-bounded, identical queries coalesced."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from resolver.answers import (
    EDE_STALE_ANSWER, OPT, answer_addresses, copy_reply, empty_reply, udp_limit,
)
from resolver.chain import Link, Request, Response
from resolver.wire import AD_BIT, RD_BIT, U32, opt_record, record_ttl_offsets

MAX_TTL = 86400
STALE_WINDOW = 86400  # RFC 8767: serve an expired answer for up to a day while upstreams are down
STALE_TTL = 30  # RFC 8767 §4: the TTL of a stale answer
PLAIN_OPT = {False: opt_record(False), True: opt_record(True)}  # our OPT record, by the DO bit


@dataclass(slots=True)
class CacheEntry:
    rcode: int
    # The records as parsed objects only until the entry is packed: a packed entry keeps its
    # bytes alone (a few hundred bytes instead of a few kilobytes of dnslib objects) and the
    # rare slow-path hit parses them again.
    answer: list[RR] | None
    authority: list[RR] | None
    additional: list[RR] | None
    stored_at: float
    ttl: int
    # The answer packed once (id 0, RD clear, lowercase question, no OPT) and where its TTLs
    # are, so that a hit is a copy and a few patches instead of a pack.
    wire: bytes = b""
    ttl_offsets: tuple[tuple[int, int], ...] = ()
    question_end: int = 0
    # What answer inspection looks at, read once; and its verdict per (engine, class, scope).
    cnames: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    inspected: dict | None = None
    ad: bool = False  # the upstream's AD bit, kept only under dns.upstream_ad: trust

    def fresh(self, now: float) -> bool:
        return self.stored_at + self.ttl > now

    def reply_for(self, query: DNSRecord, now: float, stale: bool = False) -> DNSRecord:
        elapsed = int(now - self.stored_at)
        reply = empty_reply(query, self.rcode)
        reply.header.ad = int(self.ad)
        answer, authority, additional = self.answer, self.authority, self.additional
        if answer is None:
            packed = DNSRecord.parse(self.wire)
            answer, authority, additional = packed.rr, packed.auth, packed.ar

        def aged(records: list[RR]) -> list[RR]:
            return [RR(r.rname, r.rtype, r.rclass,
                       STALE_TTL if stale else max(0, min(r.ttl, self.ttl) - elapsed), r.rdata)
                    for r in records]

        reply.rr, reply.auth, reply.ar = aged(answer), aged(authority), aged(additional)
        return reply

    def render(self, data: bytes, now: float, rd: bool, edns_payload: int | None, dnssec_ok: bool,
               limit: int | None, ttl_cap: int | None = None) -> bytes | None:
        """This entry as the answer to the query `data`; None when it does not fit in `limit`."""
        elapsed = int(now - self.stored_at)
        wire = bytearray(self.wire)
        wire[0:2] = data[0:2]
        if rd:
            wire[2] |= RD_BIT >> 8
        if self.ad and not (data[3] & AD_BIT or dnssec_ok):
            wire[3] &= ~AD_BIT  # RFC 6840 §5.7: AD only to a client that asked with AD or DO
        end = self.question_end
        question = data[12:end]
        if not self.wire.startswith(question, 12) and question.lower() == self.wire[12:end]:
            wire[12:end] = question  # the client's own letter case (RFC 4343), e.g. 0x20 encoding
        for offset, ttl in self.ttl_offsets:
            ttl = ttl - elapsed if ttl > elapsed else 0
            U32.pack_into(wire, offset, ttl if ttl_cap is None or ttl < ttl_cap else ttl_cap)
        if edns_payload is not None:
            wire[11] += 1  # ARCOUNT: fewer than 256 additional records, since we packed them
            wire += PLAIN_OPT[dnssec_ok]
        if limit is not None and len(wire) > limit:
            return None
        return bytes(wire)


def wire_name(labels) -> bytes:
    return b"".join(bytes((len(label),)) + label.lower() for label in labels) + b"\x00"


def pack_entry(entry: CacheEntry, question: DNSQuestion, checking_disabled: bool) -> None:
    header = DNSHeader(id=0, qr=1, ra=1, rd=0, rcode=entry.rcode)
    header.cd = int(checking_disabled)
    header.ad = int(entry.ad)
    lowered = DNSQuestion(DNSLabel([label.lower() for label in question.qname.label]), question.qtype,
                          question.qclass)
    message = DNSRecord(header=header, questions=[lowered])

    def capped(records: list[RR]) -> list[RR]:
        return [RR(r.rname, r.rtype, r.rclass, min(r.ttl, entry.ttl), r.rdata) for r in records]

    message.rr, message.auth, message.ar = capped(entry.answer), capped(entry.authority), capped(entry.additional)
    wire = bytes(message.pack())
    if wire[11] == 255:  # ARCOUNT too large to bump by one byte: keep to the slow path
        return
    entry.wire = wire
    entry.ttl_offsets = tuple(record_ttl_offsets(wire))
    entry.question_end = 12 + len(wire_name(question.qname.label)) + 4
    entry.cnames = tuple(str(r.rdata.label).rstrip(".").lower() for r in entry.answer if r.rtype == QTYPE.CNAME)
    entry.addresses = tuple(answer_addresses(entry.answer))
    entry.inspected = {}
    entry.answer = entry.authority = entry.additional = None


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
        self._fast_next = None

    async def resolve(self, request: Request) -> Response:
        query = request.query
        key = (wire_name(query.q.qname.label), request.qtype, query.q.qclass, request.dnssec_ok,
               request.checking_disabled)
        now = self.clock()
        entry = self.entries.get(key)
        if entry is not None and entry.stored_at + entry.ttl > now:
            self.entries.move_to_end(key)
            self.hits += 1
            return Response(entry.reply_for(query, now), "cache", entry=entry)
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
        self._store(key, response.reply, request)
        pending.set_result(response)
        return self._answer(key, query, response)

    def _answer(self, key: tuple, query: DNSRecord, response: Response) -> Response:
        """One client's copy of an upstream answer: from the cache, stale, or copied as it came."""
        now = self.clock()
        entry = self.entries.get(key)
        if entry is not None and entry.stored_at + entry.ttl > now:
            return Response(entry.reply_for(query, now), response.source, entry=entry)
        if response.reply.header.rcode == RCODE.SERVFAIL:
            stale = self._stale(key, query)
            if stale is not None:
                return stale
        return Response(copy_reply(response.reply, query), response.source, ede=response.ede)

    def fast_step(self, following):
        """A fresh entry answers from its packed bytes; a miss goes on (to the chain)."""
        self._fast_next = following
        return self._fast_answer

    def _fast_answer(self, query) -> bytes | None:
        raw = query.raw
        now = query.mono  # the fast path's clock is this cache's
        key = raw.cache_key
        entry = self.entries.get(key)
        if entry is None or entry.stored_at + entry.ttl <= now or not entry.wire:
            return self._fast_next(query)
        self.entries.move_to_end(key)
        self.hits += 1
        query.entry, query.result, query.reason = entry, "cached", None
        query.on_repeat = self._count_hit  # a repeat of this reply is a hit in the metrics too
        # Its TTLs drop by one when a whole second more has passed since it was stored.
        stored_at = entry.stored_at
        query.true_until = min(stored_at + int(now - stored_at) + 1, stored_at + entry.ttl)
        return entry.render(query.data, now, raw.rd, raw.edns_payload, raw.dnssec_ok,
                            udp_limit(raw.edns_payload) if query.protocol == "udp" else None,
                            query.ttl_cap)

    def _count_hit(self) -> None:
        self.hits += 1

    def _store(self, key: tuple, reply: DNSRecord, request: Request) -> CacheEntry | None:
        ttl = cache_ttl(reply)
        if ttl <= 0:
            return None
        entry = CacheEntry(reply.header.rcode, list(reply.rr), list(reply.auth),
                           [r for r in reply.ar if r.rtype != OPT], self.clock(), ttl,
                           ad=bool(reply.header.ad))
        pack_entry(entry, request.query.q, request.checking_disabled)
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
