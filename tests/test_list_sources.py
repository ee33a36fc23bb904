"""Reading list sources: UT1 archives and folders, plain files, inline entries (URLs: see
test_list_download.py)."""

from __future__ import annotations

import gzip
import io
import json
import ipaddress
import logging
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from blocklists.settings import ListSource
from blocklists.sources import (
    CategoryList, SourceError, check_source, read_inline, read_source_file,
)

MAX_BYTES = 10 * 1024 * 1024

UT1_FILES = {
    "blacklists/adult/domains": "# adult sites\nporn.example\nwww.xxx.example\n203.0.113.10\n",
    "blacklists/adult/urls": "# urls\nexample.org/adult/page\nexample.net/x\n\n",
    "blacklists/adult/usage": "# usage of this category\nblack\n",
    "blacklists/child/domains": "kids.example\nécole.fr\n",
    "blacklists/child/usage": "white\n",
    "blacklists/bank/domains": "bank.example\nnot a domain\n",
    "blacklists/bank/usage": "black\nwhite\n",
    "blacklists/README": "not a category file\n",
}


def ut1_source(**overrides: object) -> ListSource:
    return ListSource(**{"name": "ut1", "format": "ut1", **overrides})  # type: ignore[arg-type]


def by_category(lists: list[CategoryList]) -> dict[str, CategoryList]:
    assert len({item.category for item in lists}) == len(lists)
    return {item.category: item for item in lists}


def add_file(archive: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    member = tarfile.TarInfo(name)
    member.size = len(data)
    archive.addfile(member, io.BytesIO(data))


def add_link(archive: tarfile.TarFile, name: str, target: str) -> None:
    member = tarfile.TarInfo(name)
    member.type = tarfile.SYMTYPE
    member.linkname = target
    archive.addfile(member)


def ut1_archive_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in UT1_FILES.items():
            add_file(archive, name, text)
        add_link(archive, "blacklists/porn", "adult")  # as UT1 ships it
        add_link(archive, "blacklists/escape", "../../etc")
        add_file(archive, "../evil/domains", "evil.example\n")
        add_file(archive, "/abs/domains", "absolute.example\n")
        add_file(archive, "blacklists/sneaky/../../evil2/domains", "evil2.example\n")
    return buffer.getvalue()


@pytest.fixture
def ut1_archive(tmp_path: Path) -> Path:
    path = tmp_path / "blacklists.tar.gz"
    path.write_bytes(ut1_archive_bytes())
    return path


def assert_ut1_categories(lists: list[CategoryList]) -> None:
    categories = by_category(lists)
    assert set(categories) == {"adult", "porn", "child", "bank"}
    adult = categories["adult"]
    assert (adult.usage, adult.source) == ("black", "ut1")
    assert adult.parsed.suffix == {"porn.example", "www.xxx.example"}
    assert adult.parsed.networks == {ipaddress.ip_network("203.0.113.10/32")}
    assert adult.parsed.skipped == 2  # the two URLs, which DNS cannot enforce
    porn = categories["porn"]
    assert porn.usage == "black"
    assert porn.parsed.suffix == adult.parsed.suffix
    assert porn.parsed.skipped == 2
    child = categories["child"]
    assert child.usage == "white"
    assert child.parsed.suffix == {"kids.example", "xn--cole-9oa.fr"}
    bank = categories["bank"]
    assert bank.usage == "black"  # marked both ways: blocking is the default use
    assert bank.parsed.bad_examples == [(2, "expected one name per line, got 'not a domain'")]
    every_name = set().union(*(item.parsed.suffix for item in lists))
    assert not every_name & {"evil.example", "absolute.example", "evil2.example"}


def test_ut1_archive(ut1_archive: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        lists = read_source_file(ut1_source(), ut1_archive, MAX_BYTES)
    assert_ut1_categories(lists)
    assert "skipped 4 archive member(s)" in caplog.text  # ../evil, /abs, sneaky, escape link


def test_ut1_archive_recognised_by_content_not_name(ut1_archive: Path) -> None:
    renamed = ut1_archive.rename(ut1_archive.with_name("download"))
    assert_ut1_categories(read_source_file(ut1_source(), renamed, MAX_BYTES))


def test_ut1_archive_without_top_folder_and_with_dot_prefix(tmp_path: Path) -> None:
    path = tmp_path / "lists.tar"
    with tarfile.open(path, mode="w") as archive:
        add_file(archive, "./adult/domains", "porn.example\n")
        add_file(archive, "./adult/usage", "black\n")
        add_link(archive, "./porn", "adult")
        add_link(archive, "./odd/urls", "../adult/domains")  # a file of the wrong kind
        add_file(archive, "./child/domains", "kids.example\n")
        add_file(archive, "./child/usage", "white\n")
        hard_link = tarfile.TarInfo("./mirror/domains")
        hard_link.type = tarfile.LNKTYPE
        hard_link.linkname = "./child/domains"  # hard links name an archive path
        archive.addfile(hard_link)
    categories = by_category(read_source_file(ut1_source(), path, MAX_BYTES))
    assert set(categories) == {"adult", "porn", "child", "mirror", "odd"}
    assert (categories["odd"].parsed.entry_count, categories["odd"].parsed.skipped) == (0, 0)
    assert categories["porn"].parsed.suffix == {"porn.example"}
    assert categories["mirror"].parsed.suffix == {"kids.example"}
    assert categories["mirror"].usage == "black"  # no usage file of its own
    assert categories["child"].usage == "white"


def test_ut1_archive_larger_than_the_cap_is_refused(ut1_archive: Path) -> None:
    with pytest.raises(SourceError, match="'ut1'.*bytes once uncompressed"):
        read_source_file(ut1_source(), ut1_archive, 4096)


def test_gzip_bomb_stops_at_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "bomb.txt.gz"
    path.write_bytes(gzip.compress(b"a" * (4 * 1024 * 1024)))
    source = ListSource(name="bomb", format="domains", category="ads")
    with pytest.raises(SourceError, match="'bomb'"):
        read_source_file(source, path, 1024 * 1024)


@pytest.mark.parametrize(
    "content",
    [b"\x1f\x8b\x08\x00garbage-after-a-gzip-header", ut1_archive_bytes()[:300], b"not a tar" * 100],
    ids=["bad-gzip", "truncated", "not-tar"],
)
def test_corrupt_archive_is_a_source_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "blacklists.tar.gz"
    path.write_bytes(content)
    with pytest.raises(SourceError, match="list source 'ut1': cannot read blacklists.tar.gz"):
        read_source_file(ut1_source(), path, MAX_BYTES)


def write_ut1_tree(root: Path) -> None:
    for name, text in UT1_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    os.symlink("adult", root / "blacklists" / "porn")


@pytest.mark.parametrize("with_top_folder", [True, False])
def test_ut1_directory_tree(tmp_path: Path, with_top_folder: bool) -> None:
    tree = tmp_path / "tree"
    write_ut1_tree(tree)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "domains").write_text("outside.example\n")
    os.symlink(outside, tree / "blacklists" / "escape")
    root = tree if with_top_folder else tree / "blacklists"
    lists = read_source_file(ut1_source(), root, MAX_BYTES)
    assert_ut1_categories(lists)
    categories = by_category(lists)
    assert categories["porn"].parsed.suffix is categories["adult"].parsed.suffix  # not copied


def test_ut1_needs_an_archive_or_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "domains"
    path.write_text("porn.example\n")
    with pytest.raises(SourceError, match="neither a tar archive nor a folder"):
        read_source_file(ut1_source(), path, MAX_BYTES)


def test_plain_hosts_file(tmp_path: Path) -> None:
    path = tmp_path / "ads.txt"
    path.write_text("0.0.0.0 ads.example.com\n127.0.0.1 localhost\nbroken line here\n")
    source = ListSource(name="ads", format="hosts", category="ads", path="ads.txt")
    [ads] = read_source_file(source, path, MAX_BYTES)
    assert (ads.category, ads.usage, ads.source) == ("ads", "black", "ads")
    assert ads.parsed.exact == {"ads.example.com"}
    assert ads.parsed.bad_examples == [
        (3, "expected an address then names, got 'broken line here'")
    ]


def test_gzipped_plain_file_with_match_suffix(tmp_path: Path) -> None:
    path = tmp_path / "ads.gz"
    path.write_bytes(gzip.compress("\ufeff0.0.0.0 ads.example.com\n".encode()))
    source = ListSource(name="ads", format="hosts", category="ads", match="suffix", usage="white")
    [ads] = read_source_file(source, path, MAX_BYTES)
    assert ads.parsed.suffix == {"ads.example.com"}
    assert ads.usage == "white"


def test_plain_folder_and_archive_merge_their_files(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "one.txt").write_text("one.example\n")
    (folder / "two.txt").write_text("two.example\nbad..name\n")
    source = ListSource(name="mine", format="domains", category="custom")
    [from_folder] = read_source_file(source, folder, MAX_BYTES)
    assert from_folder.parsed.suffix == {"one.example", "two.example"}
    assert from_folder.parsed.bad_examples == [
        (2, "two.txt: not a valid name or address: 'bad..name'")
    ]
    archive_path = tmp_path / "lists.tgz"
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.add(folder, arcname="lists")
        add_file(archive, "../outside.txt", "outside.example\n")
    [from_archive] = read_source_file(source, archive_path, MAX_BYTES)
    assert from_archive.parsed.suffix == {"one.example", "two.example"}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (ListSource(name="x", format="domains", path="a.txt"), "needs a category"),
        (ListSource(name="x", format="csv", path="a.txt", category="c"), "unknown format"),
        (ListSource(name="x", format="domains", category="c"), "exactly one of"),
        (
            ListSource(name="x", format="domains", category="c", path="a", url="http://h/"),
            "exactly one of",
        ),
        (ListSource(name="x", format="domains", path="a.txt", category="c", match="prefix"),
         "unknown match"),
        (ListSource(name="x", format="domains", path="a.txt", category="c", usage="grey"),
         "usage must be black or white"),
    ],
)
def test_misconfigured_sources_are_source_errors(source: ListSource, message: str) -> None:
    with pytest.raises(SourceError, match=f"list source 'x': .*{message}"):
        check_source(source)


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    source = ListSource(name="x", format="domains", category="c", path="missing.txt")
    with pytest.raises(SourceError, match="list source 'x': .*missing.txt does not exist"):
        read_source_file(source, tmp_path / "missing.txt", MAX_BYTES)


def test_adblock_file_with_exceptions(tmp_path: Path) -> None:
    (tmp_path / "ads.txt").write_text("||ads.example^\n@@||ok.ads.example^\n")
    source = ListSource(name="ads", format="adblock", category="ads", path="ads.txt")
    [ads] = read_source_file(source, tmp_path / "ads.txt", MAX_BYTES)
    assert ads.parsed.suffix == {"ads.example"}
    assert ads.parsed.except_suffix == {"ok.ads.example"}


def test_inline_domains() -> None:
    source = ListSource(
        name="school",
        format="domains",
        category="games",
        domains=("Games.example", "*.école.fr", "bad..name"),
    )
    [games] = read_inline(source)
    assert games.parsed.suffix == {"games.example", "xn--cole-9oa.fr"}
    assert games.parsed.bad_lines == 1
    assert games.parsed.bad_examples == [(3, "not a valid name or address: 'bad..name'")]


# ---- issue 20, item 4: huge lines are read in linear time and counted as bad ----------------


def _timed_read(source: ListSource, path: Path, max_bytes: int) -> tuple[list[CategoryList], float]:
    started = time.process_time()
    lists = read_source_file(source, path, max_bytes)
    return lists, time.process_time() - started


@pytest.mark.parametrize("fmt", ["domains", "hosts", "adblock"])
def test_a_huge_line_is_one_bad_line_read_in_linear_time(tmp_path: Path, fmt: str) -> None:
    first = {"domains": "one.example", "hosts": "0.0.0.0 one.example",
             "adblock": "||one.example^"}[fmt]
    last = first.replace("one", "two")
    timings = []
    for megabytes in (8, 32):
        path = tmp_path / f"huge{megabytes}.gz"
        path.write_bytes(gzip.compress(
            f"{first}\n".encode() + b"a" * (megabytes << 20) + f"\n{last}\n".encode(), 1))
        source = ListSource(name="huge", format=fmt, category="ads", match="suffix")
        [huge], seconds = _timed_read(source, path, 64 << 20)
        timings.append(seconds)
        assert huge.parsed.suffix == {"one.example", "two.example"}
        assert huge.parsed.bad_lines == 1
        assert huge.parsed.bad_examples == [(2, "a line longer than 8192 characters")]
    # Four times the text, about four times the time (quadratic reading took 16 times, and 6 s
    # for 64 MB); the bound leaves room for a busy machine.
    assert timings[1] < 2.0, timings
    assert timings[1] < 8 * max(timings[0], 0.05), timings


def test_a_stream_of_newlines_is_read_quickly(tmp_path: Path) -> None:
    path = tmp_path / "newlines.gz"
    path.write_bytes(gzip.compress(b"\n" * (96 << 20) + b"last.example\n", 9))
    assert path.stat().st_size < 200_000
    source = ListSource(name="blank", format="domains", category="ads")
    [blank], seconds = _timed_read(source, path, 128 << 20)
    assert blank.parsed.suffix == {"last.example"}
    assert seconds < 3.0


def test_lines_longer_than_the_maximum_in_ut1_files(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        add_file(archive, "blacklists/adult/domains", "a.example\n" + "b" * 20000 + "\nc.example\n")
        add_file(archive, "blacklists/adult/urls", "x" * 9000 + "\nexample.org/page\n")
        add_file(archive, "blacklists/adult/usage", "white\n" + "w" * 9000 + "\n")
    path = tmp_path / "ut1.tar.gz"
    path.write_bytes(buffer.getvalue())
    [adult] = read_source_file(ut1_source(), path, MAX_BYTES)
    assert adult.parsed.suffix == {"a.example", "c.example"}
    assert adult.parsed.bad_examples == [(2, "a line longer than 8192 characters")]
    assert adult.usage == "white"


# ---- issue 20, item 3: links that loop cannot multiply paths ---------------------------------


def link_bomb(links: int, names: list[str] | None = None) -> bytes:
    """A UT1 archive whose `adult` folder holds `links` links to itself (`adult/lN -> .`): each
    hop of a naive resolution multiplies the paths by links + 1 (217 bytes took 2.5 GB)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        add_file(archive, "blacklists/adult/domains", "\n".join(names or ["porn.example"]) + "\n")
        add_file(archive, "blacklists/adult/usage", "black\n")
        for number in range(links):
            add_link(archive, f"blacklists/adult/l{number}", ".")
        add_link(archive, "blacklists/porn", "adult")
    return buffer.getvalue()


_READ_LIMITED = """
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
from blocklists.settings import ListSource
from blocklists.sources import read_source_file
lists = read_source_file(ListSource(name="ut1", format="ut1"), Path(sys.argv[1]), 1 << 20)
print(json.dumps(sorted((item.category, sorted(item.parsed.suffix)) for item in lists)))
"""


def test_a_link_bomb_reads_in_little_time_and_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(link_bomb(7))
    assert len(path.read_bytes()) < 400
    # In a process of its own, limited to 512 MiB and 20 s: the naive resolution needed 2.5 GB.
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _READ_LIMITED, str(path)], capture_output=True,
                            text=True, timeout=20, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [["adult", ["porn.example"]], ["porn", ["porn.example"]]]
    assert time.monotonic() - started < 10


def test_links_that_reach_too_many_files_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        add_file(archive, "blacklists/adult/domains", "porn.example\n")
        add_file(archive, "blacklists/adult/usage", "black\n")
        for number in range(2100):  # two files each: more than MAX_LINK_ALIASES
            add_link(archive, f"blacklists/c{number}", "adult")
    path = tmp_path / "many.tar.gz"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(SourceError, match=r"list source 'ut1': its links reach more than 4096 "):
        read_source_file(ut1_source(), path, MAX_BYTES)
