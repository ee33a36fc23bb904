"""`make bench-town` (issue 17): a town's data, one server on 127.0.0.1, and what each admin
action costs, with DNS p99 at 2,000 q/s from class addresses during each one.

The town: 218 classes (schedules, holidays, a network each: 127.C.0.0/24), 5,450 devices (25 a
class, one address each in 127.200.0.0/16) enrolled through `device import` (records of their
own). Prints a Markdown table; `--write-docs` puts it in docs/benchmarks.md under "Town".
Bounded: each DNS load runs at most 10 s and 20,000 queries; 127.0.0.1 only."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import dns.message

ROOT = Path(__file__).resolve().parent.parent
CLASSGUARD = str(Path(sys.executable).with_name("classguard"))
CLASSES, PER_CLASS = 218, 25
RATE = 2000
WINDOW = {"days": "mon-fri", "from": "08:00", "to": "16:30", "block": ["adult"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def town_policy(devices: bool) -> str:
    lines = ["exceptions:", '  - {from: "2026-12-19", to: "2027-01-04", name: "Noël"}',
             '  - {from: "2027-02-13", to: "2027-03-01", name: "Hiver"}', "classes:"]
    for n in range(CLASSES):
        lines.append(f"  class-{n:03d}: {{name: \"Classe {n}\", school: \"École {n // 12}\", "
                     f"networks: [127.{n + 1}.0.0/24], block: [adult], "
                     f"schedule: [{json.dumps(WINDOW)}, {{days: sat-sun, from: \"00:00\", to: \"24:00\", closed: true}}]}}")
    return "\n".join(lines) + "\n"


def write_town(folder: Path, dns_port: int, dashboard_port: int) -> None:
    (folder / "policies.yaml").write_text(town_policy(False))
    (folder / "adult.txt").write_text("adult.example\n")
    (folder / "classguard.yaml").write_text(
        f"timezone: Europe/Paris\npolicies: policies.yaml\nstate_dir: state\n"
        f"dns: {{listen: [\"127.0.0.1:{dns_port}\"], upstreams: [\"udp://127.0.0.1:9\"]}}\n"
        f"blocklists: {{bundled: false, sources: [{{name: adult, path: adult.txt, "
        f"format: domains, category: adult}}]}}\n"
        f"dashboard: {{listen: \"127.0.0.1:{dashboard_port}\"}}\n"
        f"doh: {{listen: \"127.0.0.1:{free_port()}\", public_url: "
        f"\"https://dns.town.example/dns-query\"}}\n")
    with open(folder / "town.csv", "w", newline="") as file:
        writer = csv.writer(file)
        for n in range(CLASSES * PER_CLASS):
            writer.writerow([f"tab-{n:05d}", f"class-{n % CLASSES:03d}",
                             f"127.200.{n // 250}.{n % 250 + 1}"])


def cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLASSGUARD, "-c", str(folder / "classguard.yaml"), *args],
                          capture_output=True, text=True, cwd=folder, check=False)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def start(folder: Path, dns_port: int) -> tuple[subprocess.Popen, float]:
    started = time.monotonic()
    process = subprocess.Popen([CLASSGUARD, "-c", str(folder / "classguard.yaml"), "serve"],
                               cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    query = dns.message.make_query("adult.example", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.1.0.9", 0))
        sock.settimeout(0.05)
        while time.monotonic() - started < 30:
            sock.sendto(query, ("127.0.0.1", dns_port))
            try:
                sock.recv(512)
                return process, time.monotonic() - started
            except OSError:
                await asyncio.sleep(0.02)
    process.kill()
    raise SystemExit(f"the server did not answer: {process.stderr.read().decode()[-2000:]}")


class Load:
    """UDP queries at RATE/s from class addresses (127.C.0.9), in a thread; latencies kept."""

    def __init__(self, port: int) -> None:
        self.port, self.latencies, self.lost, self.sent = port, [], 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        sockets = []
        for n in range(16):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.{n * 13 % CLASSES + 1}.0.9", 0))
            sock.setblocking(False)
            sockets.append(sock)
        pending: dict[tuple[int, int], float] = {}
        start, index = time.monotonic(), 0
        deadline = start + 10
        while not self._stop.is_set() and time.monotonic() < deadline and self.sent < 20_000:
            due = start + self.sent / RATE
            now = time.monotonic()
            if now >= due:
                sock = sockets[index % len(sockets)]
                qid = self.sent % 65536
                query = dns.message.make_query("adult.example", "A", id=qid).to_wire()
                pending[(index % len(sockets), qid)] = now
                sock.sendto(query, ("127.0.0.1", self.port))
                self.sent += 1
                index += 1
            for number, sock in enumerate(sockets):
                try:
                    while True:
                        data = sock.recv(512)
                        sent_at = pending.pop((number, int.from_bytes(data[:2], "big")), None)
                        if sent_at is not None:
                            self.latencies.append(time.monotonic() - sent_at)
                except BlockingIOError:
                    pass
            time.sleep(0.0002)
        time.sleep(0.3)
        for number, sock in enumerate(sockets):
            try:
                while True:
                    data = sock.recv(512)
                    sent_at = pending.pop((number, int.from_bytes(data[:2], "big")), None)
                    if sent_at is not None:
                        self.latencies.append(time.monotonic() - sent_at)
            except BlockingIOError:
                pass
            sock.close()
        self.lost = len(pending)

    def p99_ms(self) -> float:
        if not self.latencies:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100)[98] * 1000


async def timed(coroutine) -> tuple[float, object]:
    started = time.monotonic()
    result = await coroutine
    return (time.monotonic() - started) * 1000, result


async def main(write_docs: bool) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="classguard-town-") as temporary:
        folder = Path(temporary)
        dns_port, dashboard_port = free_port(), free_port()
        write_town(folder, dns_port, dashboard_port)
        assert cli(folder, "lists", "update").returncode == 0
        process, startup_empty = await start(folder, dns_port)
        await asyncio.sleep(1)
        rss_empty = rss_mib(process.pid)
        enrolled = cli(folder, "device", "import", "town.csv", "--output", "urls.csv")
        assert enrolled.returncode == 0, enrolled.stderr
        process.terminate()
        process.wait()
        process, startup_full = await start(folder, dns_port)
        await asyncio.sleep(1)
        rss_full = rss_mib(process.pid)
        token = cli(folder, "token", "create", "bench").stdout.split()[-1]
        api = f"http://127.0.0.1:{dashboard_port}/api/v1"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with aiohttp.ClientSession(headers=headers) as http:
                async def add(n: int):
                    async with http.post(f"{api}/devices", json={
                            "id": f"new-{n}", "class": "class-007",
                            "addresses": [f"127.201.0.{n}"]}) as response:
                        assert response.status == 201, await response.text()

                async def edit():
                    async with http.get(f"{api}/classes/class-009") as response:
                        body = await response.json()
                        etag = response.headers["ETag"]
                    changed = {**body["class"], "name": f"Classe 9 {random.random():.6f}"}
                    async with http.put(f"{api}/classes/class-009", json=changed,
                                        headers={"If-Match": etag}) as response:
                        assert response.status == 200, await response.text()

                async def first_page(path: str):
                    async with http.get(path) as response:
                        return len(await response.read())

                actions = [
                    ("`POST /api/v1/devices` (one device add)", lambda: add(1)),
                    ("`PUT /api/v1/classes/{id}` (class edit)", edit),
                    ("`GET /api/v1/devices` first page", lambda: first_page(f"{api}/devices")),
                ]
                for name, action in actions:
                    with Load(dns_port) as load:
                        await asyncio.sleep(0.5)
                        ms, size = await timed(action())
                        await asyncio.sleep(0.5)
                    rows.append((name, f"{ms:.0f} ms", f"{size / 1024:.1f} KB" if size else "",
                                 f"{load.p99_ms():.1f} ms", f"{load.lost} of {load.sent}"))
            for name, args in (("`classguard device add` (CLI, server running)",
                                ("device", "add", "cli-1", "--class", "class-003")),):
                with Load(dns_port) as load:
                    started = time.monotonic()
                    result = cli(folder, *args)
                    ms = (time.monotonic() - started) * 1000
                assert result.returncode == 0, result.stderr
                rows.append((name, f"{ms:.0f} ms (whole process)", "", f"{load.p99_ms():.1f} ms",
                             f"{load.lost} of {load.sent}"))
            with open(folder / "more.csv", "w") as file:
                file.writelines(f"more-{n:04d},class-{n % CLASSES:03d}\n" for n in range(500))
            with Load(dns_port) as load:
                started = time.monotonic()
                result = cli(folder, "device", "import", "more.csv", "--output", "more-urls.csv")
                ms = (time.monotonic() - started) * 1000
            assert result.returncode == 0, result.stderr
            rows.append(("`classguard device import` of 500 (CLI)", f"{ms:.0f} ms (whole process)",
                         "", f"{load.p99_ms():.1f} ms", f"{load.lost} of {load.sent}"))
            with Load(dns_port) as load:
                time.sleep(3)
            rows.append(("nothing (DNS load alone)", "", "", f"{load.p99_ms():.1f} ms",
                         f"{load.lost} of {load.sent}"))
        finally:
            process.terminate()
            process.wait()
    table = ["| action (218 classes, 5,450 devices) | time | size | DNS p99 at 2,000 q/s meanwhile | DNS lost |",
             "|---|---|---|---|---|", *("| " + " | ".join(row) + " |" for row in rows),
             "", f"Startup (first answer after `serve`): {startup_empty:.2f} s without devices, "
             f"{startup_full:.2f} s with 5,450; RSS {rss_empty:.0f} MiB without, {rss_full:.0f} "
             "MiB with."]
    text = "\n".join(table)
    print(text)
    if write_docs:
        path = ROOT / "docs" / "benchmarks.md"
        docs = path.read_text()
        head = docs.split("\n## Town\n")[0].rstrip("\n")
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        path.write_text(f"{head}\n\n## Town\n\n`make bench-town` (bench/town.py), run of {stamp} "
                        f"on this machine (2 cores shared), one server, embedded store, "
                        f"python {sys.version.split()[0]}:\n\n{text}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-docs", action="store_true")
    asyncio.run(main(parser.parse_args().write_docs))
