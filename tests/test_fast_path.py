"""The fast path gives the chain's answer, byte for byte, for every client variation."""

from __future__ import annotations

import asyncio
import itertools
import socket

import dns.flags
import dns.message
import dns.rdatatype
import pytest

from tests.conftest import PUPILS, STAFF, ede


class FrozenClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def raw_udp(port: int, wire: bytes, source: str, timeout: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    try:
        await loop.sock_sendto(sock, wire, ("127.0.0.1", port))
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
    finally:
        sock.close()


def query_wire(name: str, rdtype: str, *, edns: int | None, payload: int = 1232, do: bool = False,
               cd: bool = False, query_id: int = 4242) -> bytes:
    message = dns.message.make_query(name, rdtype, use_edns=edns if edns is not None else False,
                                     payload=payload, want_dnssec=do)
    if cd:
        message.flags |= dns.flags.CD
    message.id = query_id
    return message.to_wire()


@pytest.fixture
async def twins(make_resolver, upstream):
    """Two resolvers on the same upstream and policy: one with the fast path, one without."""
    upstream.add("big.example.org", "A", *[f"192.0.2.{i}" for i in range(1, 61)])
    fast = await make_resolver()
    slow = await make_resolver(fast_path=False)
    clock = FrozenClock()
    for resolver in (fast, slow):
        resolver.service.link_cache().clock = clock
    return fast, slow, clock


NAMES = ["example.com", "ExAmPlE.CoM", "www.adult.example", "sneaky.example.org", "listed-address.example.org",
         "big.example.org", "nothing-here.example.com", "gambling.example"]
VARIANTS = list(itertools.product(["A", "AAAA", "MX"], [None, 0], [512, 1232, 4096], [False, True], [False, True]))


async def test_fast_path_answers_match_the_chain_byte_for_byte(twins):
    fast, slow, clock = twins
    for source in (PUPILS, STAFF):
        for name in NAMES:
            for rdtype, edns, payload, do, cd in VARIANTS:
                if edns is None and (payload != 1232 or do):
                    continue
                wire = query_wire(name, rdtype, edns=edns, payload=payload, do=do, cd=cd)
                # First round fills each cache; the second is answered from it.
                await raw_udp(fast.port, wire, source)
                await raw_udp(slow.port, wire, source)
                clock.now += 7  # TTLs count down the same way on both
                got_fast = await raw_udp(fast.port, wire, source)
                got_slow = await raw_udp(slow.port, wire, source)
                assert got_fast == got_slow, (source, name, rdtype, edns, payload, do, cd)
    assert fast.service.fast_path.stats.fast_answers > 300
    assert slow.service.fast_path is None


async def test_cache_hit_keeps_case_counts_ttl_down_and_truncates_per_client(twins):
    fast, _slow, clock = twins
    await fast.query("example.com", source=STAFF)
    clock.now += 100
    hit = dns.message.from_wire(await raw_udp(fast.port, query_wire("eXaMpLe.cOm", "A", edns=None), STAFF))
    assert hit.question[0].name.to_text() == "eXaMpLe.cOm."
    assert hit.answer[0].ttl == 200 and hit.edns < 0
    await fast.query("big.example.org", source=STAFF, tcp=True)
    small = dns.message.from_wire(await raw_udp(fast.port, query_wire("big.example.org", "A", edns=None), STAFF))
    assert small.flags & dns.flags.TC and not small.answer
    roomy = dns.message.from_wire(await raw_udp(fast.port, query_wire("big.example.org", "A", edns=0), STAFF))
    assert not roomy.flags & dns.flags.TC and len(roomy.answer[0]) == 60
    assert roomy.payload == 1232


async def test_a_policy_change_reaches_cached_names_at_once(twins, tmp_path):
    fast, _slow, _clock = twins
    first = await fast.query("example.com", source=STAFF)
    assert first.answer[0][0].to_text() == "93.184.215.14"
    from policies.loader import load_policy

    policy_file = tmp_path / "stricter.yaml"
    policy_file.write_text("classes:\n  staff:\n    networks: ['127.0.0.3/32']\n    deny: [example.com]\n")
    state = fast.service.state
    state.replace_policy(load_policy(policy_file, known_categories=None, known_services=None))
    blocked = await fast.query("example.com", source=STAFF, use_edns=0)
    assert blocked.answer[0][0].to_text() == "0.0.0.0" and ede(blocked) == [(15, "deny")]


async def test_a_query_repeated_within_a_second_gets_its_own_id_and_true_ttls(twins):
    fast, _slow, clock = twins
    await fast.query("example.com", source=STAFF)  # stored at 1000.0 with TTL 300
    cache = fast.service.link_cache()
    hits = cache.hits

    async def ask(query_id: int) -> dns.message.Message:
        wire = query_wire("example.com", "A", edns=0, query_id=query_id)
        return dns.message.from_wire(await raw_udp(fast.port, wire, STAFF))

    first, second = await ask(1), await ask(2)
    assert (first.id, second.id) == (1, 2)
    assert first.answer == second.answer and first.answer[0].ttl == 300
    assert cache.hits == hits + 2  # a repeat is still a cache hit in the metrics
    clock.now += 0.9
    assert (await ask(3)).answer[0].ttl == 300
    clock.now += 0.2  # 1.1 s after it was stored: one second less
    assert (await ask(4)).answer[0].ttl == 299
    clock.now += 300
    stale = await ask(5)  # expired: the repeat must not outlive the entry
    assert stale.answer[0].ttl == 300  # asked upstream again
