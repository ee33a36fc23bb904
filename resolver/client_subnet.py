"""ECS from trusted forwarders (RFC 7871): a school's own forwarder says who really asked."""

from __future__ import annotations

import ipaddress
import struct

from common.addresses import address_in
from resolver.answers import OPT
from resolver.chain import Link, Request, Response

ECS_OPTION = 8  # RFC 7871


def client_subnet(opt) -> tuple[str | None, bytes] | None:
    """An EDNS client-subnet option (RFC 7871 §6): its address, zero-padded (None for a source
    prefix of 0: "use the sender's address", §7.1.2), and the option to echo in the answer, whose
    scope prefix length is the source prefix length (§7.2.1: the class decided by the address,
    at that precision); None when the OPT record has no valid client-subnet option."""
    for option in getattr(opt, "rdata", None) or ():
        if getattr(option, "code", None) != ECS_OPTION or len(option.data) < 4:
            continue
        data = bytes(option.data)
        family, source_prefix = struct.unpack_from("!HB", data)
        address = data[4:]
        width = {1: 4, 2: 16}.get(family)
        if width is None or source_prefix > width * 8 or len(address) != -(-source_prefix // 8):
            return None  # not an address we can read: ignored, and so not echoed
        echo = struct.pack("!HHHBB", ECS_OPTION, len(data), family, source_prefix, source_prefix) + address
        if source_prefix == 0:
            return None, echo
        padded = address.ljust(width, b"\x00")
        text = str(ipaddress.IPv4Address(padded) if family == 1 else ipaddress.IPv6Address(padded))
        return text, echo
    return None


class ClientSubnetLink(Link):
    """From a trusted forwarder (and nobody else), the client-subnet address replaces the source
    address before the client is identified; a client the transport named stays. The answer
    echoes the option (RFC 7871 §7.2): a forwarder that gets none back takes its ECS as ignored,
    asks again without it, and every client behind it would get the forwarder's own class."""

    def __init__(self, trusted_forwarders=()):
        self.trusted = tuple(ipaddress.ip_network(net, strict=False) for net in trusted_forwarders)

    async def resolve(self, request: Request) -> Response:
        if self.trusted and request.client is None and address_in(request.client_ip, self.trusted):
            for record in request.query.ar:
                if record.rtype == OPT:
                    found = client_subnet(record)
                    if found is not None:
                        address, request.options = found
                        request.client_ip = address or request.client_ip
        return await self.next.resolve(request)

    def fast_step(self, following):
        # Nothing to do there: resolver.wire.read_query refuses a query that carries a client
        # subnet, so such a query never takes the fast path, and any other keeps its source.
        return following
