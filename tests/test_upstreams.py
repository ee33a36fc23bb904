"""Talking to upstreams: TCP fallback on truncation, spoof-resistant reply matching (RFC 5452),
failover between upstreams, SERVFAIL with EDE 22 when none answers, forward zones."""

from __future__ import annotations

import time

import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import ede
from tests.nameserver import FakeNameserver


def addresses(message) -> list[str]:
    return sorted(item.to_text() for rrset in message.answer for item in rrset
                  if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))


@pytest.fixture
async def second():
    """Another fake nameserver, for failover and forward zones."""
    server = FakeNameserver()
    server.add("example.com", "A", "192.0.2.2")
    server.add("intranet.corp.example", "A", "10.1.2.3")
    server.add("5.0.0.10.in-addr.arpa", "PTR", "fileserver.corp.example.")
    await server.start()
    yield server
    await server.stop()


async def test_truncated_udp_reply_is_retried_over_tcp(make_resolver, upstream):
    upstream.mode = "truncate"
    resolver = await make_resolver()
    answer = await resolver.query("example.com")
    assert answer.rcode() == dns.rcode.NOERROR
    assert addresses(answer) == ["93.184.215.14"]
    assert upstream.queries == [("udp", "example.com", "A"), ("tcp", "example.com", "A")]


async def test_tcp_upstream_is_asked_over_tcp_only(make_resolver, upstream):
    resolver = await make_resolver(upstreams=(f"tcp://127.0.0.1:{upstream.port}",))
    answer = await resolver.query("example.com")
    assert addresses(answer) == ["93.184.215.14"]
    assert upstream.queries == [("tcp", "example.com", "A")]


@pytest.mark.parametrize("mode", ["wrong_id", "junk"])
async def test_reply_that_does_not_match_is_discarded(make_resolver, upstream, mode):
    """RFC 5452 §9.1: a reply with another id (or no DNS at all) is not an answer; keep waiting."""
    upstream.mode = mode
    resolver = await make_resolver(upstream_timeout=0.3)
    started = time.monotonic()
    answer = await resolver.query("example.com", use_edns=0)
    assert time.monotonic() - started >= 0.25  # waited for the deadline, the bogus reply ignored
    assert answer.rcode() == dns.rcode.SERVFAIL
    assert answer.answer == []
    assert [code for code, _text in ede(answer)] == [22]
    assert ("udp", "example.com", "A") in upstream.queries


async def test_failover_to_the_next_upstream(make_resolver, upstream, second):
    second.mode = "silent"
    resolver = await make_resolver(upstreams=(second.url, upstream.url), upstream_timeout=1.0)
    started = time.monotonic()
    answer = await resolver.query("example.com")
    assert time.monotonic() - started < 0.9  # the silent one got only its share of the deadline
    assert addresses(answer) == ["93.184.215.14"]  # from the upstream that answers
    assert second.queries == [("udp", "example.com", "A")]
    # The silent upstream is now tried last: the next question does not wait for it.
    started = time.monotonic()
    answer = await resolver.query("www.example.com")
    assert time.monotonic() - started < 0.3
    assert addresses(answer) == ["93.184.215.14"]
    assert second.queries == [("udp", "example.com", "A")]


async def test_all_upstreams_down_gives_servfail_with_ede_22(make_resolver, upstream, second):
    upstream.mode = second.mode = "silent"
    resolver = await make_resolver(upstreams=(upstream.url, second.url), upstream_timeout=0.4)
    started = time.monotonic()
    answer = await resolver.query("example.com", use_edns=0)
    assert time.monotonic() - started < 1.0  # one deadline for the whole group
    assert answer.rcode() == dns.rcode.SERVFAIL
    assert [code for code, _text in ede(answer)] == [22]
    assert upstream.queries and second.queries  # both were tried
    over_tcp = await resolver.query("example.com", use_edns=0, tcp=True)
    assert over_tcp.rcode() == dns.rcode.SERVFAIL


async def test_forward_zone_goes_to_its_own_server(make_resolver, upstream, second):
    resolver = await make_resolver(forward_zones={"corp.example": second.url, "10.in-addr.arpa": second.url})
    assert addresses(await resolver.query("intranet.corp.example")) == ["10.1.2.3"]
    # A private reverse zone the school forwards is not answered locally (RFC 6303 §4 exception).
    ptr = await resolver.query("5.0.0.10.in-addr.arpa", "PTR")
    assert ptr.rcode() == dns.rcode.NOERROR
    assert ptr.answer[0][0].to_text() == "fileserver.corp.example."
    assert addresses(await resolver.query("example.com")) == ["93.184.215.14"]
    assert [q[1] for q in second.queries] == ["intranet.corp.example", "5.0.0.10.in-addr.arpa"]
    assert [q[1] for q in upstream.queries] == ["example.com"]


async def test_an_answer_our_reader_cannot_use_is_the_names_fault_not_the_upstreams(make_resolver,
                                                                                     upstream):
    """A record with empty RDATA (`TYPE10 \\# 0`) made dnslib raise: the reply was dropped as if it
    did not match, the client got SERVFAIL after the whole deadline and the upstream was counted
    as failing, so anyone with a name could make the upstreams look down (issue 18)."""
    import time

    upstream.add("empty.example", "NULL", r"\# 0")  # TYPE10
    resolver = await make_resolver(upstream_timeout=2.0)
    first = resolver.service.upstream_groups[0].upstreams[0]
    for _ in range(3):
        started = time.monotonic()
        answer = await resolver.query("empty.example", "NULL")
        assert time.monotonic() - started < 1.0  # at once, not after the 2 s deadline
        assert answer.rcode() == dns.rcode.SERVFAIL
        assert [code for code, _ in ede(answer)] == [0]
    assert first.healthy and first.failures == 0 and first.errors == 0
    assert (await resolver.query("example.com")).rcode() == dns.rcode.NOERROR
