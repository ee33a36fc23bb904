"""Never an open resolver: per-client rate limits on every transport, and the startup refusal."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import textwrap

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import pytest

from classguard.config import Config
from classguard.service import refuse_open_resolver
from common.errors import StartupError
from resolver.chain import Client
from resolver.ratelimit import RateLimiter
from resolver.server import refused_reply
from resolver.settings import DnsSettings, RateLimit
from tests.conftest import PUPILS, STAFF
from tests.serving import CLASSGUARD, free_port


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the token bucket ---------------------------------------------------------------------------


def test_a_burst_is_allowed_then_the_rate_and_it_recovers():
    clock = Clock()
    limiter = RateLimiter(qps=2, burst=4, clock=clock)
    assert [limiter.allow("192.0.2.1") for _ in range(6)] == [True] * 4 + [False] * 2
    clock.now += 0.5  # one token back
    assert [limiter.allow("192.0.2.1") for _ in range(2)] == [True, False]
    clock.now += 100  # refills, but never above the burst
    assert [limiter.allow("192.0.2.1") for _ in range(5)] == [True] * 4 + [False]
    assert limiter.allow("192.0.2.2")  # every address has its own bucket


def test_a_device_has_one_bucket_whatever_its_address():
    clock = Clock()
    tablet = Client("pupils", "tablet-1", "home", "doh token")
    limiter = RateLimiter(qps=1, burst=2, clock=clock)
    assert limiter.allow("192.0.2.1", tablet) and limiter.allow("198.51.100.7", tablet)
    assert not limiter.allow("203.0.113.9", tablet)
    assert limiter.allow("192.0.2.1")  # the address itself, unidentified, is someone else


def test_plain_dns_asks_who_the_address_is():
    devices = {"10.0.0.5": Client("pupils", "tablet-1"), "10.0.0.6": Client("pupils", "tablet-1"),
               "10.0.0.7": Client("pupils", None, "school", "network 10.0.0.0/24")}
    limiter = RateLimiter(qps=1, burst=1, clock=Clock(), identify=devices.get)
    assert limiter.allow("10.0.0.5") and not limiter.allow("10.0.0.6")  # one device, two addresses
    assert limiter.allow("10.0.0.7") and not limiter.allow("10.0.0.7")
    assert limiter.allow("10.0.0.8")


def test_trusted_forwarders_are_exempt():
    limiter = RateLimiter(qps=1, burst=1, exempt=["10.9.0.0/16", "2001:db8::/32"], clock=Clock())
    assert all(limiter.allow("10.9.1.1") for _ in range(100))
    assert all(limiter.allow("::ffff:10.9.1.1") for _ in range(100))
    assert all(limiter.allow("2001:db8::53") for _ in range(100))
    assert limiter.allow("10.8.1.1") and not limiter.allow("10.8.1.1")
    assert len(limiter) == 1


def test_memory_stays_bounded_under_a_flood_of_addresses():
    clock = Clock()
    limiter = RateLimiter(qps=10, burst=20, clock=clock, max_buckets=1000)
    for index in range(50_000):
        limiter.allow(f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}")
        assert len(limiter) <= 1000
    # Idle buckets go first: once refilled they are the same as none.
    clock.now += 10
    limiter.allow("192.0.2.1")
    for _ in range(5):
        limiter.allow("192.0.2.1")
    for index in range(999):
        limiter.allow(f"172.16.{index >> 8}.{index & 255}")
    assert len(limiter) <= 1000
    assert sum(limiter.allow("192.0.2.1") for _ in range(20)) < 20  # its bucket was kept


def test_refused_reply_echoes_the_question():
    query = dns.message.make_query("example.com", "A", use_edns=0).to_wire()
    reply = dns.message.from_wire(refused_reply(query))
    assert reply.rcode() == dns.rcode.REFUSED and reply.id == dns.message.from_wire(query).id
    assert reply.question[0].name.to_text() == "example.com."
    assert refused_reply(b"\x00" * 5) is None
    assert refused_reply(reply.to_wire()) is None  # a response: never answered


# --- on the wire --------------------------------------------------------------------------------


async def test_udp_drops_tcp_refuses_and_both_recover(make_resolver):
    resolver = await make_resolver(rate_limit=RateLimit(qps=1, burst=3))
    clock = Clock()
    resolver.service.rate_limiter.clock = clock
    for _ in range(3):
        assert (await resolver.query("example.com")).rcode() == dns.rcode.NOERROR
    with pytest.raises(dns.exception.Timeout):
        await resolver.query("example.com", timeout=0.3)  # dropped without a word
    refused = await resolver.query("example.com", tcp=True)
    assert refused.rcode() == dns.rcode.REFUSED
    assert (await resolver.query("example.com", source=STAFF)).rcode() == dns.rcode.NOERROR
    clock.now += 1.0
    assert (await resolver.query("example.com", tcp=True)).rcode() == dns.rcode.NOERROR
    stats = resolver.service.fast_path.stats
    assert stats.rate_limited == {"udp": 1, "tcp": 1}


async def test_queries_from_a_trusted_forwarder_are_never_limited(make_resolver):
    resolver = await make_resolver(rate_limit=RateLimit(qps=1, burst=1),
                                   trusted_forwarders=(f"{PUPILS}/32",))
    resolver.service.rate_limiter.clock = Clock()
    for _ in range(10):
        assert (await resolver.query("example.com")).rcode() == dns.rcode.NOERROR
    assert resolver.service.fast_path.stats.rate_limited == {}


async def test_without_rate_limit_nothing_is_counted(make_resolver):
    resolver = await make_resolver()
    assert resolver.service.rate_limiter is None
    replies = await asyncio.gather(*(resolver.query("example.com") for _ in range(50)))
    assert all(reply.rcode() == dns.rcode.NOERROR for reply in replies)


# --- never an open resolver ---------------------------------------------------------------------


def _config(*listen: str, unknown_clients: str = "default", allow_open: bool = False,
            doh_listen: str | None = None) -> Config:
    dns_settings = DnsSettings(listen=listen, unknown_clients=unknown_clients, allow_open=allow_open)
    doh = None if doh_listen is None else {"listen": doh_listen, "path": "/dns-query",
                                           "public_url": None, "trusted_proxies": ()}
    return dataclasses.replace(Config(), dns=dns_settings, doh=doh)


@pytest.mark.parametrize("listen", ["0.0.0.0:53", "[::]:53", "81.2.69.160:53", "[2a00:1450::1]:53"])
def test_default_class_for_strangers_is_refused_on_a_public_address(listen):
    with pytest.raises(StartupError, match="open resolver.*allow_open"):
        refuse_open_resolver(_config("127.0.0.1:53", listen))
    refuse_open_resolver(_config(listen, allow_open=True))
    refuse_open_resolver(_config(listen, unknown_clients="refuse"))


@pytest.mark.parametrize("listen", ["127.0.0.1:53", "10.12.0.1:53", "192.168.1.1:53", "[::1]:53",
                                    "[fd00::53]:53", "172.16.0.1:53"])
def test_default_class_is_fine_on_private_and_loopback_addresses(listen):
    refuse_open_resolver(_config(listen))


def test_the_doh_listener_counts_too():
    with pytest.raises(StartupError, match="0.0.0.0:8053"):
        refuse_open_resolver(_config("127.0.0.1:53", doh_listen="0.0.0.0:8053"))


async def test_serve_exits_1_with_one_clear_line(tmp_path):
    (tmp_path / "policies.yaml").write_text("default_class: visitors\nclasses:\n  visitors: {}\n")
    (tmp_path / "classguard.yaml").write_text(textwrap.dedent(f"""\
        policies: policies.yaml
        state_dir: state
        dns:
          listen: ["0.0.0.0:{free_port()}"]
          upstreams: ["udp://127.0.0.1:9"]
          unknown_clients: default
        blocklists: {{bundled: false}}
        """))
    process = await asyncio.create_subprocess_exec(
        CLASSGUARD, "serve", cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "CLASSGUARD_CONFIG": ""})
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert stderr.decode().startswith("classguard: dns.unknown_clients: default would make classguard "
                                    "an open resolver on 0.0.0.0:")
    assert "Traceback" not in stderr.decode() and len(stderr.decode().splitlines()) == 1


async def test_dot_is_limited_per_device_whatever_the_connection(make_resolver, tmp_path):
    import ssl

    import trustme

    from common.tokens import token_sha256
    from tests.conftest import POLICY

    token, hostname = "k7q2m9x4v8w1z6r3t5y0p2a9", "dot.school.example"
    ca = trustme.CA()
    cert = ca.issue_cert(hostname, f"*.{hostname}")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    policy = POLICY + f'devices:\n  tablet-1: {{class: pupils, token_sha256: "{token_sha256(token)}"}}\n'
    resolver = await make_resolver(policy, rate_limit=RateLimit(qps=1, burst=2), settings={
        "dot": {"listen": "127.0.0.1:0", "hostname": hostname},
        "tls": {"cert": str(cert_file), "key": str(key_file)}})
    resolver.service.rate_limiter.clock = Clock()
    context = ssl.create_default_context()
    ca.configure_trust(context)

    async def ask(source: str) -> int:
        query = dns.message.make_query("example.com", "A")
        reply = await dns.asyncquery.tls(query, "127.0.0.1", port=resolver.service.dot.port, source=source,
                                         ssl_context=context, server_hostname=f"{token}.{hostname}", timeout=3)
        return reply.rcode()

    assert [await ask(source) for source in ("127.0.0.5", "127.0.0.6", "127.0.0.7")] == [
        dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.REFUSED]  # one bucket: the device's
    assert resolver.service.fast_path.stats.rate_limited == {"dot": 1}
