"""What every handler of the dashboard shares: the typed context, who is asking, the keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from admin.control import Commands, Drift
from common.addresses import forwarded_client
from dashboard import auth
from privacy.querylog import QueryLog
from store.protocol import Store
from store.records import Session

COOKIE = "classguard_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/api/v1/login", "/api/v1/openapi.json", "/login", "/language"})
PUBLIC_PREFIXES = ("/static/",)  # the pages' style sheet, also on the login page


@dataclass(frozen=True, slots=True)
class UpstreamHealth:
    zone: str  # "" for the default upstreams, else the forward zone
    name: str
    healthy: bool | None  # None: not asked yet
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Health:
    """What the overview's health table shows: the same facts as /readyz."""

    upstreams: list[UpstreamHealth]
    store_kind: str  # EmbeddedStore, RedisStore
    store_problem: str | None  # why the store makes this instance not ready
    store_up: bool | None
    notes: list[str]  # said by a ready /readyz (a Redis away)
    drift: Drift | None = None  # the policy file is not the stored policy: said in words here


@dataclass(frozen=True, slots=True)
class Why:
    """The server's answer for a name in a class, explained by the server's own chain (wired in
    classguard.web from resolver.explain): what `/why` and `/api/v1/check` show."""

    decision: str  # block, resolve, rewrite, nxdomain, nodata, local
    blocked: bool
    step: str  # the step of SPEC §2.3 that decided, e.g. "9 category"
    rule: str
    reason: str | None  # a block's reason, as in the EDE text
    in_force: str | None  # the closing rule in force (a pause, a closed window), if any
    until: float | None  # when the class's state changes, if it will
    class_id: str | None = None  # whose rules answered (None: an unknown client)
    asker: str = ""  # how the asker was known: "device tablette-12", "network 10.0.0.0/24"...
    device_id: str | None = None  # the enrolled device the asker was taken for, if any


# explain(name, class_id, scope, at, who): `at` None is now; `who`, a device id or a tablet's
# address, asks as that device would (its screen time included) instead of as the class.
Explain = Callable[[str, "str | None", str, "float | None", "str | None"], Awaitable[Why]]


@dataclass
class Context:
    """What the handlers work with, handed over by the composition root (classguard.service):
    the store, the commands, the running state, and the few settings the pages need."""

    store: Store
    commands: Commands  # the same validation and audit as the CLI
    state: Any  # the DNS server's running state (resolver.state.RuntimeState): timezone, `check`
    state_dir: Path
    config: Any  # the configuration (classguard.config.Config): doh, dot, tls, query_log sections
    explain: Explain  # "why is this blocked?": the same chain as the DNS server's
    secure_cookies: bool = False
    query_log: QueryLog | None = None  # the server's, for `stats`
    throttle: auth.Throttle | auth.StoreThrottle = field(default_factory=auth.Throttle)
    refresh_lists: Callable[[], Awaitable[Any] | None] | None = None  # a refresh: its future, or None
    refresh_lists_now: Callable[[], None] | None = None  # a refresh started, not awaited
    health: Callable[[], Awaitable[Health]] | None = None
    trusted_proxies: tuple = ()  # ip_network: whose X-Forwarded-For names the client
    # the version of the stored policy the running state holds (read from memory, never the store)
    policy_version: Callable[[], int] = lambda: 0


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: str  # admin | teacher
    classes: tuple[str, ...]
    via: str  # session | token
    session: Session | None = None
    token_id: str | None = None

    @property
    def actor(self) -> str:
        """As the audit log names who made a change."""
        return f"{self.name} (dashboard)" if self.via == "session" else \
            f"API token {self.token_id} ({self.name})"

    def may_see(self, class_id: str) -> bool:
        return self.role == "admin" or class_id in self.classes


CONTEXT = web.AppKey("context", Context)
IDENTITY = web.RequestKey("identity", Identity)


def client_address(request: web.Request) -> str:
    """Who sent the request, for login throttling: the peer, or behind a proxy listed in
    `dashboard.trusted_proxies` the client it names in X-Forwarded-For (from anyone else the
    header is ignored: it would let a guesser pick the address the throttle counts)."""
    return forwarded_client(request.remote or "unknown", request.headers.getall("X-Forwarded-For", []),
                            request.app[CONTEXT].trusted_proxies)
