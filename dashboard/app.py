"""The dashboard's web application: `init_app` is the one place where it is wired together."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from common.addresses import parse_listen
from dashboard import auth, pages, routes
from dashboard.context import (
    CONTEXT, COOKIE, CSRF_FIELD, CSRF_HEADER, IDENTITY, PUBLIC_PATHS, PUBLIC_PREFIXES, SAFE_METHODS,
    Context, Identity,
)
from dashboard.errors import Refused, answer_for, json_error

log = logging.getLogger("classguard.dashboard")

@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every error becomes an answer here, never a traceback on the wire: mapped once
    (dashboard.errors), written as JSON for the API and as a page for the pages."""
    try:
        return await handler(request)
    except Exception as exc:
        answer = answer_for(exc, request)
        if answer is None:
            raise
        if pages.is_page(request.path):
            return await pages.error_page(request, answer)
        return json_error(answer)


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
            raise Refused(401, "invalid or revoked API token",
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
        raise Refused(401, "log in first (POST /api/v1/login) or send a Bearer token")
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
        raise Refused(403, f"CSRF token missing or wrong: send {CSRF_HEADER} "
                           "(GET /api/v1/session gives it)")
    return await handler(request)


def _read_json_body_limit() -> int:
    return 1024 * 1024


# Every answer: no framing, no sniffing, no referrer, only our own style sheet (the week view's
# blocks are placed with style attributes), images of our own or inline (QR codes), forms posted
# here only. Pages and API answers hold pupils' data and one-time tokens: never stored by a cache.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; style-src-attr 'unsafe-inline'; "
                               "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers["Server"] = "classguard"  # not aiohttp's name and version
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"


def init_app(context: Context) -> web.Application:
    """The dashboard application on a context the composition root made."""
    app = web.Application(middlewares=[error_middleware, auth_middleware, csrf_middleware],
                          client_max_size=_read_json_body_limit())
    app[CONTEXT] = context
    routes.add_routes(app)
    app.on_response_prepare.append(_security_headers)
    return app


class DashboardServer:
    """The dashboard's listener (`dashboard.listen`), started and stopped by the service."""

    def __init__(self, context: Context, listen: str) -> None:
        self.context = context
        self.listen = listen
        self.runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, *, reuse_port: bool = False) -> None:
        """`reuse_port`: worker processes share the port (serve --workers)."""
        host, port = parse_listen(self.listen)
        self.runner = web.AppRunner(init_app(self.context), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        self.address = self.runner.addresses[0][:2]
        log.info("dashboard and REST API on http://%s:%d/api/v1", *self.address)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
