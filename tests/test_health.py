"""/healthz and /readyz over real HTTP, in each not-ready state (upstreams probed, not assumed up);
and `classguard serve` as a real process: its startup line (secrets masked), JSON logs, no line
per query."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from blocklists.settings import ListSource
from classguard.config import Config
from classguard.logsetup import config_summary, mask_url, masked_config
from resolver.upstream import Upstream, UpstreamGroup, upstream_query
from tests.conftest import PUPILS, STAFF, ede, until
from tests.nameserver import FakeNameserver
from tests.ports import free_port, reusable_port
from tests.redis_server import MISSING_REASON, REDIS_SERVER, RedisServer
from tests.test_metrics import METRICS, samples, scrape, value

CLASSGUARD = str(Path(sys.executable).with_name("classguard"))


async def get(service, path: str) -> tuple[int, str]:
    status, _, text = await scrape(service, path)
    return status, text


async def ready(service) -> None:
    """Wait for 200 (the startup probe of the upstream has answered)."""
    await until(lambda: get_ready(service), what="/readyz 200")


async def get_ready(service) -> bool:
    return await get(service, "/readyz") == (200, "ready\n")


def dead_upstream() -> str:
    """An upstream nothing answers on, whose port a test may start a nameserver on later."""
    return f"udp://127.0.0.1:{reusable_port()}"


async def test_alive_and_ready(make_resolver, upstream):
    resolver = await make_resolver(settings=METRICS)
    assert await get(resolver.service, "/healthz") == (200, "ok\n")
    await ready(resolver.service)  # no client asked anything: the probe found the upstream
    assert upstream.probes == ["udp"] and upstream.queries == []


async def test_not_ready_while_lists_are_not_loaded(make_resolver, tmp_path):
    missing = ListSource(name="gone", format="domains", category="adult",
                         path=str(tmp_path / "no-such-list.txt"))
    resolver = await make_resolver(sources=(missing,), wait_lists=False, settings=METRICS)
    await until(lambda: resolver.service.upstream_groups[0].upstreams[0].healthy, what="the probe")
    await asyncio.sleep(0.3)  # the first refresh has run, and failed
    assert not resolver.service.state.lists_loaded
    status, text = await get(resolver.service, "/readyz")
    assert status == 503
    assert text == "not ready\nlists not loaded yet\n"
    assert (await get(resolver.service, "/healthz"))[0] == 200  # alive all the same


async def test_not_ready_until_an_upstream_has_answered(make_resolver, upstream):
    """SPEC §6: ready means an upstream answering, not one that has not failed yet."""
    upstream.mode = "silent"  # the startup probe waits for its (long) deadline
    resolver = await make_resolver(settings=METRICS, upstream_timeout=60.0)
    await until(lambda: upstream.probes, what="the startup probe")
    status, text = await get(resolver.service, "/readyz")
    assert (status, text) == (503, f"not ready\nno upstream has answered yet ({upstream.url}: "
                                   "asked, no answer yet)\n")
    found = samples((await scrape(resolver.service))[2])
    assert value(found, "classguard_upstream_up", upstream=upstream.url) == 0


async def test_not_ready_when_no_upstream_answers_then_ready_when_one_comes_up(make_resolver, caplog):
    dead = dead_upstream()
    caplog.set_level("INFO", logger="classguard.upstream")
    resolver = await make_resolver(upstreams=(dead,), settings=METRICS, upstream_probe_interval=0.1)
    service = resolver.service
    # Found by the probes alone: no client has asked anything.
    status, text = await get(service, "/readyz")
    for _ in range(100):
        if status == 503 and "no upstream answering" in text:
            break
        await asyncio.sleep(0.05)
        status, text = await get(service, "/readyz")
    assert status == 503
    assert text.startswith(f"not ready\nno upstream answering ({dead}: udp error: "), text
    found = samples((await scrape(service))[2])
    assert value(found, "classguard_upstream_up", upstream=dead) == 0
    await until(lambda: service.upstream_groups[0].upstreams[0].failures >= 3, what="more probes")
    answer = await resolver.query("example.com", source=STAFF)
    assert answer.rcode() == dns.rcode.SERVFAIL

    comes_up = FakeNameserver(port=int(dead.rsplit(":", 1)[1]))  # the upstream starts
    await comes_up.start()
    try:
        await ready(service)
        assert comes_up.probes and comes_up.queries == []
        found = samples((await scrape(service))[2])
        assert value(found, "classguard_upstream_up", upstream=dead) == 1
        assert value(found, "classguard_upstream_consecutive_failures", upstream=dead) == 0
        assert value(found, "classguard_upstream_errors_total", upstream=dead) == 1  # the client's
    finally:
        await comes_up.stop()
    # One line when it went down and one when it came back, however many probes failed.
    lines = [record.getMessage() for record in caplog.records if record.name == "classguard.upstream"]
    assert [line for line in lines if "failed" in line] == [lines[0]], lines
    assert lines[0].startswith(f"upstream {dead} failed: udp error: ")
    assert lines[1:] == [f"upstream {dead} is answering again"], lines


async def test_probes_ask_only_what_client_answers_did_not_tell(upstream):
    """An idle group asks the upstreams it is not sure of; a busy one sends no probe at all."""
    group = UpstreamGroup([Upstream.from_url(upstream.url)], timeout=2.0)
    live = group.upstreams[0]
    try:
        assert live.healthy is None  # unknown until its first answer or failure
        await group.probe(interval=60.0)
        assert (upstream.probes, live.healthy, live.answers) == (["udp"], True, 0)
        await group.probe(interval=60.0)  # it answered within the interval: not asked again
        assert upstream.probes == ["udp"]
        await asyncio.sleep(0.2)
        await group.probe(interval=0.1)  # silent for longer than the interval: asked again
        assert upstream.probes == ["udp", "udp"]
        reply = await group.exchange(upstream_query("example.com", 1, False, False))
        assert reply.rr and live.answers == 1
        await asyncio.sleep(0.2)
        await group.probe(interval=60.0)  # a client's question was answered: no probe
        assert upstream.probes == ["udp", "udp"]
    finally:
        await live.close()


async def test_not_ready_when_the_store_cannot_be_read(make_resolver, tmp_path):
    resolver = await make_resolver(settings=METRICS)
    await ready(resolver.service)
    store_file = tmp_path / "state" / "store.json"
    assert store_file.exists()
    store_file.write_text("{ not json")  # what a failing disk or a stray editor leaves
    status, text = await get(resolver.service, "/readyz")
    assert status == 503
    assert text.startswith("not ready\nstore unreachable: ")
    found = samples((await scrape(resolver.service))[2])
    assert value(found, "classguard_store_up", kind="embedded") == 0


async def test_ready_with_a_note_while_redis_is_away(make_resolver, tmp_path):
    """Redis away is no reason to leave rotation: every instance shares it, and each one answers
    from its snapshot (docs/observability.md). /readyz says so in a note; the metrics say it."""
    if REDIS_SERVER is None:
        pytest.skip(MISSING_REASON)
    redis = RedisServer(tmp_path / "redis").start()
    try:
        resolver = await make_resolver(settings={**METRICS, "store": redis.url})
        service = resolver.service
        await ready(service)
        found = samples((await scrape(service))[2])
        assert value(found, "classguard_store_up", kind="redis") == 1
        assert value(found, "classguard_store_outages_total", kind="redis") == 0

        redis.stop()
        status, text = await get(service, "/readyz")
        assert status == 200, text
        assert text.startswith("ready\nstore: Redis (" + redis.url + ") unreachable for "), text
        assert text.endswith("; answering from this instance's snapshot (policy version 1)\n")
        answer = await resolver.query("adult.example", source=PUPILS)
        assert ede(answer) == [(15, "category:adult")]  # the snapshot filters as before
        found = samples((await scrape(service))[2])
        assert value(found, "classguard_store_up", kind="redis") == 0
        assert value(found, "classguard_store_outages_total", kind="redis") == 1
        assert value(found, "classguard_store_reconnects_total", kind="redis") == 0

        redis.start()  # with its data (append-only)
        for _ in range(100):
            if await get(service, "/readyz") == (200, "ready\n"):
                break
            await asyncio.sleep(0.1)
        assert await get(service, "/readyz") == (200, "ready\n")
        found = samples((await scrape(service))[2])
        assert value(found, "classguard_store_up", kind="redis") == 1
        assert value(found, "classguard_store_reconnects_total", kind="redis") == 1
        assert value(found, "classguard_store_outages_total", kind="redis") == 1
    finally:
        redis.stop()


async def test_ready_with_a_note_while_redis_hangs(make_resolver, tmp_path):
    """A Redis that accepts connections and never answers (kill -STOP) is away too: /readyz once
    took the probe's time-out as a failure and answered 503 on every instance while DNS kept
    answering from the snapshot (issue 24)."""
    if REDIS_SERVER is None:
        pytest.skip(MISSING_REASON)
    redis = RedisServer(tmp_path / "redis").start()
    try:
        resolver = await make_resolver(settings={**METRICS, "store": redis.url})
        service = resolver.service
        await ready(service)
        redis.process.send_signal(signal.SIGSTOP)
        status, text = await get(service, "/readyz")
        assert status == 200, text
        assert text.startswith("ready\nstore: Redis (" + redis.url + ") "), text
        assert "answering from this instance's snapshot" in text
        answer = await resolver.query("adult.example", source=PUPILS)
        assert ede(answer) == [(15, "category:adult")]
        redis.process.send_signal(signal.SIGCONT)
        for _ in range(100):
            if await get(service, "/readyz") == (200, "ready\n"):
                break
            await asyncio.sleep(0.1)
        assert await get(service, "/readyz") == (200, "ready\n")
    finally:
        redis.process.send_signal(signal.SIGCONT)
        redis.stop()


async def test_every_reason_at_once(make_resolver, tmp_path):
    missing = ListSource(name="gone", format="domains", category="adult",
                         path=str(tmp_path / "no-such-list.txt"))
    resolver = await make_resolver(sources=(missing,), wait_lists=False, upstreams=(dead_upstream(),),
                                   settings=METRICS)
    await resolver.query("example.com", source=STAFF)
    (tmp_path / "state" / "store.json").write_text("{ not json")
    status, text = await get(resolver.service, "/readyz")
    lines = text.splitlines()
    assert status == 503 and lines[0] == "not ready" and len(lines) == 4
    assert lines[1] == "lists not loaded yet"
    assert lines[2].startswith("no upstream answering")
    assert lines[3].startswith("store unreachable")


# --- logs ------------------------------------------------------------------------------------


def test_secrets_are_masked_in_the_startup_configuration():
    config = Config(store="redis://admin:hunter2@10.0.0.5:6379/0",
                    tls={"cert": "/etc/classguard/cert.pem", "key": "/etc/classguard/key.pem"},
                    dashboard={"listen": "127.0.0.1:8080", "api_token": "abcdef0123456789"})
    line = config_summary(config)
    for secret in ("hunter2", "key.pem", "abcdef0123456789"):
        assert secret not in line
    assert 'store="redis://admin:***@10.0.0.5:6379/0"' in line
    assert 'tls.key="***"' in line and 'tls.cert="/etc/classguard/cert.pem"' in line
    assert 'dashboard.api_token="***"' in line
    assert 'dns.listen=["127.0.0.1:1053"]' in line
    assert masked_config(config)["dashboard"]["listen"] == "127.0.0.1:8080"
    assert mask_url("redis://s3cret@redis:6379") == "redis://***@redis:6379"
    assert mask_url("https://x.example/q?token=abc&page=2") == "https://x.example/q?token=***&page=2"


async def test_serve_logs_one_json_line_per_event_and_none_per_query(tmp_path, upstream):
    dns_port, metrics_port = reusable_port(), free_port()  # DNS: free for UDP and TCP both
    (tmp_path / "policies.yaml").write_text(textwrap.dedent("""\
        classes:
          pupils: {networks: ["127.0.0.2/32"], block: [adult]}
        """))
    (tmp_path / "adult.txt").write_text("adult.example\n")
    (tmp_path / "classguard.yaml").write_text(textwrap.dedent(f"""\
        policies: policies.yaml
        state_dir: state
        dns:
          listen: ["127.0.0.1:{dns_port}"]
          upstreams: ["{upstream.url}"]
        blocklists:
          bundled: false
          sources: [{{name: adult, path: adult.txt, format: domains, category: adult}}]
        tls: {{cert: cert.pem, key: private-key-file.pem}}
        metrics: {{listen: "127.0.0.1:{metrics_port}"}}
        logging: {{format: text}}
        """))
    process = await asyncio.create_subprocess_exec(
        CLASSGUARD, "serve", "--log-format", "json", cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "CLASSGUARD_CONFIG": ""})
    try:
        ready = False
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                if process.returncode is not None:
                    break
                try:
                    async with session.get(f"http://127.0.0.1:{metrics_port}/readyz") as response:
                        if response.status == 200:
                            ready = True
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            if not ready:
                output, _ = await asyncio.wait_for(process.communicate(), 15)
                raise AssertionError(f"classguard serve did not become ready:\n{output.decode()}")
            for index in range(30):
                query = dns.message.make_query(f"host{index}.example.com", "A")
                await dns.asyncquery.udp(query, "127.0.0.1", port=dns_port, source=PUPILS, timeout=2)
            query = dns.message.make_query("adult.example", "A")
            await dns.asyncquery.udp(query, "127.0.0.1", port=dns_port, source=PUPILS, timeout=2)
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                assert response.status == 200
                assert "classguard_queries_total" in await response.text()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(process.communicate(), 15)
    text = output.decode()
    assert process.returncode == 0, text
    lines = text.splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(event) for event in events), text
    startup = [event for event in events if event["message"].startswith("configuration: ")]
    assert len(startup) == 1, text
    assert 'tls.key="***"' in startup[0]["message"]
    assert 'query_log.mode="aggregate"' in startup[0]["message"]  # defaults resolved
    assert "private-key-file" not in text
    assert "example.com" not in text and "adult.example" not in text, text
    assert len(lines) < 30, text  # a few lines per event, none per query
