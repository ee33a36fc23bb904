"""DNS over TLS for Android's Private DNS: the device token is the SNI's first label (RFC 7858)."""

from __future__ import annotations

import asyncio
import ssl
import struct

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
import trustme

from common.tokens import token_sha256
from tests.conftest import LOG_SECRETS, POLICY, ede

HOSTNAME = "dot.school.example"
TOKEN = "k7q2m9x4v8w1z6r3t5y0p2a9"
LOG_SECRETS.update({TOKEN})  # never in a log line (tests/conftest.py)
REVOKED = "z" * 30

DEVICE_POLICY = POLICY + f"""\
devices:
  tablet-0042: {{class: pupils, token_sha256: "{token_sha256(TOKEN)}"}}
"""


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def dot_resolver(make_resolver, ca, tmp_path):
    cert = ca.issue_cert(HOSTNAME, f"*.{HOSTNAME}")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    resolver = await make_resolver(DEVICE_POLICY, settings={
        "dot": {"listen": "127.0.0.1:0", "hostname": HOSTNAME},
        "tls": {"cert": str(cert_file), "key": str(key_file)},
    })
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return resolver, resolver.service.dot.port, client_context


async def dot_query(port: int, context: ssl.SSLContext, server_name: str, name: str, source: str = "127.0.0.9"):
    query = dns.message.make_query(name, "A", use_edns=0)
    return await dns.asyncquery.tls(query, "127.0.0.1", port=port, source=source, ssl_context=context,
                                    server_hostname=server_name, timeout=3)


async def test_a_device_is_known_by_its_sni_token_at_home(dot_resolver):
    _resolver, port, context = dot_resolver
    # From an address no class owns (home): still the pupils' rules, through the token.
    blocked = await dot_query(port, context, f"{TOKEN}.{HOSTNAME}", "adult.example")
    assert [i.to_text() for r in blocked.answer for i in r] == ["0.0.0.0"]
    assert ede(blocked) == [(15, "category:adult")]
    allowed = await dot_query(port, context, f"{TOKEN}.{HOSTNAME}", "example.com")
    assert [i.to_text() for r in allowed.answer for i in r] == ["93.184.215.14"]


async def test_an_unknown_token_is_refused_with_prohibited_then_closed(dot_resolver):
    _resolver, port, context = dot_resolver
    refused = await dot_query(port, context, f"{REVOKED}.{HOSTNAME}", "example.com")
    assert refused.rcode() == dns.rcode.REFUSED and ede(refused) == [(18, "unknown device")]
    # Without a token the connection is judged by its address: unknown here, so refused too.
    plain = await dot_query(port, context, HOSTNAME, "example.com")
    assert plain.rcode() == dns.rcode.REFUSED


async def test_several_queries_on_one_connection(dot_resolver):
    _resolver, port, context = dot_resolver
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                   server_hostname=f"{TOKEN}.{HOSTNAME}")
    try:
        names = ["example.com", "adult.example", "www.example.com"]
        for index, name in enumerate(names):
            query = dns.message.make_query(name, "A")
            query.id = 100 + index
            wire = query.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
        answers = {}
        for _ in names:
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))
            answer = dns.message.from_wire(await reader.readexactly(length))
            answers[answer.id] = [i.to_text() for r in answer.answer for i in r]
        assert answers == {100: ["93.184.215.14"], 101: ["0.0.0.0"], 102: ["93.184.215.14"]}
    finally:
        writer.close()


async def test_a_stalled_handshake_does_not_hold_the_listener(dot_resolver):
    _resolver, port, context = dot_resolver
    stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]  # no TLS at all
    try:
        answer = await dot_query(port, context, f"{TOKEN}.{HOSTNAME}", "example.com")
        assert answer.rcode() == dns.rcode.NOERROR
    finally:
        for _reader, writer in stalled:
            writer.close()
