"""The policy link: decides per SPEC §2.3, answers blocks itself, inspects what comes back."""

from __future__ import annotations

import math
import socket
import struct

from dnslib import QTYPE, RCODE, DNSQuestion, DNSRecord

from blocklists.names import wire_name_to_text
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


DECISION_MEMO_LIMIT = 200_000  # the fast path's decisions per class state, by wire name


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
        # The fast path's memo: one block decision per (reason, active) shared by every name it
        # blocks (a million listed names stay cheap to remember). Its last reply to the same
        # query bytes is kept on their RawQuery, with the class state and until when it is true.
        self._blocks: dict[tuple, Decision] = {}
        self._fast_next = None

    def decision(self, engine: PolicyEngine, class_state, client, name, now: float,
                 decide, explain: bool = False) -> tuple[Decision, int | None]:
        """The class's decision for this client now, and the longest TTL its answer may carry:
        the one rule of both paths. `decide(engine, class_state, name, spent)` is the path's memo
        of engine.evaluate_in; `explain`: look at screen time without counting a minute."""
        decision = decide(engine, class_state, name, False)
        # SPEC §2.6: while a class's rules follow the clock, no answer outlives the next change.
        ttl_cap = class_state.ttl_cap(now, self.policy_ttl)
        if class_state.screen_time is not None and client.device_id is not None:
            tracker = self.state.screen_time
            count = tracker.peek if explain else tracker.count  # every query counts its minute
            if count(client.device_id, now, decision.active) > class_state.screen_time:
                # Spent: closed until the next local midnight, and no answer outlives that.
                decision = decide(engine, class_state, name, True)
                ttl_cap = min(ttl_cap, max(0, int(tracker.day_end - now)))
        return decision, ttl_cap

    @staticmethod
    def _decide_text(engine: PolicyEngine, class_state, name: str, spent: bool) -> Decision:
        return engine.decide_in(class_state, name, spent)

    def _decide_wire(self, engine: PolicyEngine, class_state, qname: bytes, spent: bool) -> Decision:
        """The decision for a wire name, memoised in its class state (so dropped with it)."""
        memo = class_state.spent_wire_decisions if spent else class_state.wire_decisions
        decision = memo.get(qname)
        if decision is None:
            decision = engine.evaluate_in(class_state, wire_name_to_text(qname), spent)
            if decision.action is Action.BLOCK:
                decision = self._blocks.setdefault((decision.reason, decision.active), decision)
            if len(memo) >= DECISION_MEMO_LIMIT:
                memo.clear()
            memo[qname] = decision
        return decision

    async def resolve(self, request: Request) -> Response:
        engine: PolicyEngine = self.state.engine
        client = request.client
        now = self.state.clock() if request.at is None else request.at
        class_state = engine.class_state(client.class_id, client.scope, now)
        if class_state is None:
            decision = engine.decide(request.qname, client.class_id, client.scope, now)
            return self.blocked(request, decision)
        decision, ttl_cap = self.decision(engine, class_state, client, request.qname, now,
                                          self._decide_text, request.explain)
        action = decision.action
        if action is Action.RESOLVE:
            if request.explain and not decision.inspect:  # nothing coming back could change it
                return Response(empty_reply(request.query), "upstream", decision=decision)
            response = await self.next.resolve(request)
            response.decision = decision
            if decision.inspect:
                response = self._inspect(request, response, engine, class_state)
        elif action is Action.BLOCK:
            response = self.blocked(request, decision)
        elif action is Action.REWRITE:
            if request.explain:  # the enforced host's own addresses are no part of the decision
                return Response(empty_reply(request.query), "rewrite", reason=decision.rule,
                                decision=decision)
            response = await self._rewrite(request, decision)
        else:
            rcode = RCODE.NXDOMAIN if action is Action.NXDOMAIN else RCODE.NOERROR
            response = Response(empty_reply(request.query, rcode), "fixed", reason=decision.step,
                                decision=decision)
        if ttl_cap is not None:
            response.ttl_cap = ttl_cap
        return response

    # -- the fast path: the same decision, from the query's bytes --------------------------------

    def fast_step(self, following):
        """Decides, answers a block from bytes, hands a resolve to `following` (the cache) and
        inspects what it answers; repeats its last reply to the same bytes in the same class
        state while that reply's bytes are true."""
        self._fast_next = following
        return self._fast_answer

    def _fast_answer(self, query) -> bytes | None:
        client = query.client
        state = self.state
        now = state.clock()
        engine = state.snapshot.engine
        class_state = engine.class_state(client.class_id, client.scope, now)
        if class_state is None:
            return None
        # ClassState.ttl_cap, the one rule, is None for a class whose rules do not follow the
        # clock: that case skips the call.
        ttl_cap = class_state.ttl_cap(now, self.policy_ttl) if class_state.timed else None
        if class_state.screen_time is not None:  # every query counts a device's minutes
            return self._fast_decide(query, engine, class_state, client, now)
        made = query.raw.reply
        if made is not None and made[0] is class_state and made[1] == ttl_cap \
                and made[2] == query.protocol and query.mono < made[3]:
            # The same query bytes, in the same class state, while its bytes are still true.
            _state, _cap, _protocol, _until, reply, query.result, query.reason, repeat = made
            if repeat is not None:
                repeat()
            return query.data[0:2] + reply
        wire = self._fast_decide(query, engine, class_state, client, now)
        if wire is not None:
            query.raw.reply = (class_state, ttl_cap, query.protocol, query.true_until, wire[2:],
                               query.result, query.reason, query.on_repeat)
        return wire

    def _fast_decide(self, query, engine: PolicyEngine, class_state, client, now: float) -> bytes | None:
        raw = query.raw
        decision, ttl_cap = self.decision(engine, class_state, client, raw.qname, now,
                                          self._decide_wire)
        action = decision.action
        if action is Action.BLOCK:
            query.result, query.reason, query.true_until, query.on_repeat = \
                "blocked", decision.reason, math.inf, None  # a block's bytes do not age
            return self.render_block(query.data, raw, decision, ttl_cap)
        if action is not Action.RESOLVE:
            return None
        query.ttl_cap = ttl_cap
        query.entry = None
        wire = self._fast_next(query)
        if wire is not None and decision.inspect and query.entry is not None:
            verdict = self.entry_verdict(engine, query.entry, class_state)
            if verdict is not None:
                query.result, query.reason, query.true_until, query.on_repeat = \
                    "blocked", verdict.reason, math.inf, None
                return self.render_block(query.data, raw, verdict, ttl_cap)
        return wire

    def blocked(self, request: Request, decision: Decision) -> Response:
        reply = block_answer(request.query, request.qname, request.qtype, self.block_response, self.block_ttl)
        return Response(reply, "blocked", reason=decision.reason, ede=(EDE_BLOCKED, decision.reason or "blocked"),
                        decision=decision)

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
                        reason=decision.rule, ede=response.ede, decision=decision)

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
