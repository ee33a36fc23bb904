"""DoH (RFC 8484) end to end: dnspython's DoH client and raw HTTP against a real server."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import ssl
import textwrap
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
import trustme

from blocklists.settings import BlocklistSettings
from classguard.config import DOH_DEFAULTS, Config
from classguard.service import Service, prepare
from common.tokens import token_sha256
from policies.loader import parse_policy
from policies.yaml_lines import parse_yaml
from resolver.doh import decode_dns_param, masked_path, min_ttl
from resolver.settings import DnsSettings, RateLimit
from tests.conftest import LOG_SECRETS, TEST_LISTS, ede

HOME = "127.0.0.1"  # no class network: a family's router, as far as classguard can tell
SCHOOL = "127.0.0.2"  # the pupils' network
STAFF = "127.0.0.3"
UNKNOWN = "127.0.0.9"

TOKEN = "k7q2m9x4v8w1z6r3t5y0p2a9"  # tablet-1: written as a token in the policy
TOKEN_2 = "h3n8b5c1d7f2g9j4k6l0m3p8q1"  # tablet-2: only its SHA-256 is in the policy
LOG_SECRETS.update({TOKEN, TOKEN_2})  # never in a log line (tests/conftest.py)
UNKNOWN_TOKEN = "a" * 24

POLICY = f"""\
classes:
  pupils:
    networks: ["127.0.0.2/32"]
    block: [adult]
    home: {{block: [gambling]}}
  staff:
    networks: ["127.0.0.3/32"]
devices:
  tablet-1: {{class: pupils, token: "{TOKEN}", addresses: ["127.0.0.5"]}}
  tablet-2: {{class: pupils, token_sha256: "{token_sha256(TOKEN_2)}"}}
"""


@dataclass
class DohResolver:
    service: Service

    @property
    def base(self) -> str:
        return self.service.doh.url  # e.g. http://127.0.0.1:41234/dns-query

    @property
    def port(self) -> int:
        return self.service.doh.address[1]

    async def ask(self, name: str, rdtype: str = "A", *, token: str | None = TOKEN,
                  source: str = HOME, post: bool = True, **kwargs) -> dns.message.Message:
        """A query through dnspython's DoH client."""
        url = self.base + (f"/{token}" if token else "")
        query = dns.message.make_query(name, rdtype, use_edns=0)
        return await dns.asyncquery.https(query, url, source=source, post=post, timeout=5, **kwargs)


@pytest.fixture
async def make_doh(tmp_path: Path, upstream):
    services: list[Service] = []

    async def start(policy: str = POLICY, *, tls: dict | None = None, doh: dict | None = None,
                    **dns_settings) -> DohResolver:
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(textwrap.dedent(policy))
        dns_config = dataclasses.replace(
            DnsSettings(listen=("127.0.0.1:0",), upstreams=(upstream.url,), upstream_timeout=1.0),
            **dns_settings)
        config = Config(state_dir=tmp_path / "state", policies=policy_file, dns=dns_config,
                        blocklists=BlocklistSettings(sources=TEST_LISTS, bundled=False),
                        doh={**DOH_DEFAULTS, "listen": "127.0.0.1:0", **(doh or {})}, tls=tls)
        service = prepare(config)
        await service.start()
        services.append(service)
        for _ in range(200):
            if service.state.lists_loaded:
                break
            await asyncio.sleep(0.02)
        assert service.state.lists_loaded
        return DohResolver(service)

    yield start
    for service in services:
        await service.stop()


def addresses(message: dns.message.Message) -> list[str]:
    return [item.to_text() for rrset in message.answer for item in rrset if rrset.rdtype in (1, 28)]


def encoded(name: str, rdtype: str = "A") -> str:
    wire = dns.message.make_query(name, rdtype).to_wire()
    return base64.urlsafe_b64encode(wire).rstrip(b"=").decode()


async def http(method: str, url: str, *, source: str = HOME, **kwargs) -> tuple[int, dict, bytes]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(method, url, **kwargs) as response:
            return response.status, dict(response.headers), await response.read()


# --- who asks: the token, the scope, the address --------------------------------------------


async def test_a_device_at_home_gets_its_class_with_the_home_overlay(make_doh):
    doh = await make_doh()
    answer = await doh.ask("example.com")
    assert addresses(answer) == ["93.184.215.14"]
    adult = await doh.ask("adult.example")  # the class's own rule
    assert addresses(adult) == ["0.0.0.0"] and ede(adult) == [(15, "category:adult")]
    gambling = await doh.ask("gambling.example", post=False)  # the home: overlay
    assert addresses(gambling) == ["0.0.0.0"] and ede(gambling) == [(15, "category:gambling")]
    stats = doh.service.fast_path.stats.queries
    assert sum(count for (protocol, class_id, _), count in stats.items()
               if protocol == "doh" and class_id == "pupils") == 3


async def test_the_same_device_from_a_school_address_is_at_school(make_doh):
    doh = await make_doh()
    gambling = await doh.ask("gambling.example", source=SCHOOL)
    assert addresses(gambling) == ["198.51.100.2"]  # no home overlay at school
    adult = await doh.ask("adult.example", source=SCHOOL)
    assert addresses(adult) == ["0.0.0.0"]


async def test_a_device_with_a_school_address_is_one_device_at_school_and_at_home(make_doh):
    doh = await make_doh()
    # At school, plain DNS from its own address: the device, its class, scope school.
    plain = dns.message.make_query("gambling.example", "A")
    answer = await dns.asyncquery.udp(plain, "127.0.0.1", port=doh.service.udp_addresses[0][1],
                                      source="127.0.0.5", timeout=3)
    assert addresses(answer) == ["198.51.100.2"]
    assert addresses(await doh.ask("adult.example", source="127.0.0.5")) == ["0.0.0.0"]
    # Its token from that address: still at school; from elsewhere: at home.
    assert addresses(await doh.ask("gambling.example", source="127.0.0.5")) == ["198.51.100.2"]
    assert addresses(await doh.ask("gambling.example", source=HOME)) == ["0.0.0.0"]


async def test_a_device_known_only_by_its_token_hash_is_served(make_doh):
    doh = await make_doh()
    answer = await doh.ask("gambling.example", token=TOKEN_2)
    assert addresses(answer) == ["0.0.0.0"] and ede(answer) == [(15, "category:gambling")]


async def test_without_a_token_the_source_address_decides_like_plain_dns(make_doh):
    doh = await make_doh()
    staff = await doh.ask("adult.example", token=None, source=STAFF)
    assert addresses(staff) == ["198.51.100.1"]
    pupils = await doh.ask("gambling.example", token=None, source=SCHOOL)
    assert addresses(pupils) == ["198.51.100.2"]  # scope school: no overlay
    stranger = await doh.ask("example.com", token=None, source=UNKNOWN)
    assert stranger.rcode() == dns.rcode.REFUSED and ede(stranger) == [(18, "Prohibited")]


async def test_unknown_malformed_and_revoked_tokens_are_refused_with_403(make_doh):
    doh = await make_doh()
    for token in (UNKNOWN_TOKEN, "short", "UPPERCASE" + TOKEN, TOKEN + "x" * 40, "%00" + TOKEN):
        status, _, _ = await http("GET", f"{doh.base}/{token}?dns={encoded('example.com')}")
        assert status == 403, token
    with pytest.raises(ValueError, match="403"):
        await doh.ask("example.com", token=UNKNOWN_TOKEN)
    # Revoked: the device leaves the policy, and its token stops working at once.
    doh.service.state.apply_devices([("tablet-1", None)])
    status, _, _ = await http("POST", f"{doh.base}/{TOKEN}", data=b"x" * 20,
                              headers={"Content-Type": "application/dns-message"})
    assert status == 403
    assert addresses(await doh.ask("example.com", token=TOKEN_2)) == ["93.184.215.14"]


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(make_doh):
    doh = await make_doh(doh={"trusted_proxies": ("127.0.0.1/32",)})
    url = f"{doh.base}/{TOKEN}?dns={encoded('gambling.example')}"
    # From the proxy, the school address it forwards for: scope school, gambling resolves.
    status, _, body = await http("GET", url, source=HOME, headers={"X-Forwarded-For": f"203.0.113.7, {SCHOOL}"})
    assert status == 200 and addresses(dns.message.from_wire(body)) == ["198.51.100.2"]
    # From anyone else, the header is ignored: the peer's address (home) decides.
    status, _, body = await http("GET", url, source=UNKNOWN, headers={"X-Forwarded-For": SCHOOL})
    assert status == 200 and addresses(dns.message.from_wire(body)) == ["0.0.0.0"]
    # Without a token the forwarded address identifies the client like plain DNS.
    status, _, body = await http("GET", f"{doh.base}?dns={encoded('adult.example')}", source=HOME,
                                 headers={"X-Forwarded-For": STAFF})
    assert status == 200 and addresses(dns.message.from_wire(body)) == ["198.51.100.1"]


# --- the HTTP side ------------------------------------------------------------------------------


async def test_cache_control_carries_the_smallest_ttl_of_the_answer(make_doh):
    doh = await make_doh()
    status, headers, body = await http("GET", f"{doh.base}/{TOKEN}?dns={encoded('example.com')}")
    assert status == 200 and headers["Content-Type"] == "application/dns-message"
    message = dns.message.from_wire(body)
    assert headers["Cache-Control"] == f"max-age={min(r.ttl for r in message.answer)}"
    status, headers, _ = await http("GET", f"{doh.base}/{TOKEN}?dns={encoded('adult.example')}")
    assert headers["Cache-Control"] == "max-age=60"  # dns.block_ttl
    status, headers, body = await http("GET", f"{doh.base}?dns={encoded('example.com')}", source=UNKNOWN)
    assert dns.message.from_wire(body).rcode() == dns.rcode.REFUSED
    assert headers["Cache-Control"] == "max-age=0"  # no record at all


async def test_every_malformed_request_gets_its_status_and_never_a_500(make_doh):
    doh = await make_doh()
    url = f"{doh.base}/{TOKEN}"
    query = dns.message.make_query("example.com", "A").to_wire()
    response = dns.message.make_response(dns.message.make_query("example.com", "A")).to_wire()
    dns_type = {"Content-Type": "application/dns-message"}
    cases = [
        ("GET", url, {}, 400),  # no dns= parameter
        ("GET", url + "?dns=", {}, 400),  # empty
        ("GET", url + "?dns=a", {}, 400),  # not a base64 length
        ("GET", url + "?dns=AAA*AAAAAAAAAAAAAAAA", {}, 400),  # not the alphabet
        ("GET", url + "?dns=AAAA+AAAAAAAAAAAAAAAA", {}, 400),  # standard base64, not base64url
        ("GET", url + f"?dns={encoded('example.com')}&dns={encoded('example.com')}", {}, 400),
        ("GET", url + "?dns=" + base64.urlsafe_b64encode(b"\x00\x01\x02").decode(), {}, 400),  # too short
        ("GET", url + "?dns=" + base64.urlsafe_b64encode(response).decode(), {}, 400),  # a response
        ("POST", url, {"data": query}, 415),  # no content type
        ("POST", url, {"data": query, "headers": {"Content-Type": "application/json"}}, 415),
        ("POST", url, {"data": query, "headers": {"Content-Type": "text/plain"}}, 415),
        ("POST", url, {"data": b"", "headers": dns_type}, 400),
        ("POST", url, {"data": b"x" * 65536, "headers": dns_type}, 413),
        ("POST", url, {"data": _chunks(b"x" * 70000), "headers": dns_type}, 413),
        ("PUT", url, {"data": query, "headers": dns_type}, 405),
        ("DELETE", url, {}, 405),
        ("PATCH", doh.base, {}, 405),
        ("HEAD", url, {}, 405),
    ]
    for method, target, kwargs, expected in cases:
        status, headers, _ = await http(method, target, **kwargs)
        assert status == expected, (method, target[-40:], kwargs.get("headers"), status)
        if expected == 405:
            assert headers["Allow"] == "GET, POST"
    # Padding is tolerated; junk that is 12 bytes or more is a DNS question: FORMERR, over 200.
    status, _, body = await http("GET", url + "?dns=" + base64.urlsafe_b64encode(query).decode())
    assert status == 200 and dns.message.from_wire(body).id == dns.message.from_wire(query).id
    status, _, body = await http("POST", url, data=query[:2] + b"\x01\x00" + b"\xff" * 30, headers=dns_type)
    assert status == 200 and body[3] & 0xF == dns.rcode.FORMERR
    status, _, _ = await http("GET", doh.base.rsplit("/", 1)[0] + "/elsewhere")
    assert status == 404


async def _chunks(data: bytes):
    for start in range(0, len(data), 8192):
        yield data[start:start + 8192]


async def test_a_connection_is_kept_alive_for_the_next_query(make_doh):
    doh = await make_doh()
    reader, writer = await asyncio.open_connection("127.0.0.1", doh.port)
    try:
        for name in ("example.com", "www.example.com", "adult.example"):
            wire = dns.message.make_query(name, "A").to_wire()
            writer.write(f"POST /dns-query/{TOKEN} HTTP/1.1\r\nHost: dns\r\n"
                         f"Content-Type: application/dns-message\r\nContent-Length: {len(wire)}\r\n"
                         "\r\n".encode() + wire)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"connection: close" not in head.lower()
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            body = await reader.readexactly(length)
            assert dns.message.from_wire(body).question[0].name.to_text() == name + "."
    finally:
        writer.close()


async def test_the_access_log_never_holds_a_token_or_a_name(make_doh, caplog):
    caplog.set_level(logging.DEBUG)
    doh = await make_doh()
    await doh.ask("secret-name.example.com")
    await doh.ask("another-secret.example.com", post=False)
    await doh.ask("third-secret.example.com", token=None, source=SCHOOL, post=False)
    await http("GET", f"{doh.base}/{UNKNOWN_TOKEN}?dns={encoded('fourth-secret.example.com')}")
    await http("GET", f"{doh.base}/{TOKEN}?dns=%%%")
    await http("GET", f"{doh.base.rsplit('/', 1)[0]}/typo/{TOKEN_2}")
    await http("POST", f"{doh.base}/{TOKEN}", data=b"x" * 70000,
               headers={"Content-Type": "application/dns-message"})
    access = [r.getMessage() for r in caplog.records if r.name == "classguard.doh.access"]
    assert "POST /dns-query/*** 200" in access[0]
    assert any(line.startswith("GET /dns-query/*** 200 ") for line in access)
    assert any(line.startswith("GET /dns-query 200 ") for line in access)
    assert any(line.startswith("GET /dns-query/*** 403 ") for line in access)
    assert any(line.startswith("GET /*** 404 ") for line in access)
    # Everything classguard and aiohttp's server logged (the test's own HTTP clients log URLs).
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
                     if not r.name.startswith(("httpx", "httpcore", "aiohttp.client")))
    for secret in (TOKEN, TOKEN_2, UNKNOWN_TOKEN, "secret", "dns=", encoded("secret-name.example.com")):
        assert secret not in text


async def test_no_access_line_per_request_at_info_level(make_doh, caplog):
    """The README promises never a line per query: DoH's access lines are DEBUG only."""
    caplog.set_level(logging.INFO)
    doh = await make_doh()
    for _ in range(3):
        await doh.ask("example.com")
    assert [r for r in caplog.records if r.name == "classguard.doh.access"] == []
    assert all(r.levelno < logging.INFO for r in caplog.records if r.name.startswith("aiohttp.access"))


async def test_https_when_tls_is_configured(make_doh, tmp_path):
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "dns.example.org")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server_cert.private_key_pem.write_to_path(str(key))
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    doh = await make_doh(tls={"cert": str(cert), "key": str(key)})
    assert doh.base.startswith("https://127.0.0.1:")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    answer = await doh.ask("gambling.example", verify=context)
    assert addresses(answer) == ["0.0.0.0"]
    status, _, body = await http("GET", f"{doh.base}/{TOKEN}?dns={encoded('example.com')}", ssl=context)
    assert status == 200 and addresses(dns.message.from_wire(body)) == ["93.184.215.14"]


async def test_the_rate_limit_answers_429_and_recovers(make_doh):
    doh = await make_doh(rate_limit=RateLimit(qps=1, burst=3))
    now = [1000.0]
    doh.service.rate_limiter.clock = lambda: now[0]
    url = f"{doh.base}/{TOKEN}?dns={encoded('example.com')}"
    statuses = [(await http("GET", url))[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    # The bucket is the device's, wherever it asks from; another device has its own.
    assert (await http("GET", url, source=SCHOOL))[0] == 429
    assert (await http("GET", f"{doh.base}/{TOKEN_2}?dns={encoded('example.com')}"))[0] == 200
    now[0] += 2.0  # two tokens back
    assert [(await http("GET", url))[0] for _ in range(3)] == [200, 200, 429]
    assert doh.service.fast_path.stats.rate_limited == {"doh": 4}


# --- the small pieces ---------------------------------------------------------------------------


def test_min_ttl_reads_answer_and_authority_records():
    query = dns.message.make_query("example.com", "A", use_edns=0)
    response = dns.message.make_response(query)
    assert min_ttl(response.to_wire()) == 0
    response.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "192.0.2.1"))
    response.answer.append(dns.rrset.from_text("example.com.", 42, "IN", "TXT", "x"))
    response.authority.append(dns.rrset.from_text("example.com.", 900, "IN", "NS", "ns.example.com."))
    assert min_ttl(response.to_wire()) == 42
    negative = dns.message.make_response(query)
    negative.authority.append(dns.rrset.from_text(
        "example.com.", 120, "IN", "SOA", "ns. host. 1 2 3 4 5"))
    assert min_ttl(negative.to_wire()) == 120
    assert min_ttl(b"\x00" * 5) == 0
    plain = dns.message.make_response(dns.message.make_query("example.com", "A"))  # no OPT
    plain.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "192.0.2.1"))
    assert min_ttl(plain.to_wire()) == 300
    assert min_ttl(plain.to_wire()[:-3]) == 0  # cut short: nothing believed


def test_decode_dns_param_is_base64url_without_padding():
    assert decode_dns_param("AAEAAA") == b"\x00\x01\x00\x00"
    assert decode_dns_param("AAEAAA==") == b"\x00\x01\x00\x00"
    assert decode_dns_param("_-8") == b"\xff\xef"
    for bad in ("A", "AA+A", "AA/A", "AA A", "A=AA", "AAAAA"):
        with pytest.raises(ValueError):
            decode_dns_param(bad)


def test_masked_path_hides_tokens():
    assert masked_path("/dns-query", "/dns-query") == "/dns-query"
    assert masked_path(f"/dns-query/{TOKEN}", "/dns-query") == "/dns-query/***"
    assert masked_path(f"/elsewhere/{TOKEN}", "/dns-query") == "/***"


def test_the_policy_stores_a_token_only_as_its_hash():
    data = parse_yaml(POLICY, "policy.yaml")
    policy = parse_policy(data, source="policy.yaml", known_categories={"adult", "gambling"},
                          known_services=set())
    assert policy.devices["tablet-1"].token_sha256 == token_sha256(TOKEN)
    assert TOKEN not in repr(policy)


# --- the doh section of the configuration --------------------------------------------------------


def _load(tmp_path: Path, text: str):
    from classguard.config import load_config

    path = tmp_path / "classguard.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_the_doh_section_has_defaults(tmp_path):
    config = _load(tmp_path, "doh: {}\n")
    assert config.doh == {"listen": "127.0.0.1:8053", "path": "/dns-query", "public_url": None,
                          "trusted_proxies": (), "max_connections": 1000, "idle_timeout": 10.0}
    config = _load(tmp_path, """\
        doh:
          listen: "[::1]:443"
          path: /q/
          public_url: https://dns.example.org/q/
          trusted_proxies: [10.0.0.5, 192.168.0.0/16]
        """)
    assert config.doh == {"listen": "[::1]:443", "path": "/q", "public_url": "https://dns.example.org/q",
                          "trusted_proxies": ("10.0.0.5/32", "192.168.0.0/16"),
                          "max_connections": 1000, "idle_timeout": 10.0}
    assert _load(tmp_path, "doh: off\n").doh is None


def test_mistakes_in_the_doh_section_are_named_with_their_line(tmp_path):
    from classguard.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, """\
            doh:
              listen: dns.example.org:443
              path: dns-query?x
              public_url: ftp://dns.example.org
              trusted_proxies: [10.0.0.1/8]
              tls: yes
            """)
    errors = [error.split(":", 1)[1] for error in caught.value.errors]
    assert errors[0].startswith("2: doh.listen: ")
    assert errors[1].startswith("3: doh.path: ")
    assert errors[2].startswith("4: doh.public_url: ")
    assert errors[3] == "5: doh.trusted_proxies: '10.0.0.1/8' has host bits set; did you mean '10.0.0.0/8'?"
    assert errors[4].startswith("6: unknown key 'tls' in doh")


async def test_a_tls_section_without_a_usable_key_stops_the_start(make_doh, tmp_path):
    from common.errors import StartupError

    with pytest.raises(StartupError, match="tls needs both cert: and key:"):
        await make_doh(tls={"cert": str(tmp_path / "cert.pem")})
    with pytest.raises(StartupError, match="cannot load the certificate"):
        await make_doh(tls={"cert": str(tmp_path / "nothing.pem"), "key": str(tmp_path / "nothing.key")})
