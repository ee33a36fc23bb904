"""The policy link: decides per SPEC §2.3, answers blocks itself, inspects what comes back."""

from __future__ import annotations

import socket
import struct

from dnslib import QTYPE, RCODE, DNSQuestion, DNSRecord

from policies.engine import Action, Decision, PolicyEngine
from resolver.answers import EDE_BLOCKED, block_address, block_answer, cname_answer, empty_reply
from resolver.chain import Link, Request, Response
from resolver.wire import CD_BIT, QR, RA, RD_BIT, RawQuery, opt_record

ADDRESS_TYPES = (QTYPE.A, QTYPE.AAAA)


def _record_name(label) -> str:
    return str(label).rstrip(".").lower()


def _packed_address(block_response: str, qtype: int) -> bytes | None:
    address = block_address(block_response, qtype)
    if address is None:
        return None
    family = socket.AF_INET if qtype == QTYPE.A else socket.AF_INET6
    return socket.inet_pton(family, address)


class FilteringLink(Link):
    def __init__(self, state, block_response: str = "null", block_ttl: int = 60):
        self.state = state  # holds .engine: PolicyEngine, swapped whole on a policy or list change
        self.block_response = block_response
        self.block_ttl = block_ttl
        self._block_rdata = {
            QTYPE.A: _packed_address(block_response, QTYPE.A),
            QTYPE.AAAA: _packed_address(block_response, QTYPE.AAAA),
        }

    async def resolve(self, request: Request) -> Response:
        engine: PolicyEngine = self.state.engine
        client = request.client
        decision = engine.decide(request.qname, client.class_id, client.scope)
        action = decision.action
        if action is Action.RESOLVE:
            response = await self.next.resolve(request)
            if decision.inspect:
                return self._inspect(request, response, engine)
            return response
        if action is Action.BLOCK:
            return self.blocked(request, decision)
        if action is Action.REWRITE:
            return await self._rewrite(request, decision)
        rcode = RCODE.NXDOMAIN if action is Action.NXDOMAIN else RCODE.NOERROR
        return Response(empty_reply(request.query, rcode), "fixed", reason=decision.step)

    def blocked(self, request: Request, decision: Decision) -> Response:
        reply = block_answer(request.query, request.qname, request.qtype, self.block_response, self.block_ttl)
        return Response(reply, "blocked", reason=decision.reason, ede=(EDE_BLOCKED, decision.reason or "blocked"))

    def render_block(self, data: bytes, raw: RawQuery, decision: Decision) -> bytes | None:
        """The same bytes as `blocked()` packed by the slow path, straight from the query's bytes."""
        if raw.qclass != 1:
            return None
        qtype = raw.qtype
        rcode, records = 0, b""
        if qtype in ADDRESS_TYPES:
            mode = self.block_response
            if mode == "nxdomain":
                rcode = RCODE.NXDOMAIN
            elif mode == "refused":
                rcode = RCODE.REFUSED
            else:
                rdata = self._block_rdata.get(qtype)
                if rdata is not None:
                    # The owner is a pointer to the question's name (offset 12), as dnslib packs it.
                    records = b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, self.block_ttl, len(rdata)) + rdata
        flags = QR | RA | rcode | (RD_BIT if raw.rd else 0) | (CD_BIT if raw.cd else 0)
        header = data[0:2] + struct.pack("!HHHHH", flags, 1, 1 if records else 0, 0,
                                         0 if raw.edns_payload is None else 1)
        wire = header + data[12:raw.question_end] + records
        if raw.edns_payload is not None:
            wire += opt_record(raw.dnssec_ok, (EDE_BLOCKED, decision.reason or "blocked"))
        return wire

    async def _rewrite(self, request: Request, decision: Decision) -> Response:
        """Safe search: CNAME to the enforced host plus that host's own records, in one answer."""
        target = decision.target
        query = DNSRecord(q=DNSQuestion(target, request.qtype))
        inner = Request(query=query, qname=target, qtype=request.qtype, client_ip=request.client_ip,
                        protocol=request.protocol, dnssec_ok=request.dnssec_ok, client=request.client,
                        internal=True)
        response = await self.next.resolve(inner)
        ttl = min([record.ttl for record in response.reply.rr] or [self.block_ttl])
        return Response(cname_answer(request.query, target, response.reply, ttl), "rewrite",
                        reason=decision.rule, ede=response.ede)

    def _inspect(self, request: Request, response: Response, engine: PolicyEngine) -> Response:
        """SPEC §2.4: a CNAME into a blocked name, or a listed address, blocks the whole answer."""
        client = request.client
        entry = response.entry
        if entry is not None and entry.inspected is not None:
            verdict = self.entry_verdict(engine, entry, client.class_id, client.scope)
        else:
            cnames = [_record_name(r.rdata.label) for r in response.reply.rr if r.rtype == QTYPE.CNAME]
            addresses = [str(r.rdata) for r in response.reply.rr if r.rtype in ADDRESS_TYPES]
            verdict = self.verdict(engine, cnames, addresses, client.class_id, client.scope)
        return response if verdict is None else self.blocked(request, verdict)

    def entry_verdict(self, engine: PolicyEngine, entry, class_id: str, scope: str) -> Decision | None:
        """Inspection of a cached answer, remembered per entry for each engine, class and scope."""
        key = (class_id, scope)
        known = entry.inspected.get(key)
        if known is not None and known[0] is engine:
            return known[1]
        verdict = self.verdict(engine, entry.cnames, entry.addresses, class_id, scope)
        entry.inspected[key] = (engine, verdict)
        return verdict

    @staticmethod
    def verdict(engine: PolicyEngine, cnames, addresses, class_id: str, scope: str) -> Decision | None:
        for target in cnames:
            decision = engine.decide(target, class_id, scope)
            if decision.blocked:
                return Decision(Action.BLOCK, decision.step, f"{decision.rule} (via CNAME {target})",
                                reason=decision.reason)
        for address in addresses:
            decision = engine.blocked_address(address, class_id, scope)
            if decision is not None:
                return decision
        return None
