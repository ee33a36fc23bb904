"""The answer cache, seen from a DNS client: TTLs kept and counted down, negative caching
(RFC 2308), an LRU bound, coalesced identical queries, and serve-stale (RFC 8767)."""

from __future__ import annotations

import asyncio

import dns.rcode
import dns.rdatatype

from resolver.cache import STALE_TTL, STALE_WINDOW, CacheLink
from tests.conftest import PUPILS, STAFF, ede


class Clock:
    """A settable clock for the cache: time passes only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def start(make_resolver, **dns_settings):
    resolver = await make_resolver(**dns_settings)
    cache = resolver.service.link(CacheLink)
    assert cache is not None, "no CacheLink in the chain"
    clock = Clock()
    cache.clock = clock
    return resolver, clock


def addresses(message) -> list[str]:
    return sorted(item.to_text() for rrset in message.answer for item in rrset
                  if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))


def asked(upstream, name: str) -> int:
    return sum(1 for _transport, qname, _type in upstream.queries if qname == name)


async def test_answer_is_cached_with_decremented_ttl(make_resolver, upstream):
    resolver, clock = await start(make_resolver)
    first = await resolver.query("example.com")
    assert first.answer[0].ttl == 300
    clock.advance(100)
    second = await resolver.query("example.com")
    assert addresses(second) == ["93.184.215.14"]
    assert second.answer[0].ttl == 200
    clock.advance(150)
    assert (await resolver.query("example.com", tcp=True)).answer[0].ttl == 50
    assert asked(upstream, "example.com") == 1


async def test_expired_answer_is_fetched_again(make_resolver, upstream):
    resolver, clock = await start(make_resolver)
    await resolver.query("example.com")
    clock.advance(300)
    upstream.add("example.com", "A", "192.0.2.99")  # the zone changed meanwhile
    again = await resolver.query("example.com")
    assert addresses(again) == ["192.0.2.99"]
    assert again.answer[0].ttl == 300
    assert asked(upstream, "example.com") == 2


async def test_cache_is_shared_by_classes_but_filtering_is_not(make_resolver, upstream):
    resolver, _clock = await start(make_resolver)
    open_ = await resolver.query("adult.example", source=STAFF)
    assert addresses(open_) == ["198.51.100.1"]
    blocked = await resolver.query("adult.example", source=PUPILS)
    assert addresses(blocked) == ["0.0.0.0"]
    assert ede(blocked) == [(15, "category:adult")]


async def test_nxdomain_is_cached_for_the_soa_minimum(make_resolver, upstream):
    """RFC 2308 §5: the fake zone's SOA has TTL 300 and MINIMUM 60, so 60 s."""
    resolver, clock = await start(make_resolver)
    first = await resolver.query("nothing-here.example")
    assert first.rcode() == dns.rcode.NXDOMAIN
    clock.advance(30)
    cached = await resolver.query("nothing-here.example")
    assert cached.rcode() == dns.rcode.NXDOMAIN
    assert cached.authority[0].rdtype == dns.rdatatype.SOA
    # The SOA's TTL carries what is left of the negative TTL (RFC 2308 §5), not the SOA's own 300.
    assert cached.authority[0].ttl <= 30
    assert asked(upstream, "nothing-here.example") == 1
    clock.advance(31)
    await resolver.query("nothing-here.example")
    assert asked(upstream, "nothing-here.example") == 2


async def test_nodata_is_cached_too(make_resolver, upstream):
    resolver, clock = await start(make_resolver)
    first = await resolver.query("example.com", "MX")
    assert first.rcode() == dns.rcode.NOERROR and first.answer == []
    clock.advance(59)
    await resolver.query("example.com", "MX")
    assert asked(upstream, "example.com") == 1
    clock.advance(2)
    await resolver.query("example.com", "MX")
    assert asked(upstream, "example.com") == 2


async def test_servfail_is_not_cached(make_resolver, upstream):
    resolver, _clock = await start(make_resolver)
    upstream.mode = "servfail"
    assert (await resolver.query("example.com")).rcode() == dns.rcode.SERVFAIL
    upstream.mode = "normal"
    answer = await resolver.query("example.com")
    assert addresses(answer) == ["93.184.215.14"]
    assert asked(upstream, "example.com") == 2


async def test_lru_bound(make_resolver, upstream):
    for name in ("a.example", "b.example", "c.example"):
        upstream.add(name, "A", "192.0.2.1")
    resolver, _clock = await start(make_resolver, cache_size=2)
    for name in ("a.example", "b.example", "a.example", "c.example"):  # c evicts b, the least used
        await resolver.query(name)
    assert [q[1] for q in upstream.queries] == ["a.example", "b.example", "c.example"]
    await resolver.query("a.example")
    await resolver.query("c.example")
    assert len(upstream.queries) == 3  # both still cached
    await resolver.query("b.example")
    assert [q[1] for q in upstream.queries] == ["a.example", "b.example", "c.example", "b.example"]


async def test_identical_queries_in_flight_share_one_upstream_query(make_resolver, upstream):
    resolver, _clock = await start(make_resolver)
    upstream.delay = 0.2
    answers = await asyncio.gather(*(resolver.query("example.com", tcp=bool(i % 2)) for i in range(10)))
    assert len(upstream.queries) == 1
    for answer in answers:
        assert answer.rcode() == dns.rcode.NOERROR
        assert addresses(answer) == ["93.184.215.14"]
    assert len({answer.id for answer in answers}) == 10  # each client got its own reply


async def test_stale_answer_served_with_ede_3_when_upstreams_are_down(make_resolver, upstream):
    resolver, clock = await start(make_resolver, upstream_timeout=0.2)
    await resolver.query("example.com")
    clock.advance(301)
    upstream.mode = "silent"
    stale = await resolver.query("example.com", use_edns=0)
    assert stale.rcode() == dns.rcode.NOERROR
    assert addresses(stale) == ["93.184.215.14"]
    assert stale.answer[0].ttl == STALE_TTL
    assert [code for code, _text in ede(stale)] == [3]
    assert asked(upstream, "example.com") == 2  # it did try the upstream first


async def test_no_stale_answer_while_the_upstream_answers(make_resolver, upstream):
    resolver, clock = await start(make_resolver, upstream_timeout=0.2)
    await resolver.query("example.com")
    clock.advance(301)
    fresh = await resolver.query("example.com", use_edns=0)
    assert fresh.answer[0].ttl == 300 and ede(fresh) == []


async def test_too_old_answer_is_not_served_stale(make_resolver, upstream):
    resolver, clock = await start(make_resolver, upstream_timeout=0.2)
    await resolver.query("example.com")
    clock.advance(300 + STALE_WINDOW + 1)
    upstream.mode = "silent"
    answer = await resolver.query("example.com", use_edns=0)
    assert answer.rcode() == dns.rcode.SERVFAIL
    assert [code for code, _text in ede(answer)] == [22]


async def test_stale_answers_last_the_whole_outage_whatever_the_failure_count(make_resolver, upstream,
                                                                              caplog):
    """An outage long enough for the upstream's failure count to pass 1,100 (each query that finds
    it down counts one): the down backoff once overflowed a float there, and from then on cached
    names got SERVFAIL without EDE and every query logged a traceback (issue 24)."""
    resolver, clock = await start(make_resolver, upstream_timeout=0.2)
    await resolver.query("example.com")
    clock.advance(301)
    upstream.mode = "junk"  # fails at once, so the count grows as fast as queries come
    first = resolver.service.upstream_groups[0].upstreams[0]
    sent = 0
    while first.failures <= 1100 and sent < 3000:
        await asyncio.gather(*(resolver.query(f"n{sent + index}.example.net", timeout=2.0)
                               for index in range(50)))
        sent += 50
    assert first.failures > 1100
    stale = await resolver.query("example.com", use_edns=0)
    assert addresses(stale) == ["93.184.215.14"]
    assert [code for code, _text in ede(stale)] == [3]
    assert not [record for record in caplog.records if record.exc_info]
