"""Bad input on raw sockets: what is dropped, what gets FORMERR / NOTIMP / BADVERS, RFC 8482 for
ANY, TCP clients that hang up mid-message, and a fuzz loop after which a good query still works."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import socket
import struct

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import PUPILS, STAFF, UNKNOWN, ede

QR = 0x8000
RD = 0x0100
FORMERR, NOTIMP = 1, 4


def header(qid: int, flags: int = RD, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def wire_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"


def question(name: str = "example.com", qtype: int = 1, qclass: int = 1) -> bytes:
    return wire_name(name) + struct.pack("!HH", qtype, qclass)


def good_query(qid: int, name: str = "example.com") -> bytes:
    return header(qid) + question(name)


def reply_header(data: bytes) -> tuple[int, int, int]:
    """(id, flags, rcode) of a reply, read by hand: FORMERR replies may carry no question."""
    assert len(data) >= 12
    qid, flags = struct.unpack_from("!HH", data)
    return qid, flags, flags & 0xF


class RawUdp(asyncio.DatagramProtocol):
    """A UDP client socket that hands us every datagram it gets."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data, addr) -> None:
        self.received.put_nowait(data)

    @classmethod
    async def open(cls, port: int, source: str = PUPILS) -> tuple[asyncio.DatagramTransport, "RawUdp"]:
        loop = asyncio.get_running_loop()
        return await loop.create_datagram_endpoint(cls, local_addr=(source, 0), remote_addr=("127.0.0.1", port))

    async def recv(self, timeout: float = 3.0) -> bytes:
        return await asyncio.wait_for(self.received.get(), timeout)


@pytest.fixture
async def udp(make_resolver):
    resolver = await make_resolver()
    transport, client = await RawUdp.open(resolver.port)
    # Room for a burst of replies while the test is still sending (the default buffer is ~200 kB).
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    client.send = transport.sendto
    yield client
    transport.close()


@pytest.fixture
def no_errors(caplog):
    """Fail on any error logged by classguard or by asyncio about classguard's tasks."""
    caplog.set_level(logging.WARNING)
    yield
    problems = [record for record in caplog.get_records("call") if record.levelno >= logging.ERROR
                and (record.name.startswith("classguard") or "resolver/" in record.getMessage()
                     or (record.exc_text or "").count("resolver/"))]
    assert problems == [], [record.getMessage() for record in problems]


async def exchange(client: RawUdp, data: bytes) -> bytes:
    client.send(data)
    return await client.recv()


async def assert_dropped_then_still_answering(client: RawUdp, qid: int = 0x7777) -> None:
    """Nothing comes back for what was sent before, and a good query (answered only after an upstream
    round trip, so any reply to the bad packets would arrive first) still gets its answer."""
    client.send(good_query(qid))
    data = await client.recv()
    assert reply_header(data)[0] == qid, "a dropped packet was answered"
    answer = dns.message.from_wire(data)
    assert [item.to_text() for rrset in answer.answer for item in rrset] == ["93.184.215.14"]
    assert client.received.empty()


# --- Dropped ----------------------------------------------------------------------------------

async def test_datagrams_shorter_than_a_header_are_dropped(udp):
    for length in range(12):
        udp.send(bytes(range(1, length + 1)))
    await assert_dropped_then_still_answering(udp)


async def test_a_response_sent_to_us_is_dropped(udp):
    udp.send(header(0x4242, QR | RD) + question())
    udp.send(header(0x4243, QR) + question() + b"\x00")  # even a malformed one
    udp.send(header(0x4244, QR | 0x0005, qd=0))
    await assert_dropped_then_still_answering(udp)


# --- FORMERR, NOTIMP, BADVERS -----------------------------------------------------------------

@pytest.mark.parametrize("data", [
    pytest.param(header(0x1001) + b"\x07examp", id="name cut in a label"),
    pytest.param(header(0x1001) + b"\x07example\x03com", id="name without its end"),
    pytest.param(header(0x1001) + wire_name("example.com"), id="no type and class"),
    pytest.param(header(0x1001) + wire_name("example.com") + b"\x00", id="half a type"),
    pytest.param(header(0x1001) + b"\xc0\x0c" + b"\x00\x01\x00\x01", id="pointer to itself"),
    pytest.param(header(0x1001) + b"\x01a\xc0\x0f" + b"b" * 15 + b"\xc0\x0c" + b"\x00\x01\x00\x01",
                 id="compression loop through two pointers"),
    pytest.param(header(0x1001) + b"\xc0\x30" + b"\x00\x01\x00\x01", id="pointer forward"),
    pytest.param(header(0x1001, qd=0), id="qdcount 0"),
    pytest.param(header(0x1001, qd=2) + question() + question("example.org"), id="qdcount 2"),
    pytest.param(header(0x1001, qd=2) + question(), id="qdcount 2 with one question"),
    pytest.param(header(0x1001, ar=2) + question() + (b"\x00\x00\x29\x04\xd0" + bytes(6)) * 2,
                 id="two OPT records"),
])
async def test_formerr_with_the_same_id(udp, data):
    reply = await exchange(udp, data)
    qid, flags, rcode = reply_header(reply)
    assert qid == 0x1001
    assert flags & QR
    assert rcode == FORMERR
    await assert_dropped_then_still_answering(udp)


async def test_a_dot_inside_a_label_does_not_bypass_the_filter(udp, upstream):
    """One label `example.` (dot included) must not be read as the name `adult.example.`."""
    for labels in ([b"adult", b"example."], [b"www", b"adult.example."], [b"adult.example"]):
        name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
        reply = await exchange(udp, header(0x2002) + name + b"\x00\x01\x00\x01")
        qid, _flags, rcode = reply_header(reply)
        assert qid == 0x2002
        if rcode == 0:
            addresses = [item.to_text() for rrset in dns.message.from_wire(reply).answer for item in rrset]
            assert "198.51.100.1" not in addresses, labels
    assert [q for q in upstream.queries if "adult" in q[1]] == []  # the blocked name never went out
    await assert_dropped_then_still_answering(udp)


async def test_non_ascii_labels_are_forwarded_as_asked(udp, upstream, no_errors):
    """Raw UTF-8 on the wire is no IDN: forwarded byte for byte, not garbled, no traceback."""
    for label in ("a\u009bb".encode(), "\u00e9cole".encode()):
        reply = await exchange(udp, header(0x2121) + bytes([len(label)]) + label + wire_name("example")
                               + b"\x00\x01\x00\x01")
        assert reply_header(reply)[:1] == (0x2121,)
        assert reply_header(reply)[2] == dns.rcode.NXDOMAIN  # the fake upstream knows no such name
    assert [q[1] for q in upstream.queries] == ["a\\194\\155b.example", "\\195\\169cole.example"]


@pytest.mark.parametrize("opcode", [1, 2, 3, 4, 5, 15])
async def test_unknown_opcode_gets_notimp(udp, opcode):
    reply = await exchange(udp, header(0x3003, RD | opcode << 11) + question())
    qid, flags, rcode = reply_header(reply)
    assert (qid, rcode) == (0x3003, NOTIMP)
    assert flags & QR and (flags >> 11) & 0xF == opcode


async def test_edns_version_1_gets_badvers(make_resolver, upstream):
    resolver = await make_resolver()
    answer = await resolver.query("example.com", use_edns=1)
    assert answer.rcode() == dns.rcode.BADVERS
    assert answer.edns == 0  # RFC 6891 §6.1.3: we answer with the version we speak
    assert answer.answer == []
    assert upstream.queries == []


async def test_any_gets_one_hinfo_rfc8482(make_resolver, upstream):
    resolver = await make_resolver()
    for tcp in (False, True):
        answer = await resolver.query("example.com", "ANY", tcp=tcp)
        assert answer.rcode() == dns.rcode.NOERROR
        assert len(answer.answer) == 1 and len(answer.answer[0]) == 1
        hinfo = answer.answer[0][0]
        assert answer.answer[0].rdtype == dns.rdatatype.HINFO
        assert hinfo.cpu == b"RFC8482"
    assert upstream.queries == []


async def test_any_from_an_unknown_client_is_refused(make_resolver):
    """The RFC 8482 answer is no way around "never an open resolver" (SPEC §2.1)."""
    resolver = await make_resolver()
    answer = await resolver.query("example.com", "ANY", source=UNKNOWN)
    assert answer.rcode() == dns.rcode.REFUSED
    assert ede(answer) == [(18, "Prohibited")]


# --- TCP --------------------------------------------------------------------------------------

async def tcp_open(resolver):
    return await asyncio.open_connection("127.0.0.1", resolver.port, local_addr=(STAFF, 0))


async def tcp_read(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(3.0):
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)


async def assert_tcp_answers(resolver, qid: int = 0x5151) -> None:
    reader, writer = await tcp_open(resolver)
    try:
        data = good_query(qid)
        writer.write(struct.pack("!H", len(data)) + data)
        reply = dns.message.from_wire(await tcp_read(reader))
    finally:
        writer.close()
    assert reply.id == qid
    assert [item.to_text() for rrset in reply.answer for item in rrset] == ["93.184.215.14"]


@pytest.mark.parametrize("sent", [b"\x00", b"\x00\x1d", b"\x00\x1d" + good_query(1)[:10],
                                  b"\xff\xff" + bytes(100)])
async def test_tcp_client_that_hangs_up_mid_message(make_resolver, no_errors, sent):
    resolver = await make_resolver()
    for _ in range(5):
        _reader, writer = await tcp_open(resolver)
        writer.write(sent)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    await assert_tcp_answers(resolver)


async def test_tcp_bad_messages_do_not_end_the_connection(make_resolver):
    """An empty or short frame is dropped, a bad query gets FORMERR, the connection goes on."""
    resolver = await make_resolver()
    reader, writer = await tcp_open(resolver)
    try:
        bad = header(0x6006, qd=0)
        writer.write(b"\x00\x00" + b"\x00\x05hello" + struct.pack("!H", len(bad)) + bad)
        good = good_query(0x6007)
        writer.write(struct.pack("!H", len(good)) + good)
        replies = {reply_header(data)[0]: data for data in [await tcp_read(reader), await tcp_read(reader)]}
    finally:
        writer.close()
    assert set(replies) == {0x6006, 0x6007}
    assert reply_header(replies[0x6006])[2] == FORMERR
    assert dns.message.from_wire(replies[0x6007]).answer


# --- Fuzzing ----------------------------------------------------------------------------------

SEEDS = [
    good_query(0x0101),
    good_query(0x0102, "WWW.Example.COM"),
    header(0x0103) + question("example.com", 28),
    header(0x0104, ar=1) + question() + b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00",
    header(0x0105, ar=1) + question("www.example.com") + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x0b"
    + b"\x00\x08\x00\x07\x00\x01\x18\x00\xc0\x00\x02",  # EDNS client subnet
    header(0x0106) + question("1.0.168.192.in-addr.arpa", 12),
    header(0x0107) + question("localhost", 1),
    header(0x0108) + question("adult.example", 255),
    header(0x0109) + question("www.google.com", 65),
]


def fuzz_packets(rng: random.Random, count: int) -> list[bytes]:
    """Random datagrams and mutated queries; about half of them get past parsing to the chain."""
    packets = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.1:
            packets.append(rng.randbytes(rng.randrange(0, 80)))
            continue
        data = bytearray(rng.choice(SEEDS))
        if kind < 0.25:  # header: random flags (mostly opcode 0), sometimes random counts
            flags = rng.randrange(65536) & (0x87FF if rng.random() < 0.8 else 0xFFFF)
            data[2:4] = struct.pack("!H", flags)
            if rng.random() < 0.3:
                data[4:12] = rng.randbytes(8)
        elif kind < 0.4:  # cut short or padded
            data = data[:rng.randrange(0, len(data))] if rng.random() < 0.5 else data + rng.randbytes(20)
        elif kind < 0.55:  # a compression pointer planted somewhere in the body
            at = rng.randrange(12, len(data) - 1)
            data[at:at + 2] = bytes([0xC0 | rng.randrange(0, 4), rng.randrange(0, 256)])
        elif kind < 0.7:  # random type and class (the seeds without OPT end with them)
            if not data[11]:
                data[-4:] = rng.randbytes(4)
        else:  # flipped bytes in the body
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(12, len(data))] = rng.randrange(256)
        if len(data) > 2 and rng.random() < 0.9:
            data[2] &= 0x7F  # mostly queries, some responses
        packets.append(bytes(data))
    return packets


async def test_udp_fuzz_then_a_good_query_is_answered(udp, no_errors):
    rng = random.Random(20240611)
    packets = fuzz_packets(rng, 2000)
    sent_ids = set()
    received = 0
    for start in range(0, len(packets), 100):
        for data in packets[start:start + 100]:
            udp.send(data)
            if len(data) >= 2:
                sent_ids.add(struct.unpack_from("!H", data)[0])
        # A local question as a marker: once it is answered the batch before it has been read.
        marker = 0xF000 + start // 100
        udp.send(header(marker) + question("localhost"))
        while True:
            data = await udp.recv()
            qid, flags, _rcode = reply_header(data)
            assert flags & QR
            if qid == marker:
                break
            assert qid in sent_ids
            received += 1
    assert received > 500  # most of the fuzz was answered (FORMERR, NOTIMP, answers ...)
    await assert_drained_then_answering(udp, sent_ids)


async def assert_drained_then_answering(udp, sent_ids) -> None:
    """Replies still on their way (upstream round trips) are skipped; the good query is answered."""
    qid = 0x7E7E
    udp.send(good_query(qid))
    while True:
        data = await udp.recv()
        if reply_header(data)[0] == qid:
            break
        assert reply_header(data)[0] in sent_ids
    answer = dns.message.from_wire(data)
    assert [item.to_text() for rrset in answer.answer for item in rrset] == ["93.184.215.14"]


async def test_tcp_fuzz_then_a_good_query_is_answered(make_resolver, no_errors):
    resolver = await make_resolver(tcp_idle_timeout=0.5)
    rng = random.Random(99)
    packets = fuzz_packets(rng, 300)
    replies = 0
    for start in range(0, len(packets), 10):  # ten packets a connection, some framed wrongly
        reader, writer = await tcp_open(resolver)
        stream, sent_ids = b"", set()
        for data in packets[start:start + 10]:
            length = len(data) if rng.random() < 0.9 else rng.randrange(0, 65536)
            stream += struct.pack("!H", length) + data
            if len(data) >= 2:
                sent_ids.add(struct.unpack_from("!H", data)[0])
        writer.write(stream)
        writer.write_eof()  # then the server answers what it could read, and hangs up
        async with asyncio.timeout(3.0):
            received = await reader.read()
        writer.close()
        while len(received) >= 2:  # every frame that comes back is a reply to one of ours
            (length,) = struct.unpack_from("!H", received)
            frame, received = received[2:2 + length], received[2 + length:]
            qid, flags, _rcode = reply_header(frame)
            assert flags & QR and qid in sent_ids
            replies += 1
        assert received == b""
    assert replies > 100
    await assert_tcp_answers(resolver)
    transport, client = await RawUdp.open(resolver.port)
    try:
        client.send = transport.sendto
        await assert_dropped_then_still_answering(client)
    finally:
        transport.close()


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def test_a_hundred_thousand_bad_packets_leave_memory_bounded_and_answers_flowing(udp, no_errors):
    """The issue's volume: 100,000 random and mutated datagrams; memory grows by a bounded amount."""
    rng = random.Random(424242)
    sent_ids: set[int] = set()

    async def blast(count: int, batch: int = 500) -> None:
        packets = fuzz_packets(rng, count)
        for start in range(0, count, batch):
            for data in packets[start:start + batch]:
                udp.send(data)
                if len(data) >= 2:
                    sent_ids.add(struct.unpack_from("!H", data)[0])
            marker = 0xF000 + (start // batch) % 0x0F00
            udp.send(header(marker) + question("localhost"))
            while True:
                reply = await udp.recv()
                if reply_header(reply)[0] == marker:
                    break

    await blast(20_000)  # memos and the cache take their working size
    gc.collect()
    before = resident_bytes()
    await blast(80_000)
    gc.collect()
    grown = resident_bytes() - before
    assert grown < 48 * 1024 * 1024, f"resident memory grew by {grown / 2**20:.1f} MiB"
    await assert_drained_then_answering(udp, sent_ids)
