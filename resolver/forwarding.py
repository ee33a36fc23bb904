"""The last link: sends the question to the upstreams (or a forward zone's server)."""

from __future__ import annotations

import logging

from dnslib import RCODE, DNSLabel

from resolver.answers import EDE_NO_REACHABLE_AUTHORITY, EDE_OTHER, OPT, empty_reply
from resolver.chain import Request, Response
from resolver.upstream import UnreadableAnswer, UpstreamError, UpstreamGroup, upstream_query

log = logging.getLogger("classguard.forwarding")


class ForwardingResolver:
    # Asking an upstream means waiting for it: the fast path ends before this link.
    slow_path_only = True

    def __init__(self, default: UpstreamGroup, zones: dict[str, UpstreamGroup] | None = None,
                 trust_ad: bool = False):
        self.default = default
        self.zones = zones or {}
        self.trust_ad = trust_ad  # dns.upstream_ad: trust; else an upstream's AD bit is dropped here

    def group_for(self, name: str) -> UpstreamGroup:
        zones = self.zones
        if zones:
            while True:
                group = zones.get(name)
                if group is not None:
                    return group
                dot = name.find(".")
                if dot < 0:
                    break
                name = name[dot + 1:]
        return self.default

    async def resolve(self, request: Request) -> Response:
        # The name as asked, label by label, lowercased: never re-read from text, where a label's
        # non-ASCII bytes would be garbled or fail IDNA encoding.
        qname = DNSLabel([label.lower() for label in request.query.q.qname.label])
        query = upstream_query(qname, request.qtype, request.dnssec_ok, request.checking_disabled,
                               request.query.q.qclass)
        try:
            reply = await self.group_for(request.qname).exchange(query)
        except UnreadableAnswer:  # at once, and no upstream counted as failing
            return Response(empty_reply(request.query, RCODE.SERVFAIL), "servfail",
                            ede=(EDE_OTHER, "the upstream's answer cannot be read"))
        except UpstreamError as exc:
            log.debug("no upstream answered %s: %s", request.qname, exc)
            return Response(empty_reply(request.query, RCODE.SERVFAIL), "servfail",
                            ede=(EDE_NO_REACHABLE_AUTHORITY, "no upstream answered"))
        reply.ar = [record for record in reply.ar if record.rtype != OPT]
        if not self.trust_ad:
            reply.header.ad = 0
        return Response(reply, "upstream")
