"""Two `classguard serve` instances on one real Redis (SPEC §7): a change made through one is
enforced by the other within a second, overrides end on time on both, Redis going away or coming
back empty changes nothing they answer, and a new instance gets its lists from Redis."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from policies.model import Override
from store.redis_backend import RedisStore
from tests.conftest import ede
from tests.redis_server import MISSING_REASON, REDIS_SERVER, RedisServer
from tests.serving import SCHOOL_POLICY, addresses, ask, cli, free_port, start_server, write_school

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=MISSING_REASON)

PUPILS = "127.0.0.2"
PASSWORD = "a long enough password"
STRICTER = SCHOOL_POLICY.replace("deny: [denied.example]", "deny: [denied.example, example.com]")
STRICTEST = SCHOOL_POLICY.replace("deny: [denied.example]",
                                  "deny: [denied.example, example.com, gambling.example]")


def school(folder, upstream_url: str, redis_url: str) -> int:
    folder.mkdir()
    port = write_school(folder, upstream_url)
    with open(folder / "classguard.yaml", "a") as config:
        config.write(f"store: {redis_url}\n")
    return port


async def denied(port: int, name: str) -> bool:
    return ede(await ask(port, name, PUPILS)) == [(15, "deny")]


async def until(condition, timeout: float) -> float:
    """Seconds until `condition()` (a coroutine function) holds; fails after `timeout`."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < timeout, f"not within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_two_instances_one_redis(tmp_path, upstream):
    redis = RedisServer(tmp_path / "redis").start()
    a_port = school(tmp_path / "a", upstream.url, redis.url)
    b_port = school(tmp_path / "b", upstream.url, redis.url)
    a = b = None
    try:
        a = await start_server(tmp_path / "a", a_port)
        await until(lambda: asyncio.sleep(0, redis.command("EXISTS", "classguard:lists:manifest")
                                          == b":1\r\n"), 10)
        b = await start_server(tmp_path / "b", b_port)  # empty state_dir: lists from Redis
        assert (b.state_dir / "lists.bin").exists()

        # a class changed through A is enforced by B within a second
        (tmp_path / "a" / "stricter.yaml").write_text(STRICTER)
        assert not await denied(b_port, "example.com")
        imported = await cli(tmp_path / "a", "policy", "import", "stricter.yaml")
        assert imported.returncode == 0, imported.stderr
        assert await until(lambda: denied(b_port, "example.com"), 1.0) < 1.0
        assert await denied(a_port, "example.com")

        # an override of 2 seconds ends on time on both
        store = RedisStore(redis.url)
        now = time.time()
        await store.add_override(Override(id="short01", class_id="pupils", kind="pause",
                                          until=now + 2, created_at=now, created_by="test"),
                                 actor="test")
        await store.close()

        async def paused_on_both() -> bool:
            answers = [await ask(port, "gambling.example", PUPILS) for port in (a_port, b_port)]
            return all(ede(answer) == [(15, "paused")] for answer in answers)

        async def open_on_both() -> bool:
            answers = [await ask(port, "gambling.example", PUPILS) for port in (a_port, b_port)]
            return all(addresses(answer) == ["198.51.100.2"] for answer in answers)

        await until(paused_on_both, 1.0)
        await until(open_on_both, 3.0)
        assert abs(time.time() - (now + 2)) < 0.5  # ended at its `until`, not later

        # Redis stopped: both keep answering with the last policy
        redis.stop()
        for port in (a_port, b_port):
            assert await denied(port, "example.com")
            assert ede(await ask(port, "adult.example", PUPILS)) == [(15, "category:adult")]
        await asyncio.sleep(1.0)
        for port in (a_port, b_port):
            assert await denied(port, "example.com")

        # Redis back, empty (its data gone): both keep the policy and the store is rebuilt
        redis.start(wipe=True)

        async def rebuilt() -> bool:
            return redis.command("EXISTS", "classguard:policy") == b":1\r\n"

        await until(rebuilt, 5.0)
        for port in (a_port, b_port):
            assert await denied(port, "example.com")
        assert redis.command("HGET", "classguard:policy", "version").endswith(b"2\r\n")

        # and changes flow again, now through B
        (tmp_path / "b" / "strictest.yaml").write_text(STRICTEST)
        imported = await cli(tmp_path / "b", "policy", "import", "strictest.yaml")
        assert imported.returncode == 0, imported.stderr
        await until(lambda: denied(a_port, "gambling.example"), 1.0)
    finally:
        outputs = [await server.stop() for server in (a, b) if server is not None]
        redis.stop()
    a_log, b_log = outputs
    assert "lists in force" not in b_log  # B took A's refresh schedule: no compile of its own
    assert "loaded the compiled lists published in the store" in b_log
    for text in (a_log, b_log):
        assert text.count("is unreachable") == 1, text  # the outage said once
        assert "is back after" in text, text
    # the first to look writes its snapshot back, under a new marker; the other notices the loss
    # too and says it adopts that version (it once said nothing: issue 24)
    assert "rebuilt from this instance" in a_log + b_log
    for text in (a_log, b_log):
        assert text.count("store was lost") == 1, text
    assert "adopting it" in a_log + b_log


async def api_status(url: str, method: str = "GET", **kwargs) -> int:
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # the dashboard comes up after DNS
            try:
                async with http.request(method, url, **kwargs) as response:
                    await response.read()
                    return response.status
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError(f"no dashboard at {url}")


def with_dashboard(folder) -> str:
    port = free_port()
    with open(folder / "classguard.yaml", "a") as config:
        config.write(f'dashboard: {{listen: "127.0.0.1:{port}"}}\n')
    return f"http://127.0.0.1:{port}/api/v1"


async def test_instances_on_a_redis_that_came_back_empty_converge_on_the_highest_version(
        tmp_path, upstream):
    """SPEC §7: A and B hold version N when Redis comes back empty, and C starts meanwhile on
    the empty Redis with a different policy file (it seeds version 1): A or B writes its state
    back (N > 1), C adopts it, and nobody flip-flops. Users and tokens survive; a later start on
    an empty Redis with a copy of the store under state_dir writes that copy back."""
    redis = RedisServer(tmp_path / "redis").start()
    try:
        await converge_then_restart_from_state_dir(tmp_path, upstream, redis)
    finally:
        redis.stop()


async def converge_then_restart_from_state_dir(tmp_path, upstream, redis: RedisServer) -> None:
    ports = {name: school(tmp_path / name, upstream.url, redis.url) for name in "abc"}
    apis = {name: with_dashboard(tmp_path / name) for name in "abc"}
    other_policy = SCHOOL_POLICY.replace("deny: [denied.example]",
                                         "deny: [denied.example, gambling.example]")
    (tmp_path / "c" / "policies.yaml").write_text(other_policy)
    servers = {}
    try:
        servers["a"] = await start_server(tmp_path / "a", ports["a"])
        servers["b"] = await start_server(tmp_path / "b", ports["b"])
        added = await cli(tmp_path / "a", "user", "add", "alice", "--role", "admin",
                          "--password-stdin", stdin=PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
        created = await cli(tmp_path / "a", "token", "create", "ci")
        assert created.returncode == 0, created.stderr
        bearer = {"Authorization": f"Bearer {created.stdout.strip()}"}
        (tmp_path / "a" / "stricter.yaml").write_text(STRICTER)
        imported = await cli(tmp_path / "a", "policy", "import", "stricter.yaml")
        assert imported.returncode == 0, imported.stderr
        await until(lambda: denied(ports["b"], "example.com"), 10)

        # A and B frozen while Redis comes back empty and C seeds it from its own file
        for name in "ab":
            servers[name].process.send_signal(signal.SIGSTOP)
        redis.stop()
        redis.start(wipe=True)
        servers["c"] = await start_server(tmp_path / "c", ports["c"])
        assert await denied(ports["c"], "gambling.example")  # C's seed, version 1
        for name in "ab":
            servers[name].process.send_signal(signal.SIGCONT)

        async def converged() -> bool:
            for port in ports.values():
                if not await denied(port, "example.com") or await denied(port, "gambling.example"):
                    return False
            return True

        await until(converged, 20)
        stored = redis.command("HGET", "classguard:policy", "text").decode()
        assert "example.com" in stored and "gambling.example" not in stored
        marker = redis.command("GET", "classguard:marker")
        await asyncio.sleep(2)  # settled: the store stays as it is
        assert redis.command("GET", "classguard:marker") == marker
        assert await converged()

        # the token and the user made before the loss work on every instance, C included
        for api in apis.values():
            assert await api_status(api + "/classes", headers=bearer) == 200
        assert await api_status(apis["c"] + "/login", "POST",
                                json={"name": "alice", "password": PASSWORD}) == 200
    finally:
        for server in servers.values():
            if server.process.returncode is None:
                server.process.send_signal(signal.SIGCONT)
        outputs = {name: await server.stop() for name, server in servers.items()}
    # one event each (not thousands): C adopts; A or B writes back, the other adopts it too
    for name, text in outputs.items():
        assert text.count("store was lost") in (1, 2), (name, text)
    assert outputs["c"].count("store was lost") == 1 and "adopting it" in outputs["c"]
    assert "rebuilt from this instance's snapshot" in outputs["a"] + outputs["b"]

    # all stopped, Redis empty again: A starts with another policy file, and writes back the
    # store it had (its copy under state_dir), not the file
    redis.stop()
    redis.start(wipe=True)
    (tmp_path / "a" / "policies.yaml").write_text(other_policy)
    server = await start_server(tmp_path / "a", ports["a"])
    try:
        assert await denied(ports["a"], "example.com")
        assert not await denied(ports["a"], "gambling.example")
        assert "gambling.example" not in redis.command("HGET", "classguard:policy", "text").decode()
        assert await api_status(apis["a"] + "/classes", headers=bearer) == 200
    finally:
        text = await server.stop()
    assert "not seeded from the policy file" in text, text
    assert "seeded it with" not in text, text
