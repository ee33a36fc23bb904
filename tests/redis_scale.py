"""N `classguard serve` instances on one Redis on this machine: how long a policy change takes to
be enforced by all of them, and how many commands per second Redis serves: idle, while policy
changes are made, and while every instance answers queries with `query_log.mode: full` (its
entries and counts go to Redis). Everything on 127.0.0.1; about 40 s per value of N.

    .venv/bin/python -m tests.redis_scale 1 2 4      (docs/scaling.md quotes its output)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from store.redis_backend import RedisStore
from tests.conftest import FakeNameserver, ede
from tests.redis_server import RedisServer
from tests.serving import SCHOOL_POLICY, ask, start_server, write_school

CHANGES = 10
LOAD_SECONDS = 10.0
LOAD_QPS = 100  # queries per second sent to each instance while measuring the query log's load


async def measure(count: int, root: Path) -> dict:
    upstream = FakeNameserver()
    upstream.add("example.com", "A", "93.184.215.14")
    upstream.add("adult.example", "A", "198.51.100.1")
    await upstream.start()
    redis = RedisServer(root / "redis").start()
    servers = []
    try:
        for index in range(count):
            folder = root / f"i{index}"
            folder.mkdir()
            port = write_school(folder, upstream.url)
            with open(folder / "classguard.yaml", "a") as config:
                config.write(f"store: {redis.url}\nquery_log: {{mode: full}}\n")
            servers.append(await start_server(folder, port))
        await asyncio.sleep(2)
        before, started = int(redis.info()["total_commands_processed"]), time.monotonic()
        await asyncio.sleep(10)
        idle = (int(redis.info()["total_commands_processed"]) - before) / (time.monotonic() - started)
        store = RedisStore(redis.url)
        delays = []
        before, started = int(redis.info()["total_commands_processed"]), time.monotonic()
        for change in range(CHANGES):
            deny = "example.com" if change % 2 == 0 else "nothing.example"
            text = SCHOOL_POLICY.replace("deny: [denied.example]", f"deny: [denied.example, {deny}]")
            from policies.export import export_policy
            from policies.loader import parse_policy
            from policies.yaml_lines import parse_yaml

            canonical = export_policy(parse_policy(parse_yaml(text, "bench"), source="bench",
                                                   known_categories=None, known_services=None))
            want = [(15, "deny")] if deny == "example.com" else []
            written = time.monotonic()
            await store.put_policy(canonical, actor="bench")
            pending = {server.port for server in servers}
            while pending:
                for port in list(pending):
                    if ede(await ask(port, "example.com", "127.0.0.2")) == want:
                        pending.discard(port)
                await asyncio.sleep(0.005)
            delays.append(time.monotonic() - written)
            await asyncio.sleep(0.3)
        changing = (int(redis.info()["total_commands_processed"]) - before) \
            / (time.monotonic() - started)
        await store.close()
        await asyncio.sleep(2)  # the last change's reads are over
        before, started = int(redis.info()["total_commands_processed"]), time.monotonic()
        answered = sum(await asyncio.gather(*(load(server.port) for server in servers)))
        loaded = (int(redis.info()["total_commands_processed"]) - before) \
            / (time.monotonic() - started)
        return {"instances": count, "idle_commands_per_s": round(idle, 1),
                "changing_commands_per_s": round(changing, 1),
                "propagation_median_ms": round(statistics.median(delays) * 1000),
                "propagation_max_ms": round(max(delays) * 1000),
                "loaded_queries_per_s": round(answered / LOAD_SECONDS),
                "loaded_commands_per_s": round(loaded, 1)}
    finally:
        for server in servers:
            await server.stop()
        redis.stop()
        await upstream.stop()


async def load(port: int) -> int:
    """LOAD_QPS queries a second to one instance for LOAD_SECONDS, from the pupils' address;
    how many were answered."""
    answered = 0
    deadline = time.monotonic() + LOAD_SECONDS
    names = [f"host{index}.example.com" for index in range(20)] + ["example.com", "adult.example"]
    index = 0
    while time.monotonic() < deadline:
        try:
            await ask(port, names[index % len(names)], "127.0.0.2")
            answered += 1
        except Exception:  # a timeout under load is counted as unanswered
            pass
        index += 1
        await asyncio.sleep(1 / LOAD_QPS)
    return answered


async def main(counts: list[int]) -> None:
    for count in counts:
        with tempfile.TemporaryDirectory() as folder:
            print(await measure(count, Path(folder)), flush=True)


if __name__ == "__main__":
    asyncio.run(main([int(arg) for arg in sys.argv[1:]] or [1, 2, 4]))
