#!/usr/bin/env python3
"""`make bench-lists`: the compiled blocklists at 1 and 5 million names (issue 6 targets).

For each size, in a temporary folder:

1. generate a UT1-like collection as a `.tar.gz` (one folder per category, `adult` holding 80 % of
   the names, UT1's `porn -> adult` link, 2-4 label names under a dozen TLDs; seeded, so every run
   compiles the same text);
2. **compile from text**: the worker the server uses (`python -m blocklists.build`), in its own
   process: wall time and peak RSS;
3. in a fresh "server" process that has imported what `classguard serve` imports:
   - **load**: `blocklists.compiled.load` of the artifact, then every page touched (what a long
     run of lookups ends up doing): times, and the RSS added per distinct name;
   - **lookup**: `categories_of` (what the policy engine calls) on 4-label names that miss, in
     batches of 100 timed with perf_counter_ns: the median over the batches, per lookup;
   - **refresh**: with the lists loaded and warm (the steady state), a full `update_lists` that
     compiles the same collection again (its file touched) in the worker, swaps the new table in
     and drops the old one, then warms it; the server's RSS and the worker's RSS are sampled every
     5 ms: peaks of the server, the worker, and of the two together, against the steady state.

Prints a Markdown table; `--write-docs` puts it in docs/benchmarks.md, between this script's
markers under "## Blocklists". Sizes: `--names 1000000 5000000` (default), `--quick` (100,000).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import random
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
DOC_BEGIN = "<!-- lists-bench:begin -->"
DOC_END = "<!-- lists-bench:end -->"
SECTION = "## Blocklists"

TLDS = ["com", "com", "com", "net", "org", "fr", "de", "ru", "info", "biz", "co.uk", "xxx", "nl",
        "it", "es", "pl", "com.br", "eu"]
SYLLABLES = ["sex", "hot", "cam", "xx", "porn", "girl", "live", "tube", "video", "club", "bet",
             "casino", "play", "game", "chat", "date", "free", "top", "best", "my", "the", "web",
             "net", "line", "star", "max", "pro", "shop", "zone", "hub"]
CATEGORIES = ["gambling", "games", "chat", "dating", "social_networks", "phishing", "malware",
              "publicite", "agressif", "drogue", "hacking", "warez", "vpn", "doh", "lingerie",
              "mixed_adult", "sect", "shopping", "audio-video", "redirector"]


# ---- the synthetic collection -----------------------------------------------------------------


def names(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for number in range(count):
        word = "".join(rng.choices(SYLLABLES, k=rng.randint(1, 3)))
        base = f"{word}{number:x}" if rng.random() < 0.7 else f"{word}-{rng.getrandbits(24):x}{number:x}"
        tld = rng.choice(TLDS)
        shape = rng.random()
        if shape < 0.55:
            name = f"{base}.{tld}"
        elif shape < 0.85:
            name = f"{rng.choice(['www', 'm', 'fr', 'en', 'cdn', 'img'])}.{base}.{tld}"
        else:
            name = f"{rng.choice(['a', 'b', 'static', 'media'])}.{rng.choice(['www', 'us', 'eu'])}.{base}.{tld}"
        out.append(name)
    return out


def write_collection(folder: Path, count: int) -> Path:
    """blacklists.tar.gz with `count` names: adult 80 %, the rest over 20 categories."""
    every = names(count, seed=count)
    split = count * 4 // 5
    archive_path = folder / "blacklists.tar.gz"
    with gzip.open(archive_path, "wb", compresslevel=1) as raw, \
            tarfile.open(fileobj=raw, mode="w|") as archive:
        def add(name: str, lines: list[str]) -> None:
            data = ("\n".join(lines) + "\n").encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))

        add("blacklists/adult/domains", every[:split])
        add("blacklists/adult/usage", ["black"])
        link = tarfile.TarInfo("blacklists/porn")
        link.type, link.linkname = tarfile.SYMTYPE, "adult"
        archive.addfile(link)
        rest = every[split:]
        share = max(1, len(rest) // len(CATEGORIES))
        for index, category in enumerate(CATEGORIES):
            chunk = rest[index * share:] if index == len(CATEGORIES) - 1 else \
                rest[index * share:(index + 1) * share]
            add(f"blacklists/{category}/domains", chunk)
            add(f"blacklists/{category}/usage", ["black"])
    return archive_path


# ---- measurements ---------------------------------------------------------------------------


def compile_in_worker(archive: Path, out: Path, work: Path) -> dict:
    """The worker exactly as update_lists starts it (the job is SourceInput.to_json's format);
    its wall time and its own peak RSS."""
    source = {"name": "ut1", "format": "ut1", "url": None, "path": str(archive), "domains": [],
              "category": None, "match": "default", "usage": None}
    job = work / "job.json"
    job.write_text(json.dumps({
        "inputs": [{"source": source, "candidates": [str(archive)], "identities": ["bench"]}],
        "out": str(out), "max_bytes": 1 << 40, "work_dir": str(work),
        "result": str(work / "result.json"), "progress": False}))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "blocklists.build", str(job)], cwd=REPO, check=True)
    seconds = time.perf_counter() - started
    result = json.loads((work / "result.json").read_text())
    return {"compile_s": seconds, "compile_peak_rss_mb": result["peak_rss_kb"] / 1024,
            "key_count": result["key_count"], "entries": result["entries"]}


SERVER_SCRIPT = textwrap.dedent("""
    import asyncio, gc, json, os, statistics, sys, threading, time
    import classguard.service  # noqa: F401 - what `classguard serve` imports (aiohttp, dnslib...)
    from pathlib import Path
    from blocklists.compiled import load
    from blocklists.bundled import load_bundled
    from blocklists import update
    from blocklists.update import update_lists
    from blocklists.settings import BlocklistSettings, ListSource
    from classguard.config import Config

    artifact, archive, state = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

    def rss_kb(pid="self", field="VmRSS:"):
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith(field):
                        return int(line.split()[1])
        except OSError:
            return 0
        return 0

    def children():
        pid = os.getpid()
        try:
            return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
        except OSError:
            return []

    def warm(lists):
        total = 0
        for view in (lists._keys, lists._offsets, lists._combo_ids):
            total += sum(view[::max(1, 4096 // view.itemsize)])
        return total

    out = {}
    gc.collect()
    before = rss_kb()
    started = time.perf_counter()
    lists = load(artifact)
    out["load_s"] = time.perf_counter() - started
    warm(lists)
    out["load_warm_s"] = time.perf_counter() - started
    out["rss_before_mb"] = before / 1024
    out["rss_added_mb"] = (rss_kb() - before) / 1024
    out["table_mb"] = lists.size_bytes / 2**20
    out["key_count"] = lists.key_count
    out["bytes_per_name"] = (rss_kb() - before) * 1024 / lists.key_count

    queries = [f"w{i}.x{i % 7}.notlisted{i}.com" for i in range(20000)]
    assert not any(lists.categories_of(q) for q in queries[:1000])
    categories_of = lists.categories_of

    def median_per_call(clock):
        per_call = []
        for start in range(0, len(queries), 100):
            batch = queries[start:start + 100]
            t = clock()
            for q in batch:
                categories_of(q)
            per_call.append((clock() - t) / len(batch) / 1000)
        return statistics.median(per_call), statistics.quantiles(per_call, n=10)[-1]

    # Other processes share the cores: each figure is the best of 5 rounds of 200 batches.
    wall = [median_per_call(time.perf_counter_ns) for _ in range(5)]
    cpu = [median_per_call(time.thread_time_ns) for _ in range(5)]
    out["lookup_miss_us"], out["lookup_miss_us_p90"] = min(wall)
    out["lookup_miss_cpu_us"] = min(cpu)[0]
    out["lookup_miss_us_rounds"] = [round(m, 2) for m, _ in wall]
    del categories_of  # a bound method would keep the old table alive through the swap

    # Steady state: the lists loaded and warm, as a server holds them.
    config = Config(state_dir=state, blocklists=BlocklistSettings(
        bundled=False, max_download_bytes=1 << 40,
        sources=(ListSource(name="ut1", format="ut1", path=str(archive)),)))
    os.utime(archive)  # a changed input: the refresh compiles again
    gc.collect()
    steady = rss_kb()
    peaks = {"server": steady, "worker": 0, "total": steady}
    done = threading.Event()

    def sample():
        while not done.is_set():
            own = rss_kb()
            child = sum(rss_kb(pid) for pid in children())
            peaks["server"] = max(peaks["server"], own)
            peaks["worker"] = max(peaks["worker"], child)
            peaks["total"] = max(peaks["total"], own + child)
            time.sleep(0.005)

    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM: from here on it is the peak during the refresh
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    fresh, report = asyncio.run(update_lists(config.blocklists, config.state_dir, load_bundled(), current=lists))
    assert report.compiled, report.summary()
    lists = fresh  # the swap: the old table is dropped here
    del fresh
    warm(lists)
    out["refresh_s"] = time.perf_counter() - started
    time.sleep(0.05)
    done.set()
    sampler.join()
    out["steady_rss_mb"] = steady / 1024
    out["refresh_server_peak_mb"] = max(peaks["server"], rss_kb(field="VmHWM:")) / 1024
    out["refresh_worker_peak_mb"] = max(peaks["worker"], report.compile_peak_rss_kb or 0) / 1024
    out["refresh_total_sampled_mb"] = peaks["total"] / 1024
    # An upper bound: both peaks as if they had come at the same moment.
    out["refresh_total_peak_mb"] = out["refresh_server_peak_mb"] + out["refresh_worker_peak_mb"]
    out["after_refresh_rss_mb"] = rss_kb() / 1024
    print(json.dumps(out))
""")


def measure_server(artifact: Path, archive: Path, state: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", SERVER_SCRIPT, str(artifact), str(archive),
                             str(state)], cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the server measurement failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_size(count: int, keep: Path | None) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"lists-bench-{count}-", dir=keep))
    started = time.perf_counter()
    archive = write_collection(folder, count)
    print(f"{count:,} names: collection written in {time.perf_counter() - started:.0f} s "
          f"({archive.stat().st_size / 1e6:.0f} MB compressed)", file=sys.stderr)
    work = folder / "work"
    work.mkdir()
    figures = {"names": count}
    figures.update(compile_in_worker(archive, folder / "lists.bin", work))
    print(f"  compiled in {figures['compile_s']:.1f} s", file=sys.stderr)
    figures.update(measure_server(folder / "lists.bin", archive, folder / "state"))
    if keep is None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return figures


# ---- report ----------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores{memory}; Python {platform.python_version()}; "
            f"load average {load:.1f} at the end of the run")


def table(results: list[dict]) -> str:
    def row(label: str, target: str, fmt, ok) -> str:
        cells = []
        for figures in results:
            cells.append(f"{fmt(figures)} {'✓' if ok(figures) else '✗'}")
        return f"| {label} | {target} | " + " | ".join(cells) + " |"

    head = "| | target | " + " | ".join(f"{r['names']:,} names" for r in results) + " |"
    lines = [head, "|---|---|" + "---|" * len(results)]
    lines.append(row("resident memory added by the loaded lists", "≤ 24 B/name",
                     lambda r: f"{r['bytes_per_name']:.1f} B/name ({r['rss_added_mb']:.1f} MiB)",
                     lambda r: r["bytes_per_name"] <= 24))
    lines.append(row("peak during a refresh, server process", "≤ 1.5 × steady",
                     lambda r: f"{r['refresh_server_peak_mb'] / r['steady_rss_mb']:.2f} × "
                               f"({r['refresh_server_peak_mb']:.0f} / {r['steady_rss_mb']:.0f} MiB)",
                     lambda r: r["refresh_server_peak_mb"] <= 1.5 * r["steady_rss_mb"]))
    lines.append(row("peak during a refresh, server + compile worker", "≤ 1.5 × steady",
                     lambda r: f"{r['refresh_total_peak_mb'] / r['steady_rss_mb']:.2f} × "
                               f"({r['refresh_total_peak_mb']:.0f} MiB; worker "
                               f"{r['refresh_worker_peak_mb']:.0f} MiB)",
                     lambda r: r["refresh_total_peak_mb"] <= 1.5 * r["steady_rss_mb"]))
    lines.append(row("load of the compiled lists (then every page touched)", "< 2 s",
                     lambda r: f"{r['load_s'] * 1000:.1f} ms ({r['load_warm_s'] * 1000:.0f} ms)",
                     lambda r: r["load_warm_s"] < 2))
    lines.append(row("compile from text (`.tar.gz`, in the worker)", "< 30 s",
                     lambda r: f"{r['compile_s']:.1f} s (peak RSS {r['compile_peak_rss_mb']:.0f} MiB)",
                     lambda r: r["compile_s"] < 30))
    lines.append(row("one lookup, 4 labels, miss, all categories (median)", "< 5 µs",
                     lambda r: f"{r['lookup_miss_us']:.2f} µs (p90 {r['lookup_miss_us_p90']:.2f}; "
                               f"CPU {r['lookup_miss_cpu_us']:.2f})",
                     lambda r: r["lookup_miss_us"] < 5))
    return "\n".join(lines)


def write_doc(block: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    body = f"{DOC_BEGIN}\n{block}\n{DOC_END}"
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        text = head + body + rest.split(DOC_END, 1)[1]
    elif SECTION in text:
        head, rest = text.split(SECTION, 1)
        text = head + SECTION + "\n\n" + body + "\n" + rest
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{body}\n"
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--quick", action="store_true", help="100,000 names only")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--keep", type=Path, help="leave the generated files in this folder")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    sizes = [100_000] if args.quick else args.names
    results = [run_size(count, args.keep) for count in sizes]
    command = "make bench-lists" if sizes == [1_000_000, 5_000_000] else \
        "python bench/lists_bench.py " + " ".join(sys.argv[1:])
    block = "\n".join([
        f"`{command}` ({time.strftime('%Y-%m-%d')}; {machine()}):",
        "",
        table(results),
    ])
    print(block)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.write_docs:
        write_doc(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
