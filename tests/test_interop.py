"""Real third-party DNS software against classguard: unbound as a school's forwarder, kdig as a
client (issue 18, interoperability).

kdig's DoH (+https) speaks HTTP/2 only, which classguard does not yet (issue 18, item 10)."""

from __future__ import annotations

import re
import ssl

import aiohttp
import dns.asyncquery
import dns.edns
import dns.message
import pytest
import trustme

from classguard.config import DOH_DEFAULTS
from tests.conftest import PUPILS, STAFF
from tests.interop import kdig, unbound_forwarder

HOSTNAME = "dot.school.example"


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


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def encrypted_resolver(make_resolver, ca, tmp_path):
    """classguard with DoT and DoH (HTTPS, HTTP/1.1) beside plain DNS; the CA's file for kdig."""
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    resolver = await make_resolver(settings={
        "dot": {"listen": "127.0.0.1:0", "hostname": HOSTNAME},
        "doh": {**DOH_DEFAULTS, "listen": "127.0.0.1:0"},
        "tls": {"cert": str(cert_file), "key": str(key_file)},
    })
    return resolver, ca_file


def received(output: str) -> int:
    """The size of the answer kdig received, from its `;; Received 468 B` line."""
    found = re.search(r";; Received (\d+) B", output)
    assert found, output
    return int(found.group(1))


async def test_kdig_padding_is_answered_on_tls_and_never_on_plain_dns(encrypted_resolver):
    # RFC 7830 §4 / RFC 8467: a padded query over an encrypted transport gets an answer padded to
    # a multiple of 468 bytes (kdig +padding, stubby, Android, kresd pad theirs); UDP and TCP never.
    resolver, ca_file = encrypted_resolver
    common = ("-b", PUPILS, "+padding", "+edns", "example.com", "A")
    for transport in ((), ("+tcp",)):
        plain = await kdig("@127.0.0.1", "-p", str(resolver.port), *transport, *common)
        assert "93.184.215.14" in plain and "PADDING" not in plain and received(plain) < 100, plain
    for name, answer in (("example.com", "93.184.215.14"), ("adult.example", "0.0.0.0")):
        for _ in range(2):  # the second from the cache (or the block's memo)
            tls = await kdig("@127.0.0.1", "-p", str(resolver.service.dot.port), "+tls",
                             f"+tls-ca={ca_file}", f"+tls-hostname={HOSTNAME}", "-b", PUPILS,
                             "+padding", name, "A")
            assert answer in tls and "PADDING" in tls and received(tls) == 468, tls
    unpadded = await kdig("@127.0.0.1", "-p", str(resolver.service.dot.port), "+tls",
                          f"+tls-ca={ca_file}", f"+tls-hostname={HOSTNAME}", "-b", PUPILS,
                          "+nopadding", "example.com", "A")  # (kdig pads over TLS by default)
    assert "PADDING" not in unpadded and received(unpadded) < 100, unpadded


async def test_doh_answers_padded_queries_padded(encrypted_resolver, ca):
    # kdig's +https speaks HTTP/2 only (issue 18, item 10): DoH here is aiohttp over HTTP/1.1.
    resolver, _ca_file = encrypted_resolver
    context = ssl.create_default_context()
    ca.configure_trust(context)
    url = resolver.service.doh.url.replace("http://", "https://")
    connector = aiohttp.TCPConnector(local_addr=(PUPILS, 0), ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        for pad in (468, 0, 468):
            query = dns.message.make_query("example.com", "A", use_edns=0, pad=pad)
            async with session.post(url, data=query.to_wire(),
                                    headers={"Content-Type": "application/dns-message"}) as answer:
                assert answer.status == 200
                wire = await answer.read()
            reply = dns.message.from_wire(wire)
            assert [i.to_text() for r in reply.answer for i in r] == ["93.184.215.14"]
            padding = [option for option in reply.options if option.otype == dns.edns.OptionType.PADDING]
            if pad:
                assert len(wire) == 468 and padding, len(wire)
            else:
                assert len(wire) < 100 and not padding
