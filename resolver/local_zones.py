"""Answered here and never forwarded: localhost, RFC 6761 names, RFC 6303 reverse zones, ANY
(RFC 8482) and any class but IN (CHAOS `version.bind` would show the upstream's version), after
client identification so an unknown client is refused even those."""

from __future__ import annotations

from dnslib import AAAA, QTYPE, RCODE, RR, SOA, A

from blocklists.names import wire_name_to_text
from policies.engine import Action, Decision
from resolver.answers import empty_reply, rfc8482_answer
from resolver.chain import Link, Request, Response

LOCAL_TTL = 3600
QTYPE_ANY = 255
CLASS_IN = 1  # RFC 1035 §3.2.4

# RFC 6761 §6.3-6.4 and RFC 6762: answered NXDOMAIN here ("localhost" gets loopback addresses).
SPECIAL_USE = ("invalid", "local", "test", "onion", "home.arpa")

# RFC 6303 §4: reverse zones of private, loopback, link-local and documentation space.
PRIVATE_REVERSE = (
    ["10.in-addr.arpa", "168.192.in-addr.arpa", "254.169.in-addr.arpa", "127.in-addr.arpa",
     "0.in-addr.arpa", "2.0.192.in-addr.arpa", "100.51.198.in-addr.arpa", "113.0.203.in-addr.arpa",
     "255.255.255.255.in-addr.arpa"]
    + [f"{octet}.172.in-addr.arpa" for octet in range(16, 32)]
    + ["d.f.ip6.arpa", "8.e.f.ip6.arpa", "9.e.f.ip6.arpa", "a.e.f.ip6.arpa", "b.e.f.ip6.arpa",
       "8.b.d.0.1.0.0.2.ip6.arpa",
       "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
       "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa"]
)


def _zone_of(name: str, zones: frozenset[str]) -> str | None:
    while True:
        if name in zones:
            return name
        dot = name.find(".")
        if dot < 0:
            return None
        name = name[dot + 1:]


class LocalZonesLink(Link):
    def __init__(self, forwarded_zones: frozenset[str] = frozenset()):
        # A school that forwards one of these zones to its own server (forward_zones) keeps it.
        self.zones = frozenset(z for z in (*SPECIAL_USE, *PRIVATE_REVERSE) if z not in forwarded_zones)
        self.forwarded = forwarded_zones

    def local_zone(self, name: str) -> str | None:
        """The local zone answering `name` ("localhost" included), or None when it may go out."""
        if name == "localhost" or name.endswith(".localhost"):
            return "localhost"
        zone = _zone_of(name, self.zones)
        if zone is not None and _zone_of(name, self.forwarded) is None:
            return zone
        return None

    async def resolve(self, request: Request) -> Response:
        if request.query.q.qclass != CLASS_IN:  # CHAOS, HESIOD, ANY: nothing of ours to say
            return Response(empty_reply(request.query, RCODE.REFUSED), "local", decision=Decision(
                Action.NODATA, "0 local", "a class other than IN: refused here, never forwarded"))
        if request.qtype == QTYPE.ANY:
            return Response(rfc8482_answer(request.query), "local",  # RFC 8482 §4.2: one HINFO
                            decision=Decision(Action.NODATA, "0 local", "ANY: RFC 8482 answer"))
        zone = self.local_zone(request.qname)
        if zone == "localhost":
            return Response(self._localhost(request), "local", decision=Decision(
                Action.RESOLVE, "0 local", "localhost: the loopback address, answered here"))
        if zone is not None:
            reply = empty_reply(request.query, RCODE.NXDOMAIN)
            reply.add_auth(RR(zone + ".", QTYPE.SOA, ttl=LOCAL_TTL, rdata=SOA(
                "localhost.", "nobody.invalid.", (1, 3600, 1200, 604800, LOCAL_TTL))))
            return Response(reply, "local", decision=Decision(
                Action.NXDOMAIN, "0 local", f"local zone {zone}: never forwarded"))
        return await self.next.resolve(request)

    def fast_question(self, raw) -> bool:
        """Whether a question may take the fast path at all: not a local name, not ANY (the
        chain answers those). Asked once per distinct query bytes, so it costs nothing per query."""
        return raw.qtype != QTYPE_ANY and raw.qclass == CLASS_IN \
            and self.local_zone(wire_name_to_text(raw.qname)) is None

    @staticmethod
    def _localhost(request: Request):
        reply = empty_reply(request.query)
        if request.qtype == QTYPE.A:
            reply.add_answer(RR(request.query.q.qname, QTYPE.A, ttl=LOCAL_TTL, rdata=A("127.0.0.1")))
        elif request.qtype == QTYPE.AAAA:
            reply.add_answer(RR(request.query.q.qname, QTYPE.AAAA, ttl=LOCAL_TTL, rdata=AAAA("::1")))
        return reply
