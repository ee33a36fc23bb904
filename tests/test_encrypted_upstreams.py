"""Encrypted upstreams: DNS over TLS and over HTTPS to a local TLS nameserver, connections reused."""

from __future__ import annotations

import ssl

import dns.message
import dns.rcode
import pytest
import trustme
from aiohttp import web

from tests.conftest import STAFF, until

SERVER_NAME = "dns.school.example"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_context(ca) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(SERVER_NAME, "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca, tmp_path) -> str:
    path = tmp_path / "school-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def doh_upstream(upstream, server_context):
    """An HTTPS server answering RFC 8484 POSTs with the fake nameserver's answers."""
    seen = {"requests": 0, "connections": set()}

    async def handler(request: web.Request) -> web.Response:
        seen["requests"] += 1
        seen["connections"].add(request.transport.get_extra_info("peername"))
        if request.content_type != "application/dns-message":
            return web.Response(status=415)
        wire = upstream.answer(await request.read(), "https")
        return web.Response(body=wire, content_type="application/dns-message")

    app = web.Application()
    app.router.add_post("/dns-query", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"https://127.0.0.1:{port}/dns-query", seen
    await runner.cleanup()


async def test_dns_over_tls_upstream_answers_on_one_reused_connection(make_resolver, upstream, server_context,
                                                                      ca_file):
    port = await upstream.start_tls(server_context)
    resolver = await make_resolver(upstreams=(f"tls://127.0.0.1:{port}#{SERVER_NAME}",), upstream_ca_file=ca_file)
    for name in ("example.com", "www.example.com", "mdm.example.net"):
        answer = await resolver.query(name, source=STAFF)
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer, name
    assert [q[0] for q in upstream.queries] == ["tls", "tls", "tls"]
    assert upstream.connections == 1


async def test_a_tls_upstream_with_the_wrong_name_is_not_trusted(make_resolver, upstream, server_context, ca_file):
    port = await upstream.start_tls(server_context)
    resolver = await make_resolver(upstreams=(f"tls://127.0.0.1:{port}#other.example",), upstream_ca_file=ca_file)
    answer = await resolver.query("example.com", source=STAFF)
    assert answer.rcode() == dns.rcode.SERVFAIL
    assert upstream.queries == []


async def test_dns_over_https_upstream_answers_with_keep_alive(make_resolver, upstream, doh_upstream, ca_file):
    url, seen = doh_upstream
    resolver = await make_resolver(upstreams=(url,), upstream_ca_file=ca_file)
    https = resolver.service.upstream_groups[0].upstreams[0]
    await until(lambda: https.healthy, what="the startup probe's answer")  # over the connection...
    for name in ("example.com", "www.example.com", "mdm.example.net"):
        answer = await resolver.query(name, source=STAFF)
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer, name
    assert upstream.probes == ["https"]
    assert seen["requests"] == 4 and len(seen["connections"]) == 1  # ...that the questions reuse


async def test_an_https_upstream_without_the_school_ca_is_refused(make_resolver, doh_upstream):
    url, seen = doh_upstream
    resolver = await make_resolver(upstreams=(url,))
    answer = await resolver.query("example.com", source=STAFF)
    assert answer.rcode() == dns.rcode.SERVFAIL and seen["requests"] == 0
