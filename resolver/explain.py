"""A decision explained by the server's own chain: `classguard check` and the dashboard's "why".

The question goes through the very links a query goes through (identification, local names,
the policy with screen time, answer inspection of what the upstreams say), marked `explain`: it
counts no screen-time minute, is neither counted nor logged, and goes to the upstreams only
when their answer could change the decision (answer inspection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dnslib import QTYPE, DNSQuestion, DNSRecord

from common.results import RESULTS
from policies.engine import Decision
from resolver.chain import Client, Request, Resolver
from resolver.state import RuntimeState


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    client: Client | None  # whom the chain took the asker for; None: an unknown client
    result: str  # what the query comes to (common.results): blocked, local, refused, forwarded...
    reason: str | None  # a block's reason, as in the EDE text and the counters
    decision: Decision | None  # the step and rule that decided; None for an unknown client
    in_force: str | None  # the closing rule in force (a pause, a closed window), if any
    until: float | None  # when the class's state changes (schedule boundary, override end)

    @property
    def action(self) -> str:
        """block, resolve, rewrite, nxdomain, nodata, local or refused."""
        if self.result in ("local", "refused"):
            return self.result
        if self.result == "blocked" and self.decision is not None:
            return self.decision.action.value  # block, or a bypass protection's fixed answer
        return self.decision.action.value if self.decision is not None else self.result


async def explain(head: Resolver, state: RuntimeState, name: str, *, client_ip: str = "",
                  client: Client | None = None, at: float | None = None) -> Verdict:
    """What the server answers `name` (type A) for `client` (or whoever `client_ip` is) at `at`."""
    request = Request(query=DNSRecord(q=DNSQuestion(name, QTYPE.A)), qname=name, qtype=QTYPE.A,
                      client_ip=client_ip, protocol="check", client=client, explain=True, at=at)
    response = await head.resolve(request)
    in_force = until = None
    asker = request.client
    if asker is not None and response.source != "local":
        now = state.clock() if at is None else at
        class_state = state.engine.class_state(asker.class_id, asker.scope, now)
        if class_state is not None:
            in_force = class_state.closed_rule if class_state.closed else None
            if class_state.timed and class_state.valid_until != math.inf:
                until = class_state.valid_until
    return Verdict(name, asker, RESULTS.get(response.source, response.source), response.reason,
                   response.decision, in_force, until)
