"""Reading list sources: UT1 archives and folders, plain files, inline entries and URLs."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import ipaddress
import logging
import os
import socket
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from blocklists.sources import CategoryList, SourceError, fetch_source, read_source_file
from resolver.config import ListSource

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
        (ListSource(name="x", format="domains", category="c", path="missing.txt"), "not exist"),
    ],
)
async def test_misconfigured_sources_are_source_errors(
    tmp_path: Path, source: ListSource, message: str
) -> None:
    with pytest.raises(SourceError, match=f"list source 'x': .*{message}"):
        await fetch_source(source, base_dir=tmp_path, session=None, timeout=5, max_bytes=MAX_BYTES)


async def test_path_is_resolved_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "ads.txt").write_text("||ads.example^\n@@||ok.ads.example^\n")
    source = ListSource(name="ads", format="adblock", category="ads", path="lists/ads.txt")
    [ads] = await fetch_source(
        source, base_dir=tmp_path, session=None, timeout=5, max_bytes=MAX_BYTES
    )
    assert ads.parsed.suffix == {"ads.example"}
    assert ads.parsed.except_suffix == {"ok.ads.example"}


async def test_inline_domains(tmp_path: Path) -> None:
    source = ListSource(
        name="school",
        format="domains",
        category="games",
        domains=("Games.example", "*.école.fr", "bad..name"),
    )
    [games] = await fetch_source(
        source, base_dir=tmp_path, session=None, timeout=5, max_bytes=MAX_BYTES
    )
    assert games.parsed.suffix == {"games.example", "xn--cole-9oa.fr"}
    assert games.parsed.bad_lines == 1


# ---- URLs, served by a real HTTP server on 127.0.0.1 ----------------------------------------

BIG_BODY = b"x.example\n" * 2000  # 20 kB


async def serve_big_streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
    await response.prepare(request)
    for _ in range(20):
        await response.write(BIG_BODY)
    return response


@contextlib.contextmanager
def unused_local_port() -> Iterator[int]:
    """A port bound but never listening, so that connections to it are refused."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield reserved.getsockname()[1]


async def serve_slowly(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(100):  # ends early when the client hangs up and a write fails
        await response.write(b"slow.example\n")
        await asyncio.sleep(0.05)
    return response


def serve_bytes(body: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    return handler


@pytest.fixture
async def list_server() -> AsyncIterator[TestServer]:
    archive = ut1_archive_bytes()
    app = web.Application()
    app.router.add_get("/ads.txt", serve_bytes(b"ads.example\n10.9.0.0/16\n"))
    app.router.add_get("/blacklists.tar.gz", serve_bytes(archive))
    app.router.add_get("/download", serve_bytes(archive))  # no name to go by: magic bytes
    app.router.add_get("/big", serve_bytes(BIG_BODY))
    app.router.add_get("/big-streamed", serve_big_streamed)
    app.router.add_get("/slow", serve_slowly)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield server
    await server.close()


async def test_url_plain_list_with_own_session(list_server: TestServer, tmp_path: Path) -> None:
    url = str(list_server.make_url("/ads.txt"))
    source = ListSource(name="ads", format="domains", category="ads", url=url)
    [ads] = await fetch_source(source, base_dir=tmp_path, session=None, timeout=5, max_bytes=1000)
    assert ads.parsed.suffix == {"ads.example"}
    assert ads.parsed.networks == {ipaddress.ip_network("10.9.0.0/16")}


@pytest.mark.parametrize("path", ["/blacklists.tar.gz", "/download"])
async def test_url_ut1_archive(list_server: TestServer, tmp_path: Path, path: str) -> None:
    source = ut1_source(url=str(list_server.make_url(path)))
    async with aiohttp.ClientSession() as session:
        lists = await fetch_source(
            source, base_dir=tmp_path, session=session, timeout=5, max_bytes=MAX_BYTES
        )
    assert_ut1_categories(lists)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/missing", "HTTP 404 from http://127.0.0.1:[0-9]+/missing$"),
        ("/big", "http://127.0.0.1:[0-9]+/big is larger than the 10000-byte limit"),
        ("/big-streamed", "/big-streamed is larger than the 10000-byte limit"),  # no length
    ],
)
async def test_url_failures_are_source_errors(
    list_server: TestServer, tmp_path: Path, path: str, message: str
) -> None:
    source = ListSource(
        name="remote", format="domains", category="ads", url=str(list_server.make_url(path))
    )
    leftovers_before = set(Path(tempfile.gettempdir()).glob("classguard-list-*"))
    with pytest.raises(SourceError, match=f"^list source 'remote': .*{message}"):
        await fetch_source(source, base_dir=tmp_path, session=None, timeout=5, max_bytes=10_000)
    leftovers_after = set(Path(tempfile.gettempdir()).glob("classguard-list-*"))
    assert leftovers_after <= leftovers_before  # the partial download was removed


async def test_slow_url_is_a_source_error(list_server: TestServer, tmp_path: Path) -> None:
    url = str(list_server.make_url("/slow"))
    source = ListSource(name="slow", format="domains", category="ads", url=url)
    with pytest.raises(SourceError, match=f"list source 'slow': {url} took longer than 0.3 s"):
        await fetch_source(source, base_dir=tmp_path, session=None, timeout=0.3, max_bytes=1000)


async def test_unreachable_url_is_a_source_error(tmp_path: Path) -> None:
    with unused_local_port() as port:
        source = ListSource(
            name="down", format="domains", category="ads", url=f"http://127.0.0.1:{port}/x"
        )
        with pytest.raises(SourceError, match="list source 'down': cannot download"):
            await fetch_source(source, base_dir=tmp_path, session=None, timeout=5, max_bytes=1000)
