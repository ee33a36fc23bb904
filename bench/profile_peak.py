#!/usr/bin/env python3
"""`make bench-profile`: where a classguard worker spends its time at its peak, and its memory.

The same setting as `make bench` (bench/run.py: nsd upstream, a synthetic list, the same query
file, classguard with the same configuration), on 127.0.0.1 only, every load run bounded:
start classguard, warm its cache with one pass over the query file, read its memory, then
record it with py-spy (installed in the project's venv when missing) during a closed-loop
dnsperf run of 10 seconds. Prints the share of the serving thread's samples per function (self
and total) and the memory; writes nothing to docs/. BENCH_LIST_SIZE=N (default 1,000,000).
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: the same data, upstream and configuration)

SECONDS = 10
SERVING_THREAD = "_run_worker"  # a frame every sample of the serving (event loop) thread has


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
        found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    return found


def breakdown(raw: Path) -> str:
    """py-spy's raw (collapsed) stacks -> the serving thread's functions by share of samples."""
    own, within, samples = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(SERVING_THREAD in frame for frame in frames):
            continue  # the thread pool's idle workers
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            within[frame] += int(count)
    lines = [f"{samples} samples of the serving thread", "", "self (time in the function itself):"]
    lines += [f"  {100 * n / samples:5.1f} %  {frame}" for frame, n in own.most_common(15)]
    lines += ["", "total (time in the function and what it calls):"]
    lines += [f"  {100 * n / samples:5.1f} %  {frame}" for frame, n in within.most_common(25)
              if 100 * n / samples < 99.5]
    return "\n".join(lines)


def main() -> int:
    mode = bench.FULL
    size = int(os.environ.get("BENCH_LIST_SIZE") or mode.list_size)
    procs = bench.Processes()
    work = Path(tempfile.mkdtemp(prefix="classguard-profile-"))
    try:
        data = bench.generate(work, mode, size)
        runner = bench.Bench(mode, work, procs)
        upstream = runner.start_nsd(data)
        server = bench.SERVERS[0]  # classguard --workers 1
        proc, port, _command = runner.launch(server, data, upstream, pinned=True)
        started = time.monotonic()
        runner.wait_ready(proc, port, data, started)
        print(f"memory before warm-up (RSS, PSS kB): {bench.memory_kb(proc.pid)}")
        dnsperf = ["taskset", "-c", bench.CLIENT_CPU, "dnsperf", "-s", "127.0.0.1", "-p", str(port),
                   "-d", str(data.queries), "-c", "8", "-q", "200", "-t", "1"]
        bench.run_bounded(dnsperf + ["-n", "1", "-l", str(mode.warmup_cap)], timeout=mode.warmup_cap + 30)
        print(f"memory after warm-up (RSS, PSS kB): {bench.memory_kb(proc.pid)}")
        raw = work / "profile.txt"
        spy = subprocess.Popen([py_spy(), "record", "--rate", "250", "--duration", str(SECONDS),
                                "--format", "raw", "--output", str(raw), "--pid", str(proc.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attached
        load = bench.run_bounded(dnsperf + ["-l", str(SECONDS - 1)], timeout=SECONDS + 30)
        spy.wait(timeout=SECONDS + 30)
        rate = bench.parse_dnsperf(load.stdout.decode(errors="replace")).get("qps")
        print(f"peak while profiled (py-spy slows it a little): {rate} queries/s")
        print(breakdown(raw))
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
