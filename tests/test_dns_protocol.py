"""The listeners as a DNS client sees them: UDP and TCP (RFC 1035, RFC 7766), EDNS0 (RFC 6891),
truncation, local names (RFC 6761, RFC 6303) and the letter case of the question."""

from __future__ import annotations

import asyncio
import struct
import time

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from tests.conftest import PUPILS, STAFF, ede

MANY = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(100)]  # 100 A records: ~1.7 kB on the wire


def addresses(message: dns.message.Message) -> list[str]:
    return sorted(item.to_text() for rrset in message.answer for item in rrset
                  if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))


async def tcp_connect(resolver, source: str = PUPILS):
    return await asyncio.open_connection("127.0.0.1", resolver.port, local_addr=(source, 0))


async def read_message(reader: asyncio.StreamReader, timeout: float = 3.0) -> dns.message.Message:
    async with asyncio.timeout(timeout):
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return dns.message.from_wire(await reader.readexactly(length))


def framed(message: dns.message.Message) -> bytes:
    wire = message.to_wire()
    return struct.pack("!H", len(wire)) + wire


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.read(1) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


# --- UDP and TCP ------------------------------------------------------------------------------

async def test_udp_and_tcp_give_the_same_answer(make_resolver, upstream):
    resolver = await make_resolver()
    over_udp = await resolver.query("example.com")
    over_tcp = await resolver.query("example.com", tcp=True)
    for answer in (over_udp, over_tcp):
        assert answer.rcode() == dns.rcode.NOERROR
        assert answer.flags & dns.flags.QR and answer.flags & dns.flags.RA and answer.flags & dns.flags.RD
        assert addresses(answer) == ["93.184.215.14"]


async def test_tcp_several_queries_on_one_connection_matched_by_id(make_resolver):
    resolver = await make_resolver()
    queries = [dns.message.make_query(name, rdtype) for name, rdtype in
               (("example.com", "A"), ("example.com", "AAAA"), ("www.example.com", "A"))]
    assert len({q.id for q in queries}) == 3
    reader, writer = await tcp_connect(resolver)
    try:
        writer.write(b"".join(framed(q) for q in queries))  # back to back, before any answer
        await writer.drain()
        replies = [await read_message(reader) for _ in queries]
    finally:
        writer.close()
    by_id = {reply.id: reply for reply in replies}
    assert set(by_id) == {q.id for q in queries}
    for query in queries:
        reply = by_id[query.id]
        assert query.is_response(reply)
        assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(by_id[queries[0].id]) == ["93.184.215.14"]
    assert addresses(by_id[queries[1].id]) == ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    assert addresses(by_id[queries[2].id]) == ["93.184.215.14"]


async def test_tcp_a_slow_answer_does_not_hold_back_a_fast_one(make_resolver, upstream):
    """RFC 7766 §6.2.1.1: queries of one connection are answered as they are ready."""
    resolver = await make_resolver()
    upstream.delay = 0.3
    slow = dns.message.make_query("example.com", "A")
    fast = dns.message.make_query("localhost", "A")
    reader, writer = await tcp_connect(resolver)
    try:
        writer.write(framed(slow) + framed(fast))
        await writer.drain()
        first, second = await read_message(reader), await read_message(reader)
    finally:
        writer.close()
    assert (first.id, second.id) == (fast.id, slow.id)
    assert addresses(first) == ["127.0.0.1"] and addresses(second) == ["93.184.215.14"]


async def test_tcp_message_split_across_writes(make_resolver):
    resolver = await make_resolver()
    query = dns.message.make_query("example.com", "A")
    data = framed(query)
    reader, writer = await tcp_connect(resolver)
    try:
        for piece in (data[:1], data[1:2], data[2:9], data[9:]):
            writer.write(piece)
            await writer.drain()
        reply = await read_message(reader)
    finally:
        writer.close()
    assert reply.id == query.id and addresses(reply) == ["93.184.215.14"]


async def test_tcp_idle_connection_is_closed_after_the_idle_timeout(make_resolver):
    resolver = await make_resolver(tcp_idle_timeout=0.2)
    reader, writer = await tcp_connect(resolver)
    try:
        writer.write(framed(dns.message.make_query("example.com", "A")))
        await read_message(reader)  # the connection works ...
        started = time.monotonic()
        assert await closed_by_server(reader, timeout=2.0)  # ... and is closed once idle
        assert 0.1 <= time.monotonic() - started < 1.5
    finally:
        writer.close()


async def test_tcp_connection_limit(make_resolver):
    resolver = await make_resolver(tcp_max_connections=2)
    open_ = [await tcp_connect(resolver) for _ in range(2)]
    try:
        for reader, writer in open_:  # both are accepted and counted
            writer.write(framed(dns.message.make_query("example.com", "A")))
            assert addresses(await read_message(reader)) == ["93.184.215.14"]
        reader, writer = await tcp_connect(resolver)
        writer.write(framed(dns.message.make_query("example.com", "A")))
        assert await closed_by_server(reader, timeout=1.0)  # the third is turned away
        writer.close()
        # UDP is not affected by the TCP limit.
        assert addresses(await resolver.query("example.com")) == ["93.184.215.14"]
    finally:
        for _, writer in open_:
            writer.close()
            await writer.wait_closed()
    # Once a connection is gone its place is free again (the server notices the close first).
    for _ in range(100):
        try:
            answer = await resolver.query("example.com", tcp=True, timeout=0.5)
            break
        except (ConnectionError, EOFError, dns.exception.Timeout):
            await asyncio.sleep(0.01)
    else:
        raise AssertionError("no TCP connection accepted after the others closed")
    assert addresses(answer) == ["93.184.215.14"]


# --- EDNS0 and truncation ---------------------------------------------------------------------

async def test_no_opt_record_to_a_client_that_sent_none(make_resolver, upstream):
    resolver = await make_resolver()
    for name, source in (("example.com", PUPILS), ("adult.example", PUPILS), ("localhost", STAFF)):
        answer = await resolver.query(name, use_edns=False, source=source)
        assert answer.edns == -1 and answer.opt is None
        assert ede(answer) == []
    upstream.mode = "silent"
    failed = await make_resolver(upstream_timeout=0.2)
    answer = await failed.query("nowhere.example", use_edns=False)
    assert answer.rcode() == dns.rcode.SERVFAIL and answer.edns == -1


async def test_opt_advertises_at_most_1232_and_keeps_version_0(make_resolver):
    resolver = await make_resolver()
    for payload in (512, 1232, 4096, 65535):
        answer = await resolver.query("example.com", use_edns=0, payload=payload)
        assert answer.edns == 0
        assert 512 <= answer.payload <= 1232


async def test_do_bit_is_echoed(make_resolver):
    resolver = await make_resolver()
    answer = await resolver.query("example.com", use_edns=0, want_dnssec=True)
    assert answer.ednsflags & dns.flags.DO
    answer = await resolver.query("example.com", use_edns=0)
    assert not answer.ednsflags & dns.flags.DO


async def test_udp_answer_is_cut_to_the_clients_payload_size(make_resolver, upstream):
    upstream.add("forty.example", "A", *MANY[:40])  # ~700 bytes: over 512, under 1232
    resolver = await make_resolver()
    full = await resolver.query("forty.example", use_edns=0, payload=1232)
    assert not full.flags & dns.flags.TC
    assert len(addresses(full)) == 40
    for kwargs in ({"use_edns": 0, "payload": 512}, {"use_edns": False}):
        cut = await resolver.query("forty.example", **kwargs)
        assert cut.flags & dns.flags.TC, kwargs
        assert len(cut.to_wire()) <= 512
        assert cut.question[0].name.to_text() == "forty.example."


async def test_large_answer_truncated_over_udp_complete_over_tcp(make_resolver, upstream):
    upstream.add("many.example", "A", *MANY)
    resolver = await make_resolver()
    for kwargs in ({"use_edns": False}, {"use_edns": 0, "payload": 4096}):
        cut = await resolver.query("many.example", **kwargs)
        assert cut.flags & dns.flags.TC, kwargs
        assert cut.rcode() == dns.rcode.NOERROR
        assert len(cut.to_wire()) <= (512 if kwargs["use_edns"] is False else 1232)
    over_tcp = await resolver.query("many.example", tcp=True, use_edns=False)
    assert not over_tcp.flags & dns.flags.TC
    assert addresses(over_tcp) == sorted(MANY)
    over_tcp_edns = await resolver.query("many.example", tcp=True, use_edns=0, payload=512)
    assert addresses(over_tcp_edns) == sorted(MANY)


# --- Local names ------------------------------------------------------------------------------

async def test_localhost_is_answered_locally(make_resolver, upstream):
    resolver = await make_resolver()
    assert addresses(await resolver.query("localhost", "A")) == ["127.0.0.1"]
    assert addresses(await resolver.query("localhost", "AAAA")) == ["::1"]
    assert addresses(await resolver.query("app.localhost", "A")) == ["127.0.0.1"]
    assert upstream.queries == []


async def test_private_reverse_and_special_use_names_are_nxdomain_locally(make_resolver, upstream):
    resolver = await make_resolver()
    for name, rdtype in (("1.0.168.192.in-addr.arpa", "PTR"), ("5.0.0.10.in-addr.arpa", "PTR"),
                         ("1.0.0.127.in-addr.arpa", "PTR"), ("3.2.16.172.in-addr.arpa", "PTR"),
                         ("printer.invalid", "A"), ("whatever.test", "A"), ("test", "A")):
        answer = await resolver.query(name, rdtype)
        assert answer.rcode() == dns.rcode.NXDOMAIN, name
        assert answer.authority and answer.authority[0].rdtype == dns.rdatatype.SOA, name
    assert upstream.queries == []
    # A public reverse zone is not local.
    upstream.add("8.8.8.8.in-addr.arpa", "PTR", "dns.google.")
    answer = await resolver.query("8.8.8.8.in-addr.arpa", "PTR")
    assert answer.rcode() == dns.rcode.NOERROR
    assert upstream.queries == [("udp", "8.8.8.8.in-addr.arpa", "PTR")]


async def test_letter_case_of_the_question_is_kept(make_resolver):
    resolver = await make_resolver()
    for name in ("ExAmPlE.CoM", "eXaMpLe.cOm"):  # the second one comes from the cache
        answer = await resolver.query(name)
        assert answer.question[0].name.to_text() == name + "."
        assert addresses(answer) == ["93.184.215.14"]
    blocked = await resolver.query("WWW.Adult.Example")
    assert blocked.question[0].name.to_text() == "WWW.Adult.Example."
    assert addresses(blocked) == ["0.0.0.0"]
    local = await resolver.query("LocalHost")
    assert local.question[0].name.to_text() == "LocalHost."
    assert addresses(local) == ["127.0.0.1"]


async def test_a_class_other_than_in_is_refused_here_never_forwarded(make_resolver, upstream):
    """`version.bind CH TXT` was forwarded and showed the upstream's version (issue 18)."""
    import dns.asyncquery
    import dns.rdataclass

    resolver = await make_resolver()
    for name, rdclass in (("version.bind", dns.rdataclass.CH), ("example.com", dns.rdataclass.HS)):
        query = dns.message.make_query(name, "TXT", rdclass=rdclass, use_edns=0)
        for _ in range(2):  # the second one through the fast path's memo, if it had one
            answer = await dns.asyncquery.udp(query, "127.0.0.1", port=resolver.port, source=PUPILS,
                                              timeout=2)
            assert answer.rcode() == dns.rcode.REFUSED and answer.answer == []
            assert answer.edns == 0  # our OPT, the client sent one
    assert not [name for _, name, _ in upstream.queries if name in ("version.bind", "example.com")]


def _with_two_questions(edns: bool) -> bytes:
    message = dns.message.make_query("example.com", "A", use_edns=0 if edns else False)
    wire = bytearray(message.to_wire())
    question = dns.message.make_query("example.org", "A").to_wire()[12:]
    header_end = 12 + len(message.question[0].name.to_wire()) + 4
    wire[4:6] = struct.pack("!H", 2)
    return bytes(wire[:header_end]) + question + bytes(wire[header_end:])


async def test_formerr_and_notimp_carry_an_opt_when_the_query_had_one(make_resolver):
    """FORMERR and NOTIMP came without OPT to EDNS queries (RFC 6891 §7): dig warned, and unbound
    asked one such query ten times, with and without EDNS, then gave SERVFAIL (issue 18)."""
    from tests.test_fast_path import raw_udp

    resolver = await make_resolver()
    for edns in (True, False):
        reply = dns.message.from_wire(await raw_udp(resolver.port, _with_two_questions(edns), PUPILS))
        assert reply.rcode() == dns.rcode.FORMERR
        assert reply.edns == (0 if edns else -1), edns
        notify = dns.message.make_query("example.com", "SOA", use_edns=0 if edns else False)
        notify.set_opcode(dns.opcode.NOTIFY)
        reply = dns.message.from_wire(await raw_udp(resolver.port, notify.to_wire(), PUPILS))
        assert reply.rcode() == dns.rcode.NOTIMP
        assert reply.edns == (0 if edns else -1), edns
        assert reply.payload == 1232 or not edns


async def ask_flags(resolver, name: str, flags: int = 0, *, want_dnssec: bool = False,
                    tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=0, want_dnssec=want_dnssec)
    query.flags |= flags
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    return await send(query, "127.0.0.1", port=resolver.port, source=STAFF, timeout=3)


async def test_the_ad_bit_of_upstreams_is_cleared_unless_trusted(make_resolver, upstream):
    upstream.authentic = True  # a validating upstream
    cleared = await make_resolver()
    for _ in range(2):  # from the upstream, then from the cache
        reply = await ask_flags(cleared, "example.com", dns.flags.AD, want_dnssec=True)
        assert not reply.flags & dns.flags.AD


async def test_upstream_ad_trust_passes_the_ad_bit_to_clients_that_ask(make_resolver, upstream):
    # dns.upstream_ad: trust, as dnsmasq's proxy-dnssec: a stub with `options trust-ad` (glibc)
    # asks with AD and gets the upstream's AD back (RFC 6840 §5.7), cached or not.
    upstream.authentic = True
    trusting = await make_resolver(upstream_ad="trust")
    for tcp in (False, True, False):  # from the upstream, then from the cache (slow and fast path)
        assert (await ask_flags(trusting, "example.com", dns.flags.AD, tcp=tcp)).flags & dns.flags.AD
        assert (await ask_flags(trusting, "example.com", want_dnssec=True, tcp=tcp)).flags & dns.flags.AD
        # Neither AD nor DO in the query: no AD in the answer.
        assert not (await ask_flags(trusting, "example.com", tcp=tcp)).flags & dns.flags.AD
    # Our own answers (a block) are never authenticated.
    blocked = await dns.asyncquery.udp(dns.message.make_query("adult.example", "A", use_edns=0, want_dnssec=True),
                                       "127.0.0.1", port=trusting.port, source=PUPILS, timeout=3)
    assert ede(blocked) == [(15, "category:adult")] and not blocked.flags & dns.flags.AD
    upstream.authentic = False  # an answer the upstream did not validate: no AD
    assert not (await ask_flags(trusting, "www.example.com", dns.flags.AD)).flags & dns.flags.AD
