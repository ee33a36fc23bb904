"""`device erase` against running servers (issue 12, SPEC §3 and §8): nothing of the device is left,
not even what a worker or another instance had buffered when the erasure came; and a restart
does not add the previous run's metric counters.

Real `classguard serve` processes, a real redis-server, dnspython as the client. Nothing is
flushed by hand: the servers' own drain, flush and follow intervals have to do it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import dns.exception
import dns.rcode
import pytest

from admin.control import POLL_INTERVAL
from classguard.service import SCREEN_TIME_FLUSH_INTERVAL
from privacy.querylog import DRAIN_INTERVAL, pseudonym
from tests.conftest import ede
from tests.redis_server import MISSING_REASON, REDIS_SERVER, RedisServer
from tests.serving import (
    CLASSGUARD, SCHOOL_POLICY, Server, ask, cli, free_port, start_server, write_school,
)
from tests.test_metrics import samples
from tests.test_querylog_redis import every_key, every_value
from tests.test_workers import answers_from_many_ports

DEVICE_ID = "tablet-1"
DEVICE_ADDRESS = "127.0.0.4"  # in no class's network: once its record is gone, it is refused
PUPIL = "127.0.0.2"
NAMES = ("example.com", "adult.example", "www.example.com")
# Past every interval after which a server writes what it holds (the query log's drain, the
# screen-time merge, the store watcher's look), with room for a loaded machine.
SETTLE = DRAIN_INTERVAL + SCREEN_TIME_FLUSH_INTERVAL + POLL_INTERVAL + 2.0

POLICY = SCHOOL_POLICY.replace(
    '    deny: [denied.example]\n',
    '    deny: [denied.example]\n    screen_time: {daily_minutes: 120}\n',
) + f"""devices:
  {DEVICE_ID}:
    class: pupils
    addresses: ["{DEVICE_ADDRESS}"]
"""


def school(folder: Path, upstream_url: str, extra: str = "") -> int:
    """A school folder with the device, full query log and screen time; its DNS port."""
    folder.mkdir(exist_ok=True)
    port = write_school(folder, upstream_url, POLICY)
    with open(folder / "classguard.yaml", "a") as config:
        config.write("query_log: {mode: full, retention_days: 7}\n" + extra)
    return port


async def serve_workers(folder: Path, port: int, workers: int) -> Server:
    """`classguard serve --workers N`, once queries from many source ports are all answered."""
    process = await asyncio.create_subprocess_exec(
        CLASSGUARD, "serve", "--workers", str(workers), cwd=folder,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "CLASSGUARD_CONFIG": ""})
    server = Server(folder, port, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.returncode is None:
        try:
            answers = await answers_from_many_ports(port, "adult.example", 10)
            if all(ede(answer) == [(15, "category:adult")] for answer in answers):
                return server
        except dns.exception.Timeout:
            pass
        await asyncio.sleep(0.2)
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(process.communicate(), 15)
    raise AssertionError(f"classguard serve --workers {workers} did not become ready:\n"
                         f"{output.decode()}")


async def device_queries(port: int, count: int) -> None:
    """`count` answered queries from the device, each from a new source port (so that with
    --workers every worker gets some)."""
    answers = await asyncio.gather(*(ask(port, NAMES[index % len(NAMES)], DEVICE_ADDRESS,
                                         timeout=2) for index in range(count)))
    assert all(answer.rcode() == dns.rcode.NOERROR for answer in answers)


async def refused_everywhere(port: int, timeout: float = 10.0) -> None:
    """Wait until the device's address is refused by every worker on `port` (its record gone
    from the policy each one runs): queries from 10 new source ports, all refused."""
    deadline = time.monotonic() + timeout
    while True:
        answers = await asyncio.gather(*(ask(port, "example.com", DEVICE_ADDRESS, timeout=2)
                                         for _ in range(10)))
        if all(answer.rcode() == dns.rcode.REFUSED for answer in answers):
            return
        assert time.monotonic() < deadline, "the erased device is still served"
        await asyncio.sleep(0.2)


async def device_data(folder: Path, subject: str = DEVICE_ID) -> dict:
    result = await cli(folder, "device", "data", subject)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def assert_nothing_held(folder: Path) -> None:
    data = await device_data(folder)
    assert data["query_log"]["entries"] == [], data
    assert data["screen_time_minutes"] == {}, data
    assert data["stats"] == {} and data["device_record"] is None, data


async def stop(servers: list[Server]) -> None:
    for server in servers:
        await server.stop()
    servers.clear()


async def halt(servers: list[Server]) -> None:
    """After a failure: SIGTERM (a supervisor stops its workers with it), SIGKILL if need be."""
    for server in servers:
        if server.process.returncode is None:
            server.process.terminate()
            try:
                await asyncio.wait_for(server.process.communicate(), 15)
            except TimeoutError:
                server.process.kill()
                await server.process.communicate()


async def test_cli_erase_through_the_running_server_leaves_nothing(tmp_path, upstream):
    port = school(tmp_path, upstream.url)
    servers: list[Server] = []
    try:
        servers.append(await start_server(tmp_path, port))
        await device_queries(port, 3)
        await ask(port, "example.com", PUPIL)  # a pupil known by the network: kept
        erased = await cli(tmp_path, "device", "erase", DEVICE_ID)  # at once: nothing flushed
        assert erased.returncode == 0, erased.stderr
        # the server wrote what it held first, so the count is the device's 3 entries
        assert erased.stdout.startswith(f"device {DEVICE_ID}: 3 query log entries erased; its "
                                        "record removed from the policy"), erased.stdout
        # its address maps to no device any more: refused (it is in no class's network)
        await refused_everywhere(port)  # applied by the server before it answered the CLI
        await asyncio.sleep(SETTLE)  # the server's own writes had their turn
        await assert_nothing_held(tmp_path)
        await stop(servers)  # a stopping server writes everything it holds
    finally:
        await halt(servers)
    await assert_nothing_held(tmp_path)
    kept = await device_data(tmp_path, PUPIL)
    assert "example.com" in [entry["name"] for entry in kept["query_log"]["entries"]]
    keys = json.loads((tmp_path / "state" / "querylog" / "keys.json").read_text())
    secrets = [DEVICE_ID, DEVICE_ADDRESS] + [pseudonym(bytes.fromhex(key), DEVICE_ID)
                                             for key in keys.values()]
    for path in sorted((tmp_path / "state").rglob("*")):
        if not path.is_file() or path.name in ("audit.jsonl", "lists.bin"):
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for secret in secrets:
            assert secret not in text, (path, secret)


@pytest.mark.skipif(REDIS_SERVER is None, reason=MISSING_REASON)
async def test_api_erase_reaches_every_worker_and_instance_on_redis(tmp_path, upstream):
    """Instance A (`--workers 2`, with the dashboard) and instance B on one Redis: the device
    asks both; the REST API erases it on A; what B and A's other worker held is dropped."""
    redis = RedisServer(tmp_path / "redis").start()
    dashboard = free_port()
    a_port = school(tmp_path / "a", upstream.url, f"store: {redis.url}\n"
                    f'dashboard: {{listen: "127.0.0.1:{dashboard}"}}\n')
    b_port = school(tmp_path / "b", upstream.url, f"store: {redis.url}\n")
    servers: list[Server] = []
    try:
        await erase_through_the_api(tmp_path, redis, a_port, b_port, dashboard, servers)
    finally:
        await halt(servers)
        redis.stop()


async def erase_through_the_api(tmp_path, redis, a_port, b_port, dashboard, servers) -> None:
    """The steps of the test above; `servers` gets every server started, to be halted."""
    created = await cli(tmp_path / "a", "token", "create", "erase-test")
    assert created.returncode == 0, created.stderr
    bearer = {"Authorization": f"Bearer {created.stdout.strip()}"}
    servers.append(await serve_workers(tmp_path / "a", a_port, 2))
    servers.append(await start_server(tmp_path / "b", b_port))
    await device_queries(a_port, 20)
    await device_queries(b_port, 5)
    await ask(b_port, "example.com", PUPIL)
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{dashboard}/api/v1/devices/{DEVICE_ID}/erase"
        for _ in range(100):  # the dashboard comes up after DNS
            try:
                async with http.post(url, headers=bearer) as response:
                    body = await response.json()
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        assert response.status == 200, body
    assert body["device"] == DEVICE_ID and body["store"]["device_record"] is True, body
    for port in (a_port, b_port):  # every worker and instance follows within a second or so
        await refused_everywhere(port)
    await asyncio.sleep(SETTLE)
    await assert_nothing_held(tmp_path / "b")
    await stop(servers)  # every process writes what it holds as it stops
    await assert_nothing_held(tmp_path / "a")
    kept = await device_data(tmp_path / "a", PUPIL)
    assert "example.com" in [entry["name"] for entry in kept["query_log"]["entries"]]
    for key in every_key(redis):
        if key == "classguard:audit":
            continue
        text = every_value(redis, key)
        for secret in (DEVICE_ID, DEVICE_ADDRESS):
            assert secret not in key and secret not in text, (key, secret)


async def test_a_restart_does_not_add_the_previous_runs_worker_counters(tmp_path, upstream):
    metrics = free_port()
    port = write_school(tmp_path, upstream.url)
    with open(tmp_path / "classguard.yaml", "a") as config:
        config.write(f'metrics: {{listen: "127.0.0.1:{metrics}"}}\n')

    async def queries_total() -> float:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{metrics}/metrics") as response:
                found = samples(await response.text())
        return sum(number for _, number in found["classguard_queries_total"])

    servers: list[Server] = []
    try:
        servers.append(await serve_workers(tmp_path, port, 2))
        for _ in range(10):
            await answers_from_many_ports(port, "example.com", 40)
        await stop(servers)  # worker 1 writes its last counts as it stops
        share = tmp_path / "state" / "metrics" / "worker-1.json"
        left = sum(json.loads(share.read_text())["queries"].values())
        assert left >= 50, left  # the previous run's counters are there, fresh
        servers.append(await serve_workers(tmp_path, port, 2))
        # at once and for a while: the totals are this run's (its readiness probes, 10 a try)
        for _ in range(5):
            assert await queries_total() < left
            await asyncio.sleep(0.5)
        await stop(servers)
    finally:
        await halt(servers)
