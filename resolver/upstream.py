"""Talking to upstream nameservers: plain DNS over UDP (TCP on truncation), TCP, TLS and HTTPS,
with failover, and probes that find out whether an idle upstream answers."""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dnslib import EDNS0, QTYPE, DNSBuffer, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from common.errors import ClassguardError
from resolver.answers import MAX_UDP_PAYLOAD
from resolver.settings import parse_upstream

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("classguard.upstream")

# Backoff for an upstream that failed: skipped (tried last) for this long, doubling to the cap.
DOWN_BACKOFF_START = 1.0
DOWN_BACKOFF_MAX = 30.0
# Doublings past which the backoff is DOWN_BACKOFF_MAX anyway: the failure count of a long outage
# grows without bound, and 2.0 ** 1024 no longer fits a float.
DOWN_BACKOFF_DOUBLINGS = 16
# How often an idle group asks its upstreams (dns.upstream_probe_interval's default), seconds.
PROBE_INTERVAL = 10.0


class UpstreamError(ClassguardError):
    """No usable answer from an upstream."""


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise UpstreamError("deadline passed")
    return left


def _question_key(message: DNSRecord) -> tuple:
    return tuple((str(q.qname).lower(), q.qtype, q.qclass) for q in message.questions)


class UnreadableAnswer(ClassguardError):
    """The upstream answered our question, but the answer is one our reader cannot use (e.g. a
    record with empty RDATA): the answer's fault, SERVFAIL at once; the upstream is healthy."""


def _check_reply(data: bytes, query: DNSRecord) -> DNSRecord | UnreadableAnswer | None:
    """The reply, parsed, if its id and question match the query; None to keep waiting (RFC 5452);
    UnreadableAnswer when it is the answer to our question but cannot be read past it (anyone who
    controls a name could otherwise make every upstream look down, and each client wait)."""
    if len(data) < 12 or struct.unpack_from("!H", data)[0] != query.header.id:
        return None
    try:
        reply = DNSRecord.parse(data)
    except Exception:
        return UnreadableAnswer("the upstream's answer cannot be read") \
            if _answers_question(data, query) else None
    if not reply.header.qr or _question_key(reply) != _question_key(query):
        return None
    return reply


def _answers_question(data: bytes, query: DNSRecord) -> bool:
    """Whether `data` is a reply whose header and question section match `query`'s, read alone."""
    try:
        buffer = DNSBuffer(data)
        header = DNSHeader.parse(buffer)
        questions = [DNSQuestion.parse(buffer) for _ in range(header.q)]
    except Exception:
        return False
    return bool(header.qr) and tuple((str(q.qname).lower(), q.qtype, q.qclass) for q in questions) \
        == _question_key(query)


DOH_HEADERS = {"Content-Type": "application/dns-message", "Accept": "application/dns-message"}


class _StreamConnection:
    """One TCP/TLS connection carrying many queries at once, answers matched by id (RFC 7766)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.pending: dict[int, tuple[DNSRecord, asyncio.Future]] = {}
        self.closed = False
        self._reading = asyncio.ensure_future(self._read())

    async def exchange(self, query: DNSRecord) -> DNSRecord:
        while query.header.id in self.pending:  # ids must be unique on one connection
            query.header.id = secrets.randbelow(65536)
        future = asyncio.get_running_loop().create_future()
        self.pending[query.header.id] = (query, future)
        try:
            data = query.pack()
            self.writer.write(struct.pack("!H", len(data)) + data)
            return await future
        finally:
            self.pending.pop(query.header.id, None)

    async def _read(self) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                data = await self.reader.readexactly(length)
                if len(data) < 2:
                    continue
                waiting = self.pending.get(struct.unpack_from("!H", data)[0])
                if waiting is None:
                    continue
                reply = _check_reply(data, waiting[0])
                if reply is not None and not waiting[1].done():
                    if isinstance(reply, UnreadableAnswer):
                        waiting[1].set_exception(reply)
                    else:
                        waiting[1].set_result(reply)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            error = UpstreamError(f"connection closed: {exc}")
        except asyncio.CancelledError:
            error = UpstreamError("connection closed")
        else:  # pragma: no cover - the loop only ends by an exception
            error = UpstreamError("connection closed")
        self.closed = True
        for _query, future in list(self.pending.values()):
            if not future.done():
                future.set_exception(error)
        self.writer.close()

    def close(self) -> None:
        self.closed = True
        self._reading.cancel()
        self.writer.close()


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, query: DNSRecord):
        self.query = query
        self.done: asyncio.Future[DNSRecord] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        reply = _check_reply(data, self.query)
        if reply is not None and not self.done.done():
            if isinstance(reply, UnreadableAnswer):
                self.done.set_exception(reply)
            else:
                self.done.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(UpstreamError(f"udp error: {exc}"))


@dataclass
class Upstream:
    """One configured upstream nameserver and what we know of its health."""

    name: str  # as configured, used as the metrics label
    scheme: str
    host: str
    port: int
    healthy: bool | None = None  # None until its first answer or failure (a probe's or a client's)
    last_answer: float = 0.0  # time.monotonic() of its last answer (set when healthy is True)
    failures: int = 0
    down_until: float = 0.0
    last_error: str = ""
    latency: float = 0.0  # seconds, moving average
    answers: int = 0  # exchanges that succeeded, for the metrics
    errors: int = 0  # exchanges that failed (timeouts, network errors), for the metrics

    sni: str | None = None
    url: str = ""
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    _stream: "_StreamConnection | None" = field(default=None, repr=False)
    _stream_lock: asyncio.Lock | None = field(default=None, repr=False)
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str, ssl_context: ssl.SSLContext | None = None) -> "Upstream":
        scheme, host, port, sni = parse_upstream(url)
        upstream = cls(name=url, scheme=scheme, host=host, port=port, sni=sni, url=url)
        if scheme in ("tls", "https"):
            upstream.ssl_context = ssl_context or ssl.create_default_context()
        return upstream

    async def exchange(self, query: DNSRecord, deadline: float) -> DNSRecord:
        query.header.id = secrets.randbelow(65536)  # RFC 5452: an unpredictable id, and a fresh port
        if self.scheme == "udp":
            reply = await self._udp(query, deadline)
            if not reply.header.tc:
                return reply
        elif self.scheme == "tls":
            return await self._tls(query, deadline)
        elif self.scheme == "https":
            return await self._https(query, deadline)
        return await self._tcp(query, deadline)

    async def _tls(self, query: DNSRecord, deadline: float) -> DNSRecord:
        """DNS over TLS (RFC 7858), on one connection kept open and shared by concurrent queries."""
        if self._stream_lock is None:
            self._stream_lock = asyncio.Lock()
        try:
            async with asyncio.timeout(_remaining(deadline)):
                async with self._stream_lock:
                    if self._stream is None or self._stream.closed:
                        reader, writer = await asyncio.open_connection(
                            self.host, self.port, ssl=self.ssl_context,
                            server_hostname=self.sni or self.host)
                        self._stream = _StreamConnection(reader, writer)
                stream = self._stream
                return await stream.exchange(query)
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise UpstreamError("timeout") from exc
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            raise UpstreamError(f"tls error: {exc}") from exc

    async def _https(self, query: DNSRecord, deadline: float) -> DNSRecord:
        """DNS over HTTPS (RFC 8484) POST, on a kept-alive session; the id is 0 as §4.1 advises."""
        import aiohttp  # lazy: a server without https upstreams does not load the HTTP client

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_context, limit=16))
        query.header.id = 0
        try:
            async with asyncio.timeout(_remaining(deadline)):
                async with self._session.post(self.url, data=query.pack(), headers=DOH_HEADERS) as answer:
                    if answer.status != 200:
                        raise UpstreamError(f"https status {answer.status}")
                    if answer.content_type != "application/dns-message":
                        raise UpstreamError(f"https answered {answer.content_type}")
                    data = await answer.read()
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise UpstreamError("timeout") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"https error: {exc}") from exc
        reply = _check_reply(data, query)
        if reply is None:
            raise UpstreamError("https answer does not match the question")
        if isinstance(reply, UnreadableAnswer):
            raise reply
        return reply

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._session is not None:
            await self._session.close()

    async def _udp(self, query: DNSRecord, deadline: float) -> DNSRecord:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _UdpExchange(query), remote_addr=(self.host, self.port))
        try:
            transport.sendto(query.pack())
            return await asyncio.wait_for(protocol.done, _remaining(deadline))
        except asyncio.TimeoutError as exc:
            raise UpstreamError("timeout") from exc
        finally:
            transport.close()

    async def _tcp(self, query: DNSRecord, deadline: float) -> DNSRecord:
        try:
            async with asyncio.timeout(_remaining(deadline)):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    data = query.pack()
                    writer.write(struct.pack("!H", len(data)) + data)
                    await writer.drain()
                    while True:
                        (length,) = struct.unpack("!H", await reader.readexactly(2))
                        reply = _check_reply(await reader.readexactly(length), query)
                        if isinstance(reply, UnreadableAnswer):
                            raise reply
                        if reply is not None:
                            return reply
                finally:
                    writer.close()
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise UpstreamError("timeout") from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise UpstreamError(f"tcp error: {exc}") from exc

    async def probe(self, timeout: float) -> bool:
        """Ask `. NS` (RD=1), which any recursive resolver answers from its cache (RFC 8109), through
        the same exchange as a client's question; record the outcome, never counted as a client's
        answer or error. True when it answered."""
        started = time.monotonic()
        try:
            await self.exchange(probe_query(), started + timeout)
        except Exception as exc:  # UpstreamError, OSError, ...: a failed probe, never a dead prober
            self.record_failure(str(exc) or type(exc).__name__, probe=True)
            return False
        self.record_success(time.monotonic() - started, probe=True)
        return True

    def record_success(self, elapsed: float, probe: bool = False) -> None:
        if self.healthy is False:
            log.info("upstream %s is answering again", self.name)
        elif self.healthy is None:
            log.info("upstream %s is answering", self.name)
        self.healthy, self.failures, self.down_until = True, 0, 0.0
        self.last_answer = time.monotonic()
        if not probe:
            self.answers += 1
        self.latency = elapsed if self.latency == 0 else 0.8 * self.latency + 0.2 * elapsed

    def record_failure(self, error: str, probe: bool = False) -> None:
        self.failures += 1
        if not probe:
            self.errors += 1
        self.last_error = error
        if self.healthy is not False:  # once per outage, and once for one down from the start
            log.warning("upstream %s failed: %s", self.name, error)
        self.healthy = False
        doublings = min(self.failures - 1, DOWN_BACKOFF_DOUBLINGS)
        backoff = min(DOWN_BACKOFF_MAX, DOWN_BACKOFF_START * 2 ** doublings)
        self.down_until = time.monotonic() + backoff


class UpstreamGroup:
    """Several upstreams for the same job: healthy ones first, then the rest, one deadline for all."""

    def __init__(self, upstreams: list[Upstream], timeout: float):
        if not upstreams:
            raise ValueError("an upstream group needs at least one upstream")
        self.upstreams = upstreams
        self.timeout = timeout
        self.last_answer: float | None = None  # time.monotonic() of the last client's answer

    async def probe(self, interval: float) -> None:
        """Unless a client's question was answered within `interval` (a busy group learns from
        its traffic, and sends nothing more), ask each upstream not known to answer, i.e. never
        heard from, failed, or silent for `interval`, one probe each, at once, within `timeout`."""
        now = time.monotonic()
        if self.last_answer is not None and now - self.last_answer < interval:
            return
        due = [upstream for upstream in self.upstreams
               if not (upstream.healthy and now - upstream.last_answer < interval)]
        await asyncio.gather(*(upstream.probe(self.timeout) for upstream in due))

    def _order(self) -> list[Upstream]:
        now = time.monotonic()
        return sorted(self.upstreams, key=lambda u: (u.down_until > now, u.latency))

    async def exchange(self, query: DNSRecord) -> DNSRecord:
        deadline = time.monotonic() + self.timeout
        ordered = self._order()
        errors = []
        for position, upstream in enumerate(ordered):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # Share what is left between the upstreams not tried yet, so one dead server cannot
            # eat the whole deadline.
            attempt_deadline = time.monotonic() + left / (len(ordered) - position)
            started = time.monotonic()
            try:
                reply = await upstream.exchange(query, attempt_deadline)
            except UpstreamError as exc:
                upstream.record_failure(str(exc))
                errors.append(f"{upstream.name}: {exc}")
                continue
            except OSError as exc:
                upstream.record_failure(str(exc))
                errors.append(f"{upstream.name}: {exc}")
                continue
            except UnreadableAnswer:
                upstream.record_success(time.monotonic() - started)  # it answered: the name's fault
                raise
            upstream.record_success(time.monotonic() - started)
            self.last_answer = time.monotonic()
            return reply
        raise UpstreamError("; ".join(errors) or "deadline passed")


def upstream_query(qname: str | DNSLabel, qtype: int, dnssec_ok: bool, checking_disabled: bool,
                   qclass: int = 1) -> DNSRecord:
    """The query we send: recursion desired, EDNS with our payload size, never the client's ECS."""
    query = DNSRecord(q=DNSQuestion(qname or ".", qtype, qclass))
    query.header.cd = int(checking_disabled)
    query.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD, flags="do" if dnssec_ok else ""))
    return query


def probe_query() -> DNSRecord:
    return upstream_query(".", QTYPE.NS, dnssec_ok=False, checking_disabled=False)


async def probe_upstreams(groups: list[UpstreamGroup], interval: float = PROBE_INTERVAL) -> None:
    """At once, then every `interval`: each group probes the upstreams it is not sure of, so that
    /readyz and classguard_upstream_up tell the truth before (and without) a client's question.
    Runs beside the DNS path, never in it."""
    while True:
        await asyncio.gather(*(group.probe(interval) for group in groups))
        await asyncio.sleep(interval)
