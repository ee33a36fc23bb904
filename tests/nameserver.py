"""A tiny real nameserver for tests, built on dnspython so our own encoder never checks itself.

It listens on 127.0.0.1, port 0, UDP and TCP, answers from a dict of records, counts the queries
it sees, and can misbehave on request: stay silent, truncate over UDP, send junk or a wrong id.
classguard's upstream probe (`. NS`) is answered like any question (NXDOMAIN, unless records
for the root were added) but counted in `probes`, not `queries`: the probes of an idle server
come and go with time, the questions a test causes do not.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset


@dataclass
class FakeNameserver:
    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (name, type) -> rdata texts
    ttl: int = 300
    mode: str = "normal"  # normal | silent | truncate | junk | wrong_id | servfail
    delay: float = 0.0
    queries: list[tuple[str, str, str]] = field(default_factory=list)  # (transport, name, type)
    probes: list[str] = field(default_factory=list)  # the transport of each `. NS` question
    options: list[list[int]] = field(default_factory=list)  # EDNS option codes of each query
    authentic: bool = False  # set AD in every answer, as a validating resolver does
    host: str = "127.0.0.1"
    port: int = 0
    connections: int = 0  # TCP and TLS connections accepted
    _extra_servers: list = field(default_factory=list)
    _transport: asyncio.DatagramTransport | None = None
    _server: asyncio.base_events.Server | None = None

    def add(self, name: str, rdtype: str, *values: str) -> None:
        self.records[(name.lower().rstrip("."), rdtype)] = list(values)

    @property
    def url(self) -> str:
        return f"udp://{self.host}:{self.port}"

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if (name, rdtype) == ("", "NS"):
            self.probes.append(transport)
        else:
            self.queries.append((transport, name, rdtype))
        self.options.append([option.otype for option in query.options])
        if self.mode == "silent":
            return None
        if self.mode == "junk":
            return b"\x00\x01garbage"
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if self.authentic:
            response.flags |= dns.flags.AD
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if self.mode == "wrong_id":
            response.id = (query.id + 1) % 65536
            return response.to_wire()
        if self.mode == "truncate" and transport == "udp":
            response.flags |= dns.flags.TC
            return response.to_wire()
        values = self.records.get((name, rdtype))
        cname = self.records.get((name, "CNAME"))
        if values is None and cname is not None and rdtype != "CNAME":
            response.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", "CNAME", *cname))
            target = cname[0].rstrip(".").lower()
            values = self.records.get((target, rdtype))
            if values:
                response.answer.append(dns.rrset.from_text(cname[0], self.ttl, "IN", rdtype, *values))
            return self._wire(response, transport)
        if values:
            response.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", rdtype, *values))
        elif not any(key[0] == name for key in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(
                "test.", self.ttl, "IN", "SOA", "ns.test. admin.test. 1 3600 600 86400 60"))
        else:
            response.authority.append(dns.rrset.from_text(
                "test.", self.ttl, "IN", "SOA", "ns.test. admin.test. 1 3600 600 86400 60"))
        return self._wire(response, transport)

    @staticmethod
    def _wire(response: dns.message.Message, transport: str) -> bytes:
        """Over TCP the whole answer; over UDP what fits the query's payload, or TC (RFC 2181 §9)."""
        # Records in the order they were added (dnspython shuffles by default), so that two
        # resolvers asking the same question get the same bytes.
        if transport == "tcp":
            return response.to_wire(max_size=65535, want_shuffle=False)
        try:
            return response.to_wire(want_shuffle=False)
        except dns.exception.TooBig:
            response.answer, response.authority, response.additional = [], [], []
            response.flags |= dns.flags.TC
            return response.to_wire()

    async def start(self) -> "FakeNameserver":
        loop = asyncio.get_running_loop()
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                async def reply():
                    if server.delay:
                        await asyncio.sleep(server.delay)
                    wire = server.answer(data, "udp")
                    if wire is not None:
                        self.transport.sendto(wire, addr)
                asyncio.ensure_future(reply())

        tcp = self._serve_stream
        wanted = self.port
        for attempt in range(20):  # port 0: find a port free for both UDP and TCP
            self._transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.host, wanted))
            self.port = self._transport.get_extra_info("sockname")[1]
            try:
                self._server = await asyncio.start_server(tcp, self.host, self.port)
                return self
            except OSError:
                self._transport.close()
                if wanted != 0 or attempt == 19:
                    raise
        return self

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            transport: str = "tcp") -> None:
        self.connections += 1
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                wire = self.answer(await reader.readexactly(length), transport)
                if wire is not None:
                    writer.write(struct.pack("!H", len(wire)) + wire)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def start_tls(self, context) -> int:
        """DNS over TLS (RFC 7858) on another port of 127.0.0.1; returns the port."""
        server = await asyncio.start_server(lambda r, w: self._serve_stream(r, w, "tls"), self.host, 0, ssl=context)
        self._extra_servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for server in self._extra_servers:
            server.close()
        if self._transport is not None:
            self._transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
