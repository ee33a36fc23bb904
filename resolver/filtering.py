"""The policy link: decides per SPEC §2.3, answers blocks itself, inspects what comes back."""

from __future__ import annotations

from dnslib import QTYPE, RCODE, DNSQuestion, DNSRecord

from policies.engine import Action, Decision, PolicyEngine
from resolver.answers import EDE_BLOCKED, block_answer, cname_answer, empty_reply
from resolver.chain import Link, Request, Response

ADDRESS_TYPES = (QTYPE.A, QTYPE.AAAA)


def _record_name(label) -> str:
    return str(label).rstrip(".").lower()


class FilteringLink(Link):
    def __init__(self, state, block_response: str = "null", block_ttl: int = 60):
        self.state = state  # holds .engine: PolicyEngine, swapped whole on a policy or list change
        self.block_response = block_response
        self.block_ttl = block_ttl

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
        for record in response.reply.rr:
            rtype = record.rtype
            if rtype == QTYPE.CNAME:
                target = _record_name(record.rdata.label)
                decision = engine.decide(target, client.class_id, client.scope)
                if decision.blocked:
                    return self.blocked(request, Decision(Action.BLOCK, decision.step,
                                                          f"{decision.rule} (via CNAME {target})",
                                                          reason=decision.reason))
            elif rtype in ADDRESS_TYPES:
                decision = engine.blocked_address(str(record.rdata), client.class_id, client.scope)
                if decision is not None:
                    return self.blocked(request, decision)
        return response
