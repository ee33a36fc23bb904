#!/usr/bin/env python3
"""`make bench`: classguard beside dnsmasq and unbound, on 127.0.0.1, in one run (issue 13).

Everything happens on the loopback interface and every load run is bounded in time (dnsperf -l,
or -n 1 with -l as a cap). Steps:

1. generate, in a temporary folder: an nsd zone set with 10,000 "popular" names (under made-up
   zones such as `popular.bench.`), a blocklist of 1,000,000 names (under other made-up zones that
   nsd also serves, empty), and a query file: 70 % popular names (Zipf, s = 1), 15 % listed names,
   15 % subdomains of listed names, A queries, shuffled;
2. start nsd (the authoritative upstream), pinned to the load generator's core;
3. for each server in turn, alone: start it pinned to core 0 (startup = until a listed name gets
   0.0.0.0 and a popular name its address), check the answers, warm its cache with one pass
   over the query file, read its memory, then measure with dnsperf pinned to core 1: latency at
   5,000 q/s, server CPU per answered query at 25,000 q/s, peak q/s (pinned, then unpinned);
   stop it;
4. write the figures (JSON under bench/results/, and docs/benchmarks.md in full mode).

Environment: BENCH_QUICK=1 (a ~3 minute version: 100,000 listed names, short runs),
BENCH_SERVERS=a,b (a subset, by id: classguard, classguard-w2, dnsmasq-address, dnsmasq-hosts,
unbound), BENCH_LIST_SIZE=N, BENCH_CLASSGUARD_REV=REV (benchmark that commit, exported with git
archive, instead of the work tree), BENCH_CLASSGUARD_SRC=DIR (the classguard source in DIR),
BENCH_WRITE_DOCS=0/1 (default: 1 in full mode, 0 in quick mode), BENCH_KEEP=1 (keep the temporary
folder). classguard runs with the Python that runs this script (`make bench`: the project's venv).
"""

from __future__ import annotations

import bisect
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template

from dnslib import QTYPE, RCODE, DNSRecord

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TEMPLATES = BENCH_DIR / "templates"
RESULTS_DIR = BENCH_DIR / "results"
DOC = REPO / "docs" / "benchmarks.md"
PACKAGES = ("classguard", "dashboard", "admin", "privacy", "resolver", "store", "policies",
            "blocklists", "common")
DOC_BEGIN = "<!-- make-bench:begin (written by bench/run.py; edit the script, not this block) -->"
DOC_END = "<!-- make-bench:end -->"

SEED = 13
POPULAR = 10_000
ZIPF_S = 1.0
MIX = (0.70, 0.15, 0.15)  # popular, listed, subdomain of listed
FIXED_QPS = 25_000
LATENCY_QPS = 5_000
SERVER_CPU = "0"
CLIENT_CPU = "1"
NULL = "0.0.0.0"
POPULAR_ZONES = ("popular.bench", "news.bench", "shop.bench", "video.bench")
BLOCKED_ZONES = ("adult.bench", "xxx.bench", "cams.bench", "casino.bench",
                 "bet.bench", "dating.bench", "tube.bench", "pics.bench")
HOST_PREFIXES = ("www", "cdn", "api", "img", "m", "static", "login")
# dnsperf options of the closed-loop peak runs: several sockets and enough queries in flight to
# keep a fast server busy; -t 1 so that a lost query frees its slot quickly.
# More in flight than that overflows the server's socket buffer at the start of a run (the default
# 208 KiB holds about 270 queries) and the lost queries only cost time.
PEAK_OPTIONS = ["-c", "8", "-q", "200", "-t", "1"]
RATE_OPTIONS = PEAK_OPTIONS
# BENCH_NICE=-20 (root) runs servers, nsd and dnsperf at that nice level, the same for every
# server. Off by default: on a busy machine the loopback's packet work moves to ksoftirqd, which
# nice does not reach, so it barely helps, and it slows whatever else runs there.
NICE = int(os.environ.get("BENCH_NICE") or 0)


def raise_priority() -> None:
    """Runs in each child before its exec."""
    if NICE:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, NICE)
        except OSError:
            pass


@dataclass
class Mode:
    name: str
    list_size: int
    query_lines: int
    latency_seconds: int
    cpu_seconds: int
    peak_seconds: int
    peak_repeats: int
    unpinned_seconds: int
    warmup_cap: int  # seconds: a warm-up pass is stopped after this even if the file is not done
    startup_cap: int  # seconds a server gets to answer correctly
    deadline: int  # seconds for the whole run, then everything is stopped


FULL = Mode("full", 1_000_000, 100_000, 10, 10, 8, 3, 8, 120, 300, 25 * 60)
QUICK = Mode("quick", 100_000, 20_000, 4, 4, 4, 1, 4, 60, 120, 8 * 60)


@dataclass
class Server:
    id: str
    label: str
    kind: str  # classguard | dnsmasq | unbound
    workers: int = 1
    blocklist: str = ""  # dnsmasq: address | hosts
    exact_only: bool = False  # the subdomain of a listed name is not blocked (hosts form)


SERVERS = [
    Server("classguard", "classguard --workers 1", "classguard", workers=1),
    Server("classguard-w2", "classguard --workers 2", "classguard", workers=2),
    Server("dnsmasq-address", "dnsmasq, address=/d/# lines", "dnsmasq", blocklist="address"),
    Server("dnsmasq-hosts", "dnsmasq, addn-hosts (Pi-hole form)", "dnsmasq", blocklist="hosts", exact_only=True),
    Server("unbound", "unbound, local-zone always_null", "unbound"),
]


@dataclass
class Result:
    id: str
    label: str
    status: str = "ok"  # ok | failed: ... | not available yet: ...
    pinned: bool = True
    startup_s: float | None = None
    checks: list = field(default_factory=list)
    warmup: dict | None = None
    rss_kb: int | None = None
    pss_kb: int | None = None
    rss_after_load_kb: int | None = None
    rss_at_start_kb: int | None = None  # as soon as it answered correctly, before the warm-up
    latency: dict | None = None
    cpu: dict | None = None
    peak_runs: list = field(default_factory=list)
    peak_qps: float | None = None
    peak_unpinned: dict | None = None
    rcodes: dict | None = None
    command: str = ""
    others_cores_at_start: float | None = None  # CPU (in cores) other processes used just before the start
    others_cores_max: float | None = None  # the most other processes used during one timed run


class BenchError(Exception):
    pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------------------------
# processes


class Processes:
    """Every process the bench starts, each in its own process group, so that all of it stops."""

    def __init__(self):
        self.live: list[subprocess.Popen] = []

    def start(self, argv: list[str], log_path: Path, cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=cwd, env=env, start_new_session=True, preexec_fn=raise_priority)
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # children left in the group after the leader exited
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.live)):
            self.stop(proc, grace=3.0)


def run_bounded(argv: list[str], timeout: float, stdout_path: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command in its own process group; on timeout the whole group is killed."""
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    try:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=raise_priority, **kwargs)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
    finally:
        if stdout_path:
            out.close()
    if stdout_path:
        stdout = stdout_path.read_bytes()
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # field 5: pgrp
            pids.append(int(entry))
    return pids


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pgid: int) -> float:
    """utime + stime of every process in the group (all threads included), from /proc/PID/stat."""
    total = 0
    for pid in group_pids(pgid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
    return total / CLK_TCK


def memory_kb(pgid: int) -> tuple[int, int]:
    """VmRSS (from status) and Pss (from smaps_rollup), summed over the group."""
    rss = pss = 0
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise BenchError("no free port on 127.0.0.1")


# ----------------------------------------------------------------------------------------------
# DNS


@dataclass
class Answer:
    rcode: str
    addresses: list[str]


def ask(port: int, name: str, timeout: float = 1.0) -> Answer | None:
    """One A query over UDP to 127.0.0.1:port; None when nothing (or a refusal) came back."""
    query = DNSRecord.question(name, "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.1", port))
            sock.send(query.pack())
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                data = sock.recv(4096)
                reply = DNSRecord.parse(data)
                if reply.header.id == query.header.id:
                    addresses = [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]
                    return Answer(RCODE.get(reply.header.rcode), addresses)
        except (OSError, TimeoutError):
            return None
        except Exception:  # an unparseable reply counts as no reply
            return None
    return None


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class Data:
    popular: list[str]
    popular_address: dict[str, str]
    blocked: list[str]
    queries: Path
    list_txt: Path
    dnsmasq_address: Path
    hosts: Path
    unbound_zones: Path
    checks: dict
    query_stats: dict


def popular_address(i: int) -> str:
    return f"198.18.{i >> 8}.{i & 255}"  # RFC 2544 benchmarking range


def generate(work: Path, mode: Mode, list_size: int) -> Data:
    rng = random.Random(SEED)
    popular = []
    for i in range(POPULAR):
        zone = POPULAR_ZONES[i % len(POPULAR_ZONES)]
        prefix = HOST_PREFIXES[(i // len(POPULAR_ZONES)) % len(HOST_PREFIXES)]
        popular.append(f"{prefix}.site{i}.{zone}")
    addresses = {name: popular_address(i) for i, name in enumerate(popular)}

    alphabet = string.ascii_lowercase + string.digits
    seen: set[str] = set()
    blocked: list[str] = []
    while len(blocked) < list_size:
        label = "".join(rng.choices(alphabet, k=rng.randint(5, 14)))
        if rng.random() < 0.2:
            label = label[:3] + "-" + label[3:]
        name = f"{label}.{BLOCKED_ZONES[rng.randrange(len(BLOCKED_ZONES))]}"
        if name not in seen:
            seen.add(name)
            blocked.append(name)
    del seen

    list_txt = work / "list.txt"
    with open(list_txt, "w") as f:
        f.write(f"# synthetic blocklist for make bench: {list_size} names, seed {SEED}\n")
        f.writelines(f"{name}\n" for name in blocked)
    dnsmasq_address = work / "blocklist.dnsmasq.conf"
    with open(dnsmasq_address, "w") as f:
        f.writelines(f"address=/{name}/#\n" for name in blocked)
    hosts = work / "blocklist.hosts"
    with open(hosts, "w") as f:
        f.writelines(f"0.0.0.0 {name}\n" for name in blocked)
    unbound_zones = work / "blocklist.unbound.conf"
    with open(unbound_zones, "w") as f:
        f.write("server:\n")
        f.writelines(f'    local-zone: "{name}." always_null\n' for name in blocked)

    # The query file: Zipf over the popular names (ranks in a shuffled order), listed names and
    # subdomains of listed names drawn uniformly from the list.
    ranked = popular[:]
    rng.shuffle(ranked)
    cumulative, total = [], 0.0
    for rank in range(1, POPULAR + 1):
        total += 1.0 / rank ** ZIPF_S
        cumulative.append(total)
    n_popular = round(mode.query_lines * MIX[0])
    n_listed = round(mode.query_lines * MIX[1])
    n_sub = mode.query_lines - n_popular - n_listed
    lines = [ranked[bisect.bisect_left(cumulative, rng.random() * total)] for _ in range(n_popular)]
    lines += [blocked[rng.randrange(list_size)] for _ in range(n_listed)]
    lines += [f"{HOST_PREFIXES[rng.randrange(len(HOST_PREFIXES))]}.{blocked[rng.randrange(list_size)]}"
              for _ in range(n_sub)]
    rng.shuffle(lines)
    queries = work / "queries.txt"
    with open(queries, "w") as f:
        f.writelines(f"{name} A\n" for name in lines)
    stats = {"lines": len(lines), "popular": n_popular, "listed": n_listed, "subdomains": n_sub,
             "distinct_popular": len({name for name in lines if name in addresses}),
             "distinct_names": len(set(lines))}

    checks = {"blocked": blocked[0], "subdomain": f"www.{blocked[1]}", "allowed": ranked[0],
              "allowed_address": addresses[ranked[0]]}

    # nsd's zones: the popular ones with their A records, the blocked ones empty (so that a
    # forwarded subdomain of a listed name gets an authoritative NXDOMAIN, negatively cacheable).
    zones_dir = work / "nsd"
    zones_dir.mkdir()
    by_zone: dict[str, list[tuple[str, str]]] = {zone: [] for zone in POPULAR_ZONES + BLOCKED_ZONES}
    for name in popular:
        prefix, site, zone = name.split(".", 2)
        by_zone[zone].append((f"{prefix}.{site}", addresses[name]))
    for zone, records in by_zone.items():
        with open(zones_dir / f"{zone}.zone", "w") as f:
            f.write(f"$ORIGIN {zone}.\n$TTL 86400\n"
                    f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 3600\n"
                    f"@ IN NS ns\nns IN A 127.0.0.1\n")
            f.writelines(f"{host} IN A {address}\n" for host, address in records)
    return Data(popular, addresses, blocked, queries, list_txt, dnsmasq_address, hosts, unbound_zones,
                checks, stats)


# ----------------------------------------------------------------------------------------------
# dnsperf


def parse_dnsperf(text: str) -> dict:
    def number(label: str, cast=float):
        m = re.search(rf"{re.escape(label)}\s+([0-9.]+)", text)
        return cast(m.group(1)) if m else None

    out = {"sent": number("Queries sent:", int), "completed": number("Queries completed:", int),
           "lost": number("Queries lost:", int), "run_time": number("Run time (s):"),
           "qps": number("Queries per second:"), "avg_latency": number("Average Latency (s):")}
    m = re.search(r"Response codes:\s+(.*)", text)
    if m:
        out["rcodes"] = {code: int(count) for code, count in re.findall(r"([A-Z]+) (\d+) \(", m.group(1))}
    return out


def cpu_totals() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy (user, nice, system, irq, softirq: all cores) and
    stolen by the hypervisor, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def machine_busy_seconds() -> float:
    return cpu_totals()[0]


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Quiet:
    """This machine may be shared: before each timed run, wait (a bounded time) until the other
    processes use less than QUIET_CORES, and measure what they used during the run."""

    QUIET_CORES = 0.15

    def __init__(self, per_wait: float, budget: float):
        self.per_wait = per_wait
        self.budget = budget  # seconds of waiting left for the whole bench
        self.waited = 0.0

    @staticmethod
    def others(watch: list[int], seconds: float) -> float:
        busy, ours = machine_busy_seconds(), sum(cpu_seconds(g) for g in watch)
        time.sleep(seconds)
        return max(0.0, (machine_busy_seconds() - busy) - (sum(cpu_seconds(g) for g in watch) - ours)) / seconds

    def wait(self, watch: list[int]) -> float:
        started = time.monotonic()
        others = self.others(watch, 0.5)
        while others > self.QUIET_CORES and time.monotonic() - started < min(self.per_wait, self.budget):
            others = self.others(watch, 1.0)
        spent = time.monotonic() - started
        self.budget -= spent
        self.waited += spent
        if others > self.QUIET_CORES:
            log(f"  note: other processes use {others:.2f} cores; measuring anyway")
        return others


class Load:
    def __init__(self, work: Path, queries: Path, runs: list, watch: list[int], quiet: Quiet):
        self.work = work
        self.queries = queries
        self.runs = runs  # every dnsperf command, for the report
        self.watch = watch  # process groups whose CPU is ours (server, nsd)
        self.quiet = quiet
        self.count = 0

    def dnsperf(self, port: int, options: list[str], seconds: float, pinned: bool = True,
                verbose: bool = False, what: str = "", wait_quiet: bool = True) -> dict:
        others_before = self.quiet.wait(self.watch) if wait_quiet else None
        (busy, steal), ours, client = (cpu_totals(), sum(cpu_seconds(g) for g in self.watch),
                                       children_cpu_seconds())
        server_before = cpu_seconds(self.watch[0])
        started = time.monotonic()
        argv = (["taskset", "-c", CLIENT_CPU] if pinned else []) + [
            "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(self.queries)] + options
        if "-n" not in options:
            argv += ["-l", str(seconds)]
        if verbose:
            argv.append("-v")
        self.count += 1
        out_path = self.work / f"dnsperf-{self.count}.out"
        done = run_bounded(argv, timeout=seconds + 60, stdout_path=out_path)
        elapsed = time.monotonic() - started
        server_cpu = cpu_seconds(self.watch[0]) - server_before
        client_cpu = children_cpu_seconds() - client
        busy_after, steal_after = cpu_totals()
        others = (busy_after - busy) - (sum(cpu_seconds(g) for g in self.watch) - ours) - client_cpu
        text = done.stdout.decode(errors="replace")
        if done.returncode != 0 or "Statistics:" not in text:
            raise BenchError(f"dnsperf failed ({what}): {done.stderr.decode(errors='replace').strip()[-300:]}")
        result = parse_dnsperf(text)
        result["others_cores"] = round(max(0.0, others) / elapsed, 3)  # other processes' CPU during the run
        result["steal_cores"] = round((steal_after - steal) / elapsed, 3)  # taken by the hypervisor
        result["server_cpu_s"] = round(server_cpu, 3)
        result["server_cores"] = round(server_cpu / elapsed, 3)
        result["dnsperf_cores"] = round(client_cpu / elapsed, 3)
        if result.get("completed"):
            result["us_per_query"] = round(server_cpu / result["completed"] * 1e6, 2)
        result["others_cores_before"] = None if others_before is None else round(others_before, 3)
        if verbose:
            latencies = sorted(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                               if line.startswith("> ") and line.rsplit(" ", 1)[1][:1].isdigit())
            result["answered"] = len(latencies)
            result["latency_ms"] = percentiles(latencies)
            out_path.unlink()  # per-query lines: large and no longer needed
        self.runs.append({"what": what, "argv": argv})
        return result


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}

    def at(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999),
            "max": round(values[-1] * 1000, 3)}


# ----------------------------------------------------------------------------------------------
# the servers


class Bench:
    def __init__(self, mode: Mode, work: Path, procs: Processes):
        self.mode = mode
        self.work = work
        self.procs = procs
        self.runs: list = []
        self.meta: dict = {}
        self.classguard_compile: dict | None = None
        self.nsd_pgid = 0
        self.quiet = Quiet(per_wait=20.0 if mode.name == "full" else 5.0,
                           budget=240.0 if mode.name == "full" else 30.0)
        self.classguard_env = dict(os.environ)
        self.classguard_rev = ""
        src = os.environ.get("BENCH_CLASSGUARD_SRC")
        rev = os.environ.get("BENCH_CLASSGUARD_REV")
        if rev and not src:
            # a committed revision, exported apart from the work tree (which others may be editing)
            sha = command_output(["git", "-C", str(REPO), "rev-parse", "--verify", "--short", f"{rev}^{{commit}}"])
            if not re.fullmatch(r"[0-9a-f]{7,40}", sha):
                raise BenchError(f"BENCH_CLASSGUARD_REV={rev}: not a commit of {REPO}")
            src = str(work / "classguard-src")
            os.mkdir(src)
            # the packages that commit has (the layout changed with issue 16)
            top = command_output(["git", "-C", str(REPO), "ls-tree", "--name-only", sha]).split()
            packages = [name for name in PACKAGES if name in top]
            archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, *packages],
                                     capture_output=True, check=True, timeout=60).stdout
            subprocess.run(["tar", "-x", "-C", src], input=archive, check=True, timeout=60)
            self.classguard_rev = f"{sha} (git archive of {rev})"
        if src:
            self.classguard_env["PYTHONPATH"] = str(Path(src).resolve())

    # -- upstream ------------------------------------------------------------------------------
    def start_nsd(self, data: Data) -> int:
        port = free_port()
        zones_dir = self.work / "nsd"
        zones = "\n".join(f"zone:\n    name: {zone}\n    zonefile: {zone}.zone"
                          for zone in POPULAR_ZONES + BLOCKED_ZONES)
        conf = self.work / "nsd.conf"
        conf.write_text(Template((TEMPLATES / "nsd.conf").read_text()).substitute(
            port=port, dir=zones_dir, zones=zones))
        proc = self.procs.start(["taskset", "-c", CLIENT_CPU, "nsd", "-d", "-c", str(conf)],
                                self.work / "nsd.out")
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise BenchError(f"nsd exited: {last_line(tail(self.work / 'nsd.out') + chr(10) + tail(zones_dir / 'nsd.log'))}")
            answer = ask(port, data.checks["allowed"], timeout=0.2)
            if answer and answer.addresses == [data.checks["allowed_address"]]:
                log(f"nsd answering on 127.0.0.1:{port}")
                self.nsd_pgid = proc.pid
                return port
            time.sleep(0.05)
        raise BenchError("nsd did not answer within 60 s")

    # -- classguard ----------------------------------------------------------------------------
    def classguard_argv(self, *args: str) -> list[str]:
        source = Path(self.classguard_env.get("PYTHONPATH") or REPO)
        # before issue 16's layout the command line was resolver.cli
        module = "classguard.cli" if (source / "classguard" / "cli.py").exists() else "resolver.cli"
        return [sys.executable, "-m", module, *args]

    def prepare_classguard(self, data: Data, upstream_port: int) -> tuple[Path, int]:
        folder = self.work / "classguard"
        if not folder.exists():
            folder.mkdir()
            os.link(data.list_txt, folder / "list.txt")
            shutil.copy(TEMPLATES / "policies.yaml", folder / "policies.yaml")
        port = free_port()
        (folder / "classguard.yaml").write_text(Template((TEMPLATES / "classguard.yaml").read_text()).substitute(
            port=port, upstream_port=upstream_port))
        if self.classguard_compile is None:
            argv = self.classguard_argv("lists", "update", "-c", str(folder / "classguard.yaml"))
            log("classguard lists update (compile) ...")
            started = time.monotonic()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = run_bounded(argv, timeout=600, cwd=folder, env=self.classguard_env)
            elapsed = time.monotonic() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                raise BenchError("classguard lists update failed: "
                                 + last_line(done.stderr.decode(errors="replace") or done.stdout.decode(errors="replace")))
            self.classguard_compile = {
                "seconds": round(elapsed, 2),
                "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
                "max_rss_kb": after.ru_maxrss,  # the largest child so far: this compile (nothing larger ran before)
                "output": done.stdout.decode(errors="replace").strip().splitlines()[-1:],
                "command": "classguard lists update -c classguard.yaml"}
            log(f"  compiled in {elapsed:.1f} s: {self.classguard_compile['output']}")
        return folder, port

    # -- one server ----------------------------------------------------------------------------
    def launch(self, server: Server, data: Data, upstream_port: int, pinned: bool) -> tuple[subprocess.Popen, int, str]:
        prefix = ["taskset", "-c", SERVER_CPU] if pinned else []
        out = self.work / f"{server.id}.out"
        if server.kind == "classguard":
            folder, port = self.prepare_classguard(data, upstream_port)
            argv = self.classguard_argv("serve", "-c", str(folder / "classguard.yaml"), "--workers",
                                        str(server.workers), "--log-level", "warning")
            command = f"classguard serve -c classguard.yaml --workers {server.workers} --log-level warning"
            return self.procs.start(prefix + argv, out, cwd=folder, env=self.classguard_env), port, command
        port = free_port()
        if server.kind == "dnsmasq":
            conf = self.work / f"{server.id}.conf"
            conf.write_text(Template((TEMPLATES / "dnsmasq.conf").read_text()).substitute(
                port=port, upstream_port=upstream_port))
            extra = (f"--conf-file={data.dnsmasq_address}" if server.blocklist == "address"
                     else f"--addn-hosts={data.hosts}")
            argv = ["dnsmasq", "-k", f"--conf-file={conf}", extra]
            command = f"dnsmasq -k --conf-file=dnsmasq.conf {extra.replace(str(self.work) + '/', '')}"
        elif server.kind == "unbound":
            conf = self.work / "unbound.conf"
            conf.write_text(Template((TEMPLATES / "unbound.conf").read_text()).substitute(
                port=port, upstream_port=upstream_port, dir=self.work, blocklist=data.unbound_zones))
            argv = ["unbound", "-d", "-c", str(conf)]
            command = "unbound -d -c unbound.conf  # includes blocklist.unbound.conf"
        else:
            raise AssertionError(server.kind)
        return self.procs.start(prefix + argv, out), port, command

    def wait_ready(self, proc: subprocess.Popen, port: int, data: Data, started: float) -> float:
        end = started + self.mode.startup_cap
        blocked, allowed = data.checks["blocked"], data.checks["allowed"]
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise ServerExited(proc.returncode)
            answer = ask(port, blocked, timeout=0.05)
            if answer and answer.rcode == "NOERROR" and answer.addresses == [NULL]:
                # a fail-closed block (lists not loaded) would look the same: also require an
                # allowed name to resolve
                allowed_answer = ask(port, allowed, timeout=1.0)
                if allowed_answer and allowed_answer.addresses == [data.checks["allowed_address"]]:
                    return time.monotonic() - started
            time.sleep(0.01)
        raise BenchError(f"no correct answer within {self.mode.startup_cap} s")

    def check_answers(self, server: Server, port: int, data: Data) -> list[dict]:
        checks = data.checks
        expected = [("blocked", checks["blocked"], "NOERROR", [NULL]),
                    ("subdomain of blocked", checks["subdomain"],
                     *(("NXDOMAIN", []) if server.exact_only else ("NOERROR", [NULL]))),
                    ("allowed", checks["allowed"], "NOERROR", [checks["allowed_address"]])]
        results = []
        for what, name, rcode, addresses in expected:
            answer = ask(port, name, timeout=2.0)
            got = f"{answer.rcode} {','.join(answer.addresses)}".strip() if answer else "no answer"
            want = f"{rcode} {','.join(addresses)}".strip()
            results.append({"what": what, "name": name, "expected": want, "got": got, "ok": got == want})
        return results

    def measure(self, server: Server, data: Data, upstream_port: int) -> Result:
        result = Result(server.id, server.label)
        pinned = server.workers == 1
        result.pinned = pinned
        log(f"{server.label}: starting")
        if server.kind == "classguard":
            try:
                self.prepare_classguard(data, upstream_port)  # the compile, timed apart, before the start
            except BenchError as exc:
                result.status = f"failed: {exc}"
                log(f"  {result.status}")
                return result
        result.others_cores_at_start = round(self.quiet.wait([self.nsd_pgid]), 3)
        started = time.monotonic()
        proc, port, result.command = self.launch(server, data, upstream_port, pinned)
        load = Load(self.work, data.queries, self.runs, [proc.pid, self.nsd_pgid], self.quiet)
        try:
            try:
                result.startup_s = round(self.wait_ready(proc, port, data, started), 3)
            except ServerExited as exc:
                text = tail(self.work / f"{server.id}.out")
                if "not available yet" in text:
                    result.status = f"not available yet: {text.strip().splitlines()[-1]}"
                else:
                    result.status = f"failed: exited with {exc.args[0]}: {last_line(text)}"
                log(f"  {result.status}")
                return result
            log(f"  answering correctly after {result.startup_s:.2f} s")
            result.rss_at_start_kb = memory_kb(proc.pid)[0]
            result.checks = self.check_answers(server, port, data)
            bad = [c for c in result.checks if not c["ok"]]
            if bad:
                result.status = "failed: wrong answers: " + "; ".join(
                    f"{c['what']} {c['name']}: got {c['got']}, expected {c['expected']}" for c in bad)
                log(f"  {result.status}")
                return result
            result.warmup = load.dnsperf(port, ["-n", "1", "-l", str(self.mode.warmup_cap)] + RATE_OPTIONS,
                                         self.mode.warmup_cap, pinned=True, wait_quiet=False,
                                         what="warm-up: one pass over the query file")
            log(f"  warm-up: {result.warmup['completed']} answered, {result.warmup['lost']} lost, "
                f"{result.warmup['qps']:.0f} q/s")
            time.sleep(0.5)
            result.rss_kb, result.pss_kb = memory_kb(proc.pid)
            log(f"  memory after warm-up: RSS {result.rss_kb / 1024:.1f} MiB, PSS {result.pss_kb / 1024:.1f} MiB")

            lat = load.dnsperf(port, ["-Q", str(LATENCY_QPS)] + RATE_OPTIONS, self.mode.latency_seconds,
                               verbose=True, what=f"latency at {LATENCY_QPS} q/s")
            result.latency = lat
            log(f"  latency at {LATENCY_QPS}/s: {lat['latency_ms']} ms, lost {lat['lost']}")

            fixed = load.dnsperf(port, ["-Q", str(FIXED_QPS)] + RATE_OPTIONS, self.mode.cpu_seconds,
                                 what=f"CPU at {FIXED_QPS} q/s")
            fixed["saturated"] = fixed["qps"] < 0.97 * FIXED_QPS or fixed["lost"] > 0.01 * fixed["sent"]
            result.cpu = fixed
            log(f"  CPU at {FIXED_QPS}/s: {fixed['us_per_query']} µs/query (answered {fixed['qps']:.0f}/s, "
                f"lost {fixed['lost']})")

            for i in range(self.mode.peak_repeats):
                peak = load.dnsperf(port, PEAK_OPTIONS, self.mode.peak_seconds, pinned=pinned,
                                    what="peak" + (" (server on core 0, dnsperf on core 1)" if pinned else " (unpinned)"))
                result.peak_runs.append(peak)
                log(f"  peak run {i + 1}: {peak['qps']:.0f} q/s, lost {peak['lost']}, server {peak['server_cores']:.2f} "
                    f"cores ({peak['us_per_query']} µs/query), dnsperf {peak['dnsperf_cores']:.2f} cores, "
                    f"others {peak['others_cores']:.2f} cores")
            # the best of the repeats: on a machine that others may share, interference only lowers it
            result.peak_qps = round(max(run["qps"] for run in result.peak_runs))
            result.rcodes = result.peak_runs[-1].get("rcodes")

            if pinned:  # the same server, now free to use both cores (it still competes with dnsperf)
                os.sched_setaffinity(proc.pid, {0, 1})
                for pid in group_pids(proc.pid):
                    try:
                        for task in os.listdir(f"/proc/{pid}/task"):
                            os.sched_setaffinity(int(task), {0, 1})
                    except OSError:
                        pass
                result.peak_unpinned = load.dnsperf(port, PEAK_OPTIONS, self.mode.unpinned_seconds, pinned=False,
                                                    what="peak, unpinned (server and dnsperf free on both cores)")
                log(f"  peak unpinned: {result.peak_unpinned['qps']:.0f} q/s")
            else:
                result.peak_unpinned = max(result.peak_runs, key=lambda run: run["qps"])
            result.rss_after_load_kb = memory_kb(proc.pid)[0]
            timed = [result.latency, result.cpu, *result.peak_runs, result.peak_unpinned]
            result.others_cores_max = max(run["others_cores"] for run in timed if run)
        except BenchError as exc:
            result.status = f"failed: {exc}"
            log(f"  {result.status}")
        finally:
            self.procs.stop(proc)
        return result


class ServerExited(Exception):
    pass


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].replace("|", "/") if lines else "(no output)"


def tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------
# versions, machine


def command_output(argv: list[str], env: dict | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def versions(bench: Bench) -> dict:
    env = bench.classguard_env
    source = command_output([sys.executable, "-c", "import resolver, pathlib; "
                             "print(pathlib.Path(resolver.__file__).resolve().parent.parent)"], env=env)
    rev = bench.classguard_rev or command_output(["git", "-C", source, "rev-parse", "--short", "HEAD"])
    if rev and not bench.classguard_rev:
        dirty = command_output(["git", "-C", source, "status", "--porcelain", "--", "classguard", "dashboard", "admin", "privacy", "resolver", "store", "policies", "blocklists", "common"])
        if dirty:
            rev += " with uncommitted changes in resolver/, policies/ or blocklists/"
    packages = {}
    for package in ("dnsperf", "dnsmasq-base", "unbound", "nsd"):
        packages[package] = command_output(["dpkg-query", "-W", "-f", "${Version}", package])
    uvloop = command_output([sys.executable, "-c", "import uvloop; print(uvloop.__version__)"], env=env)
    dnslib = command_output([sys.executable, "-c", "import dnslib; print(dnslib.version)"], env=env)
    return {"classguard": rev or "unknown", "classguard_source": source, "python": platform.python_version(),
            "uvloop": uvloop, "dnslib": dnslib, "packages": packages,
            "dnsmasq": command_output(["dnsmasq", "--version"]).splitlines()[0],
            "unbound": command_output(["unbound", "-V"]).splitlines()[0],
            "nsd": command_output(["nsd", "-v"]).splitlines()[0],
            "dnsperf": next((line for line in command_output(["dnsperf", "-h"]).splitlines()
                             if line.startswith("Version")), "")}


def machine() -> dict:
    lscpu = command_output(["lscpu"])
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    hypervisor = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                       if line.startswith("Hypervisor vendor")), "")
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "0")
    os_name = ""
    try:
        os_name = next(line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                       if line.startswith("PRETTY_NAME="))
    except (OSError, StopIteration):
        pass
    return {"cpu_model": model, "hypervisor": hypervisor, "cores": os.cpu_count(), "kernel": platform.release(),
            "memory_gib": round(int(mem) / 1024 / 1024, 1), "os": os_name,
            "load_before": os.getloadavg()[0]}


# ----------------------------------------------------------------------------------------------
# report


def fmt(value, digits=0, unit=""):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def ratio(a, b, digits=2):
    if a is None or b is None or not b:
        return "—"
    return f"{a / b:.{digits}f}×"


def render(report: dict) -> str:
    results = {r["id"]: r for r in report["results"]}
    mode = report["mode"]
    lines = []
    add = lines.append
    add(f"Run of {report['date']} ({mode['name']} mode, {report['list_size']:,} listed names, "
        f"{report['duration_s'] / 60:.1f} min), classguard {report['versions']['classguard']}.")
    add("")
    add("| server | peak q/s, pinned | peak q/s, unpinned | CPU µs/answered query at 25,000 q/s | "
        "latency p50 / p99 at 5,000 q/s (ms) | RSS / PSS after warm-up (MiB) (RSS before warm-up) | startup with the list (s) | "
        "other processes' CPU during the timed runs (cores, max) |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["results"]:
        if r["status"] != "ok":
            add(f"| {r['label']} | {r['status']} | | | | | | |")
            continue
        cpu = r["cpu"] or {}
        cpu_text = fmt(cpu.get("us_per_query"), 1)
        if cpu.get("saturated"):
            cpu_text += f" (saturated: answered {cpu['qps']:,.0f}/s)"
        lat = (r["latency"] or {}).get("latency_ms", {})
        best = max(r["peak_runs"], key=lambda run: run["qps"])
        pinned_peak = (fmt(r["peak_qps"]) + client_bound(best)) if r["pinned"] else "— (several processes)"
        unpinned = r["peak_unpinned"] or {}
        add(f"| {r['label']} | {pinned_peak} | {fmt(unpinned.get('qps'))}{client_bound(unpinned)} | {cpu_text} | "
            f"{fmt(lat.get('p50'), 3)} / {fmt(lat.get('p99'), 3)} | "
            f"{fmt(r['rss_kb'] / 1024, 1)} / {fmt(r['pss_kb'] / 1024, 1)} "
            f"({fmt((r.get('rss_at_start_kb') or 0) / 1024, 1)}) | {fmt(r['startup_s'], 2)} | "
            f"{fmt(r['others_cores_max'], 2)} |")
    add("")
    add("\"dnsperf-bound\": dnsperf used at least 0.9 of its core during that run, so the server may "
        "have had more to give; a ratio to such a peak flatters classguard.")
    add("")
    if report.get("quiet_wait_s"):
        add(f"The bench waited {report['quiet_wait_s']:.0f} s in all for other processes on this machine to "
            "quiet down before timed runs (the last column says how much CPU they still took).")
        add("")
    compile_info = report.get("classguard_compile")
    if compile_info:
        add(f"classguard's list compile (`{compile_info['command']}`, timed apart from startup): "
            f"{compile_info['seconds']:.1f} s wall, {compile_info['cpu_seconds']:.1f} s CPU, "
            f"peak RSS {compile_info['max_rss_kb'] / 1024:.0f} MiB; it printed `{' '.join(compile_info['output'])}`.")
        add("")

    cg = results.get("classguard")
    peers = [r for r in report["results"] if r["status"] == "ok" and not r["id"].startswith("classguard")]
    if cg and cg["status"] == "ok" and peers:
        add("classguard `--workers 1` as a ratio to each peer (above 1× means classguard's figure is larger):")
        add("")
        add("| peer | peak pinned | peak unpinned | CPU per query | p50 | p99 | RSS | PSS | startup |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for p in peers:
            cl, pl = cg["latency"]["latency_ms"], p["latency"]["latency_ms"]
            add(f"| {p['label']} | {ratio(cg['peak_qps'], p['peak_qps'])} | "
                f"{ratio(cg['peak_unpinned']['qps'], p['peak_unpinned']['qps'])} | "
                f"{ratio(cg['cpu']['us_per_query'], p['cpu']['us_per_query'])} | "
                f"{ratio(cl.get('p50'), pl.get('p50'))} | {ratio(cl.get('p99'), pl.get('p99'))} | "
                f"{ratio(cg['rss_kb'], p['rss_kb'])} | {ratio(cg['pss_kb'], p['pss_kb'])} | "
                f"{ratio(cg['startup_s'], p['startup_s'])} |")
        add("")
        add("Issue 13's targets for classguard:")
        add("")
        add(target_lines(results))
        add("")

    add("Checks before timing (a listed name, a subdomain of one, a popular name's address):")
    add("")
    for r in report["results"]:
        if r["checks"]:
            text = "; ".join(f"{c['what']} → {c['got']}{'' if c['ok'] else ' (expected ' + c['expected'] + ')'}"
                             for c in r["checks"])
            add(f"- {r['label']}: {text}")
        elif r["status"] != "ok":
            add(f"- {r['label']}: {r['status']}")
    add("")
    add("Answer codes during the last peak run (a sanity check that the work was done under load):")
    add("")
    for r in report["results"]:
        if r.get("rcodes"):
            total = sum(r["rcodes"].values())
            codes = ", ".join(f"{code} {count / total:.1%}" for code, count in sorted(r["rcodes"].items()))
            lost = r["peak_runs"][-1]["lost"]
            add(f"- {r['label']}: {codes}; lost {lost:,} of {r['peak_runs'][-1]['sent']:,}")
    add("")

    v, m = report["versions"], report["machine"]
    add("Machine and versions:")
    add("")
    add(f"- {m['cpu_model']} ({m['hypervisor'] + ' guest, ' if m['hypervisor'] else ''}{m['cores']} cores), "
        f"{m['memory_gib']} GiB, kernel {m['kernel']}, {m['os']}; load average {m['load_before']:.2f} before the run")
    add(f"- classguard {v['classguard']}, Python {v['python']}, uvloop {v['uvloop'] or 'absent'}, dnslib {v['dnslib']}")
    add(f"- {v['dnsmasq'].split('  ')[0]} (Debian {v['packages'].get('dnsmasq-base')}), unbound {v['unbound'].replace('Version ', '')} "
        f"(Debian {v['packages'].get('unbound')}), {v['nsd']} (Debian {v['packages'].get('nsd')}), dnsperf "
        f"{v['dnsperf'].replace('Version ', '')} (Debian {v['packages'].get('dnsperf')})")
    add("")
    add("Commands (`$W` is the run's temporary folder, ports picked free at run time; every server "
        "command is prefixed with `taskset -c 0` for the pinned figures, every dnsperf with `taskset -c 1` "
        "except the unpinned peaks"
        + (f"; servers, nsd and dnsperf ran at nice {report['nice']}" if report.get("nice") else "") + "):")
    add("")
    add("```")
    for r in report["results"]:
        if r["command"]:
            add(f"# {r['label']}")
            add(r["command"])
    seen = set()
    for run in report["dnsperf_runs"]:
        text = " ".join(run["argv"]).replace(report["work"], "$W")
        text = re.sub(r"-p \d+", "-p PORT", text)
        if text not in seen:
            seen.add(text)
            add(f"# {run['what']}")
            add(text)
    add("```")
    qs = report["query_stats"]
    add("")
    add(f"Query file: {qs['lines']:,} A queries ({qs['popular']:,} popular, {qs['listed']:,} listed, "
        f"{qs['subdomains']:,} subdomains of listed names; {qs['distinct_names']:,} distinct names), "
        "replayed in a loop by dnsperf.")
    return "\n".join(lines)


def client_bound(run: dict) -> str:
    """A mark for a peak that dnsperf itself limited (it used nearly all of its core)."""
    return " (dnsperf-bound)" if run and (run.get("dnsperf_cores") or 0) >= 0.9 else ""


def target_lines(results: dict) -> str:
    cg, w2 = results.get("classguard"), results.get("classguard-w2")
    unbound, hosts = results.get("unbound"), results.get("dnsmasq-hosts")
    out = []

    def ok(r):
        return r is not None and r["status"] == "ok"

    if ok(cg) and ok(unbound):
        value = cg["cpu"]["us_per_query"] / unbound["cpu"]["us_per_query"]
        out.append(f"- CPU per query at most 2.0 × unbound's: {value:.2f}× "
                   f"({cg['cpu']['us_per_query']:.1f} vs {unbound['cpu']['us_per_query']:.1f} µs): "
                   f"{'met' if value <= 2.0 else 'missed'}")
    if ok(cg) and ok(hosts):
        value = cg["peak_qps"] / hosts["peak_qps"]
        out.append(f"- pinned peak at least 0.5 × dnsmasq (Pi-hole form): {value:.2f}× "
                   f"({cg['peak_qps']:,.0f} vs {hosts['peak_qps']:,.0f} q/s): {'met' if value >= 0.5 else 'missed'}")
    if ok(w2) and ok(hosts):
        value = w2["peak_unpinned"]["qps"] / hosts["peak_unpinned"]["qps"]
        out.append(f"- `--workers 2` unpinned peak at least 0.8 × dnsmasq (Pi-hole form) unpinned: {value:.2f}×: "
                   f"{'met' if value >= 0.8 else 'missed'}")
    elif w2 is not None:
        out.append("- `--workers 2` unpinned peak at least 0.8 × dnsmasq (Pi-hole form) unpinned: "
                   f"not measured ({w2['status'].split(':')[0]})")
    if ok(cg):
        p99 = cg["latency"]["latency_ms"]["p99"]
        out.append(f"- p99 latency at 5,000 q/s under 1 ms: {p99:.3f} ms: {'met' if p99 < 1 else 'missed'}")
        rss = cg["rss_kb"] / 1024
        out.append(f"- resident memory with the list under 80 MB per worker: {rss:.1f} MiB RSS "
                   f"({cg['rss_kb'] * 1024 / 1e6:.1f} MB): {'met' if cg['rss_kb'] * 1024 < 80e6 else 'missed'}")
    return "\n".join(out)


def write_doc(section: str) -> None:
    block = f"{DOC_BEGIN}\n{section}\n{DOC_END}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        tail_text = rest.split(DOC_END, 1)[1]
        text = head + block + tail_text
    else:
        text = text.rstrip("\n") + "\n\n## Resolvers side by side (`make bench`)\n\n" + block + "\n"
    DOC.write_text(text)


# ----------------------------------------------------------------------------------------------


def main() -> int:
    mode = QUICK if os.environ.get("BENCH_QUICK") == "1" else FULL
    list_size = int(os.environ.get("BENCH_LIST_SIZE") or mode.list_size)
    wanted = [s for s in os.environ.get("BENCH_SERVERS", "").split(",") if s]
    servers = [s for s in SERVERS if not wanted or s.id in wanted]
    write_docs = os.environ.get("BENCH_WRITE_DOCS", "1" if mode is FULL else "0") == "1"
    missing = [tool for tool in ("dnsperf", "dnsmasq", "unbound", "nsd", "taskset") if not shutil.which(tool)]
    if missing:
        print(f"bench: missing {', '.join(missing)}: run `make bench` (it installs them) or "
              "apt-get install dnsperf dnsmasq-base unbound nsd", file=sys.stderr)
        return 1
    if (os.cpu_count() or 1) < 2:
        print("bench: needs two cores (server on one, dnsperf on the other)", file=sys.stderr)
        return 1

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    def on_alarm(_signum, _frame):
        raise BenchError(f"the bench ran past its {mode.deadline} s deadline; stopping")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(mode.deadline)

    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="classguard-bench-"))
    started = time.monotonic()
    failed = False
    try:
        log(f"{mode.name} mode: {list_size:,} listed names, servers {', '.join(s.id for s in servers)}; work dir {work}")
        mach = machine()
        data = generate(work, mode, list_size)
        log(f"generated zones, list and {data.query_stats['lines']:,} queries in {time.monotonic() - started:.1f} s")
        bench = Bench(mode, work, procs)
        upstream_port = bench.start_nsd(data)
        results = []
        for server in servers:
            result = bench.measure(server, data, upstream_port)
            results.append(result)
            failed |= result.status.startswith("failed")
        report = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "mode": asdict(mode), "list_size": list_size,
                  "work": str(work), "duration_s": round(time.monotonic() - started, 1),
                  "machine": mach, "versions": versions(bench), "query_stats": data.query_stats,
                  "checks": data.checks, "classguard_compile": bench.classguard_compile,
                  "results": [asdict(r) for r in results], "dnsperf_runs": bench.runs,
                  "quiet_wait_s": round(bench.quiet.waited, 1), "nice": NICE}
        RESULTS_DIR.mkdir(exist_ok=True)
        out_json = RESULTS_DIR / f"{mode.name}.json"
        out_json.write_text(json.dumps(report, indent=1) + "\n")
        section = render(report)
        (RESULTS_DIR / f"{mode.name}.md").write_text(section + "\n")
        print()
        print(section)
        print()
        log(f"results: {out_json.relative_to(REPO)} and {(RESULTS_DIR / f'{mode.name}.md').relative_to(REPO)}")
        if write_docs:
            write_doc(section)
            log(f"updated {DOC.relative_to(REPO)}")
    except BenchError as exc:
        log(f"error: {exc}")
        failed = True
    finally:
        signal.alarm(0)
        procs.stop_all()
        if os.environ.get("BENCH_KEEP") == "1":
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
