"""Real third-party DNS software against classguard: unbound as a school's forwarder, kdig as a
client (issue 18, interoperability)."""

from __future__ import annotations

import dns.asyncquery
import dns.message

from tests.conftest import PUPILS, STAFF
from tests.interop import unbound_forwarder


def addresses(reply: dns.message.Message) -> list[str]:
    return [item.to_text() for rrset in reply.answer for item in rrset]


async def ask(port: int, name: str, source: str) -> dns.message.Message:
    return await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port,
                                    source=source, timeout=5)


async def test_each_class_keeps_its_rules_behind_unbound_with_client_subnet(make_resolver, tmp_path):
    # unbound (send-client-subnet) on 127.0.0.1, trusted: it asks with ECS <client>/32 and, when
    # the answer does not echo it, asks again without ECS (the forwarder's own class for all).
    resolver = await make_resolver(trusted_forwarders=("127.0.0.1/32",))
    async with unbound_forwarder(tmp_path, resolver.port) as port:
        for _ in range(2):  # from classguard, then from unbound's cache (scoped per /32)
            assert addresses(await ask(port, "adult.example", PUPILS)) == ["0.0.0.0"]
            assert addresses(await ask(port, "adult.example", STAFF)) == ["198.51.100.1"]
            assert addresses(await ask(port, "gambling.example", PUPILS)) == ["0.0.0.0"]
            assert addresses(await ask(port, "gambling.example", STAFF)) == ["198.51.100.2"]
            assert addresses(await ask(port, "example.com", PUPILS)) == ["93.184.215.14"]
