"""Refreshing the lists: fetch every source, compile off the event loop, keep the result and a status.

Under `state_dir`:

- `lists.bin`: the compiled lists in force (blocklists.compiled), so a restart filters at once;
- `lists-status.json`: the last refresh, per source and category (entries, last success, last
  error), which `classguard lists status` prints and metrics read (`read_status`);
- `sources/NAME/`: each URL source's last good download (blocklists.download), so that a source
  that fails keeps its previous content while the others refresh.

A refresh whose inputs (source settings, downloads, files) are those of `lists.bin` compiles
nothing. Every compile, whatever its size, runs in a worker process (`python -m blocklists.build`)
with a memory limit (RLIMIT_AS) and a time limit: lists are untrusted input, and nothing a hostile
archive makes the compiler do can take the server's memory or its event loop. If a source that contributed to the lists in force yields nothing now (a local file gone,
a download that never succeeded), the previous lists stay in force whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from blocklists.build import BuildResult, Progress, SourceInput, SourceOutcome, fingerprint
from blocklists.bundled import STARTER_DIR, Bundled
from blocklists.compiled import ArtifactError, CompiledLists, load, read_header
from blocklists.settings import BlocklistSettings, ListSource
from common.errors import ClassguardError

if TYPE_CHECKING:
    pass



@dataclass(frozen=True, slots=True)
class _Job:
    """One refresh: the blocklists section and the state folder it works in."""

    blocklists: BlocklistSettings
    state_dir: Path


log = logging.getLogger("classguard.lists")

ARTIFACT_NAME = "lists.bin"
STATUS_NAME = "lists-status.json"
LOCK_NAME = "lists.lock"
BUILD_DIR_NAME = "build"
COMPILE_MEMORY_BYTES = 1 << 30  # the worker's address space (RLIMIT_AS); 5 M names need ~100 MB
COMPILE_SECONDS = 1800.0  # the worker is killed after this long (UT1, 5 M names: under 30 s)
QUIET_HOURS_UTC = (8, 19)  # UT1's maintainers ask that scheduled downloads avoid 08:00-19:00 GMT
RETRY_SECONDS = 60.0  # after a failed refresh, try again this soon, doubling up to the period
DOWNLOADS_AT_ONCE = 4
WORKER_COMMAND = (sys.executable, "-m", "blocklists.build")  # + the job file


class UpdateError(ClassguardError):
    """No lists could be built and none were there before."""


# ---- the report, which is also the status kept under state_dir -------------------------------


@dataclass
class CategoryStatus:
    entries: int = 0
    usage: str = "black"
    networks: int = 0
    bad_lines: int = 0
    skipped: int = 0


@dataclass
class SourceStatus:
    """One configured source (the bundled starter files count as one, `starter`)."""

    name: str
    kind: str  # url | path | inline | bundled
    location: str = ""  # the URL or path
    outcome: str = ""  # this refresh: downloaded | not_modified | read | deferred | failed
    error: str | None = None  # this refresh's error, if it failed
    using_previous: bool = False  # failed or deferred: its previous download is compiled
    last_attempt: float | None = None
    last_success: float | None = None  # last time its content was confirmed current
    last_error: str | None = None
    last_error_at: float | None = None
    content_at: float | None = None  # when the content in force was downloaded (or modified)
    deferred_until: float | None = None
    bytes: int = 0
    bad_lines: int = 0
    skipped: int = 0
    bad_examples: list[list] = field(default_factory=list)  # [category, line, reason]
    categories: dict[str, CategoryStatus] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"

    def age(self, now: float) -> float | None:
        return None if self.last_success is None else max(0.0, now - self.last_success)


@dataclass
class UpdateReport:
    sources: list[SourceStatus] = field(default_factory=list)
    checked_at: float = 0.0  # when this refresh ran
    compiled: bool = False  # this refresh built new lists (False: nothing had changed, or kept)
    compiled_at: float | None = None  # when the lists in force were built
    kept_previous: bool = False  # the refresh could not build complete lists: old ones in force
    error: str | None = None  # why, when kept_previous
    entries: int = 0  # entries of the lists in force
    compile_seconds: float | None = None
    compile_peak_rss_kb: int | None = None  # the compile worker's peak, when one ran

    @property
    def failed(self) -> list[SourceStatus]:
        return [source for source in self.sources if source.failed]

    @property
    def deferred(self) -> list[SourceStatus]:
        return [source for source in self.sources if source.outcome == "deferred"]

    def category_rows(self, now: float | None = None) -> list[dict]:
        """One row per source and category: what `lists status` prints and metrics export."""
        now = time.time() if now is None else now
        rows = []
        for source in self.sources:
            categories = source.categories or {"-": None}
            for category, counts in sorted(categories.items()):
                rows.append({
                    "source": source.name, "category": category,
                    "entries": counts.entries if counts else 0,
                    "usage": counts.usage if counts else "",
                    "age_seconds": source.age(now), "last_success": source.last_success,
                    "last_error": source.last_error, "last_error_at": source.last_error_at,
                    "failed": source.failed,
                })
        return rows

    def summary(self) -> str:
        categories = {category for source in self.sources for category in source.categories}
        text = (f"{self.entries} entries in {len(categories)} categories "
                f"from {len(self.sources)} sources")
        if self.failed:
            text += f"; {len(self.failed)} failed ({', '.join(s.name for s in self.failed)})"
        if self.deferred:
            text += f"; {len(self.deferred)} deferred ({', '.join(s.name for s in self.deferred)})"
        if self.kept_previous:
            text += "; the previous lists stay in force"
        elif not self.compiled:
            text += "; nothing changed"
        return text

    def table(self) -> str:
        """What `classguard lists update` prints."""
        rows = [["source", "category", "entries", "bad lines", "skipped"]]
        notes = []
        for source in self.sources:
            for category, counts in sorted(source.categories.items()):
                rows.append([source.name, category, f"{counts.entries}", f"{counts.bad_lines}",
                             f"{counts.skipped}"])
            if source.failed:
                kept = " (its previous download stays in use)" if source.using_previous else ""
                notes.append(f"{source.name}: FAILED: {source.error}{kept}")
                if not source.categories:
                    rows.append([source.name, "-", "FAILED", "", ""])
            elif source.outcome == "deferred":
                notes.append(f"{source.name}: deferred until {_clock(source.deferred_until)} "
                             "(its previous download stays in use)")
        for category, line, reason in (example for source in self.sources
                                       for example in source.bad_examples[:3]):
            notes.append(f"{category} line {line}: {reason}")
        if self.error:
            notes.append(self.error)
        return "\n".join([_columns(rows), *notes, self.summary()])

    def status_table(self, now: float | None = None) -> str:
        """What `classguard lists status` prints."""
        now = time.time() if now is None else now
        rows = [["source", "category", "entries", "age", "last success", "last error"]]
        for row in self.category_rows(now):
            error = "-"
            if row["last_error"]:
                error = f"{_clock(row['last_error_at'])}: {row['last_error']}"
            rows.append([row["source"], row["category"], f"{row['entries']}",
                         _duration(row["age_seconds"]), _clock(row["last_success"]), error])
        lines = [_columns(rows)]
        compiled = (f"compiled {_clock(self.compiled_at)}" if self.compiled_at
                    else "no lists compiled")
        lines.append(f"{self.entries} entries; {compiled}; last refresh {_clock(self.checked_at)}")
        if self.kept_previous:
            lines.append(f"the last refresh kept the previous lists: {self.error}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> UpdateReport:
        sources = []
        for item in data.get("sources", []):
            item = dict(item)
            categories = {name: CategoryStatus(**value)
                          for name, value in item.pop("categories", {}).items()}
            sources.append(SourceStatus(**item, categories=categories))
        data = {key: value for key, value in data.items() if key != "sources"}
        return cls(sources=sources, **data)


def _columns(rows: list[list[str]]) -> str:
    """Tab-separated, for scripts as much as for people."""
    return "\n".join("\t".join(row).rstrip("\t") for row in rows)


def _clock(moment: float | None) -> str:
    if not moment:
        return "never"
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    if minutes < 48 * 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes // (24 * 60)}d{minutes // 60 % 24:02d}h"


# ---- paths and the state on disk ----------------------------------------------------------


def artifact_path(state_dir: Path) -> Path:
    return state_dir / ARTIFACT_NAME


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_NAME


def load_compiled(state_dir: Path) -> CompiledLists | None:
    """The lists compiled by the last update, so that a restart filters at once; None if none."""
    return _read_artifact(artifact_path(state_dir), load)


def read_status(state_dir: Path) -> UpdateReport | None:
    """The report of the last refresh (`classguard lists status`), or None if there was none."""
    try:
        return UpdateReport.from_json(json.loads(status_path(state_dir).read_text()))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        if status_path(state_dir).exists():
            log.warning("%s: unreadable (%s)", status_path(state_dir), exc)
        return None


def _write_status(state_dir: Path, report: UpdateReport) -> None:
    path = status_path(state_dir)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report.to_json(), indent=1))
    os.replace(temporary, path)


def starter_sources(bundled: Bundled) -> list[ListSource]:
    return [ListSource(name="starter", format="domains", path=str(path), category=path.stem,
                       usage=bundled.categories.get(path.stem, "black"))
            for path in sorted(STARTER_DIR.glob("*.txt"))]


def configured_sources(settings: BlocklistSettings, bundled: Bundled) -> list[ListSource]:
    return (starter_sources(bundled) if settings.bundled else []) + list(settings.sources)


# ---- scheduling ----------------------------------------------------------------------------


def quiet_until(now: float) -> float | None:
    """The end of UT1's quiet hours (19:00 UTC) if `now` is inside them, else None."""
    moment = datetime.fromtimestamp(now, timezone.utc)
    start, end = QUIET_HOURS_UTC
    if start <= moment.hour < end:
        return moment.replace(hour=end, minute=0, second=0, microsecond=0).timestamp()
    return None


def retry_delay(period: float, failures: int) -> float:
    """After `failures` failed refreshes in a row: 1, 2, 4... minutes, never beyond the period."""
    return min(period, RETRY_SECONDS * 2 ** max(0, failures - 1))


def refresh_delay(report: UpdateReport | None, period: float, *, failures: int = 0,
                  now: float | None = None) -> float:
    """Seconds until the next scheduled refresh after `report` (0 if there is none)."""
    now = time.time() if now is None else now
    if report is None:
        return 0.0
    due = report.checked_at + period
    if failures or report.failed:
        due = min(due, report.checked_at + retry_delay(period, max(failures, 1)))
    for source in report.deferred:
        if source.deferred_until:
            due = min(due, source.deferred_until)
    return max(0.0, due - now)


def first_refresh_delay(settings: BlocklistSettings, state_dir: Path, bundled: Bundled, *,
                        now: float | None = None) -> float:
    """At startup with lists on disk: when the next refresh is due (at once if sources changed)."""
    report = read_status(state_dir)
    if report is None:
        return 0.0
    names = {source.name for source in configured_sources(settings, bundled)}
    if names != {source.name for source in report.sources}:
        return 0.0
    return refresh_delay(report, settings.refresh, now=now)


# ---- progress on a terminal ----------------------------------------------------------------


class TerminalProgress:
    """One line, rewritten in place: downloads in MB, names read, then the merge.

    Log records written to the same stream meanwhile clear the line first, so they stay whole.
    """

    def __init__(self, stream: TextIO, interval: float = 0.2) -> None:
        self._stream = stream
        self._interval = interval
        self._last = 0.0
        self._shown = False
        self._handlers = [handler for handler in logging.getLogger().handlers
                          if getattr(handler, "stream", None) is stream]
        for handler in self._handlers:
            handler.addFilter(self._before_log)

    def _before_log(self, record: logging.LogRecord) -> bool:
        self._clear()
        return True

    def __call__(self, phase: str, source: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if now - self._last < self._interval and not final:
            return
        self._last = now
        if phase == "download":
            text = f"{source}: downloading {done / 1e6:.1f} MB"
            if total:
                text += f" of {total / 1e6:.1f} MB"
        elif phase == "parse":
            text = f"compiling: {done:,} names read ({source})"
        elif phase == "merge":
            text = f"compiling: merging {100 * done // max(total or 1, 1)} %"
        else:
            text = f"{phase} {source}"
        self._stream.write("\r\033[K" + text)
        self._stream.flush()
        self._shown = True

    def _clear(self) -> None:
        if self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()
            self._shown = False

    def close(self) -> None:
        self._clear()
        for handler in self._handlers:
            handler.removeFilter(self._before_log)


# ---- the refresh ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _locked(state_dir: Path) -> AsyncIterator[None]:
    """One refresh at a time per state_dir (a `lists update` while the server refreshes waits)."""
    descriptor = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.2)
        yield
    finally:
        os.close(descriptor)


async def update_lists(
    settings: BlocklistSettings,
    state_dir: Path,
    bundled: Bundled,
    *,
    scheduled: bool = False,
    current: CompiledLists | None = None,
    progress: Progress | None = None,
    now: float | None = None,
) -> tuple[CompiledLists, UpdateReport]:
    """Fetch and compile now; returns the lists in force and what happened.

    `scheduled`: a periodic refresh, so downloads from UT1's own server wait for the end of its
    quiet hours (a source with no download yet is fetched at once all the same). `current`: the
    lists the caller serves; returned as they are when nothing changed, instead of a second copy.
    `now`: the wall clock (tests set it).
    """
    job = _Job(settings, Path(state_dir))
    state_dir = job.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    async with _locked(state_dir):
        return await _update(job, bundled, scheduled=scheduled, current=current,
                             progress=progress, now=time.time() if now is None else now)


@dataclass
class _Planned:
    """One source in this refresh: its status, and what the compiler reads for it."""

    source: ListSource
    status: SourceStatus
    download: download.Download | None = None
    input: SourceInput | None = None  # None: nothing to read (a download failed, none before)


async def _update(job: _Job, bundled: Bundled, *, scheduled: bool,
                  current: CompiledLists | None, progress: Progress | None, now: float
                  ) -> tuple[CompiledLists, UpdateReport]:
    state_dir = job.state_dir
    previous = read_status(state_dir)
    planned = [_Planned(source, _start_status(source, previous, now))
               for source in configured_sources(job.blocklists, bundled)]
    await _download_all(job, planned, scheduled=scheduled, now=now, progress=progress)
    for item in planned:
        _plan_input(item)
    inputs = [item.input for item in planned if item.input is not None]

    report = UpdateReport(checked_at=now)
    path = artifact_path(state_dir)
    header = _read_artifact(path, read_header)
    lists = None
    if header is not None and header.get("inputs", {}).get("fingerprint") == fingerprint(inputs):
        lists = _same_or_load(current, path, header)
    if lists is not None:  # the inputs are those of the lists in force: nothing to compile
        for item in planned:
            _finish_download(item, used=0)
        report.sources = _merge_by_name([item.status for item in planned])
        for status in report.sources:
            _carry_forward(status, previous)
    else:
        lists = await _compile(job, planned, inputs, header, report, previous, current,
                               progress)
    for status in report.sources:
        if status.failed:
            status.last_error, status.last_error_at = status.error, now
            log.error("list source failed: %s%s", status.error,
                      "; its previous download stays in use" if status.using_previous else "")
        elif status.outcome != "deferred" and not report.kept_previous:
            status.last_success = now
    report.compiled_at = lists.built_at
    report.entries = lists.entry_count
    _write_status(state_dir, report)
    log.info("lists: %s", report.summary())
    return lists, report


def _start_status(source: ListSource, previous: UpdateReport | None, now: float) -> SourceStatus:
    kind = ("bundled" if source.path and Path(source.path).parent == STARTER_DIR
            else "url" if source.url else "path" if source.path else "inline")
    status = SourceStatus(source.name, kind, source.url or source.path or "", last_attempt=now)
    before = _find(previous, source.name)
    if before is not None and before.kind == status.kind:
        status.last_success = before.last_success
        status.last_error = before.last_error
        status.last_error_at = before.last_error_at
        status.content_at = before.content_at
    return status


def _find(report: UpdateReport | None, name: str) -> SourceStatus | None:
    if report is None:
        return None
    return next((source for source in report.sources if source.name == name), None)


async def _download_all(job: _Job, planned: list[_Planned], *, scheduled: bool, now: float,
                        progress: Progress | None) -> None:
    settings = job.blocklists
    remote = [item for item in planned if item.source.url]
    if not remote:
        return
    import aiohttp  # lazy: a server whose lists are all files never loads the HTTP client

    from blocklists import download  # lazy: it loads aiohttp

    limit = asyncio.Semaphore(DOWNLOADS_AT_ONCE)

    def on_bytes(name: str, done: int, total: int | None) -> None:
        if progress is not None:
            progress("download", name, done, total)

    async def one(item: _Planned, session: aiohttp.ClientSession) -> None:
        source = item.source
        folder = download.source_dir(job.state_dir, source)
        kept = download.kept_body(folder, source)
        until = quiet_until(now) if scheduled and download.is_ut1_home(source) else None
        if until is not None and kept is not None:
            item.download = download.Download(source.name, "deferred", kept=kept)
            item.status.deferred_until = until
            return
        async with limit:
            item.download = await download.refresh(
                source, folder, session, timeout=settings.download_timeout,
                max_bytes=settings.max_download_bytes, progress=on_bytes)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(item, session) for item in remote))


def _plan_input(item: _Planned) -> None:
    source, status = item.source, item.status
    if not source.url:
        status.outcome = "read"
        if source.path:
            item.input = SourceInput(source, [source.path],
                                     [_token(source, _path_identity(Path(source.path)))])
        else:
            item.input = SourceInput(source, [], [_token(source, "inline")])
        return
    from blocklists import download  # lazy: it loads aiohttp, only for a source with a URL

    fetched = item.download
    assert fetched is not None
    status.outcome = fetched.status
    if fetched.status == "failed":
        status.error = fetched.error
    status.using_previous = fetched.status in ("failed", "deferred") and fetched.kept is not None
    if fetched.candidates:
        identities = []
        for candidate in fetched.candidates:
            meta = fetched.meta if candidate == fetched.new else download.read_meta(
                candidate.parent)
            identities.append(_token(source, f"md5:{(meta or {}).get('md5')}:"
                                             f"{(meta or {}).get('size')}"))
        item.input = SourceInput(source, [str(path) for path in fetched.candidates], identities)


def _token(source: ListSource, content: str) -> str:
    """Changes when the source's settings or its content change."""
    settings = json.dumps(dataclasses.asdict(source), sort_keys=True)
    return hashlib.sha256(f"classguard lists 2\n{settings}\n{content}".encode()).hexdigest()[:32]


def _path_identity(path: Path) -> str:
    """Changes when the file, or any file in the folder, changes (size and modification time)."""
    try:
        if path.is_dir():
            digest = hashlib.sha256()
            for item in sorted(path.rglob("*")):
                info = item.stat()
                digest.update(f"{item.relative_to(path)}:{info.st_size}:{info.st_mtime_ns}\n"
                              .encode("utf-8", "surrogateescape"))
            return f"dir:{digest.hexdigest()}"
        info = path.stat()
        return f"file:{info.st_size}:{info.st_mtime_ns}"
    except OSError as exc:
        return f"unreadable:{exc.errno}"


def _read_artifact(path: Path, read):
    """`read(path)` of the compiled lists' file; None when there is none or it is damaged."""
    if not path.exists():
        return None
    try:
        return read(path)
    except ArtifactError as exc:
        log.warning("%s; the lists will be compiled again", exc)
        return None


def _same_or_load(current: CompiledLists | None, path: Path, header: dict
                  ) -> CompiledLists | None:
    """The lists of `path`: `current` itself if it is them, else mapped from the file."""
    wanted = header.get("inputs", {}).get("fingerprint")
    if current is not None and current.inputs.get("fingerprint") == wanted \
            and current.built_at == header.get("built_at"):
        return current
    try:
        return load(path)
    except ArtifactError as exc:
        log.warning("%s; the lists will be compiled again", exc)
        return None


def _carry_forward(status: SourceStatus, previous: UpdateReport | None) -> None:
    """Nothing was compiled: the counts are those of the last compile."""
    before = _find(previous, status.name)
    if before is not None:
        status.categories = before.categories
        status.bad_lines, status.skipped = before.bad_lines, before.skipped
        status.bad_examples = before.bad_examples


async def _compile(job: _Job, planned: list[_Planned], inputs: list[SourceInput],
                   header: dict | None, report: UpdateReport, previous: UpdateReport | None,
                   current: CompiledLists | None, progress: Progress | None) -> CompiledLists:
    state_dir = job.state_dir
    work_dir = state_dir / BUILD_DIR_NAME
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    fresh = state_dir / (ARTIFACT_NAME + ".new")
    max_bytes = job.blocklists.max_download_bytes
    try:
        result = await _build_in_worker(inputs, fresh, max_bytes, work_dir, progress)
    except BuildFailed as exc:
        for item in planned:
            _finish_download(item, used=None)
        report.sources = _merge_by_name([item.status for item in planned])
        return _keep_previous(job, report, previous, current, header, str(exc))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    outcomes = iter(result.sources)
    for item in planned:
        _apply_outcome(item, next(outcomes) if item.input is not None else None)
    report.sources = _merge_by_name([item.status for item in planned])
    had_lists = {info["source"] for info in header["lists"]} if header else set()
    lost = sorted({item.source.name for item in planned
                   if item.status.failed and not item.status.using_previous
                   and item.source.name in had_lists})
    if lost and header is not None:
        fresh.unlink(missing_ok=True)
        return _keep_previous(job, report, previous, current, header,
                              f"{', '.join(lost)} gave nothing this time")
    if planned and header is None and all(item.status.failed for item in planned):
        fresh.unlink(missing_ok=True)
        _write_status(state_dir, report)
        raise UpdateError("no list source could be read: "
                          + "; ".join(s.error or s.name for s in report.failed))
    os.replace(fresh, artifact_path(state_dir))
    report.compiled = True
    report.compile_seconds = result.seconds
    report.compile_peak_rss_kb = result.peak_rss_kb
    return load(artifact_path(state_dir))


def _keep_previous(job: _Job, report: UpdateReport, previous: UpdateReport | None,
                   current: CompiledLists | None, header: dict | None, why: str
                   ) -> CompiledLists:
    """The refresh cannot give complete lists: those in force stay, and the status says so."""
    report.kept_previous = True
    report.error = f"{why}; the previous lists stay in force"
    log.error("list refresh: %s", report.error)
    lists = _same_or_load(current, artifact_path(job.state_dir), header) if header else None
    if lists is None:
        _write_status(job.state_dir, report)
        raise UpdateError(why)
    for status in report.sources:
        _carry_forward(status, previous)
        status.using_previous = True
    return lists


def _apply_outcome(item: _Planned, outcome: SourceOutcome | None) -> None:
    status = item.status
    if outcome is None:  # nothing to read: a download that failed, with none before it
        status.outcome = "failed"
        status.error = status.error or "nothing to read"
        _finish_download(item, used=None)
        return
    if outcome.ok:
        status.categories = {name: CategoryStatus(c.entries, c.usage, c.networks, c.bad_lines,
                                                  c.skipped)
                             for name, c in outcome.categories.items()}
        status.bad_lines = sum(c.bad_lines for c in status.categories.values())
        status.skipped = sum(c.skipped for c in status.categories.values())
        status.bad_examples = [list(example) for example in outcome.bad_examples]
        for warning in outcome.warnings:
            log.warning("%s", warning)
    fetched = item.download
    fresh_failed = fetched is not None and fetched.new is not None and outcome.used != 0
    if not outcome.ok or fresh_failed:
        status.outcome = "failed"
        status.error = outcome.errors[0] if outcome.errors else status.error
        status.using_previous = outcome.ok
    _finish_download(item, used=outcome.used if outcome.ok else None)


def _finish_download(item: _Planned, used: int | None) -> None:
    """Promote a fresh download that compiled, drop one that did not; note the content's age."""
    fetched = item.download
    status = item.status
    if fetched is None:
        if item.source.path:
            with contextlib.suppress(OSError):
                status.content_at = Path(item.source.path).stat().st_mtime
        return
    folder = next((path.parent for path in (fetched.kept, fetched.new) if path), None)
    if folder is None:
        return
    from blocklists import download  # lazy: it loads aiohttp, only for a source with a URL

    if fetched.new is not None and used == 0:
        download.promote(folder, fetched)
    else:
        download.discard(fetched)
        if fetched.status == "not_modified":
            download.confirm(folder, status.last_attempt or time.time())
    meta = download.read_meta(folder)
    if meta:
        status.content_at = meta.get("fetched_at")
        status.bytes = meta.get("size") or 0


def _merge_by_name(statuses: list[SourceStatus]) -> list[SourceStatus]:
    """The starter files are one source per file but one `starter` in reports."""
    merged: dict[str, SourceStatus] = {}
    for status in statuses:
        into = merged.get(status.name)
        if into is None:
            merged[status.name] = status
            continue
        into.categories.update(status.categories)
        into.bad_lines += status.bad_lines
        into.skipped += status.skipped
        into.bad_examples.extend(status.bad_examples)
        if status.failed and not into.failed:
            into.outcome, into.error = status.outcome, status.error
            into.using_previous = status.using_previous
    return list(merged.values())


class BuildFailed(ClassguardError):
    """The compile itself failed (the worker crashed or was killed, or a file could not be
    written); no source is to blame."""


async def _build_in_worker(inputs: list[SourceInput], out: Path, max_bytes: int, work_dir: Path,
                           progress: Progress | None) -> BuildResult:
    """In a separate process, which the event loop only waits for, within its limits."""
    job_path = work_dir / "job.json"
    result_path = work_dir / "result.json"
    seconds = COMPILE_SECONDS
    job_path.write_text(json.dumps({
        "inputs": [item.to_json() for item in inputs], "out": str(out), "max_bytes": max_bytes,
        "work_dir": str(work_dir), "result": str(result_path), "progress": progress is not None,
        "memory_limit": COMPILE_MEMORY_BYTES, "cpu_seconds": int(seconds) + 1,
    }))
    process = await asyncio.create_subprocess_exec(
        *WORKER_COMMAND, str(job_path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    errors = asyncio.ensure_future(process.stderr.read())  # type: ignore[union-attr]

    async def follow() -> int:
        async for line in process.stdout:  # type: ignore[union-attr]
            if progress is not None:
                with contextlib.suppress(ValueError, TypeError):
                    progress(*json.loads(line))
        return await process.wait()

    try:
        try:
            code = await asyncio.wait_for(follow(), seconds)
        except TimeoutError:
            raise BuildFailed(f"the list compiler took longer than {seconds:g} s and was "
                              "stopped") from None
        stderr = await errors
    finally:
        errors.cancel()
        if process.returncode is None:
            process.kill()
            await process.wait()
    if code != 0 or not result_path.exists():
        last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise BuildFailed(f"the list compiler failed (exit status {code}): {last[0]}")
    return BuildResult.from_json(json.loads(result_path.read_text()))
