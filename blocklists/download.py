"""Downloading list sources by URL, each kept under state_dir/sources/NAME/ between refreshes.

Per source: `body` (the last download that compiled) and `meta.json` (its URL, ETag,
Last-Modified, MD5 and when it was fetched). A refresh asks with If-None-Match / If-Modified-Since
and a 304 downloads nothing. A new body is written beside the old one (`body.new`), checked against
the size cap and, for UT1 archives, the MD5 published at URL + ".md5", and only becomes `body`
once it has compiled (`promote`); until then, and whenever a refresh fails, the previous body stays.
Failures that may pass (connection errors, timeouts, HTTP 5xx/429, a torn download) are retried
with exponential backoff.

Redirects are followed here, not by aiohttp, so that each one is checked before it is followed:
never from https to http, and to a loopback, link-local or private address only when the
configured URL itself has an address of that kind (a list host cannot point the downloader at the
server's own metrics, or at a cloud's metadata service).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from blocklists.settings import ListSource
from common.errors import ClassguardError

log = logging.getLogger("classguard.lists")

ATTEMPTS = 3  # tries per refresh for failures that may pass
BACKOFF_SECONDS = 2.0  # before the second try; doubled each time, with ±50 % jitter
CHUNK_BYTES = 64 * 1024
MD5_MAX_BYTES = 4096  # an "md5sum" line, with room to spare
_MD5_PATTERN = re.compile(rb"\b([0-9a-fA-F]{32})\b")
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5

DownloadProgress = Callable[[str, int, "int | None"], None]  # source name, bytes, total


class DownloadError(ClassguardError):
    """A download that failed; the message is one line naming the source."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class Download:
    """The outcome of one refresh of one source."""

    name: str
    status: str  # downloaded | not_modified | failed | deferred
    new: Path | None = None  # a fresh body, to promote once it compiled (status downloaded)
    kept: Path | None = None  # the previous body, if any
    error: str | None = None
    bytes: int = 0
    meta: dict | None = None  # what meta.json will say once `new` is promoted

    @property
    def candidates(self) -> list[Path]:
        return [path for path in (self.new, self.kept) if path is not None]


def source_dir(state_dir: Path, source: ListSource) -> Path:
    return state_dir / "sources" / source.name


def read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def write_meta(folder: Path, meta: dict) -> None:
    temporary = folder / "meta.json.tmp"
    temporary.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(temporary, folder / "meta.json")


def kept_body(folder: Path, source: ListSource) -> Path | None:
    """The previous download of this source, if it is of the same URL."""
    body = folder / "body"
    if body.is_file() and read_meta(folder).get("url") == source.url:
        return body
    return None


def promote(folder: Path, download: Download) -> None:
    """The new body compiled: it becomes the kept one."""
    if download.new is None or download.meta is None:
        return
    os.replace(download.new, folder / "body")
    write_meta(folder, download.meta)
    download.kept, download.new = folder / "body", None


def discard(download: Download) -> None:
    if download.new is not None:
        download.new.unlink(missing_ok=True)
        download.new = None


def confirm(folder: Path, now: float) -> None:
    """A 304: the kept body is current as of now."""
    meta = read_meta(folder)
    if meta:
        meta["checked_at"] = now
        write_meta(folder, meta)


async def refresh(
    source: ListSource,
    folder: Path,
    session: aiohttp.ClientSession,
    *,
    timeout: float,
    max_bytes: int,
    progress: DownloadProgress | None = None,
    attempts: int | None = None,
    backoff: float | None = None,
) -> Download:
    """Download `source.url` again if it changed; never raises for a failed download."""
    assert source.url
    attempts = ATTEMPTS if attempts is None else attempts
    backoff = BACKOFF_SECONDS if backoff is None else backoff
    folder.mkdir(parents=True, exist_ok=True)
    kept = kept_body(folder, source)
    meta = read_meta(folder) if kept else {}
    for attempt in range(attempts):
        try:
            return await _attempt(source, folder, session, kept, meta, timeout=timeout,
                                  max_bytes=max_bytes, progress=progress)
        except DownloadError as exc:
            (folder / "body.new").unlink(missing_ok=True)
            if not exc.retry or attempt + 1 == attempts:
                return Download(source.name, "failed", kept=kept, error=str(exc))
            delay = backoff * 2**attempt * random.uniform(0.5, 1.5)
            log.warning("%s; trying again in %.0f s", exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def _attempt(source: ListSource, folder: Path, session: aiohttp.ClientSession,
                   kept: Path | None, meta: dict, *, timeout: float, max_bytes: int,
                   progress: DownloadProgress | None) -> Download:
    url = source.url
    assert url
    label = f"list source {source.name!r}"
    headers = {}
    if kept is not None:
        if meta.get("etag"):
            headers["If-None-Match"] = meta["etag"]
        if meta.get("last_modified"):
            headers["If-Modified-Since"] = meta["last_modified"]
    new = folder / "body.new"
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        async with _get(session, url, label, headers=headers, timeout=timeout) as response:
            if response.status == 304 and kept is not None:
                return Download(source.name, "not_modified", kept=kept)
            if response.status != 200:
                raise DownloadError(f"{label}: HTTP {response.status} from {url}",
                                    retry=response.status in _RETRY_STATUSES)
            total = response.content_length
            too_big = f"{label}: {url} is larger than the {max_bytes}-byte limit"
            if total is not None and total > max_bytes:
                raise DownloadError(too_big)
            # A compressed transfer (Content-Encoding: gzip, which aiohttp asks for) is decoded as
            # it arrives: Content-Length counts the encoded bytes, not those received here, so it
            # bounds nothing below (aiohttp itself fails a transfer cut short of its length).
            encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
            if encoded:
                total = None
            with open(new, "wb") as body:
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    received += len(chunk)
                    if received > max_bytes:
                        raise DownloadError(too_big)
                    body.write(chunk)
                    digest.update(chunk)
                    if progress is not None:
                        progress(source.name, received, total)
            if total is not None and received != total:
                raise DownloadError(f"{label}: {url} ended after {received} of {total} bytes",
                                    retry=True)
            etag = response.headers.get("ETag")
            last_modified = response.headers.get("Last-Modified")
        md5 = digest.hexdigest()
        if source.format == "ut1":
            await _check_md5(source, session, md5, timeout)
    except TimeoutError as exc:
        raise DownloadError(f"{label}: {url} took longer than {timeout:g} s", retry=True) from exc
    except aiohttp.ClientError as exc:
        raise DownloadError(f"{label}: cannot download {url}: {exc}", retry=True) from exc
    except OSError as exc:
        raise DownloadError(f"{label}: cannot write {new}: {exc}") from exc
    now = time.time()
    new_meta = {"url": url, "etag": etag, "last_modified": last_modified, "md5": md5,
                "size": received, "fetched_at": now, "checked_at": now}
    return Download(source.name, "downloaded", new=new, kept=kept, bytes=received, meta=new_meta)


async def _check_md5(source: ListSource, session: aiohttp.ClientSession, md5: str,
                     timeout: float) -> None:
    """UT1 publishes the archive's MD5 at URL + ".md5"; when it does, the two must agree."""
    url = f"{source.url}.md5"
    async with _get(session, url, f"list source {source.name!r}", timeout=timeout) as response:
        if response.status != 200:
            log.info("list source %r: no MD5 published at %s (HTTP %d); not checked",
                     source.name, url, response.status)
            return
        text = await response.content.read(MD5_MAX_BYTES)
    match = _MD5_PATTERN.search(text)
    if match is None:
        raise DownloadError(f"list source {source.name!r}: {url} holds no MD5")
    published = match.group(1).decode().lower()
    if published != md5:
        # The archive may have been replaced during the download: worth another try.
        raise DownloadError(f"list source {source.name!r}: MD5 mismatch: the download's is {md5}, "
                            f"{url} says {published}", retry=True)


# ---- redirects, checked one by one ----------------------------------------------------------


@contextlib.asynccontextmanager
async def _get(session: aiohttp.ClientSession, url: str, label: str, *,
               headers: dict[str, str] | None = None, timeout: float
               ) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET `url`, following at most MAX_REDIRECTS redirects, each checked first (module doc)."""
    current = URL(url)
    allowed: frozenset[str] | None = None  # kinds of address the configured URL has
    for _ in range(MAX_REDIRECTS + 1):
        async with session.get(current, headers=headers, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            location = response.headers.get("Location")
            if response.status not in _REDIRECT_STATUSES or not location:
                yield response
                return
            target = current.join(URL(location))
        if allowed is None:
            allowed = await _address_kinds(URL(url), label)
        await _check_redirect(current, target, allowed, label)
        current = target
    raise DownloadError(f"{label}: more than {MAX_REDIRECTS} redirects from {url}")


async def _check_redirect(current: URL, target: URL, allowed: frozenset[str], label: str) -> None:
    if target.scheme not in ("http", "https") or not target.host:
        raise DownloadError(f"{label}: {current} redirects to {target}, which is not an HTTP URL")
    if current.scheme == "https" and target.scheme != "https":
        raise DownloadError(f"{label}: {current} redirects to {target}: a redirect from https to "
                            "http is refused (the list would travel unprotected)")
    forbidden = await _address_kinds(target, label) - allowed - {"public"}
    if forbidden:
        raise DownloadError(f"{label}: {current} redirects to {target}, a {sorted(forbidden)[0]} "
                            "address; refused, since the configured URL is not one")


def _kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_private or address.is_unspecified or address.is_reserved \
            or address.is_multicast or address in _SHARED:
        return "private"
    return "public"


_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not public either


async def _address_kinds(url: URL, label: str) -> frozenset[str]:
    """The kinds of the addresses the URL's host has (an address, or the names it resolves to)."""
    host = (url.host or "").strip("[]")
    try:
        return frozenset({_kind(ipaddress.ip_address(host))})
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, url.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DownloadError(f"{label}: cannot resolve {host}: {exc}", retry=True) from exc
    return frozenset(_kind(ipaddress.ip_address(info[4][0].partition("%")[0])) for info in infos)


def is_ut1_home(source: ListSource) -> bool:
    """A source downloaded from the UT1 collection's own server, whose maintainers ask that
    scheduled downloads avoid their working hours."""
    host = (urlsplit(source.url).hostname or "") if source.url else ""
    return host == "ut-capitole.fr" or host.endswith(".ut-capitole.fr")
