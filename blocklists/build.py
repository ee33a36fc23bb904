"""Compiling sources into the lists file in little memory; also the worker process that does it.

The server never compiles a list itself, whatever its size: `python -m blocklists.build JOB` runs in
a separate process, so that a 30-second compile (or a hostile archive) never holds the server's
GIL or its memory; the job sets the process's limits (RLIMIT_AS, RLIMIT_CPU) and what it allocates
is given back to the system when it exits. The server then maps the file it wrote
(blocklists.compiled).

Memory stays small at any list size:

1. parsing: names are hashed to their 64-bit keys as they are read, a chunk of lines at a time
   (`KeySink.update`), and each key is appended to one of 256 buffers by its top 8 bits; a sink
   writes its buffers to a spill file every `SPILL_KEYS` keys and at the end of each file. Names
   are never kept;
2. merging, one partition (1/256 of the keys) at a time: the partition's records are read back,
   the keys of each group (one parse target, e.g. the UT1 `adult` domains, shared with `porn`)
   are joined into a dict key -> combo (the set of lists holding the key), sorted, and appended
   to the keys and combos files; counts per combo give each list's number of distinct entries;
3. the offsets of the buckets are computed from the sorted keys, partition by partition, and the
   header and the three arrays are written into the artifact (tmp file, then rename).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import resource
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import call, rshift
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from blocklists.compiled import (
    KINDS, ListInfo, _Combo, key_hasher, keys_of, make_header, new_hash_key, table_bits,
    write_artifact,
)
from blocklists.formats import MAX_BAD_EXAMPLES, ParsedList
from blocklists.sources import CategoryList, SourceError, read_inline, read_source_file

if TYPE_CHECKING:
    from blocklists.settings import ListSource

SOURCE_FIELDS = ("name", "format", "url", "path", "domains", "category", "match", "usage")

PART_BITS = 8
PARTITIONS = 1 << PART_BITS
_PART_SHIFT = 64 - PART_BITS  # a key's partition: its top bits
SPILL_KEYS = 1 << 17  # keys a sink buffers before writing them out (1 MiB)
PROGRESS_EVERY = 1 << 18  # names between two progress reports
_TOP_30_BITS = (64 - 30).__rrshift__  # key -> key >> 34

Progress = Callable[[str, str, int, int | None], None]  # (phase, source, done, total)


# ---- parsing straight into keys ------------------------------------------------------------


class KeySink:
    """A parse target that keeps no names: each is hashed to its key and buffered by partition.

    `update` hashes a batch with C-level `map`s only (no Python step per name): encode, the keyed
    hash, the key, its partition, the append to that partition's buffer, the label count.
    """

    __slots__ = ("group", "count", "label_counts", "_store", "_buffers", "_appenders", "_pending")

    def __init__(self, store: KeyStore, group: int) -> None:
        self.group = group
        self.count = 0  # names added, repeats included
        self.label_counts: set[int] = set()  # dots per name, i.e. labels - 1
        self._store = store
        self._buffers: list[array] = []  # made on first use: most sinks stay empty
        self._appenders: list = []
        self._pending = 0

    def add(self, name: str) -> None:
        self.update((name,))

    def update(self, names: Iterable[str]) -> None:
        if not self._buffers:
            self._buffers = [array("Q") for _ in range(PARTITIONS)]
            self._appenders = [buffer.append for buffer in self._buffers]
        # Parsers only give normalised names, which are ASCII.
        datas = list(map(str.encode, names))
        keys = keys_of(datas, self._store.hasher)
        appenders = map(self._appenders.__getitem__, map(rshift, keys, repeat(_PART_SHIFT)))
        deque(map(call, appenders, keys), maxlen=0)
        self.label_counts.update(map(bytes.count, datas, repeat(b".")))
        self._pending += len(datas)
        if self._pending >= SPILL_KEYS:
            self.flush()

    def __len__(self) -> int:
        return self.count + self._pending

    @property
    def labels(self) -> set[int]:
        return {dots + 1 for dots in self.label_counts}

    def flush(self) -> None:
        if not self._pending:
            return
        self.count += self._pending
        self._pending = 0
        self._store.write(self.group, self._buffers)
        for buffer in self._buffers:
            del buffer[:]


@dataclass
class _Group:
    sink: KeySink
    live: bool = True
    codes: set[int] = field(default_factory=set)  # list_index * KINDS + kind


class KeyStore:
    """The spill file of parsed keys: records (group, partition, offset, count), all appended."""

    def __init__(self, work_dir: Path, progress: Callable[[int], None] | None = None,
                 hash_key: bytes | None = None) -> None:
        self.hash_key = new_hash_key() if hash_key is None else hash_key
        self.hasher = key_hasher(self.hash_key)
        self._file = _scratch_file(work_dir, "keys")
        self.records: list[list[tuple[int, int, int]]] = [[] for _ in range(PARTITIONS)]
        self.groups: list[_Group] = []
        self.names = 0
        self._progress = progress
        self._next_report = PROGRESS_EVERY

    def close(self) -> None:
        self._file.close()

    def parsed_list(self) -> ParsedList:
        """A ParsedList whose four name targets are key sinks (one group each)."""
        return ParsedList(*(self._new_sink() for _ in range(KINDS)))

    def _new_sink(self) -> KeySink:
        sink = KeySink(self, len(self.groups))
        self.groups.append(_Group(sink))
        return sink

    def mark(self) -> int:
        return len(self.groups)

    def rollback(self, mark: int) -> None:
        """Forget every group made since `mark` (a source that failed half way through)."""
        for group in self.groups[mark:]:
            group.live = False

    def flush(self, since: int = 0) -> None:
        for group in self.groups[since:]:
            group.sink.flush()

    def write(self, group: int, buffers: list[array]) -> None:
        out = self._file
        out.seek(0, os.SEEK_END)
        for partition, keys in enumerate(buffers):
            if keys:
                self.records[partition].append((group, out.tell(), len(keys)))
                keys.tofile(out)
                self.names += len(keys)
        if self._progress is not None and self.names >= self._next_report:
            self._next_report = self.names + PROGRESS_EVERY
            self._progress(self.names)

    def read(self, offset: int, count: int) -> array:
        keys = array("Q")
        self._file.seek(offset)
        keys.fromfile(self._file, count)
        return keys

    @property
    def spill(self) -> BinaryIO:
        return self._file


# ---- the job: what to compile, and what came of it ----------------------------------------


_scratch_numbers = itertools.count()


def _scratch_file(work_dir: Path, name: str) -> BinaryIO:
    """A file for this build only, gone once closed (tempfile would cost the worker a megabyte)."""
    # A name of its own: two builds of one process (a refresh that outlived its service, say)
    # must never open, truncate or unlink each other's file.
    path = work_dir / f"{name}.{os.getpid()}.{next(_scratch_numbers)}.tmp"
    scratch = open(path, "x+b")  # noqa: SIM115 - closed by the caller
    try:
        path.unlink()
    except BaseException:
        scratch.close()
        raise
    return scratch


@dataclass(frozen=True)
class _Source:
    """A list source as the worker gets it: ListSource's fields, without importing the config."""

    name: str
    format: str
    url: str | None = None
    path: str | None = None
    domains: tuple[str, ...] = ()
    category: str | None = None
    match: str = "default"
    usage: str | None = None


@dataclass
class SourceInput:
    """One source to compile, from the first of its candidate paths that reads."""

    source: ListSource | _Source
    candidates: list[str] = field(default_factory=list)  # empty: inline entries (source.domains)
    # Per candidate, a token that changes when the source's settings or that content change
    # (blocklists.update makes them); the lists' fingerprint is the tokens of what was read.
    identities: list[str] = field(default_factory=list)

    def identity(self, used: int | None) -> str:
        if used is None:
            return "failed"
        return self.identities[used] if used < len(self.identities) else ""

    def to_json(self) -> dict:
        fields = {name: getattr(self.source, name) for name in SOURCE_FIELDS}
        fields["domains"] = list(fields["domains"])
        return {"source": fields, "candidates": self.candidates, "identities": self.identities}

    @classmethod
    def from_json(cls, data: dict) -> SourceInput:
        fields = {name: data["source"].get(name) for name in SOURCE_FIELDS}
        fields["domains"] = tuple(fields["domains"] or ())
        fields["match"] = fields["match"] or "default"
        return cls(_Source(**fields), list(data["candidates"]), list(data["identities"]))


def fingerprint(inputs: list[SourceInput], used: list[int | None] | None = None) -> str:
    """What lists are built from: the identity token of what was read from each source (by
    default, of each source's first candidate)."""
    return "|".join(item.identity(0 if used is None else used[number])
                    for number, item in enumerate(inputs))


@dataclass
class CategoryOutcome:
    category: str
    usage: str
    entries: int = 0
    networks: int = 0
    bad_lines: int = 0
    skipped: int = 0


@dataclass
class SourceOutcome:
    """What one source gave: its categories, or the errors of every candidate."""

    name: str
    used: int | None = None  # index of the candidate read (0 for inline entries); None: failed
    ok: bool = False
    errors: list[str] = field(default_factory=list)
    categories: dict[str, CategoryOutcome] = field(default_factory=dict)
    bad_examples: list[tuple[str, int, str]] = field(default_factory=list)  # category, line, why
    warnings: list[str] = field(default_factory=list)


@dataclass
class BuildResult:
    sources: list[SourceOutcome]
    key_count: int = 0
    entries: int = 0
    seconds: float = 0.0
    peak_rss_kb: int | None = None  # the worker process's own peak (Linux), when it ran in one

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BuildResult:
        sources = []
        for item in data["sources"]:
            categories = {name: CategoryOutcome(**value)
                          for name, value in item.pop("categories").items()}
            item["bad_examples"] = [tuple(example) for example in item["bad_examples"]]
            sources.append(SourceOutcome(**item, categories=categories))
        return cls(sources=sources, key_count=data["key_count"], entries=data["entries"],
                   seconds=data["seconds"], peak_rss_kb=data.get("peak_rss_kb"))


class _CollectWarnings(logging.Handler):
    """Warnings the readers log (unsafe archive members), kept for the source's outcome."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _collecting_warnings() -> Iterator[list[str]]:
    handler = _CollectWarnings()
    logger = logging.getLogger("blocklists.sources")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def build(inputs: list[SourceInput], out_path: Path, *, max_bytes: int,
          work_dir: Path | None = None, progress: Progress | None = None) -> BuildResult:
    """Read every source and write the compiled lists to `out_path` (atomically).

    A source whose candidates all fail is left out (its outcome says why); the header records
    the fingerprint of what was read, so that a refresh with the same inputs compiles nothing.
    """
    started = time.monotonic()
    work_dir = work_dir or out_path.parent
    work_dir.mkdir(parents=True, exist_ok=True)
    current = [""]

    def report_names(count: int) -> None:
        if progress is not None:
            progress("parse", current[0], count, None)

    store = KeyStore(work_dir, report_names)
    try:
        outcomes, lists, owners = _read_all(inputs, store, max_bytes, current)
        inputs_id = {"fingerprint": fingerprint(inputs, [o.used for o in outcomes]),
                     "sources": sorted({item.source.name for item in inputs})}
        result = _merge_and_write(store, outcomes, lists, owners, out_path, inputs_id, work_dir,
                                  progress)
    finally:
        store.close()
    result.seconds = time.monotonic() - started
    return result


def _read_all(inputs: list[SourceInput], store: KeyStore, max_bytes: int, current: list[str]
              ) -> tuple[list[SourceOutcome], list[CategoryList], list[SourceOutcome]]:
    """Each source's lists, and for each list the outcome of the source it came from."""
    outcomes: list[SourceOutcome] = []
    every_list: list[CategoryList] = []
    owners: list[SourceOutcome] = []
    for item in inputs:
        source = item.source
        current[0] = source.name
        outcome = SourceOutcome(source.name)
        outcomes.append(outcome)
        candidates: list[str | None] = list(item.candidates) or [None]
        for index, candidate in enumerate(candidates):
            mark = store.mark()
            with _collecting_warnings() as warnings:
                try:
                    if candidate is None:
                        lists = read_inline(source, store.parsed_list)
                    else:
                        shown = f"the download of {source.url}" if source.url else None
                        lists = read_source_file(source, Path(candidate), max_bytes,
                                                 new_list=store.parsed_list, shown_as=shown)
                    store.flush(mark)
                except SourceError as exc:
                    store.rollback(mark)
                    outcome.errors.append(str(exc))
                    continue
            outcome.warnings.extend(warnings)
            outcome.used = index
            outcome.ok = True
            every_list.extend(lists)
            owners.extend(outcome for _ in lists)
            break
    return outcomes, every_list, owners


def _merge_and_write(store: KeyStore, outcomes: list[SourceOutcome], lists: list[CategoryList],
                     owners: list[SourceOutcome], out_path: Path, inputs_id: dict, work_dir: Path,
                     progress: Progress | None) -> BuildResult:
    groups = store.groups
    networks: dict = {}
    hosts: dict[str, set[int]] = {}
    for list_index, item in enumerate(lists):
        parsed = item.parsed
        for kind, target in enumerate((parsed.suffix, parsed.exact, parsed.except_suffix,
                                       parsed.except_exact)):
            groups[target.group].codes.add(list_index * KINDS + kind)  # type: ignore[attr-defined]
        for network in parsed.networks:
            if network.num_addresses == 1:
                hosts.setdefault(str(network.network_address), set()).add(list_index)
            else:
                networks.setdefault(network, set()).add(list_index)

    combos: list[_Combo] = [_Combo((), (), (), ())]
    combo_codes: list[frozenset[int]] = [frozenset()]
    interned: dict[frozenset[int], int] = {frozenset(): 0}

    def intern(codes: frozenset[int]) -> int:
        number = interned.get(codes)
        if number is None:
            number = interned[codes] = len(combo_codes)
            combo_codes.append(codes)
            combos.append(_Combo.from_codes(codes))
        return number

    group_combo = [intern(frozenset(group.codes)) if group.live and group.codes else 0
                   for group in groups]
    joined: dict[tuple[int, int], int] = {}

    def join(left: int, right: int) -> int:
        number = joined.get((left, right))
        if number is None:
            number = joined[(left, right)] = intern(combo_codes[left] | combo_codes[right])
        return number

    label_counts: set[int] = set()
    for group, combo in zip(groups, group_combo):
        if combo:
            label_counts |= group.sink.labels

    per_combo: Counter[int] = Counter()
    part_sizes = [0] * PARTITIONS
    with _scratch_file(work_dir, "sorted") as keys_file, \
            _scratch_file(work_dir, "combos") as combos_file:
        for partition in range(PARTITIONS):
            merged: dict[int, int] = {}
            for group, offset, count in store.records[partition]:
                combo = group_combo[group]
                if not combo:
                    continue
                keys = dict.fromkeys(store.read(offset, count), combo)
                shared = keys.keys() & merged.keys() if merged else ()
                per_combo[combo] += len(keys) - len(shared)
                for key in shared:  # held by several lists: rare, so worth a Python step
                    before = merged[key]
                    keys[key] = join(before, combo)
                    per_combo[before] -= 1
                    per_combo[keys[key]] += 1
                if merged:
                    merged.update(keys)
                else:
                    merged = keys
            if merged:
                # Grouped by bucket is enough (lookups scan a bucket, under one key on average);
                # the top 30 bits are small ints, which CPython sorts several times faster.
                ordered = sorted(merged, key=_TOP_30_BITS)
                array("Q", ordered).tofile(keys_file)
                array("I", map(merged.__getitem__, ordered)).tofile(combos_file)
                part_sizes[partition] = len(ordered)
            if progress is not None and partition % 16 == 15:
                progress("merge", "", partition + 1, PARTITIONS)
        key_count = sum(part_sizes)
        bits = table_bits(key_count)
        typecode = "H" if len(combos) <= 0xFFFF else "I"
        with _scratch_file(work_dir, "offsets") as offsets_file, \
                _scratch_file(work_dir, "ids") as ids_file:
            _write_bucket_offsets(keys_file, part_sizes, bits, offsets_file)
            if typecode == "H":
                _narrow(combos_file, key_count, ids_file)
            else:
                ids_file = combos_file
            entries = [0] * len(lists)
            for combo, count in per_combo.items():
                holders = set(combos[combo].suffix) | set(combos[combo].exact)
                for list_index in holders:
                    entries[list_index] += count
            infos = [ListInfo(category=item.category, source=item.source, usage=item.usage,
                              entries=entries[index], networks=len(item.parsed.networks),
                              bad_lines=item.parsed.bad_lines, skipped=item.parsed.skipped)
                     for index, item in enumerate(lists)]
            labels = sorted(label_counts)
            header = make_header(lists=infos, combos=combos, networks=networks.items(),
                                 host_addresses=hosts, label_counts=labels, built_at=time.time(),
                                 inputs=inputs_id, key_count=key_count, bits=bits,
                                 combo_typecode=typecode, hash_key=store.hash_key)
            keys_file.flush()
            offsets_file.flush()
            ids_file.flush()
            write_artifact(out_path, header, [
                (keys_file, key_count * 8), (offsets_file, ((1 << bits) + 1) * 4),
                (ids_file, key_count * (2 if typecode == "H" else 4))])

    for item, info, outcome in zip(lists, infos, owners):
        category = outcome.categories.setdefault(info.category,
                                                 CategoryOutcome(info.category, info.usage))
        category.entries += info.entries
        category.networks += info.networks
        category.bad_lines += info.bad_lines
        category.skipped += info.skipped
        room = MAX_BAD_EXAMPLES - len(outcome.bad_examples)
        for number, reason in item.parsed.bad_examples[:max(room, 0)]:
            outcome.bad_examples.append((info.category, number, reason))
    return BuildResult(sources=outcomes, key_count=key_count,
                       entries=sum(info.entries for info in infos))


def _narrow(source: BinaryIO, count: int, out: BinaryIO) -> None:
    """Copy u32 combo ids as u16, in chunks."""
    source.seek(0)
    while count:
        values = array("I")
        values.fromfile(source, min(1 << 16, count))
        count -= len(values)
        array("H", values).tofile(out)


def _write_bucket_offsets(keys_file: BinaryIO, part_sizes: list[int], bits: int,
                          out: BinaryIO) -> None:
    """Where each bucket starts in the sorted keys: 2^bits + 1 u32, written partition by partition."""
    shift = 64 - bits
    per_part = 1 << (bits - PART_BITS)
    keys_file.seek(0)
    start = 0
    for partition, size in enumerate(part_sizes):
        keys = array("Q")
        if size:
            keys.fromfile(keys_file, size)
        counts = Counter(map(rshift, keys, repeat(shift)))
        first = partition * per_part
        array("I", accumulate(map(counts.get, range(first, first + per_part - 1), repeat(0)),
                              initial=start)).tofile(out)
        start += size
    array("I", [start]).tofile(out)


# ---- the worker process --------------------------------------------------------------------


def _print_progress(phase: str, source: str, done: int, total: int | None) -> None:
    print(json.dumps([phase, source, done, total]), flush=True)


def _peak_rss_kb() -> int | None:
    """This process's peak resident memory since it started (`ru_maxrss` would include what the
    parent had before exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _limit(job: dict) -> None:
    """The job's limits on this process: address space and CPU time (lists are untrusted)."""
    if job.get("memory_limit"):
        resource.setrlimit(resource.RLIMIT_AS, (job["memory_limit"], job["memory_limit"]))
    if job.get("cpu_seconds"):
        resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_seconds"], job["cpu_seconds"] + 5))


def main(argv: list[str] | None = None) -> int:
    """`python -m blocklists.build JOB.json`: build, write RESULT next to the job, exit 0."""
    parser = argparse.ArgumentParser(prog="python -m blocklists.build")
    parser.add_argument("job", type=Path)
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text())
    _limit(job)
    try:
        inputs = [SourceInput.from_json(item) for item in job["inputs"]]
        result = build(inputs, Path(job["out"]), max_bytes=job["max_bytes"],
                       work_dir=Path(job["work_dir"]),
                       progress=_print_progress if job.get("progress") else None)
    except MemoryError:
        limit = job.get("memory_limit") or 0
        print(f"the compile needed more than its {limit >> 20} MiB of memory", file=sys.stderr)
        return 3
    result.peak_rss_kb = _peak_rss_kb()
    temporary = Path(job["result"] + ".tmp")
    temporary.write_text(json.dumps(result.to_json()))
    os.replace(temporary, job["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
