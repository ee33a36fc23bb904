"""ECS from trusted forwarders (RFC 7871): a school's own forwarder says who really asked."""

from __future__ import annotations

import ipaddress
import struct

from common.addresses import address_in
from resolver.answers import OPT
from resolver.chain import Link, Request, Response

ECS_OPTION = 8  # RFC 7871


def client_subnet_address(opt) -> str | None:
    """The address of an EDNS client-subnet option (RFC 7871 §6), zero-padded; None if absent."""
    for option in getattr(opt, "rdata", None) or ():
        if getattr(option, "code", None) != ECS_OPTION or len(option.data) < 4:
            continue
        family, _source_prefix = struct.unpack_from("!HB", option.data)
        address = bytes(option.data[4:])
        try:
            if family == 1 and len(address) <= 4:
                return str(ipaddress.IPv4Address(address.ljust(4, b"\x00")))
            if family == 2 and len(address) <= 16:
                return str(ipaddress.IPv6Address(address.ljust(16, b"\x00")))
        except ValueError:
            return None
    return None


class ClientSubnetLink(Link):
    """From a trusted forwarder (and nobody else), the client-subnet address replaces the source
    address before the client is identified; a client the transport named stays."""

    def __init__(self, trusted_forwarders=()):
        self.trusted = tuple(ipaddress.ip_network(net, strict=False) for net in trusted_forwarders)

    async def resolve(self, request: Request) -> Response:
        if self.trusted and request.client is None and address_in(request.client_ip, self.trusted):
            for record in request.query.ar:
                if record.rtype == OPT:
                    request.client_ip = client_subnet_address(record) or request.client_ip
        return await self.next.resolve(request)

    def fast_step(self, following):
        # Nothing to do there: resolver.wire.read_query refuses a query that carries a client
        # subnet, so such a query never takes the fast path, and any other keeps its source.
        return following
