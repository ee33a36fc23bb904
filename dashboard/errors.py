"""Every error the dashboard answers, mapped in this one place: an exception becomes an `Answer`
(status, message, extra fields, headers), which the API writes as JSON and the pages as a page
(`dashboard.app.error_middleware` picks which)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from admin.errors import NeedsForce
from common.errors import ClassguardError
from dashboard import auth
from policies.loader import PolicyError
from store.records import DiskFull, NotFound, StoreUnavailable, VersionConflict

log = logging.getLogger("classguard.dashboard")

STORE_RETRY_AFTER = 5  # seconds a client waits before trying again while the store is away
POLICY_TEXT = web.RequestKey("policy_text", str)  # what a class write submitted, for `field`


class Refused(ClassguardError):
    """A request refused with this HTTP status; `extra` goes into the JSON answer beside `error`."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.headers, self.extra = status, headers, extra


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] | None = None


def etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def answer_for(exc: Exception, request: web.Request) -> Answer | None:
    """The answer for an exception a handler or a middleware raised; None for one that is no
    error (a redirect) or is already an answer in JSON: let it through."""
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or exc.content_type == "application/json":
            return None
        return Answer(exc.status, exc.reason,
                      {"allow": exc.headers.get("Allow")} if exc.status == 405 else {})
    if isinstance(exc, Refused):
        return Answer(exc.status, str(exc), exc.extra, exc.headers)
    if isinstance(exc, NeedsForce):  # an import that removes data, asked without ?force=true
        return Answer(409, str(exc), {"diff": exc.diff})
    if isinstance(exc, VersionConflict):
        return Answer(409, str(exc), {"version": exc.actual}, etag(exc.actual))
    if isinstance(exc, PolicyError):
        return Answer(400, exc.errors[0], {"errors": exc.errors,
                                           **_field(exc.errors[0], request.get(POLICY_TEXT))})
    if isinstance(exc, NotFound):
        return Answer(404, str(exc))
    if isinstance(exc, auth.AccountError):
        return Answer(400, str(exc), {"field": exc.field})
    if isinstance(exc, StoreUnavailable):  # Redis away: the DNS keeps answering, writes wait
        return Answer(503, str(exc), headers={"Retry-After": str(STORE_RETRY_AFTER)})
    if isinstance(exc, DiskFull):
        return Answer(507, str(exc))
    if isinstance(exc, ClassguardError):  # ControlError, StoreError, AuthError, ...: refused
        return Answer(400, str(exc))
    log.exception("%s %s failed", request.method, request.path)
    return Answer(500, "internal error; see the server's log")


def json_error(answer: Answer) -> web.Response:
    return web.json_response({"error": answer.message, **answer.extra}, status=answer.status,
                             headers=answer.headers)


_LINE = re.compile(r"^[^:]*:(\d+): ")
_KEY = re.compile(r'^\s*"([^"]+)":')


def _field(message: str, text: str | None) -> dict[str, str]:
    """The JSON key an error's line falls under, e.g. {"field": "block"} for a list item."""
    match = _LINE.match(message)
    if match is None or text is None:
        return {}
    lines = text.splitlines()
    number = min(int(match.group(1)), len(lines))
    for line in reversed(lines[:max(number, 0)]):
        key = _KEY.match(line)
        if key:
            return {"field": key.group(1)}
    return {}
