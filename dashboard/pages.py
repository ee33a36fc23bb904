"""The dashboard's pages (SPEC §1): server-rendered HTML for admins and teachers, French by default.

Every form is a plain POST carrying the session's CSRF token, answered by a redirect (or, when
the submission is refused, by the same form with the message next to the field): the pages work
without JavaScript. Writes go through the same `Commands` as the CLI and the REST API, so they
are validated, audited and applied like any other change.

This module is the frame every page shares: who asks and in which language, the page around the
content, errors as pages, logging in and out. The pages themselves are in `class_pages`,
`device_pages` and `admin_pages`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web
from babel.dates import format_date

from common.results import RESULTS
from dashboard import api, auth, i18n
from dashboard.context import (
    CONTEXT, COOKIE, CSRF_FIELD, IDENTITY, Context, Identity, client_address,
)
from dashboard.errors import Answer
from dashboard.i18n import dates, words
from dashboard.render import Html, html, join
from store.records import describe_user

routes = web.RouteTableDef()
LANGUAGE_COOKIE = "classguard_language"  # the login page's language, before anyone is known
STATIC = Path(__file__).with_name("static")


@dataclass
class View:
    request: web.Request
    identity: Identity | None
    language: str
    t: Callable[..., str]

    @property
    def context(self) -> Context:
        return self.request.app[CONTEXT]

    @property
    def admin(self) -> bool:
        return self.identity is not None and self.identity.role == "admin"

    @functools.cached_property
    def categories(self) -> words.Words:
        """Category ids in words and back ("gambling" <-> "Jeux d'argent")."""
        commands = self.context.commands
        return words.categories(commands.bundled, commands.known_categories)

    @functools.cached_property
    def services(self) -> words.Words:
        return words.services(self.context.commands.bundled)

    @property
    def csrf(self) -> Html:
        session = self.identity.session if self.identity is not None else None
        return html('<input type="hidden" name="{}" value="{}">', CSRF_FIELD,
                    session.csrf if session is not None else "")

    def clock(self, instant: float, *, day: bool = False) -> str:
        """A moment in the school's time zone, in words from now ("demain 7 h 00"); `day`: with
        its whole date ("samedi 5 décembre 2026 à 19 h 42")."""
        state = self.context.state
        return dates.moment(instant, state.timezone, state.clock(), self.language, day=day)


async def view_of(request: web.Request) -> View:
    identity = request.get(IDENTITY)
    chosen = None
    if identity is not None and identity.via == "session":
        user = await request.app[CONTEXT].store.get_user(identity.name)
        chosen = user.language if user is not None else None
    language = i18n.choose(chosen, request.query.get("lang"), request.cookies.get(LANGUAGE_COOKIE))
    return View(request, identity, language, i18n.translator(language))


def require_admin(view: View) -> None:
    if not view.admin:
        raise web.HTTPForbidden(reason=view.t("error.admin_only"))


def visible_class(view: View, class_id: str) -> str:
    if view.identity is None or not view.identity.may_see(class_id):
        raise web.HTTPForbidden(reason=view.t("error.not_your_class", id=class_id))
    if class_id not in view.context.state.snapshot.policy.classes:
        raise web.HTTPNotFound(reason=view.t("error.no_class", id=class_id))
    return class_id


def redirect(location: str, done: str | None = None) -> web.HTTPSeeOther:
    if done:
        location += ("&" if "?" in location else "?") + urlencode({"done": done})
    return web.HTTPSeeOther(location)


NAV = (("/", "nav.overview", False), ("/classes", "nav.classes", False),
       ("/devices", "nav.devices", False), ("/lists", "nav.lists", True),
       ("/why", "nav.why", False), ("/audit", "nav.audit", True), ("/users", "nav.users", True))


def page(view: View, title: str, body: Html, *, status: int = 200) -> web.Response:
    t = view.t
    header = Html("")
    if view.identity is not None:
        links = join(html('<a href="{}"{}>{}</a>', path,
                          Html(' aria-current="page"') if _current(view.request.path, path) else "",
                          t(key))
                     for path, key, admin_only in NAV if view.admin or not admin_only)
        logout = html('<form method="post" action="/logout" class="inline">{}'
                      '<button class="link">{}</button></form>', view.csrf, t("nav.logout"))
        # "marie — compte enseignant": a role noun that needs no gender ("enseignante" cannot be
        # derived from an account), without the point médian schools are told not to use.
        header = html('<nav aria-label="{}">{}</nav><div class="who"><span>{} — {}</span>{}{}</div>',
                      t("nav.label"), links, view.identity.name, t("role.account." + view.identity.role),
                      _language_switch(view), logout)
    else:
        header = html('<div class="who">{}</div>', _language_switch(view))
    done = view.request.query.get("done", "")
    notice = html('<p class="notice" role="status">{}</p>', t("done." + done)) \
        if done and "done." + done in i18n.catalogue(view.language) else Html("")
    document = html(
        '<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>{title} · classguard</title><link rel="stylesheet" href="/static/style.css">'
        '</head><body><header><a class="brand" href="/">classguard</a>{header}</header>'
        '<main><h1>{title}</h1>{notice}{body}</main></body></html>',
        lang=view.language, title=title, header=header, notice=notice, body=body)
    return web.Response(text=document, status=status, content_type="text/html", charset="utf-8")


def _current(path: str, link: str) -> bool:
    return path == link if link == "/" else path == link or path.startswith(link + "/")


def _language_switch(view: View) -> Html:
    query = {key: value for key, value in view.request.query.items() if key != "done"} \
        if view.request.method == "GET" else {}
    here = view.request.path + (f"?{urlencode(query)}" if query else "")
    buttons = join(html('<button name="language" value="{}" lang="{}"{}>{}</button>', code, code,
                        Html(' aria-pressed="true"') if code == view.language else "", code.upper())
                   for code in i18n.LANGUAGES)
    return html('<form method="post" action="/language" class="inline language" aria-label="{}">'
                '{}<input type="hidden" name="next" value="{}">{}</form>',
                view.t("nav.language"), view.csrf, here, buttons)


def table(headings: list[str], rows: list[list[Any]], *, empty: str) -> Html:
    if not rows:
        return html('<p class="empty">{}</p>', empty)
    head = join(html("<th>{}</th>", item) for item in headings)
    body = join(html("<tr>{}</tr>", join(html("<td>{}</td>", cell) for cell in row)) for row in rows)
    return html('<div class="scroll"><table><thead><tr>{}</tr></thead><tbody>{}</tbody></table></div>',
                head, body)


def error_text(messages: list[str] | str | None, field: str = "") -> Html:
    if not messages:
        return Html("")
    items = [messages] if isinstance(messages, str) else messages
    return html('<p class="error" id="error-{}" role="alert">{}</p>', field or "form",
                join((html("{}", item) for item in items), Html("<br>")))


def is_page(path: str) -> bool:
    """A page's path, whose errors are pages too (not the API's, nor the style sheet's)."""
    return not path.startswith(api.PREFIX + "/") and not path.startswith("/static/")


async def error_page(request: web.Request, answer: Answer) -> web.Response:
    """The pages' form of an error answer (dashboard.errors): 401 -> the login page, else a page
    with the same status and message as the API's JSON."""
    if answer.status == 401:
        target = "/login" + (f"?next={quote(request.path_qs)}" if request.method == "GET" else "")
        raise web.HTTPSeeOther(target)
    view = await view_of(request)
    title = view.t(f"error.status.{answer.status}") \
        if f"error.status.{answer.status}" in i18n.catalogue(view.language) else view.t("error.title")
    hint = html('<p>{}</p>', view.t("error.csrf")) if answer.message.startswith("CSRF") else Html("")
    body = html('<p class="error" role="alert">{}</p>{}<p><a href="/">{}</a></p>', answer.message,
                hint, view.t("error.back"))
    return page(view, title, body, status=answer.status)


@routes.get("/login")
async def login_page(request: web.Request) -> web.Response:
    view = await view_of(request)
    if view.identity is not None:
        raise web.HTTPSeeOther("/")
    return _login_form(view, "", "")


def _login_form(view: View, name: str, error: str, *, status: int = 200) -> web.Response:
    t = view.t
    target = _safe_next(view.request.query.get("next", "/"))
    body = html(
        '<form method="post" action="/login?{query}" class="card narrow">{error}'
        '<label>{name_label}<input name="name" value="{name}" autocomplete="username" required '
        'autofocus></label><label>{password_label}<input type="password" name="password" '
        'autocomplete="current-password" required></label><button>{submit}</button></form>',
        query=urlencode({"next": target}), error=error_text(error), name_label=t("login.name"),
        name=name, password_label=t("login.password"), submit=t("login.submit"))
    return page(view, t("login.title"), body, status=status)


def _safe_next(target: str) -> str:
    """Only a path on this site, else "/": never `//elsewhere`, a URL, or a path that a browser
    reads as one once it drops tabs and newlines and turns backslashes into slashes
    (`/%09/evil.example` became `//evil.example`): an open redirect otherwise."""
    if any(ord(char) < 0x21 or char in "\\\x7f" for char in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


@routes.post("/login")
async def login_submit(request: web.Request) -> web.Response:
    """The form twin of POST /api/v1/login: the same throttle, the same session."""
    view = await view_of(request)
    context = view.context
    form = await request.post()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    address = client_address(request)  # behind a trusted proxy, the client it names
    outcome = await auth.check_login(context.throttle, context.store, name, password, address)
    if outcome.retry_after > 0:
        wait = outcome.retry_after
        response = _login_form(view, name, view.t("login.throttled", seconds=math.ceil(wait)),
                               status=429)
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    user = outcome.user
    if user is None:
        return _login_form(view, name, view.t("login.wrong"), status=401)
    value, _session = await auth.new_session(context.store, user)
    response = web.HTTPSeeOther(_safe_next(request.query.get("next", "/")))
    response.set_cookie(COOKIE, value, httponly=True, samesite="Strict", path="/",
                        secure=context.secure_cookies, max_age=auth.SESSION_SECONDS)
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    identity = request[IDENTITY]
    if identity.session is not None:
        await request.app[CONTEXT].store.delete_session(identity.session.sha256)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


@routes.post("/language")
async def language(request: web.Request) -> web.Response:
    """The user's language, kept with the account (and in a cookie for the login page)."""
    form = await request.post()
    chosen = i18n.choose(str(form.get("language", "")))
    identity = request.get(IDENTITY)
    if identity is not None and identity.via == "session":
        store = request.app[CONTEXT].store
        user = await store.get_user(identity.name)
        if user is not None and user.language != chosen:
            await store.put_user(dataclasses.replace(user, language=chosen), actor=identity.actor,
                                 action="user.language", before=describe_user(user))
    response = web.HTTPSeeOther(_safe_next(str(form.get("next", "/"))))
    response.set_cookie(LANGUAGE_COOKIE, chosen, samesite="Strict", path="/",
                        max_age=365 * 86400, httponly=True)
    raise response


NOT_BLOCKED = frozenset(RESULTS.values()) - {"blocked"}  # the query log's outcomes that are no block


async def today_aggregates(view: View) -> dict[str, Any]:
    """Today's aggregate query log ({"hours": ..., "top_blocked": ...}), {} when it is off."""
    query_log = view.context.query_log
    if query_log is None or query_log.settings.mode == "off":
        return {}
    await query_log.flush()  # what the last minutes counted
    return await query_log.store.aggregates(query_log.day(query_log.clock())) or {}


def class_counts(today: dict[str, Any], class_id: str) -> tuple[int, int]:
    """(queries, blocked) of a class today."""
    queries = blocked = 0
    for outcomes in today.get("hours", {}).get(class_id, {}).values():
        for outcome, count in outcomes.items():
            queries += count
            blocked += 0 if outcome in NOT_BLOCKED else count
    return queries, blocked


def state_text(view: View, class_id: str) -> str:
    state = view.context.state
    class_state = state.snapshot.engine.class_state(class_id, "school", state.clock())
    if class_state is None or not class_state.closed:
        return view.t("state.open")
    key = "state.paused" if class_state.closed == "paused" else "state.closed"
    return view.t(key, until=view.clock(class_state.valid_until))


def ago(view: View, seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return view.t("duration.now")
    return dates.ago(seconds, view.language)


# The engine's descriptions of what closes a class (policies.engine.describe_window, and a pause's
# "paused until HH:MM by WHO"), said in the reader's language: the status headline and the "why"
# page show sentences, not "window mon,tue,wed,thu,fri,sat,sun 19:00-07:00 closed".
_WINDOW = re.compile(r"window (?P<days>[a-z,]+) (?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d) "
                     r"(?:(?P<closed>closed)|block (?P<names>\S*))(?P<school> \(school days\))?")
_PAUSED = re.compile(r"paused until (?P<until>\d\d:\d\d)(?: by (?P<who>.+))?")
_LISTED = re.compile(r"(?P<kind>category|service) (?P<name>\S+): (?P<match>.+)")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def rule_text(view: View, text: str | None) -> str:
    """A rule as the engine writes it, in words; as written when it is none of those."""
    if not text:
        return text or ""
    t = view.t
    found = _WINDOW.fullmatch(text)
    if found is not None:
        days = found["days"].split(",")
        if len(days) == 7:
            days_text = t("rule.days_all")
        else:
            days_text = ", ".join(format_date(dt.date(2024, 1, 1 + _DAYS.index(day)), "EEEE",
                                              locale=view.language) for day in days if day in _DAYS)
        if found["closed"]:
            effect = t("rule.window_closed")
        else:
            names = found["names"].split(",")
            effect = t("rule.window_block", names=", ".join(
                view.categories.word(name, view.language) if name in view.categories.words
                else view.services.word(name, view.language) for name in names))
        return t("rule.window", days=days_text, start=_time(view, found["start"]),
                 end=_time(view, found["end"]), effect=effect,
                 school_days=t("rule.school_days") if found["school"] else "")
    found = _PAUSED.fullmatch(text)
    if found is not None:
        return t("rule.paused", until=_time(view, found["until"]),
                 by=t("rule.by", who=found["who"]) if found["who"] else "")
    found = _LISTED.fullmatch(text)
    if found is not None:
        words = view.categories if found["kind"] == "category" else view.services
        return t("rule." + found["kind"], name=words.word(found["name"], view.language), match=found["match"])
    return text


def _time(view: View, text: str) -> str:
    hours, minutes = (int(part) for part in text.split(":"))
    return dates.time_of_day(dt.time(hours % 24, minutes), view.language)


def step_text(view: View, step: str) -> str:
    """"9 category" -> "Catégorie ou application bloquée" (the step's number kept for the docs)."""
    number = step.split(" ", 1)[0]
    key = "step." + (number if number.isdigit() else "answer" if step == "answer inspection" else "")
    if key not in i18n.catalogue(view.language):
        return step
    return f"{view.t(key)} ({step})"
