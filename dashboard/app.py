"""The dashboard's web application: `init_app` is the one place where it is wired together."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from dashboard import auth
from resolver.clients import forwarded_client
from resolver.store import Session, Store, StoreError

log = logging.getLogger("classguard.dashboard")

COOKIE = "classguard_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/api/v1/login", "/api/v1/openapi.json", "/login", "/language"})
PUBLIC_PREFIXES = ("/static/",)  # the pages' style sheet, also on the login page


@dataclass
class Context:
    """What the handlers work with: the server's store, its commands, its running state."""

    store: Store
    commands: Any  # resolver.control.Commands: the same validation and audit as the CLI
    state: Any  # resolver.state.RuntimeState: decisions for `check`
    state_dir: Path
    secure_cookies: bool = False
    query_log: Any = None  # resolver.querylog.QueryLog of the server, for `stats`
    throttle: auth.Throttle | auth.StoreThrottle = field(default_factory=auth.Throttle)
    config: Any = None  # resolver.config.Config: a new device's DoH URL, its data and erasure
    refresh_lists: Callable[[], Any] | None = None  # Service.request_list_refresh
    trusted_proxies: tuple = ()  # ip_network: whose X-Forwarded-For names the client


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


def json_error(status: int, message: str, *, headers: dict[str, str] | None = None,
               **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Errors become JSON answers at the edge, never a traceback on the wire."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return json_error(exc.status, exc.reason, **({"allow": exc.headers.get("Allow")}
                                                    if exc.status == 405 else {}))
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, "internal error; see the server's log")


@web.middleware
async def auth_middleware(request: web.Request, handler):
    """Who asks: `Authorization: Bearer <token>`, else the session cookie; none -> 401."""
    context = request.app[CONTEXT]
    identity: Identity | None = None
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        record = await auth.token_user(context.store, value.strip()) \
            if scheme.lower() == "bearer" else None
        if record is None:
            return json_error(401, "invalid or revoked API token",
                              headers={"WWW-Authenticate": 'Bearer realm="classguard"'})
        identity = Identity(record.name, record.role, (), "token", token_id=record.id)
    elif COOKIE in request.cookies:
        session = await context.store.get_session(auth.sha256(request.cookies[COOKIE]))
        user = None if session is None else await context.store.get_user(session.user)
        opened = session.expires - auth.SESSION_SECONDS if session is not None else 0.0
        if user is not None and (user.disabled
                                 or opened < max(user.sessions_after, user.created_at)):
            # a disabled account, a session opened before a password reset, or one of an
            # account removed since and made again under the same name
            user = None
        if user is not None:
            identity = Identity(user.name, user.role, user.classes, "session", session=session)
    request[IDENTITY] = identity
    if identity is None and request.path not in PUBLIC_PATHS \
            and not request.path.startswith(PUBLIC_PREFIXES):
        return json_error(401, "log in first (POST /api/v1/login) or send a Bearer token")
    return await handler(request)


@web.middleware
async def csrf_middleware(request: web.Request, handler):
    """Synchronizer token: a state change made with the session cookie carries the session's
    CSRF token in `X-CSRF-Token` or a `csrf_token` form field. Bearer requests carry no ambient
    credential and need none. Login opens a new session and takes JSON only, which a cross-site
    form cannot send."""
    identity: Identity | None = request[IDENTITY]
    if request.method in SAFE_METHODS or identity is None or identity.via != "session" \
            or request.path in PUBLIC_PATHS:
        return await handler(request)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.content_type in ("application/x-www-form-urlencoded",
                                                 "multipart/form-data"):
        sent = (await request.post()).get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent, identity.session.csrf):
        return json_error(403, f"CSRF token missing or wrong: send {CSRF_HEADER} "
                               "(GET /api/v1/session gives it)")
    return await handler(request)


def client_address(request: web.Request) -> str:
    """Who sent the request, for login throttling: the peer, or behind a proxy listed in
    `dashboard.trusted_proxies` the client it names in X-Forwarded-For (from anyone else the
    header is ignored: it would let a guesser pick the address the throttle counts)."""
    return forwarded_client(request.remote or "unknown", request.headers.getall("X-Forwarded-For", []),
                            request.app[CONTEXT].trusted_proxies)


def _read_json_body_limit() -> int:
    return 1024 * 1024


def init_app(service: Any, *, throttle: auth.Throttle | auth.StoreThrottle | None = None
             ) -> web.Application:
    """The dashboard application for a running `resolver.service.Service`."""
    from dashboard import api, pages

    dashboard = service.config.dashboard or {}
    public_url = str(dashboard.get("public_url") or "")
    context = Context(store=service.store, commands=service.control.commands, state=service.state,
                      state_dir=Path(service.config.state_dir),
                      secure_cookies=public_url.startswith("https://"),
                      query_log=getattr(service, "query_log", None), config=service.config,
                      refresh_lists=getattr(service, "request_list_refresh", None),
                      trusted_proxies=tuple(ipaddress.ip_network(network, strict=False)
                                            for network in dashboard.get("trusted_proxies", ())))
    context.throttle = throttle if throttle is not None else auth.throttle_for(service.store)
    app = web.Application(middlewares=[error_middleware, auth_middleware, csrf_middleware],
                          client_max_size=_read_json_body_limit())
    app[CONTEXT] = context
    api.add_routes(app)
    pages.add_routes(app, service)
    return app


ACCOUNT_METHODS = ("get_user", "users", "put_user", "delete_user", "get_token", "tokens",
                   "put_token", "get_session", "put_session", "delete_session")


def require_accounts(store: Store) -> None:
    """A clear refusal, at startup, for a store that keeps no dashboard accounts."""
    missing = [name for name in ACCOUNT_METHODS if not hasattr(store, name)]
    if missing:
        raise StoreError(f"{type(store).__name__} keeps no dashboard accounts yet (no "
                         f"{', '.join(missing)}); the dashboard needs them")


class DashboardServer:
    """The dashboard's listener (`dashboard.listen`), started and stopped by the service."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        from resolver.config import parse_listen

        require_accounts(self.service.store)
        listen = (self.service.config.dashboard or {}).get("listen", "127.0.0.1:8080")
        host, port = parse_listen(listen)
        self.runner = web.AppRunner(init_app(self.service), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.address = self.runner.addresses[0][:2]
        log.info("dashboard and REST API on http://%s:%d/api/v1", *self.address)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)
