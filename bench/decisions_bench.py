"""Decisions per second for a city's policy: 218 classes with 10 schedule windows each.

    make bench-decisions            # prints the figures
    make bench-decisions ARGS=--write-docs   # and writes them into docs/benchmarks.md

Three figures, each the best of five rounds (other sessions may share the machine):
- cached: the common path, a name already decided in the class's current state (what the fast
  path and the chain do for a repeated name: a ClassState lookup, then a dict lookup);
- first time: a name not yet decided in that state (the full SPEC §2.3 walk with a
  50,000-name list loaded);
- class state: recomputing one class's state at a boundary (windows, holidays, overrides).
"""

from __future__ import annotations

import argparse
import platform
import random
import re
import string
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blocklists.bundled import load_bundled  # noqa: E402
from policies.engine import PolicyEngine  # noqa: E402
from policies.loader import parse_policy  # noqa: E402
from policies.yaml_lines import parse_yaml  # noqa: E402

CLASSES = 218
WINDOWS = 10
NAMES = 20_000
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- decisions-bench:begin -->", "<!-- decisions-bench:end -->"


def city_policy() -> str:
    lines = ["exceptions:", "  - {from: 2026-12-19, to: 2027-01-04, name: noel}", "classes:"]
    for index in range(CLASSES):
        lines += [f"  class-{index}:", f'    networks: ["10.{index // 250}.{index % 250}.0/24"]',
                  "    block: [adult, gambling]", "    allow: [wikipedia.org]", "    safe_search: strict",
                  "    schedule:"]
        for window in range(WINDOWS):
            start = 6 * 60 + window * 90
            end = start + 60
            lines.append(f'      - {{days: mon-fri, from: "{start // 60:02d}:{start % 60:02d}", '
                         f'to: "{end // 60:02d}:{end % 60:02d}", block: [games], school_days_only: true}}')
    return "\n".join(lines) + "\n"


def build_lists(count: int, folder: Path):
    """A compiled table of `count` listed names, through the same code as `lists update`."""
    from blocklists.build import SourceInput, build
    from blocklists.compiled import load
    from blocklists.settings import ListSource

    rng = random.Random(7)
    names = tuple("".join(rng.choices(string.ascii_lowercase, k=10)) + ".example" for _ in range(count))
    out = folder / "lists.bin"
    build([SourceInput(ListSource(name="bench", format="domains", domains=names, category="adult"))], out,
          max_bytes=1 << 30, work_dir=folder)
    return load(out)


def best_of(rounds: int, run) -> float:
    return min(run() for _ in range(rounds))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    bundled = load_bundled()
    policy = parse_policy(parse_yaml(city_policy(), "city.yaml"), source="city.yaml",
                          known_categories=set(bundled.categories) | {"adult", "gambling", "games"},
                          known_services=set(bundled.services))
    folder = Path(tempfile.mkdtemp(prefix="classguard-decisions-"))
    lists = build_lists(50_000, folder)
    engine = PolicyEngine(policy, lists, bundled, timezone="Europe/Paris")
    rng = random.Random(1)
    names = [f"www.{''.join(rng.choices(string.ascii_lowercase, k=8))}.example.org" for _ in range(NAMES)]
    classes = [f"class-{index}" for index in range(CLASSES)]
    now = 1_796_000_000.0  # a Tuesday morning in term time (2026-11-24, Europe/Paris)

    def first_time() -> float:
        fresh = PolicyEngine(policy, lists, bundled, timezone="Europe/Paris")
        pairs = [(fresh.class_state(classes[i % CLASSES], "school", now), name) for i, name in enumerate(names)]
        started = time.perf_counter()
        for state, name in pairs:
            fresh.decide_in(state, name)
        return (time.perf_counter() - started) / len(pairs)

    for index, name in enumerate(names):
        engine.decide(name, classes[index % CLASSES], "school", now)

    def cached() -> float:
        started = time.perf_counter()
        for index, name in enumerate(names):
            state = engine.class_state(classes[index % CLASSES], "school", now)
            engine.decide_in(state, name)
        return (time.perf_counter() - started) / len(names)

    def class_state() -> float:
        fresh = PolicyEngine(policy, lists, bundled, timezone="Europe/Paris")
        started = time.perf_counter()
        for class_id in classes:
            fresh.class_state(class_id, "school", now)
        return (time.perf_counter() - started) / len(classes)

    results = {"cached": best_of(5, cached), "first": best_of(5, first_time), "state": best_of(5, class_state)}
    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    text = "\n".join([
        f"Policy: {CLASSES} classes × {WINDOWS} windows (school days only), a holiday range, safe search strict; "
        f"a 50,000-name list; {NAMES:,} distinct names spread over the classes. Machine: {machine}.",
        "",
        "| path | per decision | decisions per second |",
        "|---|---|---|",
        f"| cached (class state + dict lookup) | {results['cached'] * 1e6:.2f} µs | {1 / results['cached']:,.0f} |",
        f"| first time in a state (full walk) | {results['first'] * 1e6:.2f} µs | {1 / results['first']:,.0f} |",
        f"| class state at a boundary | {results['state'] * 1e6:.1f} µs | {1 / results['state']:,.0f} |",
    ])
    print(text)
    if args.write_docs:
        doc = DOCS.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: block, doc, flags=re.S) \
            if BEGIN in doc else doc.rstrip() + "\n\n## Decisions\n\n`make bench-decisions` (bench/decisions_bench.py).\n\n" + block + "\n"
        DOCS.write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
