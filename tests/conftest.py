"""Fixtures: a fake upstream nameserver and a classguard resolver running on real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.message
import pytest

from blocklists.settings import BlocklistSettings, ListSource
from classguard.config import Config
from classguard.service import Service, prepare
from resolver.settings import DnsSettings
from tests.nameserver import FakeNameserver

# Loopback source addresses stand for different classes (Linux routes all of 127/8 to lo).
PUPILS = "127.0.0.2"
STAFF = "127.0.0.3"
UNKNOWN = "127.0.0.9"

POLICY = """\
always_allow: [mdm.example.net]
locked_categories: [adult]
classes:
  pupils:
    name: "CM2 A"
    networks: ["127.0.0.2/32"]
    block: [adult, gambling]
    allow: [allowed.gambling.example]
    deny: [denied.example]
    safe_search: strict
  staff:
    networks: ["127.0.0.3/32"]
    block: []
"""

TEST_LISTS = (
    ListSource(name="test-adult", format="domains", category="adult",
               domains=("adult.example", "cdn-adult.example", "203.0.113.66")),
    ListSource(name="test-gambling", format="domains", category="gambling",
               domains=("gambling.example", "casino.example")),
)


# Device tokens and queried names that no log line may hold (issue 18): tests add theirs; the
# session's records of classguard* and aiohttp* loggers and every served process's output
# (tests/serving.py) are searched for them when the session ends.
LOG_SECRETS: set[str] = set()
LOGGED: list[str] = []


class _Collector(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("classguard", "aiohttp")):
            try:
                text = record.getMessage()
            except Exception:  # a record whose arguments do not fit its message
                text = f"{record.msg} {record.args}"
            if record.exc_info:
                text += logging.Formatter().formatException(record.exc_info)
            LOGGED.append(text)


@pytest.fixture(scope="session", autouse=True)
def no_token_or_queried_name_in_any_log():
    collector = _Collector(logging.DEBUG)
    aiohttp_log = logging.getLogger("aiohttp")
    level = aiohttp_log.level
    aiohttp_log.setLevel(logging.DEBUG)  # its request errors are debug lines too
    logging.getLogger().addHandler(collector)
    yield
    logging.getLogger().removeHandler(collector)
    aiohttp_log.setLevel(level)
    leaks = sorted({secret for secret in LOG_SECRETS for text in LOGGED if secret in text})
    assert not leaks, f"logged by the suite: {leaks}"


@pytest.fixture
async def upstream():
    server = FakeNameserver()
    server.add("example.com", "A", "93.184.215.14")
    server.add("example.com", "AAAA", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    server.add("www.example.com", "A", "93.184.215.14")
    server.add("adult.example", "A", "198.51.100.1")
    server.add("gambling.example", "A", "198.51.100.2")
    server.add("allowed.gambling.example", "A", "198.51.100.3")
    server.add("sneaky.example.org", "CNAME", "www.cdn-adult.example.")
    server.add("www.cdn-adult.example", "A", "198.51.100.4")
    server.add("listed-address.example.org", "A", "203.0.113.66")
    server.add("forcesafesearch.google.com", "A", "216.239.38.120")
    server.add("forcesafesearch.google.com", "AAAA", "2001:4860:4802:32::78")
    server.add("mdm.example.net", "A", "192.0.2.10")
    await server.start()
    yield server
    await server.stop()


@dataclass
class RunningResolver:
    service: Service
    port: int

    async def query(self, name: str, rdtype: str = "A", *, source: str = PUPILS, tcp: bool = False,
                    use_edns: int | bool = 0, payload: int = 1232, want_dnssec: bool = False,
                    timeout: float = 3.0) -> dns.message.Message:
        message = dns.message.make_query(name, rdtype, use_edns=use_edns, payload=payload,
                                         want_dnssec=want_dnssec)
        if tcp:
            return await dns.asyncquery.tcp(message, "127.0.0.1", port=self.port, source=source, timeout=timeout)
        return await dns.asyncquery.udp(message, "127.0.0.1", port=self.port, source=source, timeout=timeout)


@pytest.fixture
def resolver_settings() -> dict:
    """Other Config fields for the resolver of the `dashboard` fixture (tests/dashboard_fixtures.py);
    a test parametrizes it, e.g. with a `doh` section for device enrolment."""
    return {}


@pytest.fixture
async def make_resolver(tmp_path: Path, upstream: FakeNameserver):
    services: list[Service] = []

    async def start(policy: str = POLICY, *, sources=TEST_LISTS, upstreams=None, wait_lists=True,
                    timezone: str = "UTC", clock=None, settings: dict | None = None,
                    **dns_settings) -> RunningResolver:
        """`settings`: other top-level Config fields (metrics, query_log, ...)."""
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(textwrap.dedent(policy))
        dns_config = DnsSettings(listen=("127.0.0.1:0",), upstreams=tuple(upstreams or (upstream.url,)),
                                 upstream_timeout=1.0)
        dns_config = dataclasses.replace(dns_config, **dns_settings)
        config = Config(timezone=timezone, state_dir=tmp_path / "state", policies=policy_file, dns=dns_config,
                        blocklists=BlocklistSettings(sources=tuple(sources), bundled=False),
                        **(settings or {}))
        service = prepare(config)
        if clock is not None:
            service.state.clock = clock
        await service.start()
        services.append(service)
        if wait_lists:
            for _ in range(200):
                if service.state.lists_loaded:
                    break
                await asyncio.sleep(0.02)
            assert service.state.lists_loaded
        return RunningResolver(service, service.udp_addresses[0][1])

    yield start
    for service in services:
        await service.stop()


async def until(condition, timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll `condition()` (plain or async) until it is true; generous: the test box is loaded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.05)


def ede(message: dns.message.Message) -> list[tuple[int, str]]:
    """The extended DNS errors (RFC 8914) of an answer, read by dnspython."""
    return [(option.code, option.text or "") for option in message.options
            if isinstance(option, dns.edns.EDEOption)]
