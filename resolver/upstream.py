"""Talking to upstream nameservers: plain DNS over UDP (TCP on truncation) and TCP, with failover."""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from dataclasses import dataclass

from dnslib import EDNS0, DNSLabel, DNSQuestion, DNSRecord

from resolver.answers import MAX_UDP_PAYLOAD
from resolver.config import parse_upstream

log = logging.getLogger("classguard.upstream")

# Backoff for an upstream that failed: skipped (tried last) for this long, doubling to the cap.
DOWN_BACKOFF_START = 1.0
DOWN_BACKOFF_MAX = 30.0


class UpstreamError(Exception):
    """No usable answer from an upstream."""


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise UpstreamError("deadline passed")
    return left


def _question_key(message: DNSRecord) -> tuple:
    return tuple((str(q.qname).lower(), q.qtype, q.qclass) for q in message.questions)


def _check_reply(data: bytes, query: DNSRecord) -> DNSRecord | None:
    """The reply, parsed, if its id and question match the query; None to keep waiting (RFC 5452)."""
    if len(data) < 12 or struct.unpack_from("!H", data)[0] != query.header.id:
        return None
    try:
        reply = DNSRecord.parse(data)
    except Exception:
        return None
    if not reply.header.qr or _question_key(reply) != _question_key(query):
        return None
    return reply


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, query: DNSRecord):
        self.query = query
        self.done: asyncio.Future[DNSRecord] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        reply = _check_reply(data, self.query)
        if reply is not None and not self.done.done():
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
    healthy: bool = True
    failures: int = 0
    down_until: float = 0.0
    last_error: str = ""
    latency: float = 0.0  # seconds, moving average

    @classmethod
    def from_url(cls, url: str) -> "Upstream":
        scheme, host, port, _sni = parse_upstream(url)
        if scheme not in ("udp", "tcp"):
            raise ValueError(f"upstream {url}: only udp:// and tcp:// are supported so far")
        return cls(name=url, scheme=scheme, host=host, port=port)

    async def exchange(self, query: DNSRecord, deadline: float) -> DNSRecord:
        query.header.id = secrets.randbelow(65536)  # RFC 5452: an unpredictable id, and a fresh port
        if self.scheme == "udp":
            reply = await self._udp(query, deadline)
            if not reply.header.tc:
                return reply
        return await self._tcp(query, deadline)

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
                        if reply is not None:
                            return reply
                finally:
                    writer.close()
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise UpstreamError("timeout") from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise UpstreamError(f"tcp error: {exc}") from exc

    def record_success(self, elapsed: float) -> None:
        if not self.healthy:
            log.info("upstream %s is answering again", self.name)
        self.healthy, self.failures, self.down_until = True, 0, 0.0
        self.latency = elapsed if self.latency == 0 else 0.8 * self.latency + 0.2 * elapsed

    def record_failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.healthy:
            log.warning("upstream %s failed: %s", self.name, error)
        self.healthy = False
        backoff = min(DOWN_BACKOFF_MAX, DOWN_BACKOFF_START * 2 ** (self.failures - 1))
        self.down_until = time.monotonic() + backoff


class UpstreamGroup:
    """Several upstreams for the same job: healthy ones first, then the rest, one deadline for all."""

    def __init__(self, upstreams: list[Upstream], timeout: float):
        if not upstreams:
            raise ValueError("an upstream group needs at least one upstream")
        self.upstreams = upstreams
        self.timeout = timeout

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
            upstream.record_success(time.monotonic() - started)
            return reply
        raise UpstreamError("; ".join(errors) or "deadline passed")


def upstream_query(qname: str | DNSLabel, qtype: int, dnssec_ok: bool, checking_disabled: bool,
                   qclass: int = 1) -> DNSRecord:
    """The query we send: recursion desired, EDNS with our payload size, never the client's ECS."""
    query = DNSRecord(q=DNSQuestion(qname or ".", qtype, qclass))
    query.header.cd = int(checking_disabled)
    query.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD, flags="do" if dnssec_ok else ""))
    return query
