"""Reading list sources (files, folders, archives, inline entries) into parsed categories.

Archives are untrusted input: read as a stream, member paths that are absolute or climb out with
`..` are skipped, links are resolved inside the archive (UT1 ships `porn -> adult`) or skipped,
and the uncompressed size is capped. Downloads are blocklists.download's; this module reads what
is on disk, and is light enough to import in the compile worker.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import io
import itertools
import logging
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from blocklists.formats import (
    FORMATS, MATCH_MODES, MAX_LINE_CHARS, OVERLONG_LINE, OVERLONG_LINES, ParsedList, parse_lines,
    parse_text,
)
from common.errors import ClassguardError

if TYPE_CHECKING:  # the compile worker reads sources without importing the config machinery
    from blocklists.settings import ListSource

log = logging.getLogger(__name__)

USAGES = ("black", "white")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_TAR_MAGIC = b"ustar"  # POSIX tar header magic, at this offset in the first block
_TAR_MAGIC_OFFSET = 257
_DOWNLOAD_CHUNK_BYTES = 64 * 1024
_TEXT_CHUNK_CHARS = 1 << 18  # about 12,000 names
_UT1_FILES = ("domains", "urls", "usage")
_MAX_LINK_HOPS = 8  # links to links are followed this deep; loops simply stop producing names
# UT1 ships a handful of linked categories (porn -> adult), each a few files: an archive that
# reaches more files than this through its links is refused (a "link bomb" of `x -> .` loops).
MAX_LINK_ALIASES = 4096
_UT1_MAX_PARTS = 3  # blacklists/<category>/<file>: deeper paths are never a category's file
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)

UT1Content = ParsedList | int | str  # per file: domains parsed, urls skipped count, usage
NewList = Callable[[], ParsedList]  # a fresh ParsedList: sets, or key sinks when compiling


@dataclass
class CategoryList:
    category: str
    usage: str  # "black" or "white": the category's default use in a policy
    source: str  # the source's name
    parsed: ParsedList  # categories linked to another (UT1 porn -> adult) share its sets


class SourceError(ClassguardError):
    """A list source that could not be read; the message is one line naming the source."""


class _NotAList(Exception):
    """A file mostly made of lines that are no list entries (an HTML page, metrics)."""


# A file is refused whole when at least this many of its lines are bad and they outnumber the
# good ones: a web page or a metrics endpoint served instead of the list (a wrong URL, a captive
# portal, a redirect) must not pass as a list with a few lucky lines.
NOT_A_LIST_MIN_BAD = 3


def check_source(source: ListSource) -> None:
    """Raise SourceError when the source's settings cannot work (the config check does as much)."""
    _check_source(source)
    given = [kind for kind in ("url", "path", "domains") if getattr(source, kind)]
    if len(given) != 1:
        raise SourceError(f"{_label(source)}: set exactly one of url, path or domains")


def read_inline(source: ListSource, new_list: NewList = ParsedList) -> list[CategoryList]:
    """A source whose entries are in the configuration itself."""
    check_source(source)
    parsed = parse_lines(source.domains, "domains", match=source.match, into=new_list())
    return [_category_list(source, parsed)]


def read_source_file(
    source: ListSource, path: Path, max_bytes: int, *, new_list: NewList = ParsedList,
    shown_as: str | None = None,
) -> list[CategoryList]:
    """Parse a file, folder or tar archive (optionally compressed) holding the source's lists.

    `path` is the source's own file, or its download kept under state_dir; `shown_as` names it in
    errors (the URL of a download).
    """
    _check_source(source)
    shown_as = shown_as or path.name
    if not path.exists():
        raise SourceError(f"{_label(source)}: {path} does not exist")
    budget = _ByteBudget(source, max_bytes)
    try:
        if path.is_dir():
            if source.format == "ut1":
                return _read_ut1_directory(source, path, budget, new_list)
            return [_category_list(source, _read_plain_directory(source, path, budget, new_list))]
        with contextlib.ExitStack() as stack:
            reader = _open_decompressed(path, budget, stack)
            if _is_tar(path, reader):
                archive = stack.enter_context(tarfile.open(fileobj=reader, mode="r|"))
                if source.format == "ut1":
                    return _read_ut1_archive(source, archive, new_list)
                return [_category_list(source, _read_plain_archive(source, archive, new_list))]
            if source.format == "ut1":
                raise SourceError(
                    f"{_label(source)}: {shown_as} is neither a tar archive nor a folder"
                )
            parsed = new_list()
            _parse_stream(reader, source.format, source.match, parsed)
            return [_category_list(source, parsed)]
    except _READ_ERRORS as error:
        raise SourceError(f"{_label(source)}: cannot read {shown_as}: {error}") from error
    except _NotAList as error:
        raise SourceError(f"{_label(source)}: {shown_as} is not a list in the {source.format} "
                          f"format ({error}); none of it is used") from None


def _label(source: ListSource) -> str:
    return f"list source {source.name!r}"


def _check_source(source: ListSource) -> None:
    if source.format not in FORMATS:
        raise SourceError(
            f"{_label(source)}: unknown format {source.format!r} "
            f"(expected one of {', '.join(FORMATS)})"
        )
    if source.match not in MATCH_MODES:
        raise SourceError(f"{_label(source)}: unknown match {source.match!r}")
    if source.usage is not None and source.usage not in USAGES:
        raise SourceError(f"{_label(source)}: usage must be black or white, not {source.usage!r}")
    if (source.format != "ut1" or source.domains) and not source.category:
        raise SourceError(f"{_label(source)}: a {source.format} source needs a category")


def _category_list(source: ListSource, parsed: ParsedList) -> CategoryList:
    assert source.category  # checked by _check_source
    return CategoryList(source.category, source.usage or "black", source.name, parsed)


# ---- reading bytes safely ----------------------------------------------------------------


class _ByteBudget:
    """Uncompressed bytes read so far for one source, against its cap (a gzip bomb stops here)."""

    def __init__(self, source: ListSource, max_bytes: int) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self.used = 0

    def spend(self, count: int) -> None:
        self.used += count
        if self.used > self.max_bytes:
            raise SourceError(
                f"{_label(self.source)}: more than {self.max_bytes} bytes once uncompressed"
            )


class _PlainReader(io.RawIOBase):
    """Reads through to another stream, counting against a budget when given one.

    It also hides what a tar stream member cannot do (TextIOWrapper asks it for seekable()).
    """

    def __init__(self, inner: BinaryIO, budget: _ByteBudget | None = None) -> None:
        self._inner = inner
        self._budget = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = self._inner.readinto(buffer) or 0  # type: ignore[attr-defined]
        if self._budget is not None:
            self._budget.spend(count)
        return count


def _open_decompressed(
    path: Path, budget: _ByteBudget, stack: contextlib.ExitStack
) -> io.BufferedReader:
    raw = stack.enter_context(open(path, "rb"))
    magic = raw.read(6)
    raw.seek(0)
    inner: BinaryIO = raw
    if magic.startswith(b"\x1f\x8b"):
        inner = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    elif magic.startswith(b"BZh"):
        inner = stack.enter_context(bz2.BZ2File(raw, mode="rb"))
    elif magic.startswith(b"\xfd7zXZ\x00"):
        inner = stack.enter_context(lzma.LZMAFile(raw, mode="rb"))
    return stack.enter_context(_budgeted_stream(inner, budget))


def _budgeted_stream(inner: BinaryIO, budget: _ByteBudget | None) -> io.BufferedReader:
    return io.BufferedReader(_PlainReader(inner, budget), buffer_size=_DOWNLOAD_CHUNK_BYTES)


def _is_tar(path: Path, reader: io.BufferedReader) -> bool:
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return True
    head = reader.peek(_TAR_MAGIC_OFFSET + len(_TAR_MAGIC))
    return head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + len(_TAR_MAGIC)] == _TAR_MAGIC


def _text_lines(stream: BinaryIO) -> io.TextIOWrapper:
    # Lists are UTF-8 in practice; a stray byte spoils only its own line, counted as bad.
    return io.TextIOWrapper(
        _budgeted_stream(stream, None), encoding="utf-8-sig", errors="replace"
    )


def _parse_stream(stream: BinaryIO, fmt: str, match: str, into: ParsedList) -> None:
    """Parse one file into `into`; _NotAList when it is a web page or mostly not list lines."""
    before_bad, before_good = into.bad_lines, _entries(into)
    examples = len(into.bad_examples)
    with _text_lines(stream) as text:
        chunks = _chunks(text)
        first = next(chunks, "")
        if first.lstrip()[:1] == "<":
            raise _NotAList("it begins with '<', like an HTML or XML page")
        parse_text(itertools.chain((first,), chunks), fmt, match=match, into=into)
    bad, good = into.bad_lines - before_bad, _entries(into) - before_good
    if bad >= NOT_A_LIST_MIN_BAD and bad > good:
        example = into.bad_examples[examples:examples + 1]
        where = f"; line {example[0][0]}: {example[0][1]}" if example else ""
        raise _NotAList(f"{bad} bad lines for {good} entries{where}")


def _entries(parsed: ParsedList) -> int:
    """Names, exceptions and networks added so far (a key sink counts repeated names again)."""
    return (len(parsed.suffix) + len(parsed.exact) + len(parsed.except_suffix)
            + len(parsed.except_exact) + len(parsed.networks))


def _chunks(text: io.TextIOWrapper) -> Iterator[str]:
    """The text in pieces of whole lines, each without its last newline (universal newlines).

    Linear whatever the line lengths: a line longer than MAX_LINE_CHARS is never held whole (what
    is carried from one block to the next stays under that length) and comes out as OVERLONG_LINE,
    which the parsers count as a bad line.
    """
    rest = ""
    skipping = False  # inside a line already known to be too long: dropped up to its newline
    while block := text.read(_TEXT_CHUNK_CHARS):
        if skipping:
            end = block.find("\n")
            if end < 0:
                continue
            block, rest, skipping = block[end:], OVERLONG_LINE, False
        cut = block.rfind("\n")
        if cut < 0:
            rest += block  # under MAX_LINE_CHARS + one block: bounded work per block
            if len(rest) > MAX_LINE_CHARS:
                rest, skipping = "", True
            continue
        piece = rest + block[:cut]
        rest = block[cut + 1:]
        if len(rest) > MAX_LINE_CHARS:
            rest, skipping = "", True
        yield OVERLONG_LINES.sub(OVERLONG_LINE, piece)
    if skipping:
        yield OVERLONG_LINE
    elif rest:
        yield OVERLONG_LINES.sub(OVERLONG_LINE, rest)


def _stream_lines(stream: BinaryIO) -> Iterator[str]:
    with _text_lines(stream) as text:
        for chunk in _chunks(text):
            yield from chunk.split("\n")


def _count_entries(stream: BinaryIO) -> int:
    return sum(1 for line in _stream_lines(stream)
               if (text := line.strip()) and not text.startswith("#"))


def _read_usage(stream: BinaryIO) -> str:
    words = {line.strip().lower() for line in _stream_lines(stream)}
    # A category marked both ways is the admin's choice in the policy; blocking is the default.
    return "white" if "white" in words and "black" not in words else "black"


def _inside(root: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _warn_unsafe(source: ListSource, count: int) -> None:
    if count:
        log.warning(
            "%s: skipped %d archive member(s) or link(s) with an absolute path, a '..' "
            "component or a target outside the list",
            _label(source),
            count,
        )


# ---- folders -----------------------------------------------------------------------------


def _read_plain_directory(
    source: ListSource, folder: Path, budget: _ByteBudget, new_list: NewList
) -> ParsedList:
    root = folder.resolve()
    merged = new_list()
    escaping = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if not _inside(root, path):
            escaping += 1
            continue
        with contextlib.ExitStack() as stack:
            reader = _open_decompressed(path, budget, stack)
            merged.origin = str(path.relative_to(folder))
            _parse_stream(reader, source.format, source.match, merged)
    merged.origin = ""
    _warn_unsafe(source, escaping)
    return merged


def _read_ut1_directory(
    source: ListSource, folder: Path, budget: _ByteBudget, new_list: NewList
) -> list[CategoryList]:
    if (folder / "blacklists").is_dir():
        folder = folder / "blacklists"
    root = folder.resolve()
    files: dict[str, UT1Content] = {}
    # A linked category shares its target's parse rather than parsing the same file again.
    by_real_path: dict[tuple[Path, str], UT1Content] = {}
    escaping = 0
    for category_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not _inside(root, category_dir):
            escaping += 1
            continue
        for file_name in _UT1_FILES:
            path = category_dir / file_name
            if not path.is_file():
                continue
            if not _inside(root, path):
                escaping += 1
                continue
            key = (path.resolve(), file_name)
            if key not in by_real_path:
                with contextlib.ExitStack() as stack:
                    reader = stack.enter_context(open(key[0], "rb"))
                    stream = stack.enter_context(_budgeted_stream(reader, budget))
                    by_real_path[key] = _read_ut1_file(file_name, stream, new_list)
            files[f"{category_dir.name}/{file_name}"] = by_real_path[key]
    _warn_unsafe(source, escaping)
    return _ut1_categories(source, files, new_list)


# ---- archives ----------------------------------------------------------------------------


def _safe_member_path(name: str) -> str | None:
    """The member's normalised relative path, or None when it is absolute or climbs out."""
    if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
        return None
    return posixpath.normpath(name)  # "./blacklists/adult/" -> "blacklists/adult"


def _link_target(path: str, member: tarfile.TarInfo) -> str | None:
    """Where a link points, as an archive path, or None when it leaves the archive."""
    if member.linkname.startswith("/"):
        return None
    # A symbolic link is relative to its own folder; a hard link names an archive path.
    base = posixpath.dirname(path) if member.issym() else ""
    target = posixpath.normpath(posixpath.join(base, member.linkname))
    return None if target == ".." or target.startswith("../") else target


def _safe_members(
    source: ListSource, archive: tarfile.TarFile, links: list[tuple[str, str]]
) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """Regular files with safe paths, in archive order; safe links are collected in `links`."""
    unsafe = 0
    for member in archive:
        path = _safe_member_path(member.name)
        if path is None:
            unsafe += 1
        elif member.issym() or member.islnk():
            target = _link_target(path, member)
            if target is None:
                unsafe += 1
            else:
                links.append((path, target))
        elif member.isfile():
            yield path, member
    _warn_unsafe(source, unsafe)


def _read_plain_archive(
    source: ListSource, archive: tarfile.TarFile, new_list: NewList
) -> ParsedList:
    merged = new_list()
    ignored_links: list[tuple[str, str]] = []  # their targets are read as members anyway
    for path, member in _safe_members(source, archive, ignored_links):
        stream = archive.extractfile(member)
        if stream is not None:
            merged.origin = path
            _parse_stream(stream, source.format, source.match, merged)
    merged.origin = ""
    return merged


def _read_ut1_archive(
    source: ListSource, archive: tarfile.TarFile, new_list: NewList
) -> list[CategoryList]:
    files: dict[str, UT1Content] = {}
    links: list[tuple[str, str]] = []
    for path, member in _safe_members(source, archive, links):
        parts = path.split("/")
        # blacklists/<category>/<file>, or <category>/<file> when the top folder is absent.
        if parts[-1] in _UT1_FILES and 2 <= len(parts) <= 3:
            stream = archive.extractfile(member)
            if stream is not None:
                files[path] = _read_ut1_file(parts[-1], stream, new_list)
    # A stream is read once, so links are resolved after the pass, onto what was read.
    _resolve_links(source, files, links)
    return _ut1_categories(source, files, new_list)


def _read_ut1_file(file_name: str, stream: BinaryIO, new_list: NewList) -> UT1Content:
    if file_name == "domains":
        parsed = new_list()
        _parse_stream(stream, "ut1", "default", parsed)
        return parsed
    if file_name == "urls":
        return _count_entries(stream)  # URL paths cannot be enforced over DNS
    return _read_usage(stream)


def _resolve_links(
    source: ListSource, files: dict[str, UT1Content], links: list[tuple[str, str]]
) -> None:
    """Give each link the files found under its target, as files of their own path.

    Only paths that can be a category's file are made (at most blacklists/<category>/<file>), a
    path is made once (`files` is the visited set), links to links are followed _MAX_LINK_HOPS
    deep, and MAX_LINK_ALIASES paths in all: so `adult/l1 -> .` loops, which used to multiply the
    paths at every hop, stop at once.
    """
    made = 0
    for _ in range(_MAX_LINK_HOPS):
        under: dict[str, list[str]] = {}  # folder or file path -> the files at or under it
        for path in files:
            parts = path.split("/")
            for cut in range(1, len(parts) + 1):
                under.setdefault("/".join(parts[:cut]), []).append(path)
        aliases: dict[str, UT1Content] = {}
        for link, target in links:
            for path in under.get(target, ()):
                alias = link + path[len(target):]
                if alias in files or alias in aliases or alias.count("/") >= _UT1_MAX_PARTS:
                    continue
                aliases[alias] = files[path]
                made += 1
                if made > MAX_LINK_ALIASES:
                    raise SourceError(
                        f"{_label(source)}: its links reach more than {MAX_LINK_ALIASES} files "
                        "(links that loop, such as a folder linked to itself?)"
                    )
        if not aliases:
            return
        files.update(aliases)


def _ut1_categories(
    source: ListSource, files: dict[str, UT1Content], new_list: NewList
) -> list[CategoryList]:
    folders: dict[str, dict[str, UT1Content]] = {}
    for path, content in files.items():
        folder, _, file_name = path.rpartition("/")
        if folder.count("/") <= 1:
            folders.setdefault(folder, {})[file_name] = content
    categories: dict[str, CategoryList] = {}
    for folder in sorted(folders):
        contents = folders[folder]
        category = folder.rpartition("/")[2]
        if category in categories or not ("domains" in contents or "urls" in contents):
            continue
        # Type checks, because a hostile archive can link "x/urls" to another folder's "domains".
        domains, urls, usage = (contents.get(name) for name in _UT1_FILES)
        parsed = domains if isinstance(domains, ParsedList) else new_list()
        url_count = urls if isinstance(urls, int) else 0
        # A shallow copy: a linked category keeps sharing the sets but counts its own skips.
        parsed = dataclasses.replace(parsed, skipped=parsed.skipped + url_count)
        usage = usage if isinstance(usage, str) else "black"
        categories[category] = CategoryList(category, usage, source.name, parsed)
    return list(categories.values())
