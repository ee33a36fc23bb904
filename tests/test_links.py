"""Each link of the chain alone, in front of a stub next resolver; and the fast path's derivation.

The stub stands for "the next link": it answers a canned Response and remembers what it saw.
"""

from __future__ import annotations

import struct

import dns.message
import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSQuestion, DNSRecord, EDNS0, EDNSOption

from blocklists.bundled import load_bundled
from blocklists.compiled import empty
from policies.loader import parse_policy
from policies.yaml_lines import parse_yaml
from resolver.cache import CacheLink
from resolver.chain import Client, Link, Request, Response, chain
from resolver.client_subnet import ClientSubnetLink
from resolver.clients import IdentifyLink
from resolver.fastpath import FastPath, FastPathError, derive
from resolver.filtering import FilteringLink
from resolver.local_zones import LocalZonesLink
from resolver.ratelimit import RateLimiter, RateLimitLink
from resolver.record import RecordLink
from resolver.state import RuntimeState
from resolver.stats import QueryStats

BUNDLED = load_bundled()
POLICY = """\
classes:
  pupils:
    networks: ["10.0.0.0/24"]
    deny: [denied.example]
    screen_time: {daily_minutes: 1}
devices:
  tablet: {class: pupils, addresses: ["10.0.0.7"]}
"""


class Stub:
    """The next link: answers example.com's A record, and counts what it was asked."""

    slow_path_only = True  # it stands for the upstreams

    def __init__(self):
        self.seen: list[Request] = []

    async def resolve(self, request: Request) -> Response:
        self.seen.append(request)
        reply = DNSRecord(q=request.query.q)
        reply.add_answer(RR(request.query.q.qname, QTYPE.A, ttl=300, rdata=A("192.0.2.1")))
        return Response(reply, "upstream")


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def state(clock=None) -> RuntimeState:
    policy = parse_policy(parse_yaml(POLICY, "policy.yaml"), source="policy.yaml",
                          known_categories=set(BUNDLED.categories), known_services=set(BUNDLED.services))
    return RuntimeState(policy, empty(), BUNDLED, clock=clock or Clock())


def request(name: str, client_ip: str = "10.0.0.1", client: Client | None = None, qtype=QTYPE.A,
            **fields) -> Request:
    return Request(DNSRecord(q=DNSQuestion(name, qtype)), name, qtype, client_ip, client=client,
                   **fields)


PUPILS = Client("pupils", None, "school", "network 10.0.0.0/24")
TABLET = Client("pupils", "tablet", "school", "device address")


async def test_rate_limit_refuses_at_the_door_and_lets_the_admitted_on():
    stats = QueryStats()
    stub = Stub()
    link = chain(RateLimitLink(RateLimiter(1, 1, clock=Clock()), stats), stub)
    assert link.admit("10.0.0.1", "udp") and not link.admit("10.0.0.1", "udp")
    assert stats.rate_limited == {"udp": 1}
    assert (await link.resolve(request("example.com"))).source == "upstream" and stub.seen


async def test_record_counts_and_logs_each_answer_but_not_an_explanation():
    class Log:
        def __init__(self):
            self.offered = []

        def offer(self, *event):
            self.offered.append(event)

    stats = QueryStats()
    link = chain(RecordLink(stats), Stub())
    link.query_log = Log()
    await link.resolve(request("example.com", client=PUPILS))
    await link.resolve(request("example.com", client=PUPILS, explain=True))
    assert stats.queries == {("udp", "pupils", "forwarded"): 1}
    assert [event[4] for event in link.query_log.offered] == ["forwarded"]


async def test_record_turns_an_error_below_into_servfail():
    class Broken:
        async def resolve(self, request):
            raise RuntimeError("a bug")

    stats = QueryStats()
    response = await chain(RecordLink(stats), Broken()).resolve(request("example.com"))
    assert response.source == "servfail" and response.reply.header.rcode == RCODE.SERVFAIL


def ecs_query(address: bytes) -> DNSRecord:
    query = DNSRecord(q=DNSQuestion("example.com", QTYPE.A))
    option = EDNSOption(8, struct.pack("!HBB", 1, 24, 0) + address)
    query.add_ar(EDNS0(udp_len=1232, opts=[option]))
    return query


async def test_client_subnet_is_believed_from_a_trusted_forwarder_only():
    stub = Stub()
    link = chain(ClientSubnetLink(["192.0.2.53/32"]), stub)
    for source, expected in (("192.0.2.53", "10.0.0.0"), ("192.0.2.99", "192.0.2.99")):
        asked = Request(ecs_query(b"\x0a\x00\x00"), "example.com", QTYPE.A, source)
        await link.resolve(asked)
        assert stub.seen[-1].client_ip == expected


async def test_identify_refuses_an_unknown_client_and_finds_a_device_before_its_network():
    stub = Stub()
    link = chain(IdentifyLink(state()), stub)
    refused = await link.resolve(request("example.com", client_ip="192.0.2.1"))
    assert refused.source == "refused" and refused.reason == "unknown_client" and not stub.seen
    await link.resolve(request("example.com", client_ip="10.0.0.7"))
    assert stub.seen[-1].client.device_id == "tablet"


@pytest.mark.parametrize("name, qtype, local", [
    ("localhost", QTYPE.A, True), ("printer.test", QTYPE.A, True),
    ("1.0.168.192.in-addr.arpa", QTYPE.PTR, True), ("example.com", QTYPE.ANY, True),
    ("example.com", QTYPE.A, False), ("corp.test", QTYPE.A, False)])
async def test_local_names_never_reach_the_next_link(name, qtype, local):
    stub = Stub()
    link = chain(LocalZonesLink(frozenset({"corp.test"})), stub)  # a forwarded zone stays out
    response = await link.resolve(request(name, client=PUPILS, qtype=qtype))
    assert (response.source == "local") is local and bool(stub.seen) is not local


async def test_filtering_blocks_forwards_and_closes_a_device_past_its_screen_time():
    clock = Clock()
    stub = Stub()
    link = chain(FilteringLink(state(clock)), stub)
    denied = await link.resolve(request("denied.example", client=PUPILS))
    assert denied.source == "blocked" and denied.reason == "deny" and not stub.seen
    assert (await link.resolve(request("example.com", client=TABLET))).source == "upstream"
    # An explanation looks at the minutes without counting one.
    clock.now += 60
    explained = await link.resolve(request("example.com", client=TABLET, explain=True))
    assert explained.reason == "screen_time"
    assert (await link.resolve(request("example.com", client=TABLET))).reason == "screen_time"
    assert len(stub.seen) == 1


async def test_cache_answers_a_repeat_without_the_next_link():
    stub = Stub()
    link = chain(CacheLink(clock=Clock()), stub)
    first = await link.resolve(request("example.com", client=PUPILS))
    second = await link.resolve(request("example.com", client=PUPILS))
    assert (first.source, second.source) == ("upstream", "cache") and len(stub.seen) == 1


class Silent(Link):
    """A link that says nothing about the fast path."""

    async def resolve(self, request):
        return await self.next.resolve(request)


def test_building_the_fast_path_fails_for_a_link_without_a_fast_step():
    with pytest.raises(FastPathError, match="Silent has no fast_step"):
        derive(chain(IdentifyLink(state()), Silent(), CacheLink(), Stub()))


async def test_the_fast_path_stops_before_a_slow_path_only_link():
    class SlowOnly(Silent):
        slow_path_only = True

    clock = Clock()
    runtime = state()
    cache = CacheLink(clock=clock)
    head = chain(IdentifyLink(runtime), FilteringLink(runtime), SlowOnly(), cache, Stub())
    wire = dns.message.make_query("example.com", "A").to_wire()
    fast = FastPath(head, cache, QueryStats())
    await head.resolve(Request(DNSRecord.parse(wire), "example.com", QTYPE.A, "10.0.0.1"))
    assert cache.entries  # the answer is cached, but the cache is past the slow-only link
    assert fast.answer(wire, "10.0.0.1") is None
    blocked = dns.message.make_query("denied.example", "A").to_wire()
    assert fast.answer(blocked, "10.0.0.1") is not None  # decided before it: still fast
