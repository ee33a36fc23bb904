"""Issue 20, item 3: a live server refreshing a hostile archive keeps answering at once (the
compile runs in the worker process, within its limits, whatever the archive's size)."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from tests.conftest import ede
from tests.serving import ask, cli, start_server, write_school
from tests.test_list_sources import link_bomb


def write_ut1_school(folder: Path, upstream_url: str) -> int:
    (folder / "ut1.tar.gz").write_bytes(link_bomb(0, ["adult.example"]))
    return write_school(folder, upstream_url, source="{name: ut1, path: ut1.tar.gz, format: ut1}")


async def test_dns_latency_during_the_refresh_of_a_hostile_archive(tmp_path: Path, upstream) -> None:
    port = write_ut1_school(tmp_path, upstream.url)
    server = await start_server(tmp_path, port)
    try:
        # Under 1 MiB (it used to compile inside the server), links that loop, and enough names
        # to keep a compiler busy for a while.
        names = [f"site{number}.adult-{number % 13}.example" for number in range(150_000)]
        hostile = link_bomb(6, ["adult.example", "new-adult.example", *names])
        assert len(hostile) < 1 << 20
        (tmp_path / "ut1.tar.gz").write_bytes(hostile)

        update = asyncio.ensure_future(cli(tmp_path, "lists", "update"))
        latencies = []
        while not update.done():
            started = time.perf_counter()
            answer = await ask(port, "adult.example", "127.0.0.2", timeout=2.0)
            latencies.append(time.perf_counter() - started)
            assert ede(answer) == [(15, "category:adult")]
            await asyncio.sleep(0.01)
        result = await update
        assert result.returncode == 0, result.stderr
        assert len(latencies) >= 5, "the refresh was too quick to measure anything"
        print(f"{len(latencies)} queries during the refresh, slowest {max(latencies):.3f} s")
        assert max(latencies) < 0.5, sorted(latencies)[-5:]
        assert statistics.median(latencies) < 0.05, statistics.median(latencies)
        assert ede(await ask(port, "www.new-adult.example", "127.0.0.2")) == [
            (15, "category:adult")]
    finally:
        await server.stop()
