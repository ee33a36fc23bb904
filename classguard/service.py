"""`classguard serve`: loads config, policy and lists, starts the listeners, keeps lists fresh."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import gc
import ipaddress
import logging
import signal
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from admin.control import ControlPlane, load_or_seed
from admin.errors import ControlError
from blocklists.bundled import Bundled, load_bundled
from blocklists.compiled import CompiledLists
from blocklists.update import (
    UpdateError, artifact_path, first_refresh_delay, load_compiled, refresh_delay, retry_delay,
    status_path, update_lists,
)
from classguard.config import Config
from classguard.logsetup import config_summary
from classguard.version import build_info
from common.addresses import parse_listen
from common.errors import StartupError
from privacy import gdpr
from privacy.querylog import EmbeddedQueryLogStore, QueryLog, QueryLogSettings
from resolver.build import build_query_path
from resolver.cache import CacheLink
from resolver.chain import Resolver, find_link
from resolver.dot import DotListener
from resolver.fastpath import FastPath
from resolver.ratelimit import RateLimiter
from resolver.server import QueryHandler, TcpListener, UdpListener, raise_descriptor_limit
from resolver.state import RuntimeState
from resolver.upstream import Upstream, UpstreamGroup, probe_upstreams
from store.embedded import EmbeddedStore
from store.protocol import SharesLists, Store, StoreAbilities
from store.records import StoreError

if TYPE_CHECKING:  # loaded when configured: aiohttp costs ~14 MB of every worker's memory
    from classguard.metrics import MetricsServer
    from resolver.doh import DohServer

log = logging.getLogger("classguard.service")

EXAMPLE_POLICY = Path(__file__).resolve().parent.parent / "policies" / "example.yaml"
RESOLV_CONF = Path("/etc/resolv.conf")




def known_categories(config: Config, bundled: Bundled) -> set[str]:
    categories = set(bundled.categories)
    categories.update(source.category for source in config.blocklists.sources if source.category)
    return categories


def policy_path(config: Config) -> Path:
    return config.policies or EXAMPLE_POLICY


def resolv_conf_upstreams(path: Path = RESOLV_CONF) -> list[str]:
    upstreams = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            address = fields[1].split("%", 1)[0]
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue
            upstreams.append(f"udp://[{ip}]:53" if ip.version == 6 else f"udp://{ip}:53")
    return upstreams


def _own_addresses(listen: tuple[str, ...]) -> set[tuple[str, int]]:
    own = set()
    for entry in listen:
        host, port = parse_listen(entry)
        own.add((host, port))
        if host in ("0.0.0.0", "::"):
            own.update({("127.0.0.1", port), ("::1", port)})
    return own


def make_upstreams(config: Config) -> tuple[UpstreamGroup, dict[str, UpstreamGroup]]:
    """The upstream groups, never including one of our own listen addresses (no forwarding loop)."""
    dns = config.dns
    urls = list(dns.upstreams) or resolv_conf_upstreams()
    own = _own_addresses(dns.listen)
    # tls:// and https:// upstreams are verified against the system's CAs, or the school's own.
    context = ssl.create_default_context(cafile=dns.upstream_ca_file) if dns.upstream_ca_file else None
    upstreams = []
    for url in urls:
        upstream = Upstream.from_url(url, context)
        if (upstream.host, upstream.port) in own:
            log.warning("upstream %s is classguard itself: skipped to avoid a forwarding loop", url)
            continue
        upstreams.append(upstream)
    if not upstreams:
        raise StartupError("no usable upstream: set dns.upstreams in the config "
                           "(/etc/resolv.conf names none, or only classguard itself)")
    zones = {zone: UpstreamGroup([Upstream.from_url(url, context)], dns.upstream_timeout)
             for zone, url in dns.forward_zones.items()}
    return UpstreamGroup(upstreams, dns.upstream_timeout), zones


def own_names(config: Config) -> frozenset[str]:

    names = set()
    for section in (config.doh, config.dashboard):
        url = (section or {}).get("public_url")
        if url and urlsplit(url).hostname:
            names.add(urlsplit(url).hostname.lower())
    hostname = (config.dot or {}).get("hostname")
    if hostname:
        names.add(hostname.lower())
    return frozenset(names)


def _reachable_from_outside(host: str) -> bool:
    """True unless `host` is a loopback or private address (0.0.0.0 and :: are every address)."""
    ip = ipaddress.ip_address(host)
    return ip.is_unspecified or not (ip.is_loopback or ip.is_private)


def refuse_open_resolver(config: Config) -> None:
    """SPEC §2.1: with `unknown_clients: default` anyone gets answers, so on an address the
    internet may reach classguard would be an open resolver: refused unless `dns.allow_open`."""
    dns = config.dns
    if dns.unknown_clients != "default" or dns.allow_open:
        return
    listens = [*dns.listen, *([config.doh["listen"]] if config.doh else [])]
    public = [entry for entry in listens if _reachable_from_outside(parse_listen(entry)[0])]
    if public:
        raise StartupError(
            f"dns.unknown_clients: default would make classguard an open resolver on "
            f"{', '.join(public)} (not a private or loopback address); listen on a private "
            "address, set dns.unknown_clients: refuse, or set dns.allow_open: true if that is "
            "really meant")


def listen_error(address: str, protocol: str, exc: OSError, *, dns: bool) -> StartupError:
    """One line for a listen address that cannot be bound: which address, and what to do."""
    if exc.errno == errno.EADDRINUSE:
        why = ("address already in use (is another DNS server running? see docs/deploy.md)" if dns
               else "address already in use (is another server on that port? see docs/deploy.md)")
    elif exc.errno == errno.EACCES:
        why = ("permission denied (a port below 1024 needs CAP_NET_BIND_SERVICE: see "
               "docs/deploy.md)")
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "address not available (no interface of this machine has it)"
    else:
        why = exc.strerror or str(exc)
    return StartupError(f"cannot listen on {address}/{protocol}: {why}")


def listen_addresses(config: Config) -> list[tuple[str, str, bool]]:
    """(IP:PORT, udp | tcp, is DNS) of every listener the configuration starts."""
    wanted = [(entry, protocol, True) for entry in config.dns.listen for protocol in ("udp", "tcp")]
    for section in (config.doh, config.dot, config.metrics, config.dashboard):
        if section is not None and section.get("listen"):
            wanted.append((section["listen"], "tcp", section is config.dot))
    return wanted


def check_ports(config: Config, reuse_port: bool = False) -> None:
    """Before anything is written (the store seeded, the lists compiled): every listen address
    can be bound, else StartupError naming the first that cannot. Each is bound as its listener
    binds it (SO_REUSEPORT with --workers) and let go at once; port 0 is always free."""
    for entry, protocol, dns in listen_addresses(config):
        host, port = parse_listen(entry)
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
        with socket.socket(family, kind) as sock:
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if protocol == "tcp":  # as asyncio's servers: a port in TIME_WAIT is free
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host, port))
            except OSError as exc:
                raise listen_error(entry, protocol, exc, dns=dns) from None


SCREEN_TIME_FLUSH_INTERVAL = 5.0  # seconds between merges of active minutes into the store
LIST_FOLLOW_INTERVAL = 1.0  # seconds between looks at the compiled lists' file (every process)
LIST_STORE_INTERVAL = 5.0  # seconds between looks at the lists' manifest in Redis (worker 0)

# A burst of queries must wait in the kernel, not be dropped, while Python answers the ones
# before it (the default of about 200 kB holds a few thousand small queries).
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def _grow_receive_buffer(sock) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
    except OSError as exc:  # capped by net.core.rmem_max: what we get is still the most allowed
        log.debug("cannot grow the UDP receive buffer: %s", exc)


@dataclass
class Service:
    config: Config
    state: RuntimeState
    bundled: Bundled
    udp_listeners: list = field(default_factory=list)
    servers: list = field(default_factory=list)
    tasks: list = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    udp_addresses: list[tuple[str, int]] = field(default_factory=list)
    worker_index: int = 0  # with --workers N: which one this process is (0 refreshes the lists)
    workers: int = 1
    upstream_groups: list = field(default_factory=list)
    chain: Resolver | None = None  # the head of the resolver chain, once started
    fast_path: FastPath | None = None
    handler: QueryHandler | None = None  # what every listener answers with, once started
    metrics: MetricsServer | None = None  # /metrics, /healthz, /readyz when `metrics` is set
    query_log: QueryLog | None = None  # query_log.mode; its purge runs even when off
    rate_limiter: RateLimiter | None = None  # dns.rate_limit, shared by every transport
    doh: DohServer | None = None  # the DoH listener, when `doh` is configured
    dot: DotListener | None = None  # the DoT listener, when `dot` is configured
    connection_share: int = 1000  # client connections each of TCP, DoT and DoH may hold
    store: Store | None = None
    # what the store offers beyond Store (Redis: shared lists, health, counters...), found once
    store_abilities: StoreAbilities = field(default_factory=StoreAbilities)
    control: ControlPlane | None = None  # the control socket and the store watcher
    _artifact_digest: tuple | None = None  # (file signature, sha256) of the compiled lists
    _lists_seen: tuple | None = None  # the compiled file's signature this process serves
    _refreshing: bool = False  # worker 0 is compiling: the follower waits for it
    dashboard: object | None = None  # dashboard.app.DashboardServer when `dashboard` is set
    lists_wanted: asyncio.Event = field(default_factory=asyncio.Event)  # "refresh now" was asked
    # each waiter (request_list_refresh) gets the report of the refresh that starts after it
    # asked, or the exception that refresh ended with
    _refresh_waiters: list = field(default_factory=list)

    @property
    def policy_drift(self) -> str | None:
        """Why the configured policy file is not what runs (for /readyz), or None."""
        drift = self.drift
        return None if drift is None else str(drift)

    @property
    def drift(self):
        """The same as admin.control.Drift (which side is newer), for the dashboard."""
        return self.control.drift if self.control is not None else None

    def link_cache(self) -> CacheLink:
        return self.link(CacheLink)

    def link(self, kind: type):
        """The first link of the running chain that is a `kind` (walking `.next`), or None."""
        return find_link(self.chain, kind)

    async def start(self) -> None:
        upstreams, zones = make_upstreams(self.config)
        self.upstream_groups = [upstreams, *zones.values()]
        dns = self.config.dns
        path = build_query_path(dns, self.state, upstreams, zones)
        self.chain, self.fast_path, self.rate_limiter = path.chain, path.fast_path, path.rate_limiter
        handler = self.handler = path.handler
        self.query_log = QueryLog(QueryLogSettings.from_section(self.config.query_log),
                                  self._query_log_store(), timezone=self.config.timezone)
        if self.query_log.enabled:  # the DNS path hands events over with a list append
            path.record.query_log = self.query_log
        await self.query_log.start()
        if self.control is not None:  # an erased device's buffered entries are dropped here too
            self.control.query_log = self.query_log
        # TCP, DoT and DoH each hold at most a third of the descriptors left beside a reserve
        # for upstream sockets and the store (resolver.server.raise_descriptor_limit).
        self.connection_share = max(16, raise_descriptor_limit() // 3)
        if self.config.doh is not None:  # its TLS files are read now, before anything is bound
            from resolver.doh import DohServer  # lazy: aiohttp's server, loaded only when DoH is on

            self.doh = DohServer(handler, self.state, self.config.doh, self.config.tls,
                                 max_connections=self.connection_share)
        tcp = TcpListener(handler, dns.tcp_idle_timeout, self._tcp_max_connections(), self.state)
        for entry in dns.listen:
            host, port = parse_listen(entry)
            try:
                listener, server = await self._bind(host, port, handler, tcp, reuse_port=self.workers > 1)
            except OSError as exc:  # taken since check_ports looked: said the same way
                raise listen_error(entry, "udp or tcp", exc, dns=True) from None
            bound = listener.sock.getsockname()
            self.udp_listeners.append(listener)
            self.servers.append(server)
            self.udp_addresses.append((bound[0], bound[1]))
            log.info("DNS listening on %s port %d (UDP and TCP)", bound[0], bound[1])
        if self.doh is not None:
            await self.doh.start(reuse_port=self.workers > 1)
        if self.config.dot is not None:
            await self._start_dot(handler)
        log.info("upstreams: %s", ", ".join(u.name for u in upstreams.upstreams))
        self.tasks.append(asyncio.create_task(  # /readyz: an upstream answers, not "none failed yet"
            probe_upstreams(self.upstream_groups, dns.upstream_probe_interval)))
        # Every process follows the compiled file: worker 0's own refreshes, but also a
        # `classguard lists update` compiled by the CLI (when another worker holds the control
        # socket) or by another server on the same state_dir.
        self._lists_seen = self._lists_mark() if self.state.snapshot.lists is not None else None
        self.tasks.append(asyncio.create_task(self._follow_lists()))
        if self.worker_index == 0:
            self.tasks.append(asyncio.create_task(
                self._refresh_lists(first=self.state.snapshot.lists is None)))
        if self.config.metrics is not None and self.worker_index == 0:
            from classguard.metrics import MetricsServer  # lazy: aiohttp, only with metrics on

            self.metrics = MetricsServer(self, self.config.metrics["listen"])
            await self.metrics.start(reuse_port=self.workers > 1)
        elif self.config.metrics is not None:  # worker 0 serves the totals, these included
            from classguard.metrics import share_counters  # lazy: aiohttp, only with metrics on

            self.tasks.append(asyncio.create_task(share_counters(self)))
        shared = self.store_abilities.shares_lists  # with Redis
        if self.worker_index == 0 and shared is not None:
            self.tasks.append(asyncio.create_task(self._follow_store_lists(shared)))
        if self.control is not None:
            if self.worker_index == 0:  # the one process that refreshes the lists
                self.control.commands.add_operation("lists.refresh", self._lists_refresh_operation)
            await self.control.start()
        if self.config.dashboard is not None and self.control is not None and self.worker_index == 0:
            # One dashboard per server (with --workers N, worker 0's): its writes go through
            # the store, which every worker follows.
            # lazy: aiohttp's server, loaded only when the dashboard is on
            from classguard.web import dashboard_context  # lazy: aiohttp, only with the dashboard
            from dashboard.app import DashboardServer  # lazy: aiohttp, only with the dashboard

            self.dashboard = DashboardServer(dashboard_context(self),
                                             (self.config.dashboard or {}).get("listen", "127.0.0.1:8080"))
            await self.dashboard.start(reuse_port=self.workers > 1)
        if self.store is not None:
            self.state.screen_time.store = self.store
            self.tasks.append(asyncio.create_task(self._flush_screen_time()))

    def _query_log_store(self):
        """The query log lives with the state: files under state_dir, or the Redis store's
        keys (expiring with retention_days) that every instance shares."""
        if self.store is None:
            return EmbeddedQueryLogStore(self.config.state_dir)
        settings = QueryLogSettings.from_section(self.config.query_log)
        return gdpr.query_log_store_for(self.store, retention_days=settings.retention_days,
                                        timezone=self.config.timezone)

    def _tcp_max_connections(self) -> int:
        """dns.tcp_max_connections, within this listener's share of the descriptors (a tenth
        more for unknown clients, resolver.server.UNKNOWN_SHARE)."""
        share = self.connection_share * 10 // 11
        if self.config.dns.tcp_max_connections > share:
            log.warning("dns.tcp_max_connections %d lowered to %d: the open files limit allows "
                        "no more", self.config.dns.tcp_max_connections, share)
            return share
        return self.config.dns.tcp_max_connections

    async def _start_dot(self, handler: QueryHandler) -> None:
        dot, tls = self.config.dot, self.config.tls or {}
        if not dot.get("hostname") or not tls.get("cert") or not tls.get("key"):
            raise StartupError("dot needs dot.hostname and a tls section with cert and key "
                               "(a certificate for *.HOSTNAME: the device token is the first label)")
        dns = self.config.dns
        self.dot = DotListener(handler, self.state, dot["hostname"], dns.tcp_idle_timeout,
                               self._tcp_max_connections())
        try:
            await self.dot.start(dot.get("listen", "127.0.0.1:8853"), str(tls["cert"]), str(tls["key"]),
                                 reuse_port=self.workers > 1)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"dot: cannot listen on {dot.get('listen', '127.0.0.1:8853')}: {exc}") from exc

    @staticmethod
    async def _bind(host: str, port: int, handler: QueryHandler, tcp: TcpListener, reuse_port: bool = False):
        """UDP and TCP on one port; with port 0, retry until a free port is free for both.

        `reuse_port`: several worker processes share the port; the kernel spreads the clients.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for attempt in range(20 if port == 0 else 1):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            _grow_receive_buffer(sock)
            bound_port = sock.getsockname()[1]
            try:
                server = await asyncio.start_server(tcp.serve_connection, host, bound_port, family=family,
                                                    reuse_address=True, reuse_port=reuse_port or None)
            except OSError:
                sock.close()
                if port != 0 or attempt == 19:
                    raise
                continue
            listener = UdpListener(handler, sock)
            listener.start()
            return listener, server
        raise AssertionError("unreachable")

    async def _flush_screen_time(self) -> None:
        """Merge the devices' new active minutes into the store, and take in the other workers'
        and instances', every few seconds while some class has screen time."""
        tracker = self.state.screen_time
        while True:
            if any(c.screen_time_minutes for c in self.state.snapshot.policy.classes.values()):
                try:
                    await tracker.flush(self.state.clock())
                except Exception as exc:  # the minutes stay pending for the next flush
                    log.warning("screen time: cannot write to the store: %s", exc)
            await asyncio.sleep(SCREEN_TIME_FLUSH_INTERVAL)

    def _lists_mark(self) -> tuple | None:
        """The compiled file's signature: it changes whenever a compile replaces the file."""
        try:
            stat = artifact_path(self.config.state_dir).stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    async def _follow_lists(self) -> None:
        """Load the compiled lists once the file has changed: written by worker 0, by the CLI,
        or by another server on this state_dir. Worker 0's own compile is marked seen."""
        loop = asyncio.get_running_loop()
        while True:
            mark = self._lists_mark()
            if mark is not None and mark != self._lists_seen and not self._refreshing:
                lists = await loop.run_in_executor(None, load_compiled, self.config.state_dir)
                if lists is not None:
                    self._lists_seen = mark
                    self.state.replace_lists(lists)
                    log.info("worker %d: lists loaded (%d entries)", self.worker_index, lists.entry_count)
                del lists
            await asyncio.sleep(LIST_FOLLOW_INTERVAL)

    async def _artifact_sha256(self) -> str | None:
        """The sha256 of the compiled lists' file, computed again only when the file changed."""
        path = artifact_path(self.config.state_dir)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        mark = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._artifact_digest is None or self._artifact_digest[0] != mark:
            from store.redis_backend import artifact_sha256  # lazy: it loads redis

            self._artifact_digest = (mark, await asyncio.to_thread(artifact_sha256, path))
        return self._artifact_digest[1]

    def _artifact_mtime(self) -> float:
        try:
            return artifact_path(self.config.state_dir).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    async def _publish_lists(self) -> None:
        """After a compile: the artifact goes to the store, for the other instances."""
        shared = self.store_abilities.shares_lists
        if shared is None:
            return
        try:
            published = await publish_lists(shared, self.config.state_dir,
                                            await self._artifact_sha256())
            if published is not None:
                log.info("lists: published in the store (%d bytes in %d chunks)",
                         published["size"], published["chunks"])
        except StoreError as exc:
            log.warning("lists: not published in the store, the next change tries again: %s", exc)

    async def _follow_store_lists(self, shared: SharesLists) -> None:
        """Worker 0 with a Redis store: lists another instance compiled replace ours (the other
        workers follow the file); lists compiled here before any were published go there."""
        while True:
            try:
                manifest = await shared.lists_manifest()
                digest = await self._artifact_sha256()
                if manifest is None and digest is not None:
                    await self._publish_lists()
                elif manifest is not None and manifest["sha256"] != digest \
                        and manifest["built_at"] > self._artifact_mtime():  # not older than ours
                    await shared.fetch_lists(artifact_path(self.config.state_dir),
                                             status_path(self.config.state_dir))
                    lists = await asyncio.get_running_loop().run_in_executor(
                        None, load_compiled, self.config.state_dir)
                    self._lists_seen = self._lists_mark()
                    if lists is not None:
                        self.state.replace_lists(lists)
                        log.info("lists: loaded those published in the store (%d entries)",
                                 lists.entry_count)
                    del lists
            except StoreError as exc:
                log.debug("lists: the store cannot be read now: %s", exc)
            await asyncio.sleep(LIST_STORE_INTERVAL)

    def refresh_lists_now(self) -> None:
        """Refresh the lists now, as `classguard lists update` would (the dashboard's button),
        instead of at the next turn of the refresh loop (which runs in worker 0, as the dashboard)."""
        self.lists_wanted.set()

    async def _refresh_lists(self, first: bool) -> None:
        """The first fill at once (`first`: no lists yet), then a refresh every
        `blocklists.refresh`: sooner after a failure, and a UT1 download from its home waits for
        19:00 UTC. The new lists are swapped in whole; the old table goes with the old snapshot.
        `refresh_lists_now` cuts a wait short.
        """

        period = self.config.blocklists.refresh
        failures = 0
        delay = 0.0 if first else first_refresh_delay(self.config.blocklists, self.config.state_dir,
                                                      self.bundled)
        while True:
            if delay > 0:
                # asyncio.timeout, not wait_for: 3.11's wait_for can lose a cancellation (a stop)
                # that races the event being set (see the store watcher in control.py).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.lists_wanted.wait()
            asked = self.lists_wanted.is_set()
            self.lists_wanted.clear()
            waiters, self._refresh_waiters = self._refresh_waiters, []
            self._refreshing = True
            try:
                lists, report = await update_lists(self.config.blocklists, self.config.state_dir,
                                                   self.bundled, scheduled=not first and not asked,
                                                   current=self.state.snapshot.lists)
                self._lists_seen = self._lists_mark()  # this compile: not to be loaded again
            except Exception as exc:  # an UpdateError, or a bug: neither may end the refreshes
                _settle(waiters, exc)
                failures += 1
                delay = retry_delay(period, failures)
                kept = "the previous lists stay in force" if self.state.lists_loaded else "no lists yet"
                log.error("list refresh failed, %s; next try in %.0f s: %s", kept, delay, exc,
                          exc_info=not isinstance(exc, UpdateError))
                continue
            finally:
                self._refreshing = False
            first = False
            if lists is not self.state.snapshot.lists:
                self.state.replace_lists(lists)
                log.info("lists in force: %d entries", lists.entry_count)
                await self._publish_lists()
            del lists
            _settle(waiters, report)
            failures = failures + 1 if report.failed or report.kept_previous else 0
            delay = refresh_delay(report, period, failures=failures)

    def request_list_refresh(self) -> asyncio.Future | None:
        """`refresh_lists_now` for POST /api/v1/lists/refresh and `lists update`: a future that
        gets the UpdateReport, or the exception the refresh ended with. None when this process
        does not refresh lists (a worker other than 0 follows worker 0's)."""
        if self.worker_index > 0:
            return None
        done = asyncio.get_running_loop().create_future()
        self._refresh_waiters.append(done)
        self.refresh_lists_now()
        return done

    async def _lists_refresh_operation(self, request: dict, actor: str) -> dict:
        """The control operation `lists.refresh`: `classguard lists update` made by this server
        (which then serves and publishes the result); answers with the refresh's report."""

        done = self.request_list_refresh()
        if done is None:
            raise ControlError("this worker does not refresh the lists")
        outcome = await done
        if isinstance(outcome, Exception):
            raise ControlError(f"the list refresh failed: {outcome}")
        return {"report": outcome.to_json()}

    async def stop(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
        if self.store is not None and self.state.screen_time.store is not None:
            try:
                await self.state.screen_time.flush(self.state.clock())  # nothing counted is lost
            except Exception as exc:
                log.warning("screen time: last minutes not written: %s", exc)
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self.control is not None:
            await self.control.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.doh is not None:
            await self.doh.stop()
        if self.dot is not None:
            await self.dot.stop()
        for listener in self.udp_listeners:
            listener.close()
        for server in self.servers:
            server.close()
            await server.wait_closed()
        if self.query_log is not None:
            await self.query_log.stop()  # what the last answers handed over is written
        if self.store is not None:  # after the query log, which may write to it
            await self.store.close()
        for group in self.upstream_groups:
            for upstream in group.upstreams:
                await upstream.close()


async def publish_lists(store: SharesLists, state_dir: Path, digest: str | None) -> dict | None:
    """The compiled lists under state_dir (whose sha256 is `digest`) into a store that shares
    them (Redis), unless it holds them already; the manifest written, or None."""
    manifest = await store.lists_manifest()
    if digest is None or (manifest is not None and manifest["sha256"] == digest):
        return None
    return await store.publish_lists(artifact_path(state_dir),
                                     status=_read_text(status_path(state_dir)))


def _settle(waiters: list, outcome) -> None:
    """Hand a refresh's report (or exception) to those who asked for it and still wait."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(outcome)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def open_store(config: Config) -> Store:
    """`store: embedded` (the default): files under state_dir; redis://, rediss:// or
    redis+sentinel://: the Redis store shared by every instance (SPEC §7)."""
    if config.store == "embedded":
        return EmbeddedStore(config.state_dir)
    from store.redis_backend import RedisStore  # lazy: redis, loaded only for a Redis store

    return RedisStore(config.store, state_dir=config.state_dir)  # its copy, for a lost store


async def _boot(store: Store, config: Config, **arguments):
    """The stored state (seeding an empty store), and the compiled lists from Redis when
    state_dir has none: a new instance then filters without downloading or compiling. Runs in
    a loop of its own, so the store's connections are closed before the server's loop starts."""
    try:
        boot = await load_or_seed(store, **arguments)
        try:
            if await fetch_missing_lists(store, config.state_dir):
                log.info("lists: loaded the compiled lists published in the store")
        except StoreError as exc:
            log.warning("lists: cannot get them from the store (%s); compiling them here", exc)
        return boot
    finally:
        await store.close()


async def fetch_missing_lists(store: Store, state_dir: Path) -> bool:
    """With a store that shares compiled lists (Redis) and none under state_dir: those published
    there, written under state_dir. True when some were fetched."""
    if not isinstance(store, SharesLists) or artifact_path(state_dir).exists():
        return False
    return await store.fetch_lists(artifact_path(state_dir), status_path(state_dir)) is not None


def _blocking(coroutine):
    """Run a coroutine to its end from synchronous code, even inside a running loop (startup)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="classguard-startup") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def prepare(config: Config) -> Service:
    """The service as the store says: an empty store is seeded from `policies:` (SPEC §4), then
    the stored policy and overrides are what runs."""
    refuse_open_resolver(config)
    bundled = load_bundled()
    store = open_store(config)
    abilities = StoreAbilities.of(store)  # the one place a store is asked what more it offers
    seed, seed_configured = policy_path(config), config.policies is not None
    categories, services = known_categories(config, bundled), set(bundled.services)
    try:
        boot = _blocking(_boot(store, config, recovery=abilities.recovery, seed=seed,
                               seed_configured=seed_configured, known_categories=categories,
                               known_services=services, allow_open=config.dns.allow_open))
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    lists: CompiledLists | None = load_compiled(config.state_dir)
    state = RuntimeState(boot.policy, lists, bundled, config.dns.unknown_clients, own_names(config),
                         overrides=boot.overrides, timezone=config.timezone)
    control = ControlPlane(store, state, boot, state_dir=config.state_dir, bundled=bundled,
                           known_categories=categories, known_services=services, seed=seed,
                           seed_configured=seed_configured, store_abilities=abilities,
                           allow_open=config.dns.allow_open)
    return Service(config, state, bundled, store=store, store_abilities=abilities, control=control)


async def run(config: Config, worker_index: int = 0, workers: int = 1) -> None:
    service = prepare(config)
    service.worker_index, service.workers = worker_index, workers
    if worker_index == 0:  # once per server, not once per worker
        log.info("%s", build_info().line())
        log.info("configuration: %s", config_summary(config))  # secrets as ***
    await service.start()
    # What startup made (modules, the policy, the bundled data: most of the heap) lives as long
    # as the process: out of the cyclic collector's sight, a full collection scans only what
    # serving adds, so its pauses stay short. Refcounting still frees it when replaced.
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, service.stopping.set)
    # A closed terminal must not stop DNS; changes come through the store, never a signal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info("classguard is serving (stored policy version %d, seeded from %s); Ctrl-C to stop",
             service.control.policy_version, policy_path(config))
    await service.stopping.wait()
    log.info("stopping")
    await service.stop()
