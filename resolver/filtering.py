"""The policy link: decides per SPEC §2.3, answers blocks itself, inspects what comes back."""

from __future__ import annotations

import socket
import struct

from dnslib import QTYPE, RCODE, DNSQuestion, DNSRecord

from policies.engine import Action, Decision, PolicyEngine
from resolver.answers import (
    EDE_BLOCKED, answer_addresses, block_address, block_answer, cname_answer, empty_reply,
)
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
    def __init__(self, state, block_response: str = "null", block_ttl: int = 60, policy_ttl: int = 60):
        self.state = state  # RuntimeState: .snapshot swapped whole on a change, .clock for the time
        self.block_response = block_response
        self.block_ttl = block_ttl
        self.policy_ttl = policy_ttl
        self._block_rdata = {
            QTYPE.A: _packed_address(block_response, QTYPE.A),
            QTYPE.AAAA: _packed_address(block_response, QTYPE.AAAA),
        }

    async def resolve(self, request: Request) -> Response:
        engine: PolicyEngine = self.state.engine
        client = request.client
        now = self.state.clock()
        class_state = engine.class_state(client.class_id, client.scope, now)
        if class_state is None:
            return self.blocked(request, engine.decide(request.qname, client.class_id, client.scope, now))
        decision = engine.decide_in(class_state, request.qname)
        # SPEC §2.6: while a class's rules follow the clock, no answer outlives the next change.
        ttl_cap = class_state.ttl_cap(now, self.policy_ttl)
        if class_state.screen_time is not None and client.device_id is not None:
            tracker = self.state.screen_time
            used = tracker.observe(client.device_id, now) if decision.active else tracker.used(client.device_id, now)
            if used > class_state.screen_time:
                decision = engine.decide_in(class_state, request.qname, spent=True)
                ttl_cap = min(ttl_cap, max(0, int(tracker.day_end - now)))
        action = decision.action
        if action is Action.RESOLVE:
            response = await self.next.resolve(request)
            if decision.inspect:
                response = self._inspect(request, response, engine, class_state)
        elif action is Action.BLOCK:
            response = self.blocked(request, decision)
        elif action is Action.REWRITE:
            response = await self._rewrite(request, decision)
        else:
            rcode = RCODE.NXDOMAIN if action is Action.NXDOMAIN else RCODE.NOERROR
            response = Response(empty_reply(request.query, rcode), "fixed", reason=decision.step)
        if ttl_cap is not None:
            response.ttl_cap = ttl_cap
        return response

    def blocked(self, request: Request, decision: Decision) -> Response:
        reply = block_answer(request.query, request.qname, request.qtype, self.block_response, self.block_ttl)
        return Response(reply, "blocked", reason=decision.reason, ede=(EDE_BLOCKED, decision.reason or "blocked"))

    def render_block(self, data: bytes, raw: RawQuery, decision: Decision, ttl_cap: int | None = None) -> bytes | None:
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
                    ttl = self.block_ttl if ttl_cap is None else min(self.block_ttl, ttl_cap)
                    records = b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, ttl, len(rdata)) + rdata
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

    def _inspect(self, request: Request, response: Response, engine: PolicyEngine, class_state) -> Response:
        """SPEC §2.4: a CNAME into a blocked name, or a listed address, blocks the whole answer."""
        entry = response.entry
        if entry is not None and entry.inspected is not None:
            verdict = self.entry_verdict(engine, entry, class_state)
        else:
            cnames = [_record_name(r.rdata.label) for r in response.reply.rr if r.rtype == QTYPE.CNAME]
            addresses = answer_addresses(response.reply.rr)
            verdict = self.verdict(engine, cnames, addresses, class_state)
        return response if verdict is None else self.blocked(request, verdict)

    def entry_verdict(self, engine: PolicyEngine, entry, class_state) -> Decision | None:
        """Inspection of a cached answer, remembered per entry for each class state."""
        key = (class_state.class_id, class_state.scope)
        known = entry.inspected.get(key)
        if known is not None and known[0] is class_state:
            return known[1]
        verdict = self.verdict(engine, entry.cnames, entry.addresses, class_state)
        entry.inspected[key] = (class_state, verdict)
        return verdict

    @staticmethod
    def verdict(engine: PolicyEngine, cnames, addresses, class_state) -> Decision | None:
        for target in cnames:
            decision = engine.decide_in(class_state, target)
            if decision.blocked:
                return Decision(Action.BLOCK, decision.step, f"{decision.rule} (via CNAME {target})",
                                reason=decision.reason)
        for address in addresses:
            decision = engine.blocked_address(address, class_state)
            if decision is not None:
                return decision
        return None
