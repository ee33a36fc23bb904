"""`make soak`: steady mixed DNS load on a real `classguard serve --workers 2` with faults injected,
and a table of what each fault cost: answers lost, wrong, SERVFAIL, p99, and every process's RSS
and open descriptors at the start and the end.

Everything runs on 127.0.0.1: a fake upstream (tests/nameserver.py) that can go silent, a real
redis-server, the server with DoH and metrics on. The load is bounded: `SOAK_RATE` queries a
second (default 300: 70 % UDP, 15 % TCP, 15 % DoH) for `SOAK_MINUTES` (default 10), split into
one phase per fault. It prints the table and writes nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rcode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.nameserver import FakeNameserver  # noqa: E402  (the repository on the path first)
from tests.ports import free_port  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

CLASSGUARD = str(Path(sys.executable).with_name("classguard"))
RATE = float(os.environ.get("SOAK_RATE", "300"))
MINUTES = float(os.environ.get("SOAK_MINUTES", "10"))
CLIENT = "127.0.0.2"  # in the class `pupils`
ALLOWED = [f"site{index}.example.com" for index in range(200)]
BLOCKED = [f"adult{index}.example" for index in range(50)]
TIMEOUT = 2.0  # seconds a client waits before it counts an answer lost

POLICY = """\
classes:
  pupils:
    networks: ["127.0.0.2/32"]
    block: [adult]
"""


@dataclass
class Phase:
    name: str
    sent: int = 0
    lost: int = 0
    wrong: int = 0
    servfail: int = 0
    stale: int = 0
    latencies: list[float] = field(default_factory=list)

    def row(self) -> str:
        p99 = statistics.quantiles(self.latencies, n=100)[98] * 1000 if len(self.latencies) > 100 else 0.0
        return (f"| {self.name} | {self.sent} | {self.lost} | {self.wrong} | {self.servfail} | "
                f"{self.stale} | {p99:.1f} |")


def processes(supervisor: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout
    return [supervisor, *map(int, children.split())]


def footprint(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open descriptors) of a process; (0, 0) when it is gone."""
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return 0.0, 0


class Load:
    def __init__(self, port: int, doh: int) -> None:
        self.port, self.doh = port, doh
        self.phase = Phase("start")
        self.http: aiohttp.ClientSession | None = None

    async def one(self) -> None:
        blocked = random.random() < 0.15
        name = random.choice(BLOCKED if blocked else ALLOWED)
        query = dns.message.make_query(name, "A", use_edns=0)
        phase = self.phase
        phase.sent += 1
        started = time.monotonic()
        roll = random.random()
        try:
            if roll < 0.70:
                answer = await dns.asyncquery.udp(query, "127.0.0.1", port=self.port, source=CLIENT,
                                                  timeout=TIMEOUT)
            elif roll < 0.85:
                answer = await dns.asyncquery.tcp(query, "127.0.0.1", port=self.port, source=CLIENT,
                                                  timeout=TIMEOUT)
            else:
                async with self.http.post(f"http://127.0.0.1:{self.doh}/dns-query", data=query.to_wire(),
                                          headers={"Content-Type": "application/dns-message"},
                                          timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as response:
                    answer = dns.message.from_wire(await response.read())
        except (dns.exception.Timeout, asyncio.TimeoutError, OSError, aiohttp.ClientError,
                dns.exception.DNSException):
            phase.lost += 1
            return
        phase.latencies.append(time.monotonic() - started)
        if answer.rcode() == dns.rcode.SERVFAIL:
            phase.servfail += 1
            return
        addresses = [item.to_text() for rrset in answer.answer for item in rrset]
        codes = [option.code for option in answer.options if option.otype == dns.edns.EDE]
        if 3 in codes:
            phase.stale += 1
        if addresses != (["0.0.0.0"] if blocked else ["93.184.215.14"]):
            phase.wrong += 1

    async def run(self, stop: asyncio.Event) -> None:
        # DoH from the class's address too (a device token would do as well)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(CLIENT, 0)))
        tasks: set[asyncio.Task] = set()
        interval = 1.0 / RATE
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                task = asyncio.create_task(self.one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks)
        finally:
            await self.http.close()


async def soak() -> int:
    folder = Path(tempfile.mkdtemp(prefix="classguard-soak-"))
    upstream = FakeNameserver(ttl=5)  # short TTLs: the outage phase is served stale
    for name in ALLOWED:
        upstream.add(name, "A", "93.184.215.14")
    for name in BLOCKED:
        upstream.add(name, "A", "198.51.100.1")
    await upstream.start()
    redis = RedisServer(folder / "redis").start()
    port, doh, metrics = free_port(), free_port(), free_port()
    (folder / "policies.yaml").write_text(POLICY)
    (folder / "adult.txt").write_text("".join(f"{name}\n" for name in BLOCKED))
    (folder / "classguard.yaml").write_text(
        f"policies: policies.yaml\nstate_dir: state\nstore: {redis.url}\n"
        f"dns: {{listen: [\"127.0.0.1:{port}\"], upstreams: [\"{upstream.url}\"], upstream_timeout: 1}}\n"
        f"doh: {{listen: \"127.0.0.1:{doh}\"}}\nmetrics: {{listen: \"127.0.0.1:{metrics}\"}}\n"
        "blocklists: {bundled: false, sources: [{name: adult, path: adult.txt, format: domains, "
        "category: adult}]}\n")
    log = open(folder / "serve.log", "wb")
    server = subprocess.Popen([CLASSGUARD, "serve", "--workers", "2"], cwd=folder, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "CLASSGUARD_CONFIG": ""})
    load = Load(port, doh)
    stop = asyncio.Event()
    phases: list[Phase] = []
    try:
        await asyncio.sleep(3)  # both workers up with their lists
        before = {pid: footprint(pid) for pid in processes(server.pid)}
        running = asyncio.create_task(load.run(stop))
        length = MINUTES * 60 / 7

        async def phase(name: str, fault=None, heal=None) -> None:
            load.phase = Phase(name)
            phases.append(load.phase)
            if fault is not None:
                fault()
            await asyncio.sleep(length)
            if heal is not None:
                heal()

        def kill_a_worker() -> None:
            os.kill(processes(server.pid)[1], signal.SIGKILL)

        def upstream_down() -> None:
            upstream.mode = "silent"

        def upstream_up() -> None:
            upstream.mode = "normal"

        def redis_hangs() -> None:
            redis.process.send_signal(signal.SIGSTOP)

        def redis_wakes() -> None:
            redis.process.send_signal(signal.SIGCONT)

        def redis_empty() -> None:
            redis.stop()
            redis.start(wipe=True)

        def hang_up() -> None:
            server.send_signal(signal.SIGHUP)

        def lists_update() -> None:
            subprocess.run([CLASSGUARD, "lists", "update"], cwd=folder, capture_output=True,
                           env={**os.environ, "CLASSGUARD_CONFIG": ""}, timeout=60)

        await phase("steady")
        await phase("kill -9 of a worker", kill_a_worker)
        await phase("upstream silent", upstream_down, upstream_up)
        await phase("Redis hung (SIGSTOP)", redis_hangs, redis_wakes)
        await phase("Redis restarted empty", redis_empty)
        await phase("SIGHUP to the supervisor", hang_up)
        await phase("lists update", lists_update)
        stop.set()
        await running
        after = {pid: footprint(pid) for pid in processes(server.pid)}
    finally:
        stop.set()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        redis.stop()
        await upstream.stop()
    print(f"classguard soak: {MINUTES:g} min at {RATE:g} q/s (70 % UDP, 15 % TCP, 15 % DoH), "
          f"--workers 2, Redis store; log in {folder / 'serve.log'}\n")
    print("| phase | sent | lost | wrong | SERVFAIL | stale (EDE 3) | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for item in phases:
        print(item.row())
    print("\n| process | RSS MiB start | RSS MiB end | fds start | fds end |")
    print("|---|---|---|---|---|")
    for pid in sorted(set(before) | set(after)):
        start, end = before.get(pid, (0.0, 0)), after.get(pid, (0.0, 0))
        role = "supervisor" if pid == server.pid else "worker"
        print(f"| {role} {pid} | {start[0]:.1f} | {end[0]:.1f} | {start[1]} | {end[1]} |")
    text = (folder / "serve.log").read_text(errors="replace")
    print(f"\ntracebacks in the log: {text.count('Traceback')}")
    return 1 if "Traceback" in text or any(item.wrong for item in phases) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(soak()))
