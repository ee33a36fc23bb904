"""Downloading a source by URL: conditional GET, size cap, timeout, retries, the UT1 MD5."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from blocklists import download
from blocklists.settings import ListSource

BODY = b"ads.example\n10.9.0.0/16\n"
LAST_MODIFIED = "Wed, 21 Oct 2026 07:28:00 GMT"


class Site:
    """A list server whose answers the tests change; it counts what it sent."""

    def __init__(self) -> None:
        self.body = BODY
        self.md5: str | None = None  # served at .md5 when set
        self.fail_first = 0  # answer 503 to this many requests first
        self.status = 200
        self.requests: list[dict[str, str]] = []
        self.bodies_sent = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        if self.fail_first:
            self.fail_first -= 1
            return web.Response(status=503)
        if self.status != 200:
            return web.Response(status=self.status)
        etag = '"' + hashlib.sha1(self.body).hexdigest() + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304)
        if request.headers.get("If-Modified-Since") == LAST_MODIFIED and "noetag" in request.path:
            return web.Response(status=304)
        self.bodies_sent += 1
        headers = {"Last-Modified": LAST_MODIFIED}
        if "noetag" not in request.path:
            headers["ETag"] = etag
        return web.Response(body=self.body, headers=headers)

    async def handle_md5(self, request: web.Request) -> web.Response:
        if self.md5 is None:
            return web.Response(status=404)
        return web.Response(text=f"{self.md5}  blacklists.tar.gz\n")

    async def streamed(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await response.prepare(request)
        for _ in range(20):
            await response.write(b"x.example\n" * 2000)
        return response

    async def slow(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(100):  # ends early when the client hangs up and a write fails
            await response.write(b"slow.example\n")
            await asyncio.sleep(0.05)
        return response

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        """Redirects to the URL in ?to= (relative or absolute)."""
        raise web.HTTPFound(request.query["to"])

    async def loop(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect("/loop")

    async def gzipped(self, request: web.Request) -> web.StreamResponse:
        # What GitHub's raw files and most CDNs do when asked (aiohttp asks for gzip).
        self.requests.append(dict(request.headers))
        response = web.Response(body=self.body)
        response.enable_compression(web.ContentCoding.gzip)
        return response

    async def gzipped_short(self, request: web.Request) -> web.StreamResponse:
        packed = gzip.compress(self.body)
        response = web.StreamResponse(headers={"Content-Encoding": "gzip",
                                               "Content-Length": str(len(packed))})
        await response.prepare(request)
        await response.write(packed[: len(packed) // 2])
        request.transport.close()  # type: ignore[union-attr]
        return response

    async def short(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"cut.example\n")
        request.transport.close()  # type: ignore[union-attr]
        return response


@pytest.fixture
async def site() -> AsyncIterator[tuple[Site, TestServer]]:
    state = Site()
    app = web.Application()
    app.router.add_get("/list.txt", state.handle)
    app.router.add_get("/noetag.txt", state.handle)
    app.router.add_get("/blacklists.tar.gz", state.handle)
    app.router.add_get("/blacklists.tar.gz.md5", state.handle_md5)
    app.router.add_get("/streamed", state.streamed)
    app.router.add_get("/slow", state.slow)
    app.router.add_get("/short", state.short)
    app.router.add_get("/gzipped", state.gzipped)
    app.router.add_get("/redirect", state.redirect)
    app.router.add_get("/loop", state.loop)
    app.router.add_get("/gzipped-short", state.gzipped_short)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield state, server
    await server.close()


async def fetch(source: ListSource, folder: Path, *, timeout: float = 5, max_bytes: int = 100_000,
                attempts: int = 3) -> download.Download:
    async with aiohttp.ClientSession() as session:
        return await download.refresh(source, folder, session, timeout=timeout,
                                      max_bytes=max_bytes, attempts=attempts, backoff=0.01)


def url_source(server: TestServer, path: str, fmt: str = "domains") -> ListSource:
    category = None if fmt == "ut1" else "ads"
    return ListSource(name="remote", format=fmt, category=category, url=str(server.make_url(path)))


async def test_etag_second_refresh_downloads_nothing(site, tmp_path: Path) -> None:
    state, server = site
    source = url_source(server, "/list.txt")
    first = await fetch(source, tmp_path)
    assert first.status == "downloaded" and first.new is not None
    assert first.new.read_bytes() == BODY
    assert first.meta["md5"] == hashlib.md5(BODY).hexdigest()
    download.promote(tmp_path, first)
    assert (tmp_path / "body").read_bytes() == BODY
    second = await fetch(source, tmp_path)
    assert second.status == "not_modified"
    assert second.kept == tmp_path / "body" and second.new is None
    assert state.bodies_sent == 1
    assert state.requests[1]["If-None-Match"] == first.meta["etag"]


async def test_last_modified_alone_is_used(site, tmp_path: Path) -> None:
    state, server = site
    source = url_source(server, "/noetag.txt")
    download.promote(tmp_path, await fetch(source, tmp_path))
    assert (await fetch(source, tmp_path)).status == "not_modified"
    assert state.requests[1]["If-Modified-Since"] == LAST_MODIFIED
    assert "If-None-Match" not in state.requests[1]


async def test_a_new_body_is_not_kept_until_promoted(site, tmp_path: Path) -> None:
    state, server = site
    source = url_source(server, "/list.txt")
    download.promote(tmp_path, await fetch(source, tmp_path))
    state.body = b"changed.example\n"
    fresh = await fetch(source, tmp_path)
    assert fresh.status == "downloaded"
    assert fresh.candidates == [tmp_path / "body.new", tmp_path / "body"]
    download.discard(fresh)  # it did not compile, say
    assert (tmp_path / "body").read_bytes() == BODY
    assert not (tmp_path / "body.new").exists()
    assert (await fetch(source, tmp_path)).status == "downloaded"  # asked again next time


async def test_another_url_is_not_asked_conditionally(site, tmp_path: Path) -> None:
    state, server = site
    download.promote(tmp_path, await fetch(url_source(server, "/list.txt"), tmp_path))
    result = await fetch(url_source(server, "/noetag.txt"), tmp_path)
    assert result.status == "downloaded" and result.kept is None
    assert "If-None-Match" not in state.requests[1]


async def test_transient_failures_are_retried(site, tmp_path: Path) -> None:
    state, server = site
    state.fail_first = 2
    result = await fetch(url_source(server, "/list.txt"), tmp_path)
    assert result.status == "downloaded"
    assert len(state.requests) == 3


@pytest.mark.parametrize(("status", "tries"), [(503, 3), (500, 3), (404, 1), (403, 1)])
async def test_http_errors_fail_after_the_right_number_of_tries(site, tmp_path: Path, status: int,
                                                                 tries: int) -> None:
    state, server = site
    state.status = status
    result = await fetch(url_source(server, "/list.txt"), tmp_path)
    assert result.status == "failed"
    assert result.error is not None and f"HTTP {status} from http://127.0.0.1:" in result.error
    assert len(state.requests) == tries
    assert not (tmp_path / "body.new").exists()


async def test_a_failure_keeps_the_previous_body(site, tmp_path: Path) -> None:
    state, server = site
    source = url_source(server, "/list.txt")
    download.promote(tmp_path, await fetch(source, tmp_path))
    state.status = 500
    result = await fetch(source, tmp_path)
    assert result.status == "failed"
    assert result.candidates == [tmp_path / "body"]
    assert (tmp_path / "body").read_bytes() == BODY


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/list.txt", "is larger than the 10-byte limit"),  # refused by its Content-Length
        ("/streamed", "is larger than the 10-byte limit"),  # counted as it arrives
    ],
)
async def test_size_cap(site, tmp_path: Path, path: str, message: str) -> None:
    _, server = site
    result = await fetch(url_source(server, path), tmp_path, max_bytes=10)
    assert result.status == "failed" and message in (result.error or "")
    assert not (tmp_path / "body.new").exists()


async def test_timeout(site, tmp_path: Path) -> None:
    _, server = site
    result = await fetch(url_source(server, "/slow"), tmp_path, timeout=0.3, attempts=1)
    assert result.status == "failed"
    assert "took longer than 0.3 s" in (result.error or "")


async def test_a_body_cut_short_is_a_failure(site, tmp_path: Path) -> None:
    _, server = site
    result = await fetch(url_source(server, "/short"), tmp_path, attempts=1)
    assert result.status == "failed"
    assert "list source 'remote'" in (result.error or "")


async def test_a_compressed_transfer_is_decoded_and_kept(site, tmp_path: Path) -> None:
    state, server = site
    state.body = b"".join(b"name%d.example\n" % n for n in range(2000))  # compresses 5x or more
    result = await fetch(url_source(server, "/gzipped"), tmp_path, attempts=1)
    assert result.error is None and result.status == "downloaded"
    assert "gzip" in state.requests[0].get("Accept-Encoding", "")
    assert result.new is not None and result.new.read_bytes() == state.body
    assert result.meta["size"] == len(state.body)
    assert result.meta["md5"] == hashlib.md5(state.body).hexdigest()


async def test_a_compressed_transfer_cut_short_is_a_failure(site, tmp_path: Path) -> None:
    state, server = site
    state.body = b"".join(b"name%d.example\n" % n for n in range(2000))
    result = await fetch(url_source(server, "/gzipped-short"), tmp_path, attempts=1)
    assert result.status == "failed"
    assert "list source 'remote'" in (result.error or "")
    assert not (tmp_path / "body.new").exists()


# ---- issue 20, item 5: redirects are checked before they are followed ------------------------


async def test_a_redirect_on_the_same_kind_of_address_is_followed(site, tmp_path: Path) -> None:
    state, server = site
    result = await fetch(url_source(server, "/redirect?to=/list.txt"), tmp_path, attempts=1)
    assert result.status == "downloaded" and result.new is not None
    assert result.new.read_bytes() == BODY


# Targets that cannot leave this machine even if a regression followed them: a link-local address
# without its interface (connect() fails at once), and 0.0.0.0, which Linux connects locally. (The
# real targets are a cloud's metadata service at 169.254.169.254, a router's 192.168.1.1...)
@pytest.mark.parametrize(("target", "kind"), [
    ("http://[fe80::1]/x", "link-local"),
    ("http://0.0.0.0:{port}/list.txt", "private"),
])
async def test_a_redirect_to_another_kind_of_inside_address_is_refused(
        site, tmp_path: Path, target: str, kind: str) -> None:
    state, server = site
    target = target.format(port=server.port)
    result = await fetch(url_source(server, f"/redirect?to={target}"), tmp_path, attempts=3)
    assert result.status == "failed"
    assert f"redirects to {target}, a {kind} address; refused" in (result.error or "")
    assert len(state.requests) == 0  # the list path was never reached, and no retry either


async def test_redirects_that_loop_stop(site, tmp_path: Path) -> None:
    _, server = site
    result = await fetch(url_source(server, "/redirect?to=/redirect%3Fto%3D/redirect?to=/list.txt"),
                         tmp_path, attempts=1)
    assert result.status == "downloaded"  # two hops
    result = await fetch(url_source(server, "/loop"), tmp_path, attempts=1)
    assert result.status == "failed"
    assert "more than 5 redirects from" in (result.error or "")


async def test_no_redirect_from_https_to_http(site, tmp_path: Path) -> None:
    state, server = site
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    plain = str(server.make_url("/list.txt"))

    async def downgrade(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(plain)

    app = web.Application()
    app.router.add_get("/list.txt", downgrade)
    secure = TestServer(app, host="127.0.0.1", port=0)
    await secure.start_server(ssl=server_context)
    try:
        url = f"https://127.0.0.1:{secure.port}/list.txt"
        source = ListSource(name="remote", format="domains", category="ads", url=url)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_context)) as session:
            result = await download.refresh(source, tmp_path, session, timeout=5,
                                            max_bytes=100_000, attempts=1, backoff=0.01)
    finally:
        await secure.close()
    assert result.status == "failed"
    assert f"redirects to {plain}: a redirect from https to http is refused" in (result.error or "")
    assert state.requests == []


@contextlib.contextmanager
def unused_local_port() -> Iterator[int]:
    """A port bound but never listening, so that connections to it are refused."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield reserved.getsockname()[1]


async def test_unreachable_server(tmp_path: Path) -> None:
    with unused_local_port() as port:
        source = ListSource(name="down", format="domains", category="ads",
                            url=f"http://127.0.0.1:{port}/x")
        result = await fetch(source, tmp_path, attempts=2)
    assert result.status == "failed"
    assert "list source 'down': cannot download" in (result.error or "")


@pytest.mark.parametrize(
    ("published", "status"),
    [
        (None, "downloaded"),  # no .md5 published: nothing to check
        ("right", "downloaded"),
        ("0123456789abcdef0123456789abcdef", "failed"),
    ],
)
async def test_ut1_md5(site, tmp_path: Path, published: str | None, status: str) -> None:
    state, server = site
    state.md5 = hashlib.md5(BODY).hexdigest().upper() if published == "right" else published
    result = await fetch(url_source(server, "/blacklists.tar.gz", "ut1"), tmp_path)
    assert result.status == status
    if status == "failed":
        assert "MD5 mismatch" in (result.error or "")
        assert state.bodies_sent == 3  # a torn download is worth another try
        assert not (tmp_path / "body.new").exists()


@pytest.mark.parametrize(
    ("url", "home"),
    [
        ("https://dsi.ut-capitole.fr/blacklists/download/blacklists.tar.gz", True),
        ("http://ut-capitole.fr/x.tar.gz", True),
        ("https://mirror.example.org/ut1/blacklists.tar.gz", False),
        ("https://ut-capitole.fr.example.org/x", False),
        (None, False),
    ],
)
def test_ut1_home(url: str | None, home: bool) -> None:
    source = ListSource(name="ut1", format="ut1", url=url, path=None if url else "x")
    assert download.is_ut1_home(source) is home
