"""Two `classguard serve` instances on one real Redis (SPEC §7): a change made through one is
enforced by the other within a second, overrides end on time on both, Redis going away or coming
back empty changes nothing they answer, and a new instance gets its lists from Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from policies.model import Override
from resolver.redis_store import RedisStore
from tests.conftest import ede
from tests.redis_server import MISSING_REASON, REDIS_SERVER, RedisServer
from tests.serving import SCHOOL_POLICY, addresses, ask, cli, start_server, write_school

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=MISSING_REASON)

PUPILS = "127.0.0.2"
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
    # the first to look writes its snapshot back; the other then finds the store as it left it
    assert "store was lost" in a_log + b_log and "rebuilt from this instance" in a_log + b_log
