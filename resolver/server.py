"""DNS listeners: UDP and TCP (RFC 1035, RFC 7766), turning bytes into requests and answers into bytes."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import struct
import time

from dnslib import EDNS0, RCODE, DNSRecord

from resolver.answers import (
    EDE_PROHIBITED, MAX_UDP_PAYLOAD, OPT, cap_ttls, empty_reply, finish, udp_limit,
)
from common.addresses import address_in
from resolver.chain import Client, Request, Resolver, Response, failure, find_link
from resolver.client_subnet import ClientSubnetLink
from resolver.ratelimit import RateLimitLink
from resolver.stats import QueryStats
from resolver.wire import PADDING_OPTION, padded, with_options

log = logging.getLogger("classguard.server")

HEADER_SIZE = 12
QR_BIT = 0x8000
OPCODE_QUERY = 0
RCODE_BADVERS = 16  # RFC 6891 §6.1.3: an extended rcode, upper 8 bits in the OPT TTL
ENCRYPTED = ("dot", "doh")  # the transports whose answers are padded (RFC 8467), never UDP or TCP
TCP_MAX_PIPELINE = 64  # queries of one connection answered at once before we stop reading
# Unsent reply bytes of one connection past which we stop reading it until the client reads
# (a client that pipelines and never reads must not grow the server: issue 18).
TCP_HIGH_WATER = 64 * 1024
TCP_MAX_PER_SOURCE = 64  # connections one address may hold at once
UNKNOWN_SHARE = 10  # addresses in no class hold at most 1/10 of tcp_max_connections, besides it
UDP_BATCH = 64  # datagrams read per wake-up before other work gets its turn
UDP_MAX_QUERY = 4096  # a longer datagram is cut here and then fails to parse: FORMERR


DESCRIPTOR_RESERVE = 256  # file descriptors kept for upstream sockets, the store, logs, lists


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns how many descriptors the client
    connections of every listener may hold together, DESCRIPTOR_RESERVE kept aside (issue 18:
    idle DoH connections once took the upstream sockets' descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, wanted, exc)
    return max(48, soft - DESCRIPTOR_RESERVE)


def _header_only_reply(data: bytes, rcode: int) -> bytes:
    """A reply made from nothing but the query's header: same id and opcode, no sections."""
    query_id, flags = struct.unpack_from("!HH", data)
    opcode_bits = flags & 0x7800
    rd_bit = flags & 0x0100
    return struct.pack("!HHHHHH", query_id, QR_BIT | opcode_bits | rd_bit | 0x0080 | rcode, 0, 0, 0, 0)


# Our OPT record in an error reply: root name, TYPE 41, our UDP payload size, no flags, no options.
_ERROR_OPT = b"\x00" + struct.pack("!HHIH", 41, MAX_UDP_PAYLOAD, 0, 0)


def _error_reply(data: bytes, rcode: int, query: DNSRecord | None) -> bytes:
    """A header-only reply, with an OPT record when the query had one and was read that far
    (RFC 6891 §7): a resolver that gets FORMERR or NOTIMP without it takes it for a server that
    does not speak EDNS and falls back, or gives up with SERVFAIL."""
    reply = _header_only_reply(data, rcode)
    if query is None or not any(record.rtype == OPT for record in query.ar):
        return reply
    return reply[:10] + b"\x00\x01" + _ERROR_OPT


MAX_NAME = 255  # RFC 1035 §2.3.4: a name's wire form, length bytes and the root included


def question_is_malformed(data: bytes) -> bool:
    """True when the first question's name has a label over 63 bytes, a pointer, or more than
    255 bytes, or runs past the message: FORMERR before any parser sees it (issue 18)."""
    offset = HEADER_SIZE
    size = len(data)
    while offset < size:
        length = data[offset]
        if length == 0:
            return offset + 5 > size
        if length > 63 or offset + 1 - HEADER_SIZE + length >= MAX_NAME:
            return True
        offset += 1 + length
    return True


def _question_end(data: bytes) -> int | None:
    """Where the single question of a query ends (after QTYPE and QCLASS), or None if unreadable."""
    offset = HEADER_SIZE
    while offset < len(data):
        length = data[offset]
        if length == 0:
            end = offset + 5
            return end if end <= len(data) else None
        if length > 63:  # a pointer or a reserved label type: not in a query's question
            return None
        offset += 1 + length
    return None


def refused_reply(data: bytes) -> bytes | None:
    """REFUSED for a query we will not answer (the rate limit), echoing its question when it is
    readable; None for bytes that are no query at all."""
    if len(data) < HEADER_SIZE:
        return None
    query_id, flags, qdcount = struct.unpack_from("!HHH", data)
    if flags & QR_BIT:
        return None
    end = _question_end(data) if qdcount == 1 else None
    question = data[HEADER_SIZE:end] if end is not None else b""
    header = struct.pack("!HHHHHH", query_id, QR_BIT | (flags & 0x7800) | (flags & 0x0100) | 0x0080
                         | RCODE.REFUSED, 1 if question else 0, 0, 0, 0)
    return header + question


def _qname(query: DNSRecord) -> str:
    labels = query.q.qname.label
    try:
        return ".".join(label.decode("ascii") for label in labels).lower()
    except UnicodeDecodeError:
        return str(query.q.qname).rstrip(".").lower()


class QueryHandler:
    """Between the bytes a client sent and the bytes it gets back: the door (rate limit), the
    fast path, else parsing and checking the query, the chain, and packing its answer."""

    def __init__(self, resolver: Resolver, fast_path=None, cache=None, stats: QueryStats | None = None,
                 rate_limit: RateLimitLink | None = None):
        self.resolver = resolver
        self.rate_limit = rate_limit
        self.rate_limiter = rate_limit.limiter if rate_limit is not None else None  # None: no limit
        self.stats = stats or (fast_path.stats if fast_path is not None else QueryStats())
        self.fast_path = fast_path  # resolver.fastpath.FastPath, or None to always take the chain
        self._cache = cache

    def now(self) -> float:
        return self._cache.clock() if self._cache is not None else time.monotonic()

    def admit(self, client_ip: str, protocol: str, client: Client | None = None) -> bool:
        """False when `dns.rate_limit` refuses this query. Listeners ask once per query, before
        answer_fast (resolver.ratelimit.RateLimitLink)."""
        return self.rate_limit is None or self.rate_limit.admit(client_ip, protocol, client)

    def answer_fast(self, data: bytes, client_ip: str, protocol: str = "udp",
                    client: Client | None = None) -> bytes | None:
        """The answer without leaving the event loop's callback, when the fast path knows it.

        `client` is given when the transport identified the device itself (DoH, DoT tokens).
        """
        if self.fast_path is None:
            return None
        try:
            return self.fast_path.answer(data, client_ip, protocol, client)
        except Exception as exc:  # the chain answers instead; a query never writes a traceback
            log.error("fast path failed: %s; the query takes the chain", failure(exc))
            return None

    async def answer(self, data: bytes, client_ip: str, protocol: str,
                     client: Client | None = None) -> bytes | None:
        """The reply's bytes, or None to drop (not even a header to answer)."""
        started = time.perf_counter()
        try:
            wire = await self._answer(data, client_ip, protocol, client, started)
        except Exception as exc:  # a bug: SERVFAIL, one line, never a traceback a client can cause
            log.error("error answering a query: %s", failure(exc))
            wire = _header_only_reply(data, RCODE.SERVFAIL), "servfail"
        if wire is None or isinstance(wire, bytes):
            return wire
        wire, result = wire  # a message the chain never saw: counted here
        if wire is not None:
            self.stats.record(protocol, None, result, None, time.perf_counter() - started)
        return wire

    async def _answer(self, data: bytes, client_ip: str, protocol: str, client: Client | None,
                      started: float) -> bytes | tuple[bytes | None, str] | None:
        """The reply's bytes (counted by the chain), or (bytes, result) for a message refused
        before it (counted by answer)."""
        if len(data) < HEADER_SIZE:
            return None, "malformed"
        flags = struct.unpack_from("!H", data, 2)[0]
        if flags & QR_BIT:
            return None, "malformed"  # a response sent to us: answering could loop
        if (flags >> 11) & 0xF != OPCODE_QUERY:
            try:
                readable = DNSRecord.parse(data)
            except Exception:  # NOTIMP all the same, without OPT
                readable = None
            return _error_reply(data, RCODE.NOTIMP, readable), "malformed"
        if question_is_malformed(data):
            return _header_only_reply(data, RCODE.FORMERR), "malformed"
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return _header_only_reply(data, RCODE.FORMERR), "malformed"
        if len(query.questions) != 1:
            return _error_reply(data, RCODE.FORMERR, query), "malformed"
        if any(b"." in label for label in query.q.qname.label):
            # A dot inside a label: as text it would read as another name than the one asked
            # (`adult` + `example.` is not `adult.example`), so neither filter nor forward it.
            return _error_reply(data, RCODE.FORMERR, query), "malformed"
        options = [record for record in query.ar if record.rtype == OPT]
        if len(options) > 1:
            return _error_reply(data, RCODE.FORMERR, query), "malformed"  # RFC 6891 §6.1.1
        edns_payload = dnssec_ok = None
        pad = False
        if options:
            opt = options[0]
            edns_payload = opt.rclass
            dnssec_ok = bool((opt.ttl >> 15) & 1)
            # RFC 7830 §4: a padded query over an encrypted transport gets a padded answer.
            pad = protocol in ENCRYPTED and any(getattr(option, "code", None) == PADDING_OPTION
                                                for option in opt.rdata or ())
            if (opt.ttl >> 16) & 0xFF:  # EDNS version other than 0
                reply = empty_reply(query, RCODE_BADVERS & 0xF)
                reply.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD, ext_rcode=RCODE_BADVERS >> 4))
                return bytes(reply.pack()), "malformed"
        request = Request(query=query, qname=_qname(query), qtype=query.q.qtype, client_ip=client_ip,
                          protocol=protocol, edns_payload=edns_payload, dnssec_ok=bool(dnssec_ok),
                          checking_disabled=bool(query.header.cd), client=client, received=started)
        try:
            response = await self.resolver.resolve(request)
        except Exception as exc:  # the chain's first links turn errors into SERVFAIL: a bug of theirs
            log.error("error answering a query in the chain: %s", failure(exc))
            response = Response(empty_reply(query, RCODE.SERVFAIL), "servfail")
        extra = request.options  # a client subnet to echo: in the OPT record, after ours
        limit = udp_limit(edns_payload) - len(extra) if protocol == "udp" else None
        wire = None
        if response.entry is not None and response.ede is None:
            wire = response.entry.render(data, self.now(), bool(query.header.rd), edns_payload,
                                         bool(dnssec_ok), limit, response.ttl_cap)
        if wire is None:
            reply = response.reply
            if response.ttl_cap is not None:
                cap_ttls(reply, response.ttl_cap)
            reply.header.id = query.header.id
            reply.header.qr, reply.header.ra, reply.header.rd = 1, 1, query.header.rd
            if reply.header.ad and not (query.header.ad or dnssec_ok):
                reply.header.ad = 0  # RFC 6840 §5.7: AD only to a client that asked with AD or DO
            reply.questions = query.questions
            wire = finish(reply, edns_payload, bool(dnssec_ok), response.ede, limit)
        if extra:
            wire = with_options(wire, extra)
        if pad:
            wire = padded(wire)
        return wire


class UdpListener:
    """A UDP socket read straight from the event loop: each wake-up drains what has arrived.

    Reading the socket ourselves (rather than through a datagram transport) lets one wake-up
    answer a burst, and the fast path answers without creating a task.
    """

    def __init__(self, handler: QueryHandler, sock: socket.socket):
        self.handler = handler
        self.sock = sock
        self.tasks: set[asyncio.Task] = set()
        self.dropped_replies = 0  # the kernel's send buffer was full: the client will retry
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        for task in self.tasks:
            task.cancel()
        self.sock.close()

    def _on_readable(self) -> None:
        receive = self.sock.recvfrom
        handler = self.handler
        answer_fast = handler.answer_fast
        for _ in range(UDP_BATCH):
            try:
                data, addr = receive(UDP_MAX_QUERY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable from a client that left
                log.debug("udp receive error: %s", exc)
                continue
            if handler.rate_limiter is not None and not handler.admit(addr[0], "udp"):
                continue  # over the limit: dropped without a word (docs/configuration.md)
            reply = answer_fast(data, addr[0])
            if reply is not None:
                self._send(reply, addr)
                continue
            task = asyncio.ensure_future(self._answer(data, addr))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr) -> None:
        reply = await self.handler.answer(data, addr[0], "udp")
        if reply is not None and self._loop is not None:
            self._send(reply, addr)

    def _send(self, reply: bytes, addr) -> None:
        try:
            self.sock.sendto(reply, addr)
        except (BlockingIOError, InterruptedError):
            self.dropped_replies += 1
        except OSError as exc:
            log.debug("udp send error to a client: %s", exc)


class TcpListener:
    """RFC 7766: length-prefixed messages, several per connection, answered as they are ready."""

    protocol = "tcp"

    def __init__(self, handler: QueryHandler, idle_timeout: float = 10.0, max_connections: int = 1000,
                 state=None):
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections  # for known clients (a class, a device)
        # Clients that will only get REFUSED may hold no more than this, on top: they never
        # take a known client's place (issue 18).
        self.max_unknown = max(1, max_connections // UNKNOWN_SHARE)
        self.max_per_source = min(TCP_MAX_PER_SOURCE, max_connections)
        self.state = state  # RuntimeState: who a source address is; None: every client is known
        # A trusted forwarder speaks for the clients behind it (ECS), whatever its own address:
        # its TCP retries of truncated answers must not be refused as unknown.
        subnet = find_link(handler.resolver, ClientSubnetLink)
        self.forwarders = subnet.trusted if subnet is not None else ()
        self.connections = 0  # known clients' connections
        self.unknown_connections = 0
        self._per_source: dict[str, int] = {}

    def connection_client(self, writer: asyncio.StreamWriter, client_ip: str) -> Client | None:
        """Who this connection speaks for, when the transport says (DoT's SNI); None: by address."""
        return None

    def _known(self, client_ip: str) -> bool:
        return self.state is None or self.state.snapshot.clients.identify(client_ip) is not None \
            or address_in(client_ip, self.forwarders)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if peer else ""
        per_source = self._per_source
        held = per_source.get(client_ip, 0)
        if held >= self.max_per_source:
            writer.transport.abort()
            return
        try:
            client = self.connection_client(writer, client_ip)
        except PermissionError as refusal:  # an unknown token: refused, then closed
            client, known, refusal_text = None, False, str(refusal)
        else:
            known, refusal_text = client is not None or self._known(client_ip), None
        if known and self.connections >= self.max_connections \
                or not known and self.unknown_connections >= self.max_unknown:
            writer.transport.abort()
            return
        per_source[client_ip] = held + 1
        try:
            if not known:  # its first query is answered REFUSED, then the connection is closed
                self.unknown_connections += 1
                try:
                    await self._refuse(reader, writer, refusal_text or "Prohibited")
                finally:
                    self.unknown_connections -= 1
                return
            self.connections += 1
            await self._serve(reader, writer, client_ip, client)
        finally:
            if per_source[client_ip] <= 1:
                del per_source[client_ip]
            else:
                per_source[client_ip] -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client_ip: str,
                     client: Client | None) -> None:
        protocol = self.protocol
        in_flight: set[asyncio.Task] = set()
        transport = writer.transport
        transport.set_write_buffer_limits(high=TCP_HIGH_WATER)
        stuck = False  # the client stopped reading: hang up without waiting to flush
        try:
            while True:
                if transport.get_write_buffer_size() > TCP_HIGH_WATER or len(in_flight) >= TCP_MAX_PIPELINE:
                    # Backpressure: read no more queries until the client takes its answers
                    # (fast-path ones included) and the pipeline has room; one that does
                    # not read within the idle timeout is cut off.
                    if not await self._wait_for_room(writer, in_flight):
                        stuck = True
                        break
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        (length,) = struct.unpack("!H", await reader.readexactly(2))
                        data = await reader.readexactly(length)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break
                if self.handler.rate_limiter is not None and not self.handler.admit(client_ip, protocol, client):
                    refused = refused_reply(data)
                    if refused is not None:
                        writer.write(struct.pack("!H", len(refused)) + refused)
                    continue
                reply = self.handler.answer_fast(data, client_ip, protocol, client)
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    continue
                task = asyncio.ensure_future(self._answer(data, client_ip, writer, client))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight and not stuck:
                await asyncio.wait(in_flight, timeout=self.idle_timeout)
            if not stuck and transport.get_write_buffer_size():
                stuck = not await self._drained(writer)
        except asyncio.CancelledError:
            # The server is stopping. Ended cancelled, this task would make Python 3.11's
            # StreamReaderProtocol log a CancelledError traceback per open connection.
            stuck = True
        finally:
            self.connections -= 1
            for task in in_flight:
                task.cancel()
            if stuck or transport.get_write_buffer_size():
                transport.abort()  # close() would hold the unsent bytes until the client reads
            else:
                writer.close()

    async def _wait_for_room(self, writer: asyncio.StreamWriter, in_flight: set[asyncio.Task]) -> bool:
        """Wait until the connection's unsent bytes fall under the low-water mark and the
        pipeline has room; False when that takes longer than the idle timeout."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                if len(in_flight) >= TCP_MAX_PIPELINE:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                await writer.drain()
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def _drained(self, writer: asyncio.StreamWriter) -> bool:
        try:
            async with asyncio.timeout(self.idle_timeout):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def _answer(self, data: bytes, client_ip: str, writer: asyncio.StreamWriter,
                      client: Client | None = None) -> None:
        reply = await self.handler.answer(data, client_ip, self.protocol, client)
        if reply is None:
            return
        if not writer.is_closing():
            writer.write(struct.pack("!H", len(reply)) + reply)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, why: str) -> None:
        """Answer the first query REFUSED with EDE 18 "Prohibited" (SPEC §2.1), then hang up."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                started = time.perf_counter()
                reply = prohibited_reply(await reader.readexactly(length), why)
                if reply is not None:  # counted as the chain counts an unknown client
                    self.handler.stats.record(self.protocol, None, "refused", "unknown_client",
                                              time.perf_counter() - started)
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            writer.transport.abort()
        except asyncio.CancelledError:  # the server is stopping
            writer.transport.abort()
        finally:
            writer.close()


def prohibited_reply(data: bytes, why: str = "Prohibited") -> bytes | None:
    """REFUSED with EDE 18 (when the query has EDNS) for a client we will not serve."""
    if len(data) < HEADER_SIZE or question_is_malformed(data):
        return refused_reply(data)
    try:
        query = DNSRecord.parse(data)
        options = [record for record in query.ar if record.rtype == OPT]
        edns_payload = options[0].rclass if options else None
        return finish(empty_reply(query, RCODE.REFUSED), edns_payload, False, (EDE_PROHIBITED, why), None)
    except Exception:
        return refused_reply(data)

