"""/metrics scraped over real HTTP after real DNS queries: names, labels, values, Content-Type,
and no client address, device id or queried name in any label."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import pytest
import yaml
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import POLICY, PUPILS, STAFF, UNKNOWN, until
from tests.ports import free_port, reusable_port
from tests.redis_server import MISSING_REASON, REDIS_SERVER, RedisServer

DEVICE_ADDRESS = "127.0.0.4"
DEVICE_ID = "tablet-0042"
POLICY_WITH_DEVICE = POLICY + f"""\
devices:
  {DEVICE_ID}: {{class: pupils, addresses: ["{DEVICE_ADDRESS}"]}}
"""
NAMES = ("example.com", "www.example.com", "adult.example", "gambling.example", "denied.example",
         "allowed.gambling.example", "sneaky.example.org", "nowhere.example.net")
METRICS = {"metrics": {"listen": "127.0.0.1:0"}}


async def scrape(service, path: str = "/metrics") -> tuple[int, dict, str]:
    host, port = service.metrics.address
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{host}:{port}{path}") as response:
            return response.status, dict(response.headers), await response.text()


def samples(text: str) -> dict[str, list]:
    """name -> [(labels, value)] of every sample, read by prometheus-client's own parser."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict, name: str, **labels) -> float:
    matching = [number for have, number in found.get(name, []) if
                all(have.get(key) == wanted for key, wanted in labels.items())]
    assert matching, f"no sample {name}{labels}; have {found.get(name)}"
    return sum(matching)


@pytest.fixture(params=["embedded", "redis"])
def store_kind(request, tmp_path):
    """(kind, extra settings): the embedded store, then a real Redis (full query log there)."""
    if request.param == "embedded":
        yield "embedded", {}
        return
    if REDIS_SERVER is None:
        pytest.skip(MISSING_REASON)
    redis = RedisServer(tmp_path / "redis").start()
    yield "redis", {"store": redis.url, "query_log": {"mode": "full", "retention_days": 7,
                                                     "scope": "school"}}
    redis.stop()


async def test_metrics_after_queries_from_several_clients(make_resolver, upstream, store_kind):
    kind, settings = store_kind
    resolver = await make_resolver(POLICY_WITH_DEVICE, settings={**METRICS, **settings})
    for source in (PUPILS, STAFF, DEVICE_ADDRESS, UNKNOWN):
        for name in NAMES:
            await resolver.query(name, source=source)
        await resolver.query("adult.example", source=source, tcp=True)
    await resolver.query("example.com", source=PUPILS)  # a cache hit

    status, headers, text = await scrape(resolver.service)
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    found = samples(text)

    expected = {
        "classguard_queries_total", "classguard_blocks_total",
        "classguard_answer_latency_seconds_bucket", "classguard_answer_latency_seconds_sum",
        "classguard_answer_latency_seconds_count", "classguard_cache_hits_total",
        "classguard_cache_misses_total", "classguard_cache_entries", "classguard_upstream_up",
        "classguard_upstream_latency_seconds", "classguard_upstream_answers_total",
        "classguard_upstream_errors_total", "classguard_upstream_consecutive_failures",
        "classguard_list_entries", "classguard_list_age_seconds", "classguard_lists_loaded",
        "classguard_list_refresh_period_seconds", "classguard_refused_queries_total",
        "classguard_fast_path_answers_total", "classguard_store_up",
        "classguard_query_log_events_total", "classguard_query_log_dropped_total",
    }
    assert expected <= set(found), expected - set(found)
    assert all(name.startswith(("classguard_", "process_")) for name in found)
    assert value(found, "process_resident_memory_bytes") > 0

    # Values that follow from the queries above.
    assert value(found, "classguard_queries_total", protocol="udp", **{"class": "pupils"},
                 result="blocked") >= 4  # adult, gambling, denied, sneaky (CNAME), both devices
    assert value(found, "classguard_queries_total", protocol="tcp", **{"class": "staff"}) == 1
    assert value(found, "classguard_queries_total", **{"class": "unknown"}, result="refused") \
        == len(NAMES) + 1
    assert value(found, "classguard_refused_queries_total") == len(NAMES) + 1
    assert value(found, "classguard_blocks_total", reason="category", category="adult") >= 4
    assert value(found, "classguard_blocks_total", reason="category", category="gambling") == 2
    assert value(found, "classguard_blocks_total", reason="deny", category="") == 2
    answered = sum(number for _, number in found["classguard_queries_total"])
    assert value(found, "classguard_answer_latency_seconds_count") == answered
    assert value(found, "classguard_answer_latency_seconds_bucket", le="+Inf") == answered
    assert value(found, "classguard_cache_hits_total") >= 1
    assert value(found, "classguard_cache_entries") >= 1
    assert value(found, "classguard_upstream_up", upstream=upstream.url, zone="") == 1
    assert value(found, "classguard_upstream_answers_total", upstream=upstream.url) >= 1
    assert value(found, "classguard_upstream_errors_total", upstream=upstream.url) == 0
    assert value(found, "classguard_list_entries", category="adult") == 2
    assert value(found, "classguard_list_entries", category="gambling") == 2
    assert 0 <= value(found, "classguard_list_age_seconds", category="adult") < 600
    assert value(found, "classguard_lists_loaded") == 1
    assert value(found, "classguard_store_up", kind=kind) == 1
    if kind == "redis":
        await resolver.service.query_log.flush()  # entries and counts went to Redis
        found = samples((await scrape(resolver.service))[2])
        for name in ("outages", "reconnects", "lost", "rebuilds", "lists_published",
                     "lists_fetched"):
            assert value(found, f"classguard_store_{name}_total", kind="redis") >= 0
        assert value(found, "classguard_store_dropped_writes_total", kind="redis",
                     what="query_log") == 0
        assert value(found, "classguard_store_dropped_writes_total", kind="redis",
                     what="screen_time") == 0

    # SPEC §8: no label holds a client address, a device id or a queried name.
    forbidden = (PUPILS, STAFF, DEVICE_ADDRESS, UNKNOWN, DEVICE_ID, *NAMES,
                 *(name.split(".", 1)[1] for name in NAMES if name.count(".") > 1))
    for name, items in found.items():
        for labels, _ in items:
            for label, text_value in labels.items():
                for secret in forbidden:
                    assert secret not in text_value, f"{name}{{{label}={text_value!r}}} holds {secret}"


async def test_upstream_failures_show_per_upstream(make_resolver, upstream):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"udp://127.0.0.1:{probe.getsockname()[1]}"
    # The dead one first: the startup probe finds it down, so a client's question goes to the
    # live one without waiting for it.
    resolver = await make_resolver(upstreams=(dead, upstream.url), settings=METRICS)
    group = resolver.service.upstream_groups[0]
    await until(lambda: group.upstreams[0].healthy is False and group.upstreams[1].healthy,
                what="the startup probes")
    found = samples((await scrape(resolver.service))[2])
    assert value(found, "classguard_upstream_up", upstream=dead) == 0
    assert value(found, "classguard_upstream_consecutive_failures", upstream=dead) >= 1
    assert value(found, "classguard_upstream_up", upstream=upstream.url) == 1
    assert value(found, "classguard_upstream_answers_total", upstream=upstream.url) == 0  # probes
    answer = await resolver.query("example.com", source=STAFF)
    assert answer.answer
    found = samples((await scrape(resolver.service))[2])
    assert value(found, "classguard_upstream_answers_total", upstream=upstream.url) == 1
    # A client's exchange that fails is counted; a probe's failure is not.
    # Its backoff over (1 s), the dead one is tried first again (no latency known).
    await until(lambda: group.upstreams[0].down_until <= time.monotonic(), what="the backoff")
    answer = await resolver.query("www.example.com", source=STAFF)
    assert answer.answer
    found = samples((await scrape(resolver.service))[2])
    assert value(found, "classguard_upstream_errors_total", upstream=dead) == 1
    assert value(found, "classguard_upstream_consecutive_failures", upstream=dead) >= 2
    assert value(found, "classguard_upstream_answers_total", upstream=upstream.url) == 2


async def test_no_metrics_server_without_the_section(make_resolver):
    resolver = await make_resolver()
    assert resolver.service.metrics is None


def _base(name: str) -> str:
    for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
        name = name.removesuffix(suffix)
    return name


async def test_docs_alerts_and_dashboard_use_the_metrics_served(make_resolver, tmp_path):
    """Every family served is documented, and every name in the alert rules and the Grafana
    dashboard is served by a real scrape: of a resolver on the Redis store (which serves every
    family the embedded one does, and the Redis ones) when redis-server is installed. The rules
    are also checked by promtool when it is installed (`apt-get install prometheus`)."""
    redis = RedisServer(tmp_path / "redis").start() if REDIS_SERVER is not None else None
    try:
        settings = {**METRICS, **({"store": redis.url} if redis is not None else {})}
        resolver = await make_resolver(settings=settings, rate_limit=None)
        text = (await scrape(resolver.service))[2]
    finally:
        if redis is not None:
            redis.stop()
    served = {_base(line.split()[2]) for line in text.splitlines() if line.startswith("# TYPE ")}
    served |= {_base(name) for name in samples(text)}
    served.add("classguard_rate_limited_queries")  # served once dns.rate_limit is set
    if redis is None:  # what a Redis store adds, by the table that serves it
        from classguard.metrics import PREFIX, STORE_COUNTERS

        served |= {_base(PREFIX + name) for _, name, _, _ in STORE_COUNTERS}
        served.add("classguard_store_dropped_writes")
    else:
        for name in ("outages", "reconnects", "lost", "rebuilds", "lists_published",
                     "lists_fetched", "dropped_writes"):
            assert f"classguard_store_{name}" in served
    docs = Path(__file__).resolve().parent.parent / "docs"
    documented = set(re.findall(r"`(classguard_[a-z_]+)`", (docs / "observability.md").read_text()))
    assert {name for name in served if name.startswith("classguard_")} <= \
        {_base(name) for name in documented}
    rules = yaml.safe_load((docs / "alerts.yml").read_text())["groups"][0]["rules"]
    assert len(rules) >= 10
    for rule in rules:
        for name in re.findall(r"classguard_[a-z_]+", rule["expr"]):
            assert _base(name) in served, f"{rule['alert']}: {name} is not served"
    if shutil.which("promtool"):
        checked = subprocess.run(["promtool", "check", "rules", str(docs / "alerts.yml")],
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        linted = subprocess.run(["promtool", "check", "metrics"], input=text,
                                capture_output=True, text=True, timeout=60)
        assert (linted.returncode, linted.stdout + linted.stderr) == (0, "")  # names, units, help
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) > 20
    for expr in exprs:
        for name in re.findall(r"(?:classguard|process)_[a-z_]+", expr):
            assert _base(name) in served, f"dashboard: {name} is not served"


async def test_counters_add_up_across_workers(tmp_path, upstream):
    """`serve --workers 2`: worker 0 serves /metrics with the other worker's counters added."""
    dns_port, metrics_port = reusable_port(), free_port(socket.SOCK_STREAM)  # DNS: UDP and TCP
    (tmp_path / "policies.yaml").write_text("classes:\n  staff: {networks: [\"127.0.0.3/32\"]}\n")
    (tmp_path / "classguard.yaml").write_text(textwrap.dedent(f"""\
        policies: policies.yaml
        state_dir: state
        dns: {{listen: ["127.0.0.1:{dns_port}"], upstreams: ["{upstream.url}"]}}
        blocklists: {{bundled: false}}
        metrics: {{listen: "127.0.0.1:{metrics_port}"}}
        """))
    classguard = str(Path(sys.executable).with_name("classguard"))
    process = await asyncio.create_subprocess_exec(
        classguard, "serve", "--workers", "2", cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "CLASSGUARD_CONFIG": ""})
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        async with aiohttp.ClientSession() as session:
            async def total() -> float | None:
                try:
                    async with session.get(url) as response:
                        found = samples(await response.text())
                except aiohttp.ClientError:
                    return None
                return sum(number for _, number in found.get("classguard_queries_total", []))

            for _ in range(100):
                if await total() is not None:
                    break
                await asyncio.sleep(0.1)
            sent = 40
            for _ in range(sent):  # a new source port each: the kernel spreads them
                query = dns.message.make_query("example.com", "A")
                await dns.asyncquery.udp(query, "127.0.0.1", port=dns_port, source=STAFF, timeout=3)
            for _ in range(100):
                if await total() == sent:
                    break
                await asyncio.sleep(0.1)
            assert await total() == sent
        share = json.loads((tmp_path / "state" / "metrics" / "worker-1.json").read_text())
        assert 0 < sum(share["queries"].values()) < sent  # both workers answered some
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
