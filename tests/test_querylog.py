"""query_log modes with real DNS queries: off, aggregate (counts and top blocked registrable
domains), full (entries under a daily-keyed pseudonym, scope); retention purged by the server on
a settable clock; `classguard device data` then `device erase` leaving nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from pathlib import Path

import pytest

from blocklists.settings import ListSource
from classguard.config import ConfigError, load_config
from privacy.querylog import (
    EmbeddedQueryLogStore, QueryLog, QueryLogSettings, pseudonym, subject_of,
)
from resolver.chain import Client
from resolver.record import RecordLink
from tests.conftest import PUPILS, STAFF, TEST_LISTS
from tests.serving import CLASSGUARD
from tests.test_metrics import (
    DEVICE_ADDRESS, DEVICE_ID, METRICS, POLICY_WITH_DEVICE, samples, scrape, value,
)

DAY = 86400.0
BASE = 1_796_034_000.0  # 2026-11-30 10:20 UTC: a Monday morning
FULL = {"query_log": {"mode": "full", "retention_days": 7, "scope": "school"}}
PSL_LISTS = TEST_LISTS + (
    ListSource(name="psl", format="domains", category="adult",
               domains=("naughty.co.uk", "someone.blogspot.com")),
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def day_of(moment: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(moment, dt.timezone.utc).date().isoformat()


def folder(tmp_path: Path) -> Path:
    return tmp_path / "state" / "querylog"


def every_file_text(tmp_path: Path) -> str:
    return "".join(path.read_text() for path in sorted(folder(tmp_path).iterdir())
                   if path.is_file() and path.name != "lock")


def full_entries(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder(tmp_path).glob("full-*.jsonl"))
            for line in path.read_text().splitlines()]


async def wait_for(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the query log did not get there in time")


async def test_aggregate_is_the_default_counts_per_class_category_hour_and_top_domains(
        make_resolver, tmp_path):
    clock = Clock(BASE)
    resolver = await make_resolver(POLICY_WITH_DEVICE, sources=PSL_LISTS, settings=METRICS)
    log = resolver.service.query_log
    assert log.settings == QueryLogSettings("aggregate", 7, "school")
    log.clock = clock
    for name in ("adult.example", "www.adult.example", "a.b.naughty.co.uk", "www.naughty.co.uk",
                 "x.someone.blogspot.com", "gambling.example", "example.com", "denied.example"):
        await resolver.query(name, source=PUPILS)
    await resolver.query("adult.example", source=DEVICE_ADDRESS, tcp=True)
    await resolver.query("example.com", source=STAFF)
    await resolver.query("example.com", source="127.0.0.9")  # unknown: refused
    await log.flush()

    assert not list(folder(tmp_path).glob("full-*"))  # nothing per device
    data = json.loads((folder(tmp_path) / f"aggregate-{day_of(BASE)}.json").read_text())
    assert data["hours"] == {
        "pupils": {"10": {"category:adult": 6, "category:gambling": 1, "deny": 1,
                          "forwarded": 1}},
        "staff": {"10": {"cached": 1}},
        "unknown": {"10": {"refused": 1}},
    }
    # Registrable domains by the Public Suffix List: co.uk is a suffix, so is blogspot.com.
    assert data["top_blocked"] == {"pupils": {
        "adult.example": 3, "naughty.co.uk": 2, "someone.blogspot.com": 1,
        "gambling.example": 1, "denied.example": 1}}
    text = every_file_text(tmp_path)
    for secret in (PUPILS, STAFF, DEVICE_ADDRESS, DEVICE_ID, "127.0.0.9"):
        assert secret not in text
    found = samples((await scrape(resolver.service))[2])
    assert value(found, "classguard_query_log_events_total") == 11
    assert value(found, "classguard_query_log_dropped_total") == 0


async def test_off_keeps_nothing(make_resolver, tmp_path):
    resolver = await make_resolver(settings={"query_log": {"mode": "off", "retention_days": 7,
                                                           "scope": "school"}})
    service = resolver.service
    assert service.link(RecordLink).query_log is None  # both paths hand answers over there
    for name in ("adult.example", "example.com", "example.com"):
        await resolver.query(name)
    await service.query_log.flush()
    assert service.query_log.logged == 0
    assert not folder(tmp_path).exists() or not list(folder(tmp_path).glob("*-*"))


async def test_full_entries_carry_a_pseudonym_that_changes_every_day(make_resolver, tmp_path):
    clock = Clock(BASE)
    resolver = await make_resolver(POLICY_WITH_DEVICE, settings=FULL)
    log = resolver.service.query_log
    log.clock = clock
    await resolver.query("example.com", source=DEVICE_ADDRESS)  # a device with an address
    await resolver.query("adult.example", source=DEVICE_ADDRESS)  # fast path: a block
    await resolver.query("gambling.example", source=PUPILS)  # known by its network only
    await log.flush()
    clock.now = BASE + DAY
    await resolver.query("example.com", source=DEVICE_ADDRESS)  # fast path: a cache hit
    await log.flush()

    keys = {day: bytes.fromhex(key) for day, key in
            json.loads((folder(tmp_path) / "keys.json").read_text()).items()}
    first, second = day_of(BASE), day_of(BASE + DAY)
    assert sorted(keys) == [first, second]
    device_first = pseudonym(keys[first], DEVICE_ID)
    device_second = pseudonym(keys[second], DEVICE_ID)
    assert device_first != device_second  # the key rotated: days cannot be linked without it
    entries = full_entries(tmp_path)
    assert [(entry["device"], entry["name"], entry["result"], entry["reason"]) for entry in entries] == [
        (device_first, "example.com", "forwarded", None),
        (device_first, "adult.example", "blocked", "category:adult"),
        (pseudonym(keys[first], subject_of(PUPILS)), "gambling.example", "blocked",
         "category:gambling"),
        (device_second, "example.com", "cached", None),
    ]
    assert {entry["class"] for entry in entries} == {"pupils"}
    assert entries[0]["t"] == BASE and entries[-1]["t"] == BASE + DAY
    text = every_file_text(tmp_path)
    assert DEVICE_ID not in text and DEVICE_ADDRESS not in text and PUPILS not in text


@pytest.mark.parametrize(("scope", "logged_at_home"), [("school", False), ("all", True)])
async def test_scope_school_never_logs_a_device_at_home(tmp_path, scope, logged_at_home):
    log = QueryLog(QueryLogSettings("full", 7, scope), EmbeddedQueryLogStore(tmp_path / "state"),
                   clock=Clock(BASE))
    tablet = Client("pupils", DEVICE_ID, "home", "token")
    log.offer("doh", tablet, "198.51.100.7", "example.com", "forwarded", None)
    log.offer("udp", Client("pupils", DEVICE_ID, "school", "device address"), DEVICE_ADDRESS,
              "example.com", "forwarded", None)
    await log.flush()
    entries = full_entries(tmp_path)
    assert [entry["scope"] for entry in entries] == (["home", "school"] if logged_at_home
                                                     else ["school"])
    counts = json.loads((folder(tmp_path) / f"aggregate-{day_of(BASE)}.json").read_text())
    assert counts["hours"]["pupils"]["10"] == {"forwarded": 2}  # counted either way


async def test_retention_is_enforced_by_the_server_on_its_clock(make_resolver, tmp_path):
    clock = Clock(BASE)
    resolver = await make_resolver(POLICY_WITH_DEVICE, settings=FULL)
    log = resolver.service.query_log
    log.clock, log.drain_interval = clock, 0.02
    await resolver.query("example.com", source=DEVICE_ADDRESS)
    await wait_for(lambda: log.entries_written == 1)
    clock.now = BASE + 3 * DAY
    await resolver.query("adult.example", source=DEVICE_ADDRESS)
    await wait_for(lambda: log.entries_written == 2)
    await log.flush()
    names = sorted(path.name for path in folder(tmp_path).iterdir())
    assert names == [f"aggregate-{day_of(BASE)}.json", f"aggregate-{day_of(BASE + 3 * DAY)}.json",
                     f"full-{day_of(BASE)}.jsonl", f"full-{day_of(BASE + 3 * DAY)}.jsonl",
                     "keys.json", "lock"]

    clock.now = BASE + 8 * DAY  # the first day is now more than 7 days old
    await wait_for(lambda: log.purged == 1)
    names = sorted(path.name for path in folder(tmp_path).iterdir())
    assert names == [f"aggregate-{day_of(BASE + 3 * DAY)}.json",
                     f"full-{day_of(BASE + 3 * DAY)}.jsonl", "keys.json", "lock"]
    keys = json.loads((folder(tmp_path) / "keys.json").read_text())
    assert list(keys) == [day_of(BASE + 3 * DAY)]  # that day's key went with its entries

    clock.now = BASE + 11 * DAY
    await wait_for(lambda: log.purged == 2)
    assert sorted(path.name for path in folder(tmp_path).iterdir()) == ["keys.json", "lock"]
    assert json.loads((folder(tmp_path) / "keys.json").read_text()) == {}
    found = samples((await scrape_if(resolver.service)))
    assert found == {}  # no metrics section: no server


async def scrape_if(service) -> str:
    return "" if service.metrics is None else (await scrape(service))[2]


async def test_a_full_buffer_drops_and_counts_and_answers_do_not_wait(make_resolver):
    resolver = await make_resolver(settings={**METRICS, **FULL})
    log = resolver.service.query_log
    log.buffer_limit = 0
    for name in ("example.com", "adult.example", "example.com"):
        assert (await resolver.query(name)).answer
    assert log.dropped == 3
    found = samples((await scrape(resolver.service))[2])
    assert value(found, "classguard_query_log_dropped_total") == 3


async def test_aggregate_counts_are_never_dropped_only_a_blocks_name(make_resolver, tmp_path):
    clock = Clock(BASE)
    resolver = await make_resolver(settings=METRICS)
    log = resolver.service.query_log
    log.clock = clock
    log.buffer_limit = 0  # no room for the names that wait for the top blocked domains
    for name in ("example.com", "adult.example", "example.com"):
        assert (await resolver.query(name)).answer
    await log.flush()
    assert log.dropped == 1
    data = json.loads((folder(tmp_path) / f"aggregate-{day_of(BASE)}.json").read_text())
    assert data["hours"] == {"pupils": {"10": {"category:adult": 1, "forwarded": 1, "cached": 1}}}
    assert data["top_blocked"] == {}


async def run_cli(folder_: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        CLASSGUARD, *args, cwd=folder_, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "CLASSGUARD_CONFIG": ""})
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, stdout.decode(), stderr.decode()


SCREEN_TIME_POLICY = POLICY_WITH_DEVICE.replace(
    "    safe_search: strict\n", "    safe_search: strict\n    screen_time: {daily_minutes: 120}\n")


async def test_device_data_then_erase_leaves_nothing_behind(make_resolver, tmp_path):
    clock = Clock(BASE)
    resolver = await make_resolver(SCREEN_TIME_POLICY, settings=FULL, clock=clock)
    log = resolver.service.query_log
    log.clock = clock
    await resolver.query("example.com", source=DEVICE_ADDRESS)
    await resolver.query("adult.example", source=DEVICE_ADDRESS)
    await resolver.query("gambling.example", source=PUPILS)
    await log.flush()
    await resolver.service.state.screen_time.flush(clock())
    clock.now = BASE + DAY
    await resolver.query("www.example.com", source=DEVICE_ADDRESS)
    await log.flush()
    await resolver.service.state.screen_time.flush(clock())
    (tmp_path / "classguard.yaml").write_text(textwrap.dedent("""\
        state_dir: state
        policies: policy.yaml
        query_log: {mode: full, retention_days: 7}
        """))

    code, out, err = await run_cli(tmp_path, "device", "data", DEVICE_ID)
    assert code == 0, err
    data = json.loads(out)
    assert data["device"] == DEVICE_ID
    assert [entry["name"] for entry in data["query_log"]["entries"]] == [
        "example.com", "adult.example", "www.example.com"]
    assert sorted(data["query_log"]["pseudonyms"]) == [day_of(BASE), day_of(BASE + DAY)]
    assert data["stats"] == {day_of(BASE): {"forwarded": 1, "blocked": 1},
                             day_of(BASE + DAY): {"forwarded": 1}}
    assert data["device_record"] == {"class": "pupils", "addresses": [DEVICE_ADDRESS]}
    minute = int(BASE % DAY) // 60
    assert data["screen_time_minutes"] == {day_of(BASE): [minute], day_of(BASE + DAY): [minute]}
    pseudonyms = list(data["query_log"]["pseudonyms"].values())

    code, out, err = await run_cli(tmp_path, "device", "erase", DEVICE_ID)
    assert (code, out) == (0, f"device {DEVICE_ID}: 3 query log entries erased; its record "
                              "removed from the policy; its screen-time minutes of 2 day(s) "
                              "erased\n"), err

    code, out, _ = await run_cli(tmp_path, "device", "data", DEVICE_ID)
    after = json.loads(out)
    assert after["query_log"]["entries"] == [] and after["screen_time_minutes"] == {}
    assert after["device_record"] is None
    # Nothing of the device in any file under state_dir but the audit trail, which records
    # that it was erased.
    for path in sorted((tmp_path / "state").rglob("*")):
        if not path.is_file() or path.name in ("audit.jsonl", "lists.bin"):
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for secret in (DEVICE_ID, DEVICE_ADDRESS, *pseudonyms):
            assert secret not in text, (path, secret)
    audit = (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    assert [line for line in audit if DEVICE_ID in line] == \
        [line for line in audit if '"device.erase"' in line]
    from admin.control import os_user

    assert {json.loads(line)["actor"] for line in audit if '"device.erase"' in line} == {os_user()}
    # Another pupil's entries stay; a client known by its network is found by its address.
    code, out, _ = await run_cli(tmp_path, "device", "data", PUPILS)
    assert [entry["name"] for entry in json.loads(out)["query_log"]["entries"]] == ["gambling.example"]


def test_config_checks_query_log_metrics_and_logging(tmp_path):
    path = tmp_path / "classguard.yaml"
    path.write_text("query_log: off\nmetrics: {listen: \"127.0.0.1:9153\"}\nlogging: {format: json}\n")
    config = load_config(path)
    assert config.query_log == {"mode": "off", "retention_days": 7, "scope": "school"}
    assert config.logging == {"format": "json", "level": "info"}
    assert QueryLogSettings.from_section(load_config(None).query_log).mode == "aggregate"
    path.write_text(textwrap.dedent("""\
        query_log: {mode: everything, retention_days: 0, scope: home, keep: forever}
        metrics: {port: 9153}
        logging: {format: xml}
        """))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    errors = [error.removeprefix(f"{path}:") for error in caught.value.errors]
    assert errors == [
        "1: unknown key 'keep' in query_log (allowed: mode, retention_days, scope)",
        "1: query_log.mode: expected off | aggregate | full, not 'everything'",
        "1: query_log.retention_days: expected a whole number from 1 to 3660, not 0",
        "1: query_log.scope: expected school | all, not 'home'",
        "2: unknown key 'port' in metrics (allowed: listen)",
        "2: metrics needs listen: (IP:PORT for /metrics, /healthz and /readyz, e.g. 127.0.0.1:9153)",
        "3: logging.format: expected text | json, not 'xml'",
    ]
