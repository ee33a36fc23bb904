"""Client identification: from a source address to a device, a class and a scope (SPEC §2.1)."""

from __future__ import annotations

from dnslib import RCODE

from common.addresses import client_ip
from policies.model import DeviceBook, Policy
from resolver.answers import EDE_PROHIBITED, empty_reply
from resolver.chain import Client, Link, Request, Response

MEMO_LIMIT = 100_000


class ClientIndex:
    """Compiled once per policy: networks most specific first; device addresses are the
    policy's device book's index, which device changes update in place (`forget` then drops
    what was remembered of the addresses they touched)."""

    def __init__(self, policy: Policy, unknown_clients: str = "refuse"):
        devices = policy.devices
        self._book = devices if isinstance(devices, DeviceBook) else DeviceBook(devices.values())
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
        device = self._book.at(address)
        client = Client(device.class_id, device.id, "school", "device address") \
            if device is not None else self._match_network(address) or self._default
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[address] = client
        return client

    def forget(self, addresses) -> None:
        """What was remembered of these addresses (a device took them, left them or moved)."""
        for address in addresses:
            self._memo.pop(str(address), None)

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

    def fast_step(self, following):
        """The same index; an unknown client takes the chain, which refuses it."""
        state = self.state

        def step(query) -> bytes | None:
            if query.client is None:
                client = state.snapshot.clients.identify(query.client_ip)
                if client is None:
                    return None
                query.client = client
            return following(query)
        return step
