"""Client identification: from a source address to a device, a class and a scope (SPEC §2.1)."""

from __future__ import annotations

import ipaddress

from policies.model import Policy
from resolver.answers import EDE_PROHIBITED, empty_reply
from resolver.chain import Client, Link, Request, Response

from dnslib import RCODE

MEMO_LIMIT = 100_000


def client_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's address as an IP: a zone (`%eth0`) dropped, an IPv4-mapped IPv6 unwrapped."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_in(address: str, networks) -> bool:
    """Whether a client's address is in one of `networks`."""
    ip = client_ip(address)
    return ip is not None and any(ip.version == net.version and ip in net for net in networks)


def forwarded_client(peer: str, forwarded_for: list[str], trusted_proxies) -> str:
    """Who is behind an HTTP request: `peer` itself, unless it is one of `trusted_proxies`; then
    the rightmost `X-Forwarded-For` hop (`forwarded_for`: each header's value) that is not a
    trusted proxy. Hops left of it were written by the client and prove nothing; a hop that is
    not an address ends the walk at the last proxy believed."""
    if not trusted_proxies or not address_in(peer, trusted_proxies):
        return peer
    address = peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        if client_ip(hop) is None:
            break
        address = hop
        if not address_in(hop, trusted_proxies):
            break
    return address


class ClientIndex:
    """Compiled once per policy: exact device addresses in a dict, networks most specific first."""

    def __init__(self, policy: Policy, unknown_clients: str = "refuse"):
        self._devices: dict[str, Client] = {}
        for device in policy.devices.values():
            for address in device.addresses:
                self._devices[str(address)] = Client(device.class_id, device.id, "school", "device address")
        networks = [(network, class_policy.id) for class_policy in policy.classes.values()
                    for network in class_policy.networks]
        networks.sort(key=lambda item: item[0].prefixlen, reverse=True)
        self._networks = networks
        self._default = None
        if unknown_clients == "default" and policy.default_class:
            self._default = Client(policy.default_class, None, "school", "default_class")
        self._memo: dict[str, Client | None] = {}

    def identify(self, address: str) -> Client | None:
        try:
            return self._memo[address]
        except KeyError:
            pass
        client = self._devices.get(address) or self._match_network(address) or self._default
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[address] = client
        return client

    def _match_network(self, address: str) -> Client | None:
        ip = client_ip(address)
        if ip is None:
            return None
        for network, class_id in self._networks:
            if ip.version == network.version and ip in network:
                return Client(class_id, None, "school", f"network {network}")
        return None


def scope_for(state, address: str) -> str:
    """`school` when the address is a school's (a class network or a device address), else `home`.

    The default class says nothing about where a device is, so it counts as home.
    """
    at_school = state.snapshot.clients.identify(address)
    return "school" if at_school is not None and at_school.matched_by != "default_class" else "home"


class IdentifyLink(Link):
    """Finds who asks; an unknown client is refused (never an open resolver)."""

    def __init__(self, state):
        self.state = state  # holds .clients: ClientIndex, swapped whole on a policy change

    async def resolve(self, request: Request) -> Response:
        if request.client is None:
            request.client = self.state.clients.identify(request.client_ip)
        if request.client is None:
            return Response(empty_reply(request.query, RCODE.REFUSED), "refused",
                            reason="unknown_client", ede=(EDE_PROHIBITED, "Prohibited"))
        return await self.next.resolve(request)
