"""A whole refresh: sources served by a real HTTP server, compiled, kept under state_dir, reported."""

from __future__ import annotations

import hashlib
import io
import logging
import sys
import tarfile
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from blocklists import download, update
from blocklists.bundled import load_bundled
from blocklists.settings import BlocklistSettings, ListSource
from blocklists.update import (
    UpdateError, UpdateReport, quiet_until, read_status, refresh_delay, update_lists,
)
from classguard import cli
from classguard.config import Config
from tests.test_list_sources import add_file, add_link

BUNDLED = load_bundled()


def _where(config):
    """update_lists' first two arguments, from a whole configuration."""
    return config.blocklists, config.state_dir


def ut1_archive(adult: list[str], *, extra: dict[str, str] | None = None) -> bytes:
    """A UT1-layout archive, with UT1's `porn -> adult` link and two members that try to escape."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        add_file(archive, "blacklists/adult/domains", "\n".join(adult) + "\n")
        add_file(archive, "blacklists/adult/usage", "black\n")
        add_file(archive, "blacklists/adult/urls", "example.org/adult/page\n")
        add_file(archive, "blacklists/child/domains", "kids.example\n")
        add_file(archive, "blacklists/child/usage", "white\n")
        add_link(archive, "blacklists/porn", "adult")
        add_file(archive, "../evil/domains", "evil.example\n")
        add_link(archive, "blacklists/escape", "../../etc")
        for name, text in (extra or {}).items():
            add_file(archive, name, text)
    return buffer.getvalue()


METRICS = """\
# HELP classguard_dns_queries_total DNS queries answered.
# TYPE classguard_dns_queries_total counter
classguard_dns_queries_total{result="allowed"} 1234
classguard_dns_queries_total{result="blocked"} 56
process_resident_memory_bytes 5.1e+07
classguard_lists_entries 42
"""


class ListSite:
    def __init__(self) -> None:
        self.archive = ut1_archive(["porn.example", "www.xxx.example"])
        self.ads = b"||ads.example^\n"
        self.md5: str | None = "right"  # "right", None (not published) or a wrong value
        self.archive_status = 200
        self.archive_bodies = 0
        self.archive_requests = 0
        self.ads_moved_to: str | None = None

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=METRICS)

    async def blacklists(self, request: web.Request) -> web.Response:
        self.archive_requests += 1
        if self.archive_status != 200:
            return web.Response(status=self.archive_status)
        etag = '"' + hashlib.sha1(self.archive).hexdigest() + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304)
        self.archive_bodies += 1
        return web.Response(body=self.archive, headers={"ETag": etag})

    async def blacklists_md5(self, request: web.Request) -> web.Response:
        if self.md5 is None:
            return web.Response(status=404)
        value = hashlib.md5(self.archive).hexdigest() if self.md5 == "right" else self.md5
        return web.Response(text=f"{value}  blacklists.tar.gz\n")

    async def ads_list(self, request: web.Request) -> web.Response:
        if self.ads_moved_to:
            raise web.HTTPFound(self.ads_moved_to)
        etag = '"' + hashlib.sha1(self.ads).hexdigest() + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304)
        return web.Response(body=self.ads, headers={"ETag": etag})


@pytest.fixture
async def site() -> AsyncIterator[tuple[ListSite, TestServer]]:
    state = ListSite()
    app = web.Application()
    app.router.add_get("/blacklists.tar.gz", state.blacklists)
    app.router.add_get("/blacklists.tar.gz.md5", state.blacklists_md5)
    app.router.add_get("/ads.txt", state.ads_list)
    app.router.add_get("/metrics", state.metrics)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield state, server
    await server.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "BACKOFF_SECONDS", 0.01)


def make_config(tmp_path: Path, *sources: ListSource) -> Config:
    return Config(state_dir=tmp_path / "state",
                  blocklists=BlocklistSettings(sources=sources, bundled=False, download_timeout=5))


def sources_of(server: TestServer) -> tuple[ListSource, ListSource]:
    return (ListSource(name="ut1", format="ut1", url=str(server.make_url("/blacklists.tar.gz"))),
            ListSource(name="ads", format="adblock", category="ads",
                       url=str(server.make_url("/ads.txt"))))


def status_of(report: UpdateReport, name: str):
    return next(source for source in report.sources if source.name == name)


async def test_first_fill_then_a_second_update_downloads_nothing(site, tmp_path: Path) -> None:
    state, server = site
    config = make_config(tmp_path, *sources_of(server))
    lists, report = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    assert report.compiled and not report.failed
    assert lists.categories_of("www.porn.example") == {"adult": "porn.example",
                                                       "porn": "porn.example"}
    assert lists.categories_of("cdn.ads.example") == {"ads": "ads.example"}
    assert lists.categories_of("evil.example") == {}  # the `../` member was skipped
    assert lists.categories["child"] == "white"
    ut1 = status_of(report, "ut1")
    assert ut1.outcome == "downloaded" and ut1.last_success == report.checked_at
    assert ut1.categories["adult"].entries == 2 and ut1.categories["adult"].skipped == 1
    assert set(ut1.categories) == {"adult", "porn", "child"}

    again, second = await update_lists(config.blocklists, config.state_dir, BUNDLED, current=lists)
    assert state.archive_bodies == 1  # the second request got a 304
    assert again is lists  # nothing changed: the same table, no second copy
    assert not second.compiled
    assert [status_of(second, name).outcome for name in ("ut1", "ads")] == ["not_modified"] * 2
    assert status_of(second, "ut1").categories["adult"].entries == 2  # carried forward


async def test_a_changed_archive_is_compiled_in(site, tmp_path: Path) -> None:
    state, server = site
    config = make_config(tmp_path, *sources_of(server))
    await update_lists(config.blocklists, config.state_dir, BUNDLED)
    state.archive = ut1_archive(["porn.example", "new.example"])
    lists, report = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    assert report.compiled
    assert lists.categories_of("new.example")
    assert not lists.categories_of("www.xxx.example")


async def test_a_failing_server_keeps_that_source_while_others_refresh(site, tmp_path: Path,
                                                                       caplog) -> None:
    state, server = site
    config = make_config(tmp_path, *sources_of(server))
    await update_lists(config.blocklists, config.state_dir, BUNDLED)
    state.archive_status = 500
    state.ads = b"||ads.example^\n||more-ads.example^\n"
    before = state.archive_requests
    with caplog.at_level(logging.ERROR, "classguard.lists"):
        lists, report = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    assert state.archive_requests - before == download.ATTEMPTS  # retried, then given up
    assert lists.categories_of("porn.example")  # the previous download of ut1, compiled again
    assert lists.categories_of("more-ads.example") == {"ads": "more-ads.example"}
    ut1 = status_of(report, "ut1")
    assert ut1.failed and ut1.using_previous
    assert "HTTP 500" in (ut1.error or "") and ut1.last_error_at == report.checked_at
    assert ut1.last_success is not None and ut1.last_success < report.checked_at
    assert "its previous download stays in use" in caplog.text
    assert read_status(config.state_dir).sources[0].last_error == ut1.error


async def test_a_failing_server_on_the_first_fill_is_an_error(site, tmp_path: Path) -> None:
    state, server = site
    state.archive_status = 503
    config = make_config(tmp_path, sources_of(server)[0])
    with pytest.raises(UpdateError, match="no list source could be read.*HTTP 503"):
        await update_lists(config.blocklists, config.state_dir, BUNDLED)
    status = read_status(config.state_dir)
    assert status is not None and status.failed[0].name == "ut1"
    assert not (config.state_dir / "lists.bin").exists()


@pytest.mark.parametrize(
    "breakage", ["corrupt", "wrong-md5"],
)
async def test_a_bad_download_keeps_the_previous_content(site, tmp_path: Path,
                                                         breakage: str) -> None:
    state, server = site
    config = make_config(tmp_path, *sources_of(server))
    await update_lists(config.blocklists, config.state_dir, BUNDLED)
    kept = (config.state_dir / "sources" / "ut1" / "body").read_bytes()
    if breakage == "corrupt":
        state.archive = b"\x1f\x8b\x08\x00" + b"not really gzip" * 100  # its MD5 is published
    else:
        state.archive = ut1_archive(["other.example"])
        state.md5 = "0123456789abcdef0123456789abcdef"
    lists, report = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    ut1 = status_of(report, "ut1")
    assert ut1.failed and ut1.using_previous
    assert ("cannot read" if breakage == "corrupt" else "MD5 mismatch") in (ut1.error or "")
    assert lists.categories_of("porn.example")
    assert not lists.categories_of("other.example")
    assert (config.state_dir / "sources" / "ut1" / "body").read_bytes() == kept
    assert not (config.state_dir / "sources" / "ut1" / "body.new").exists()


async def test_the_md5_may_be_unpublished(site, tmp_path: Path) -> None:
    state, server = site
    state.md5 = None
    lists, report = await update_lists(*_where(make_config(tmp_path, sources_of(server)[0])), BUNDLED)
    assert not report.failed and lists.categories_of("porn.example")


async def test_archive_links_resolve_inside_and_escapes_are_skipped(site, tmp_path: Path,
                                                                    caplog) -> None:
    state, server = site
    state.archive = ut1_archive(["porn.example"], extra={
        "blacklists/../../outside/domains": "outside.example\n",
        "/abs/blacklists/x/domains": "absolute.example\n",
    })
    with caplog.at_level(logging.WARNING, "classguard.lists"):
        lists, _ = await update_lists(*_where(make_config(tmp_path, sources_of(server)[0])), BUNDLED)
    assert lists.categories_of("porn.example") == {"adult": "porn.example", "porn": "porn.example"}
    for name in ("evil.example", "outside.example", "absolute.example"):
        assert lists.categories_of(name) == {}
    assert "skipped 4 archive member(s)" in caplog.text


async def test_a_local_file_that_vanishes_keeps_the_previous_lists_whole(tmp_path: Path) -> None:
    listed = tmp_path / "games.txt"
    listed.write_text("game.example\n")
    config = make_config(tmp_path, ListSource(name="games", format="domains", category="games",
                                              path=str(listed)),
                         ListSource(name="chat", format="domains", category="chat",
                                    domains=("chat.example",)))
    lists, _ = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    listed.unlink()
    again, report = await update_lists(config.blocklists, config.state_dir, BUNDLED, current=lists)
    assert report.kept_previous and "games gave nothing" in (report.error or "")
    assert again is lists and again.categories_of("game.example")
    assert status_of(report, "games").failed
    assert read_status(config.state_dir).kept_previous


async def test_a_local_file_edit_is_seen(tmp_path: Path) -> None:
    listed = tmp_path / "games.txt"
    listed.write_text("game.example\n")
    config = make_config(tmp_path, ListSource(name="games", format="domains", category="games",
                                              path=str(listed)))
    lists, _ = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    _, unchanged = await update_lists(config.blocklists, config.state_dir, BUNDLED, current=lists)
    assert not unchanged.compiled
    listed.write_text("game.example\nother-game.example\n")
    again, changed = await update_lists(config.blocklists, config.state_dir, BUNDLED, current=lists)
    assert changed.compiled and again.categories_of("other-game.example")


async def test_bundled_starter_lists_report_as_one_source(tmp_path: Path) -> None:
    config = Config(state_dir=tmp_path / "state")
    lists, report = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    [starter] = report.sources
    assert starter.name == "starter" and starter.kind == "bundled"
    assert "adult" in starter.categories and lists.categories_of("www.pornhub.com")


@pytest.mark.parametrize(
    ("clock", "until"),
    [
        ("2026-11-02T07:59:59", None),
        ("2026-11-02T08:00:00", "2026-11-02T19:00:00"),
        ("2026-11-02T18:59:00", "2026-11-02T19:00:00"),
        ("2026-11-02T19:00:00", None),
        ("2026-11-02T23:30:00", None),
    ],
)
def test_quiet_hours_are_gmt(clock: str, until: str | None) -> None:
    def utc(text: str) -> float:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()

    assert quiet_until(utc(clock)) == (None if until is None else utc(until))


async def test_a_scheduled_refresh_from_ut1_home_waits_for_the_evening(
    site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, server = site
    monkeypatch.setattr(download, "is_ut1_home", lambda source: source.name == "ut1")
    config = make_config(tmp_path, *sources_of(server))
    noon = datetime(2026, 11, 2, 12, tzinfo=timezone.utc).timestamp()
    evening = datetime(2026, 11, 2, 19, tzinfo=timezone.utc).timestamp()
    await update_lists(config.blocklists, config.state_dir, BUNDLED, scheduled=True, now=noon)  # first fill: at once
    assert state.archive_bodies == 1
    state.archive = ut1_archive(["later.example"])
    lists, report = await update_lists(config.blocklists, config.state_dir, BUNDLED, scheduled=True, now=noon + 60)
    assert state.archive_requests == 1  # not asked
    ut1 = status_of(report, "ut1")
    assert ut1.outcome == "deferred" and ut1.deferred_until == evening
    assert refresh_delay(report, 86400, now=noon + 60) == evening - noon - 60
    assert lists.categories_of("porn.example")
    lists, _ = await update_lists(config.blocklists, config.state_dir, BUNDLED, now=noon + 120)  # `lists update`: at once
    assert lists.categories_of("later.example")


def test_refresh_delay() -> None:
    ok = UpdateReport(checked_at=1000.0)
    assert refresh_delay(None, 3600, now=5000) == 0
    assert refresh_delay(ok, 3600, now=1000) == 3600
    assert refresh_delay(ok, 3600, now=9000) == 0  # overdue (a restart after a long stop)
    assert refresh_delay(ok, 3600, failures=1, now=1000) == 60
    assert refresh_delay(ok, 3600, failures=3, now=1000) == 240
    assert refresh_delay(ok, 300, failures=9, now=1000) == 300


async def test_every_compile_runs_in_a_worker_process(site, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, server = site
    seen: list[str] = []
    lists, report = await update_lists(*_where(make_config(tmp_path, *sources_of(server))), BUNDLED,
                                       progress=lambda phase, *rest: seen.append(phase))
    assert report.compiled
    assert lists.categories_of("www.porn.example") == {"adult": "porn.example",
                                                       "porn": "porn.example"}
    assert "download" in seen and "merge" in seen  # the worker's progress reaches the caller
    assert not (tmp_path / "state" / "build").exists()


async def test_a_worker_that_dies_keeps_the_previous_lists(site, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    state, server = site
    config = make_config(tmp_path, *sources_of(server))
    lists, _ = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    monkeypatch.setattr(update, "WORKER_COMMAND",
                        (sys.executable, "-c", "import sys; print('killed', file=sys.stderr); "
                                               "sys.exit(9)"))
    state.archive = ut1_archive(["new.example"])
    again, report = await update_lists(config.blocklists, config.state_dir, BUNDLED, current=lists)
    assert report.kept_previous and "exit status 9): killed" in (report.error or "")
    assert again is lists
    # The new download was not kept, so the next refresh asks for it again.
    assert (config.state_dir / "sources" / "ut1" / "meta.json").read_text().count(
        hashlib.sha1(state.archive).hexdigest()) == 0


async def test_the_worker_runs_within_a_memory_limit(site, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    state, server = site
    config = make_config(tmp_path, *sources_of(server))
    lists, _ = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    # Below what the interpreter already maps: the compile's first allocations fail at once.
    monkeypatch.setattr(update, "COMPILE_MEMORY_BYTES", 16 << 20)
    state.archive = ut1_archive([f"name{number}.example" for number in range(20000)])
    again, report = await update_lists(config.blocklists, config.state_dir, BUNDLED, current=lists)
    assert report.kept_previous, report.error
    assert "the compile needed more than its 16 MiB of memory" in (report.error or "")
    assert again is lists and again.categories_of("porn.example")


async def test_a_worker_that_runs_too_long_is_stopped(site, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    state, server = site
    config = make_config(tmp_path, *sources_of(server))
    lists, _ = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    monkeypatch.setattr(update, "COMPILE_SECONDS", 0.5)
    monkeypatch.setattr(update, "WORKER_COMMAND", (sys.executable, "-c", "import time; time.sleep(60)"))
    state.archive = ut1_archive(["new.example"])
    started = time.monotonic()
    again, report = await update_lists(config.blocklists, config.state_dir, BUNDLED, current=lists)
    assert time.monotonic() - started < 10
    assert report.kept_previous and "took longer than 0.5 s" in (report.error or "")
    assert again is lists


@pytest.mark.parametrize("served", ["metrics", "html"])
async def test_a_body_that_is_not_a_list_is_refused_whole(site, tmp_path: Path,
                                                          served: str) -> None:
    state, server = site
    _, ads = sources_of(server)
    config = make_config(tmp_path, ads)
    lists, _ = await update_lists(config.blocklists, config.state_dir, BUNDLED)
    assert lists.categories_of("www.ads.example") == {"ads": "ads.example"}
    if served == "metrics":  # a redirect on the same host, to its metrics (issue 20, item 5)
        state.ads_moved_to = "/metrics"
        why = "(4 bad lines for 0 entries; line 3: expected an address then names"
    else:  # a captive portal's or a CDN's error page
        state.ads = b"\n<!doctype html>\n<html><body><a href=/login>log in</a></body></html>\n"
        why = "(it begins with '<', like an HTML or XML page)"
    again, report = await update_lists(config.blocklists, config.state_dir, BUNDLED,
                                       current=lists)
    status = status_of(report, "ads")
    assert status.failed and status.using_previous
    assert (f"list source 'ads': the download of {ads.url} is not a list in the adblock format "
            f"{why}") in status.error
    assert status.error.endswith("none of it is used")
    assert again.categories_of("www.ads.example") == {"ads": "ads.example"}  # still blocked
    assert read_status(config.state_dir).sources[0].last_error == status.error


async def test_lists_status_command(site, tmp_path: Path, capsys) -> None:
    state, server = site
    ut1, ads = sources_of(server)
    (tmp_path / "classguard.yaml").write_text(textwrap.dedent(f"""\
        state_dir: state
        blocklists:
          bundled: false
          sources:
            - {{name: ut1, url: "{ut1.url}", format: ut1}}
            - {{name: ads, url: "{ads.url}", format: adblock, category: ads}}
        """))
    config_file = str(tmp_path / "classguard.yaml")
    assert cli.main(["lists", "status", "-c", config_file]) == 1
    assert "no list refresh recorded" in capsys.readouterr().err
    await update_lists(*_where(cli.load_config(Path(config_file))), BUNDLED)
    state.archive_status = 404
    await update_lists(*_where(cli.load_config(Path(config_file))), BUNDLED)
    assert cli.main(["lists", "status", "-c", config_file]) == 0
    out = capsys.readouterr().out
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows[0] == ["source", "category", "entries", "age", "last success", "last error"]
    adult = next(row for row in rows if row[:2] == ["ut1", "adult"])
    assert adult[2] == "2" and adult[3] == "0m" and adult[4].endswith("UTC")
    assert "HTTP 404" in adult[5]
    ads_row = next(row for row in rows if row[0] == "ads")
    assert ads_row[1:3] == ["ads", "1"] and ads_row[5] == "-"


def test_terminal_progress_rewrites_one_line() -> None:
    stream = io.StringIO()
    progress = update.TerminalProgress(stream, interval=0)
    progress("download", "ut1", 2_500_000, 10_000_000)
    progress("parse", "ut1", 1_234_567, None)
    progress("merge", "", 128, 256)
    progress.close()
    assert stream.getvalue().split("\r\033[K") == [
        "", "ut1: downloading 2.5 MB of 10.0 MB", "compiling: 1,234,567 names read (ut1)",
        "compiling: merging 50 %", ""]


def test_terminal_progress_clears_its_line_before_a_log_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        progress = update.TerminalProgress(stream, interval=0)
        progress("parse", "ut1", 10, None)
        logging.getLogger("classguard.lists").warning("a warning")
        progress.close()
        logging.getLogger("classguard.lists").warning("after")
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue() == ("\r\033[Kcompiling: 10 names read (ut1)\r\033[Ka warning\n"
                                 "after\n")
