"""Fetching every configured source, compiling them into one table, keeping it under state_dir."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from blocklists.bundled import STARTER_DIR, Bundled
from blocklists.compiled import ArtifactError, CompiledLists, Compiler, ListInfo, load
from blocklists.sources import CategoryList, SourceError, fetch_source
from resolver.config import Config, ListSource

log = logging.getLogger("classguard.lists")

ARTIFACT_NAME = "lists.bin"


class UpdateError(Exception):
    """No lists could be built and none were there before."""


@dataclass
class SourceReport:
    name: str
    categories: dict[str, int] = field(default_factory=dict)  # category -> entries
    bad_lines: int = 0
    skipped: int = 0
    error: str | None = None


@dataclass
class UpdateReport:
    sources: list[SourceReport] = field(default_factory=list)
    kept_previous: bool = False

    @property
    def failed(self) -> list[SourceReport]:
        return [source for source in self.sources if source.error]

    def summary(self) -> str:
        entries = sum(sum(source.categories.values()) for source in self.sources)
        categories = {category for source in self.sources for category in source.categories}
        text = f"{entries} entries in {len(categories)} categories from {len(self.sources)} sources"
        if self.failed:
            text += f"; {len(self.failed)} failed ({', '.join(s.name for s in self.failed)})"
        if self.kept_previous:
            text += "; the previous lists stay in force"
        return text

    def table(self) -> str:
        rows = ["source\tcategory\tentries\tbad lines\tskipped"]
        for source in self.sources:
            if source.error:
                rows.append(f"{source.name}\t-\tFAILED: {source.error}")
                continue
            for category, count in sorted(source.categories.items()):
                rows.append(f"{source.name}\t{category}\t{count}\t{source.bad_lines}\t{source.skipped}")
        rows.append(self.summary())
        return "\n".join(rows)


def artifact_path(state_dir: Path) -> Path:
    return state_dir / ARTIFACT_NAME


def load_compiled(state_dir: Path) -> CompiledLists | None:
    """The lists compiled by the last update, so that a restart filters at once; None if none."""
    path = artifact_path(state_dir)
    if not path.exists():
        return None
    try:
        return load(path)
    except ArtifactError as exc:
        log.warning("%s; the lists will be compiled again", exc)
        return None


def starter_sources(bundled: Bundled) -> list[ListSource]:
    return [ListSource(name="starter", format="domains", path=str(path), category=path.stem,
                       usage=bundled.categories.get(path.stem, "black"))
            for path in sorted(STARTER_DIR.glob("*.txt"))]


def compile_lists(fetched: list[CategoryList]) -> CompiledLists:
    """CPU-heavy: callers run it off the event loop."""
    expected = sum(len(item.parsed.suffix) + len(item.parsed.exact) for item in fetched)
    compiler = Compiler(expected)
    for item in fetched:
        parsed = item.parsed
        compiler.add_list(
            ListInfo(category=item.category, source=item.source, usage=item.usage,
                     entries=len(parsed.suffix) + len(parsed.exact), networks=len(parsed.networks),
                     bad_lines=parsed.bad_lines, skipped=parsed.skipped),
            suffix=parsed.suffix, exact=parsed.exact, except_suffix=parsed.except_suffix,
            except_exact=parsed.except_exact, networks=parsed.networks)
    return compiler.finish()


async def update_lists(config: Config, bundled: Bundled) -> tuple[CompiledLists, UpdateReport]:
    """Fetch and compile now. A failed source keeps the previous compiled lists in force."""
    settings = config.blocklists
    sources = (starter_sources(bundled) if settings.bundled else []) + list(settings.sources)
    report = UpdateReport()
    fetched: list[CategoryList] = []
    async with aiohttp.ClientSession() as session:
        for source in sources:
            entry = _report_for(report, source.name)
            try:
                results = await fetch_source(source, base_dir=Path("."), session=session,
                                             timeout=settings.download_timeout,
                                             max_bytes=settings.max_download_bytes)
            except SourceError as exc:
                entry.error = str(exc)
                log.error("list source failed: %s", exc)
                continue
            for item in results:
                entry.categories[item.category] = (entry.categories.get(item.category, 0)
                                                   + len(item.parsed.suffix) + len(item.parsed.exact))
                entry.bad_lines += item.parsed.bad_lines
                entry.skipped += item.parsed.skipped
                for number, reason in item.parsed.bad_examples[:3]:
                    log.warning("%s/%s line %d: %s", source.name, item.category, number, reason)
            fetched.extend(results)
    loop = asyncio.get_running_loop()
    if report.failed:
        previous = await loop.run_in_executor(None, load_compiled, config.state_dir)
        if previous is not None:
            report.kept_previous = True
            return previous, report
        if not fetched:
            raise UpdateError(report.summary())
    lists = await loop.run_in_executor(None, compile_lists, fetched)
    await loop.run_in_executor(None, lists.save, artifact_path(config.state_dir))
    return lists, report


def _report_for(report: UpdateReport, name: str) -> SourceReport:
    for entry in report.sources:
        if entry.name == name:
            return entry
    entry = SourceReport(name)
    report.sources.append(entry)
    return entry
