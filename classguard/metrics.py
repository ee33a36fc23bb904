"""Prometheus `/metrics`, `/healthz` and `/readyz` on `metrics.listen` (SPEC §6, §8).

The DNS path keeps plain integers (resolver.stats.QueryStats, the cache's hits and misses, each
upstream's counters); this collector reads them when Prometheus scrapes, in the event loop, so
nothing on the DNS path touches prometheus-client. Labels hold protocols, class ids, results,
block reasons and categories, upstream URLs as configured, list categories and sources: never a
client address, a device id or a queried name (tests/test_metrics.py scrapes and checks).

With `--workers N`, worker 0 serves the endpoints; every other worker writes its counters to
`state_dir/metrics/worker-N.json` every SHARE_INTERVAL and worker 0 adds them up, so counters
are the whole server's. Gauges about shared state (upstream health, lists, store) are worker 0's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric,
)
from prometheus_client.registry import Collector

from blocklists import update
from classguard.metric_shares import share_path
from classguard.version import build_info
from common.addresses import parse_listen
from resolver.forwarding import ForwardingResolver
from resolver.stats import LATENCY_BUCKETS, QueryStats

log = logging.getLogger("classguard.metrics")

PREFIX = "classguard_"
STORE_PROBE_TIMEOUT = 2.0  # seconds a readiness probe waits for the store
SHARE_INTERVAL = 2.0  # seconds between two writes of a worker's counters
SHARE_STALE = 30.0  # a worker whose file is older than this has stopped: left out
_SEP = "\x1f"  # joins label values in the shared files' keys
_REASON = re.compile(r"([a-z_]+)(?::([A-Za-z0-9._-]{1,64}))?")


def _stats(service) -> QueryStats | None:
    fast_path = getattr(service, "fast_path", None)
    if fast_path is not None:
        return fast_path.stats
    handler = getattr(service, "handler", None)
    return handler.stats if handler is not None else None


def _query_log(service):
    return getattr(service, "query_log", None)


def _refused(service) -> int | None:
    stats = _stats(service)
    if stats is None:
        return None
    return sum(count for (_, _, result), count in stats.queries.items() if result == "refused")


def _rate_limited(service) -> dict | int | None:
    counts = getattr(_stats(service), "rate_limited", None)
    if isinstance(counts, dict):
        return {(protocol,): count for protocol, count in list(counts.items())}
    return counts


# One line per simple family: (name, "counter" | "gauge", help, label names, reader(service)).
# A reader returns a number (no labels), a dict {(label values...): number}, or None while what
# it reads does not exist (the family is left out): a new counter is one line here once its
# integer exists (see docs/observability.md). Counters are added up across workers; gauges are
# worker 0's.
SIMPLE: tuple[tuple[str, str, str, tuple[str, ...], Callable], ...] = (
    ("fast_path_answers_total", "counter", "Answers given by the fast path (from raw bytes).", (),
     lambda s: getattr(_stats(s), "fast_answers", None)),
    ("refused_queries_total", "counter", "Queries answered REFUSED (unknown clients).", (),
     _refused),
    ("rate_limited_queries_total", "counter", "Queries refused by dns.rate_limit, by transport.",
     ("protocol",), _rate_limited),
    ("udp_dropped_replies_total", "counter",
     "UDP replies the kernel had no room to send (the client retries).", (),
     lambda s: sum(listener.dropped_replies for listener in s.udp_listeners)),
    ("lists_loaded", "gauge", "1 when blocklists are loaded (filtering by category works).", (),
     lambda s: int(s.state.lists_loaded)),
    ("list_refresh_period_seconds", "gauge", "blocklists.refresh: how often lists are refreshed.",
     (), lambda s: s.config.blocklists.refresh),
    ("policy_version", "gauge", "Version of the stored policy in force.", (),
     lambda s: getattr(getattr(s, "control", None), "policy_version", None)),
    ("query_log_events_total", "counter", "Answers handed to the query log.", (),
     lambda s: getattr(_query_log(s), "logged", None)),
    ("query_log_dropped_total", "counter",
     "Query log events dropped because its buffer was full (answers never wait for the log).",
     (), lambda s: getattr(_query_log(s), "dropped", None)),
    ("query_log_purged_total", "counter", "Query log entries deleted by retention.", (),
     lambda s: getattr(_query_log(s), "purged", None)),
)


def _family(name: str, kind: str, documentation: str, labels: Iterable[str] = ()) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(PREFIX + name.removesuffix("_total"), documentation,
                                   labels=list(labels))
    return GaugeMetricFamily(PREFIX + name, documentation, labels=list(labels))


def split_reason(reason: str) -> tuple[str, str]:
    """A block reason as (reason, category): "category:adult" -> ("category", "adult"),
    "service:tiktok" -> ("service", "tiktok"), "deny" -> ("deny", ""); anything else "other"."""
    match = _REASON.fullmatch(reason or "")
    if match is None:
        return "other", ""
    return match.group(1), match.group(2) or ""


def _shared_key(labels) -> str:
    return _SEP.join(labels) if isinstance(labels, tuple) else str(labels)


# The store's counters (SPEC §8: Redis connection state and dropped writes), from the store's
# `counters` mapping: (its key there, family, help, how workers' values combine). Events of the
# one shared Redis (an outage, a loss) are seen by every worker: the largest count is the
# server's. Work each worker does for itself (writes dropped, lists fetched) adds up.
STORE_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("outages", "store_outages_total", "Times the store became unreachable (the server kept "
     "answering from its snapshot).", "max"),
    ("reconnects", "store_reconnects_total", "Times the store answered again after an outage "
     "(the server then read it again).", "max"),
    ("lost_store", "store_lost_total", "Times Redis was found without the store (restarted "
     "empty, or a lagging replica promoted): SPEC §7's lost store.", "max"),
    ("restored", "store_rebuilds_total", "Times this server wrote its snapshot back into a "
     "lost store (it held the newest version).", "sum"),
    ("lists_published", "store_lists_published_total", "Compiled lists this server published "
     "in the store for the other instances.", "sum"),
    ("lists_fetched", "store_lists_fetched_total", "Compiled lists this server took from the "
     "store instead of compiling them.", "sum"),
)
# Writes held in memory while the store was away, dropped once their bounded buffer was full:
# (what, reader of this process's count).
STORE_DROPPED_WRITES: tuple[tuple[str, Callable], ...] = (
    ("screen_time", lambda s: _store_event_counts(s).get("minutes_dropped")),
    ("query_log", lambda s: getattr(_query_log(s), "store_dropped", None)),
)


def _store_event_counts(service) -> dict[str, int]:
    """The store's own counts (a Redis store's outages, losses, drops), {} for a store without."""
    counted = service.store_abilities.counters
    return {} if counted is None else counted.counters


def store_counters(service) -> dict[str, int]:
    """This process's store counters: {family name: n}, dropped writes as
    `store_dropped_writes_total<SEP>what`."""
    counts = _store_event_counts(service)
    found: dict[str, int] = {}
    if counts:
        for key, name, _, _ in STORE_COUNTERS:
            if key in counts:
                found[name] = counts[key]
    for what, reader in STORE_DROPPED_WRITES:
        value = reader(service)
        if value is not None:
            found[_SEP.join(("store_dropped_writes_total", what))] = value
    return found


def combine_store_counters(per_process: list[dict[str, int]]) -> dict[str, int]:
    """Worker 0's and the other workers' store counters as the server's."""
    how = {name: combine for _, name, _, combine in STORE_COUNTERS}
    total: dict[str, int] = {}
    for counts in per_process:
        for name, value in counts.items():
            if name not in total:
                total[name] = value
            elif how.get(name) == "max":
                total[name] = max(total[name], value)
            else:
                total[name] += value
    return total


def counters(service) -> dict:
    """This process's counters as plain data: what worker 0 reads live and the other workers
    write to their file."""
    stats = _stats(service)
    cache = service.link_cache() if service.chain is not None else None
    simple = {}
    for name, kind, _, _, reader in SIMPLE:
        value = reader(service) if kind == "counter" else None
        if isinstance(value, dict):
            simple[name] = {_shared_key(labels): number for labels, number in value.items()}
        elif value is not None:
            simple[name] = value
    return {
        "queries": {_SEP.join(key): count for key, count in list(stats.queries.items())}
        if stats is not None else {},
        "blocks": dict(stats.blocks) if stats is not None else {},
        "latency_counts": list(stats.latency_counts) if stats is not None
        else [0] * (len(LATENCY_BUCKETS) + 1),
        "latency_sum": stats.latency_sum if stats is not None else 0.0,
        "cache": {"hits": cache.hits, "misses": cache.misses, "entries": len(cache.entries),
                  "capacity": cache.max_entries} if cache is not None else {},
        "upstreams": {_SEP.join((zone, upstream.name)): [getattr(upstream, "answers", 0),
                                                         getattr(upstream, "errors", 0)]
                      for zone, group in upstream_groups(service) for upstream in group.upstreams},
        "simple": simple,
        "store": store_counters(service),
    }


def _add(total, more):
    """`more` added into `total` (nested dicts, lists and numbers of the same shape)."""
    if isinstance(more, dict):
        for key, value in more.items():
            total[key] = _add(total[key], value) if key in total else value
        return total
    if isinstance(more, list):
        return [_add(a, b) for a, b in zip(total, more)]
    return total + more


def write_share(service) -> None:
    """A worker other than 0: its counters where worker 0 reads them (replaced whole)."""
    path = share_path(service.config.state_dir, service.worker_index)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), **counters(service)}))
    os.replace(temporary, path)


def read_shares(service) -> list[dict]:
    """Worker 0: the counters the other running workers wrote."""
    if getattr(service, "workers", 1) <= 1:
        return []
    shares = []
    now = time.time()
    for worker in range(1, service.workers):
        path = share_path(service.config.state_dir, worker)
        try:
            if now - path.stat().st_mtime > SHARE_STALE:
                continue
            shares.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return shares


async def share_counters(service) -> None:
    """A worker other than 0, until cancelled: write its counters every SHARE_INTERVAL."""
    try:
        while True:
            await asyncio.sleep(SHARE_INTERVAL)
            try:
                write_share(service)
            except OSError as exc:
                log.warning("worker %d: cannot share its counters: %s", service.worker_index, exc)
    finally:
        with contextlib.suppress(OSError):
            write_share(service)  # the last counts, at stop


class ServiceCollector(Collector):
    """Every classguard_* family, read from the running Service at scrape time."""

    def __init__(self, service, probe: ReadinessProbe | None = None) -> None:
        self.service = service
        self.probe = probe
        self._status_cache: tuple[tuple, object] | None = None

    def collect(self) -> Iterable[Metric]:
        service = self.service
        total = counters(service)
        stores = [total.pop("store")]
        for share in read_shares(service):
            share.pop("pid", None)
            stores.append(share.pop("store", {}))
            total = _add(total, share)
        total["store"] = combine_store_counters(stores)
        yield self._build_info()
        yield from self._queries(total)
        yield from self._cache(total)
        yield from self._upstreams(service, total)
        yield from self._lists(service)
        yield from self._store(service, total["store"])
        for name, kind, documentation, labels, reader in SIMPLE:
            value = total["simple"].get(name) if kind == "counter" else reader(service)
            if value is None:
                continue
            family = _family(name, kind, documentation, labels)
            if isinstance(value, dict):
                for key, number in value.items():
                    family.add_metric(key.split(_SEP) if labels else [], number)
            else:
                family.add_metric([], value)
            yield family

    @staticmethod
    def _build_info() -> Metric:
        """Always 1; what runs is in the labels (as Prometheus' own *_build_info)."""
        labels = build_info().labels()
        family = _family("build_info", "gauge", "What runs: classguard's version and commit, the "
                         "Python version, uvloop's version (or no) and the hot path.", labels)
        family.add_metric(list(labels.values()), 1)
        return family

    def _queries(self, total: dict) -> Iterable[Metric]:
        queries = _family("queries_total", "counter", "Answers, by transport, class and result.",
                          ("protocol", "class", "result"))
        for key, count in total["queries"].items():
            queries.add_metric(key.split(_SEP), count)
        yield queries
        blocks = _family("blocks_total", "counter",
                         "Blocked answers, by reason (category, service, deny, paused, closed, "
                         "...) and category or service.", ("reason", "category"))
        merged: dict[tuple[str, str], int] = {}
        for reason, count in total["blocks"].items():
            key = split_reason(reason)
            merged[key] = merged.get(key, 0) + count
        for key, count in merged.items():
            blocks.add_metric(list(key), count)
        yield blocks
        buckets, cumulative = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), total["latency_counts"]):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            PREFIX + "answer_latency_seconds",
            "Time from a query read to its answer written, whatever answered it.",
            buckets=buckets, sum_value=total["latency_sum"])

    def _cache(self, total: dict) -> Iterable[Metric]:
        cache = total["cache"]
        if not cache:
            return
        for name, kind, documentation, value in (
            ("cache_hits_total", "counter", "Cache lookups that found a fresh answer.",
             cache["hits"]),
            ("cache_misses_total", "counter", "Cache lookups that went upstream (or stale).",
             cache["misses"]),
            ("cache_entries", "gauge", "Answers held in the cache (of every worker).",
             cache["entries"]),
            ("cache_capacity_entries", "gauge", "dns.cache_size (times the workers).",
             cache["capacity"]),
        ):
            family = _family(name, kind, documentation)
            family.add_metric([], value)
            yield family

    def _upstreams(self, service, total: dict) -> Iterable[Metric]:
        groups = upstream_groups(service)
        if not groups:
            return
        labels = ("upstream", "zone")
        up = _family("upstream_up", "gauge", "1 while an upstream answers (a client's question or "
                     "a probe), 0 once it failed (until it answers again) or before it answered.",
                     labels)
        latency = _family("upstream_latency_seconds", "gauge",
                          "Moving average of an upstream's answer time.", labels)
        failures = _family("upstream_consecutive_failures", "gauge",
                           "Failures of an upstream since its last answer.", labels)
        answers = _family("upstream_answers_total", "counter", "Answers from an upstream.", labels)
        errors = _family("upstream_errors_total", "counter",
                         "Failed exchanges with an upstream (timeouts, network errors).", labels)
        for zone, group in groups:
            for upstream in group.upstreams:
                values = [upstream.name, zone]
                up.add_metric(values, int(upstream.healthy is True))
                latency.add_metric(values, upstream.latency)
                failures.add_metric(values, upstream.failures)
                done, failed = total["upstreams"].get(_SEP.join((zone, upstream.name)), (0, 0))
                answers.add_metric(values, done)
                errors.add_metric(values, failed)
        yield from (up, latency, failures, answers, errors)

    def _lists(self, service) -> Iterable[Metric]:
        lists = service.state.snapshot.lists
        if lists is None:
            return
        now = time.time()
        entries: dict[str, int] = {}
        for info in lists.lists:
            entries[info.category] = entries.get(info.category, 0) + info.entries
        family = _family("list_entries", "gauge", "Names in force per list category.",
                         ("category",))
        for category, count in sorted(entries.items()):
            family.add_metric([category], count)
        yield family
        built_at = getattr(lists, "built_at", 0.0) or now
        ages = {category: max(0.0, now - built_at) for category in entries}
        sources: dict[str, bool] = {}
        status = self._list_status(service)
        if status is not None:
            confirmed: dict[str, float] = {}
            for row in status.category_rows(now):
                sources[row["source"]] = sources.get(row["source"], False) or bool(row["failed"])
                category, age = row["category"], row["age_seconds"]
                if category in ages and age is not None:
                    confirmed[category] = max(confirmed.get(category, 0.0), age)
            ages.update(confirmed)
        family = _family("list_age_seconds", "gauge",
                         "Seconds since the content in force of a category was last confirmed "
                         "current (its oldest source).", ("category",))
        for category, age in sorted(ages.items()):
            family.add_metric([category], age)
        yield family
        if sources:
            family = _family("list_source_failed", "gauge",
                             "1 when the last refresh of a list source failed.", ("source",))
            for name, failed in sorted(sources.items()):
                family.add_metric([name], int(failed))
            yield family

    def _list_status(self, service):
        """The last refresh's report (state_dir/lists status), re-read only when it changed."""

        read_status = getattr(update, "read_status", None)
        status_path = getattr(update, "status_path", None)
        if read_status is None or status_path is None:
            return None
        state_dir = Path(service.config.state_dir)
        try:
            stat = status_path(state_dir).stat()
        except OSError:
            return None
        signature = (stat.st_mtime_ns, stat.st_size)
        if self._status_cache is None or self._status_cache[0] != signature:
            self._status_cache = (signature, read_status(state_dir))
        return self._status_cache[1]

    def _store(self, service, counts: dict[str, int]) -> Iterable[Metric]:
        if service.store is None:
            return
        kind = "embedded" if service.config.store == "embedded" else "redis"
        if self.probe is not None and self.probe.store_up is not None:
            family = _family("store_up", "gauge", "1 when the state store answered the last "
                             "probe (each scrape and /readyz).", ("kind",))
            family.add_metric([kind], int(self.probe.store_up))
            yield family
        for _, name, documentation, _ in STORE_COUNTERS:
            if name in counts:
                family = _family(name, "counter", documentation, ("kind",))
                family.add_metric([kind], counts[name])
                yield family
        dropped = {key.split(_SEP, 1)[1]: value for key, value in counts.items()
                   if key.startswith("store_dropped_writes_total" + _SEP)}
        if dropped:
            family = _family("store_dropped_writes_total", "counter",
                             "Writes held in memory while the store was away, dropped because "
                             "their bounded buffer was full (answers never wait for them), by "
                             "what they were (screen_time: device-days of minutes; query_log: "
                             "entries).", ("kind", "what"))
            for what, value in sorted(dropped.items()):
                family.add_metric([kind, what], value)
            yield family


def upstream_groups(service) -> list[tuple[str, object]]:
    """[(zone, UpstreamGroup)]: the default group (zone "") and each forward zone's."""

    forwarding = service.link(ForwardingResolver) if service.chain is not None else None
    if forwarding is None:
        return []
    return [("", forwarding.default), *sorted(forwarding.zones.items())]


# --- readiness ------------------------------------------------------------------------------------


class ReadinessProbe:
    """Why the service is not ready (SPEC §6), checked when asked: lists not loaded, no upstream
    answering, the store unreachable or serving its snapshot. The DoH listener may serve the
    same `/healthz` and `/readyz` later by calling `reasons()`."""

    def __init__(self, service) -> None:
        self.service = service
        self.store_up: bool | None = None  # the last probe's answer, for classguard_store_up
        self._store_note: str | None = None  # the shared store away: said by a ready /readyz

    async def reasons(self) -> list[str]:
        service = self.service
        self._store_note = None
        reasons = []
        if not service.state.lists_loaded:
            reasons.append("lists not loaded yet")
        groups = upstream_groups(service)
        if groups:
            default = groups[0][1].upstreams
            if not any(upstream.healthy for upstream in default):
                errors = "; ".join(f"{u.name}: {u.last_error or 'failed'}" if u.healthy is False
                                   else f"{u.name}: asked, no answer yet" for u in default)
                never = all(upstream.healthy is None for upstream in default)
                reasons.append(f"no upstream {'has answered yet' if never else 'answering'} ({errors})")
        store_reason = await self.store_reason()
        if store_reason is not None:
            reasons.append(store_reason)
        return reasons

    async def store_reason(self) -> str | None:
        """Why the store makes this instance not ready, or None; sets `store_up`.

        A store shared by every instance (Redis) reports its health (`ReportsHealth`): a
        string says it is away and this instance answers from its snapshot. That is a note, not
        a reason (docs/observability.md): every instance shares that Redis, so taking them out
        of rotation would stop all DNS for a fault that does not stop any answer. Any other
        store (the embedded one) must answer a read of its version within STORE_PROBE_TIMEOUT:
        an unreadable state_dir is this host's own fault, and another instance does better.
        """
        self._store_note = None
        store = self.service.store
        if store is None:
            return None
        health = self.service.store_abilities.health
        note = problem = None
        try:
            async with asyncio.timeout(STORE_PROBE_TIMEOUT):
                if health is not None:
                    note = await health.health()
                else:
                    await store.version()
        except TimeoutError:
            problem = f"no answer within {STORE_PROBE_TIMEOUT:.0f} s"
        except Exception as exc:  # StoreError, OSError: the store cannot be read
            problem = str(exc) or type(exc).__name__
        self.store_up = problem is None and note is None
        if note is not None:
            version = getattr(getattr(self.service, "control", None), "policy_version", None)
            self._store_note = f"store: {note}" + \
                (f" (policy version {version})" if version is not None else "")
        return None if problem is None else f"store unreachable: {problem}"

    def notes(self, *, drift: bool = True) -> list[str]:
        """What a ready service still reports (not a reason to take it out of rotation): the
        shared store away while this instance answers from its snapshot; policy drift (which
        side is newer, and how to bring the file up to date or see the difference)."""
        notes = [self._store_note] if self._store_note else []
        said = getattr(self.service, "policy_drift", None) if drift else None
        return notes + ([f"policy drift: {said}"] if said else [])


# --- the HTTP server ------------------------------------------------------------------------------


class MetricsServer:
    """aiohttp on `metrics.listen`: /metrics (Prometheus text), /healthz, /readyz."""

    def __init__(self, service, listen: str) -> None:
        self.service = service
        self.listen = listen
        self.probe = ReadinessProbe(service)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(service, self.probe))
        ProcessCollector(registry=self.registry)  # process_*: memory, CPU, open files
        self.address: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def start(self, *, reuse_port: bool = False) -> None:
        host, port = parse_listen(self.listen)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
        await site.start()
        bound = self._runner.addresses[0]  # the port chosen when port was 0
        self.address = (bound[0], bound[1])
        log.info("metrics, /healthz and /readyz on http://%s:%d",
                 f"[{bound[0]}]" if ":" in bound[0] else bound[0], bound[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def metrics(self, request: web.Request) -> web.Response:
        await self.probe.store_reason()  # classguard_store_up as of this scrape
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        reasons = await self.probe.reasons()
        if reasons:
            return web.Response(status=503, text="not ready\n" + "".join(f"{r}\n" for r in reasons))
        return web.Response(text="ready\n" + "".join(f"{note}\n" for note in self.probe.notes()))
