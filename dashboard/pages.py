"""The dashboard's pages (SPEC §1): server-rendered HTML for admins and teachers, French by default.

Every form is a plain POST carrying the session's CSRF token, answered by a redirect (or, when
the submission is refused, by the same form with the message next to the field): the pages work
without JavaScript. Writes go through the same `Commands` as the CLI and the REST API, so they
are validated, audited and applied like any other change.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from aiohttp import web

from blocklists.names import normalize_domain
from dashboard import api, auth, class_form, i18n
from dashboard.app import COOKIE, CONTEXT, CSRF_FIELD, IDENTITY, Context, Identity
from dashboard.render import Html, html, join
from policies.loader import PolicyError
from policies.model import WEEKDAYS, Policy
from resolver.control import ControlError
from resolver.stats import RESULTS
from resolver.store import StoreError, VersionConflict

routes = web.RouteTableDef()
SERVICE = web.AppKey("pages_service", object)  # the resolver Service: config, lists, health
LANGUAGE_COOKIE = "classguard_language"  # the login page's language, before anyone is known
STATIC = Path(__file__).with_name("static")
AUDIT_SHOWN = 200
TOP_SHOWN = 10
PAUSE_CHOICES = (15, 30, 60)  # the pause form's one-tap buttons, in minutes


def add_routes(app: web.Application, service: Any) -> None:
    app[SERVICE] = service
    app.add_routes(routes)
    app.router.add_static("/static", STATIC)
    app.middlewares.insert(0, html_errors)  # outermost: it sees what the other middlewares answer


# --- who asks, in which language -------------------------------------------------------------------


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
    def service(self) -> Any:
        return self.request.app[SERVICE]

    @property
    def admin(self) -> bool:
        return self.identity is not None and self.identity.role == "admin"

    @property
    def csrf(self) -> Html:
        session = self.identity.session if self.identity is not None else None
        return html('<input type="hidden" name="{}" value="{}">', CSRF_FIELD,
                    session.csrf if session is not None else "")

    def clock(self, instant: float, *, day: bool = False) -> str:
        """A moment in the server's time zone: HH:MM today, with the date otherwise."""
        if math.isinf(instant):
            return "∞"
        zone = ZoneInfo(self.context.state.timezone)
        moment = dt.datetime.fromtimestamp(instant, zone)
        today = dt.datetime.fromtimestamp(self.context.state.clock(), zone).date()
        return moment.strftime("%Y-%m-%d %H:%M" if day or moment.date() != today else "%H:%M")


async def view_of(request: web.Request) -> View:
    identity = request.get(IDENTITY)
    chosen = None
    if identity is not None and identity.via == "session":
        user = await request.app[CONTEXT].store.get_user(identity.name)
        chosen = user.language if user is not None else None
    language = i18n.choose(chosen, request.query.get("lang"), request.cookies.get(LANGUAGE_COOKIE))
    return View(request, identity, language, i18n.translator(language))


def _admin(view: View) -> None:
    if not view.admin:
        raise web.HTTPForbidden(reason=view.t("error.admin_only"))


def _visible_class(view: View, class_id: str) -> str:
    if view.identity is None or not view.identity.may_see(class_id):
        raise web.HTTPForbidden(reason=view.t("error.not_your_class", id=class_id))
    if class_id not in view.context.state.snapshot.policy.classes:
        raise web.HTTPNotFound(reason=view.t("error.no_class", id=class_id))
    return class_id


def _redirect(location: str, done: str | None = None) -> web.HTTPSeeOther:
    if done:
        location += ("&" if "?" in location else "?") + urlencode({"done": done})
    return web.HTTPSeeOther(location)


# --- the page around the content ---------------------------------------------------------------------

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
        header = html('<nav aria-label="{}">{}</nav><div class="who"><span>{} ({})</span>{}{}</div>',
                      t("nav.label"), links, view.identity.name, t("role." + view.identity.role),
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


def _table(headings: list[str], rows: list[list[Any]], *, empty: str) -> Html:
    if not rows:
        return html('<p class="empty">{}</p>', empty)
    head = join(html("<th>{}</th>", item) for item in headings)
    body = join(html("<tr>{}</tr>", join(html("<td>{}</td>", cell) for cell in row)) for row in rows)
    return html('<div class="scroll"><table><thead><tr>{}</tr></thead><tbody>{}</tbody></table></div>',
                head, body)


def _error(messages: list[str] | str | None, field: str = "") -> Html:
    if not messages:
        return Html("")
    items = [messages] if isinstance(messages, str) else messages
    return html('<p class="error" id="error-{}" role="alert">{}</p>', field or "form",
                join((html("{}", item) for item in items), Html("<br>")))


@web.middleware
async def html_errors(request: web.Request, handler):
    """The pages' side of the app's JSON errors: 401 -> the login page, other errors -> a page."""
    if request.path.startswith(api.PREFIX + "/") or request.path.startswith("/static/"):
        return await handler(request)
    response = await handler(request)
    if response.status < 400 or response.content_type != "application/json":
        return response
    if response.status == 401:
        target = "/login" + (f"?next={quote(request.path_qs)}" if request.method == "GET" else "")
        raise web.HTTPSeeOther(target)
    try:
        message = json.loads(response.text)["error"]
    except (ValueError, KeyError, TypeError):
        message = ""
    view = await view_of(request)
    title = view.t(f"error.status.{response.status}") \
        if f"error.status.{response.status}" in i18n.catalogue(view.language) else view.t("error.title")
    hint = html('<p>{}</p>', view.t("error.csrf")) if message.startswith("CSRF") else Html("")
    body = html('<p class="error" role="alert">{}</p>{}<p><a href="/">{}</a></p>', message, hint,
                view.t("error.back"))
    return page(view, title, body, status=response.status)


# --- logging in and out, the language ------------------------------------------------------------------


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
        query=urlencode({"next": target}), error=_error(error), name_label=t("login.name"),
        name=name, password_label=t("login.password"), submit=t("login.submit"))
    return page(view, t("login.title"), body, status=status)


def _safe_next(target: str) -> str:
    """Only a path on this site (never `//elsewhere` or a URL): an open redirect otherwise."""
    return target if target.startswith("/") and not target.startswith("//") \
        and "\\" not in target else "/"


@routes.post("/login")
async def login_submit(request: web.Request) -> web.Response:
    """The form twin of POST /api/v1/login: the same throttle, the same session."""
    view = await view_of(request)
    context = view.context
    form = await request.post()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    address = request.remote or "unknown"
    wait = context.throttle.retry_after(name, address)
    if wait > 0:
        response = _login_form(view, name, view.t("login.throttled", seconds=math.ceil(wait)),
                               status=429)
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    user = await auth.authenticate(context.store, name, password)
    if user is None:
        context.throttle.failed(name, address)
        return _login_form(view, name, view.t("login.wrong"), status=401)
    context.throttle.succeeded(name, address)
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
            await store.put_user(dataclasses.replace(user, language=chosen),
                                 actor=identity.actor, action="user.language")
    response = web.HTTPSeeOther(_safe_next(str(form.get("next", "/"))))
    response.set_cookie(LANGUAGE_COOKIE, chosen, samesite="Strict", path="/",
                        max_age=365 * 86400, httponly=True)
    raise response


# --- overview ------------------------------------------------------------------------------------------

NOT_BLOCKED = frozenset(RESULTS.values()) - {"blocked"}  # the query log's outcomes that are no block


async def _today(view: View) -> dict[str, Any]:
    """Today's aggregate query log ({"hours": ..., "top_blocked": ...}), {} when it is off."""
    query_log = view.context.query_log
    if query_log is None or query_log.settings.mode == "off":
        return {}
    await query_log.flush()  # what the last minutes counted
    return await query_log.store.aggregates(query_log.day(query_log.clock())) or {}


def _counts(today: dict[str, Any], class_id: str) -> tuple[int, int]:
    """(queries, blocked) of a class today."""
    queries = blocked = 0
    for outcomes in today.get("hours", {}).get(class_id, {}).values():
        for outcome, count in outcomes.items():
            queries += count
            blocked += 0 if outcome in NOT_BLOCKED else count
    return queries, blocked


def _state_text(view: View, class_id: str) -> str:
    state = view.context.state
    class_state = state.snapshot.engine.class_state(class_id, "school", state.clock())
    if class_state is None or not class_state.closed:
        return view.t("state.open")
    key = "state.paused" if class_state.closed == "paused" else "state.closed"
    return view.t(key, until=view.clock(class_state.valid_until))


@routes.get("/")
async def overview(request: web.Request) -> web.Response:
    view = await view_of(request)
    t, policy = view.t, view.context.state.snapshot.policy
    today = await _today(view)
    rows = []
    for class_id, item in policy.classes.items():
        if view.identity.may_see(class_id):
            queries, blocked = _counts(today, class_id)
            rows.append([html('<a href="/classes/{}">{}</a>', class_id, item.name or class_id),
                         queries, blocked, _state_text(view, class_id)])
    parts = [html("<section><h2>{}</h2>{}{}</section>", t("overview.classes"),
                  _table([t("col.class"), t("col.queries_today"), t("col.blocked_today"),
                          t("col.state")], rows, empty=t("classes.none")),
                  Html("") if today else html('<p class="hint">{}</p>', t("overview.no_query_log")))]
    if view.admin:
        parts.append(await _health(view))
    return page(view, t("overview.title"), join(parts))


async def _health(view: View) -> Html:
    from blocklists.update import read_status
    from resolver.metrics import ReadinessProbe, upstream_groups

    t, service = view.t, view.service
    report = await asyncio.to_thread(read_status, view.context.state_dir)
    lists = view.context.state.snapshot.lists
    now = time.time()
    if lists is None:
        freshness = t("health.lists_none")
    else:
        freshness = t("health.lists", entries=lists.entry_count,
                      at=view.clock(report.compiled_at, day=True) if report and report.compiled_at else "-")
    failed = [source.name for source in report.failed] if report is not None else []
    rows = [[t("health.lists_label"), freshness + (" · " + t("health.lists_failed", names=", ".join(failed))
                                                    if failed else "")]]
    for zone, group in upstream_groups(service):
        for upstream in group.upstreams:
            state = t("health.up") if upstream.healthy else \
                t("health.down", error=upstream.last_error or "?")
            rows.append([t("health.upstream", name=upstream.name) + (f" ({zone})" if zone else ""), state])
    probe = ReadinessProbe(service)  # what /readyz says: a Redis away is a note, not a reason
    store_problem = await probe.store_reason()
    rows.append([t("health.store", kind=type(view.context.store).__name__),
                 store_problem or (t("health.up") if probe.store_up else t("health.snapshot"))])
    rows.extend([t("health.note"), note] for note in probe.notes())
    ages = [source.age(now) for source in report.sources] if report is not None else []
    oldest = max((age for age in ages if age is not None), default=None)
    if oldest is not None:
        rows.append([t("health.lists_age"), _duration(view, oldest)])
    return html("<section><h2>{}</h2>{}</section>", t("overview.health"),
                _table([t("col.what"), t("col.state")], rows, empty=""))


def _duration(view: View, seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return view.t("duration.minutes", n=int(seconds // 60))
    if seconds < 2 * 86400:
        return view.t("duration.hours", n=int(seconds // 3600))
    return view.t("duration.days", n=int(seconds // 86400))


# --- classes --------------------------------------------------------------------------------------------


@routes.get("/classes")
async def classes(request: web.Request) -> web.Response:
    view = await view_of(request)
    t, policy = view.t, view.context.state.snapshot.policy
    rows = []
    for class_id, item in policy.classes.items():
        if not view.identity.may_see(class_id):
            continue
        devices = sum(1 for device in policy.devices.values() if device.class_id == class_id)
        actions = html('<a href="/classes/{}">{}</a>', class_id, t("classes.open"))
        if view.admin:
            actions = html('{} · <a href="/classes/{}/edit">{}</a>', actions, class_id, t("classes.edit"))
        rows.append([class_id, item.name, item.school,
                     ", ".join(str(network) for network in item.networks), devices,
                     _state_text(view, class_id), actions])
    body = _table([t("col.id"), t("col.name"), t("col.school"), t("col.networks"), t("col.devices"),
                   t("col.state"), ""], rows, empty=t("classes.none"))
    if view.admin:
        body = html('<p><a class="button" href="/classes/new">{}</a></p>{}', t("classes.new"), body)
    return page(view, t("classes.title"), body)


@routes.get("/classes/new")
async def class_new(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    version, _document = await api._policy_document(view.context)
    return _class_form_page(view, None, {"version": str(version)}, {})


@routes.post("/classes/new")
async def class_create(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    form = await request.post()
    class_id = str(form.get("id", "")).strip()
    if not class_id:
        return _class_form_page(view, None, form, {"id": [view.t("classes.id_needed")]}, status=400)

    def change(classes: dict) -> None:
        if class_id in classes:
            raise ControlError(view.t("classes.exists", id=class_id))
        classes[class_id] = class_form.mapping_from_form(form)
    return await _save_class(view, None, class_id, form, change)


@routes.get("/classes/{class_id}/edit")
async def class_edit(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    class_id = _visible_class(view, request.match_info["class_id"])
    version, document = await api._policy_document(view.context)
    body = (document.get("classes") or {}).get(class_id) or {}
    values = {**class_form.form_from_mapping(body), "version": str(version)}
    return _class_form_page(view, class_id, values, {})


@routes.post("/classes/{class_id}/edit")
async def class_update(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    class_id = _visible_class(view, request.match_info["class_id"])
    form = await request.post()

    def change(classes: dict) -> None:
        classes[class_id] = class_form.mapping_from_form(form)
    return await _save_class(view, class_id, class_id, form, change)


@routes.post("/classes/{class_id}/delete")
async def class_delete(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    class_id = _visible_class(view, request.match_info["class_id"])
    form = await request.post()

    def change(classes: dict) -> None:
        classes.pop(class_id, None)
    return await _save_class(view, class_id, class_id, form, change, deleting=True)


async def _save_class(view: View, editing: str | None, class_id: str, form, change,
                      *, deleting: bool = False) -> web.Response:
    """Through the API's own write (policy.put: validated like the file, audited, applied)."""
    request = view.request
    version = str(form.get("version", ""))
    try:
        await api._put_classes(request, change, int(version) if version.isdigit() else None)
    except PolicyError as exc:
        errors = class_form.errors_by_field(exc.errors, request.get(api.POLICY_TEXT))
        if deleting:
            errors = {"": [message for messages in errors.values() for message in messages]}
    except VersionConflict as exc:
        errors = {"": [view.t("classes.conflict", version=exc.actual)]}
    except (ControlError, StoreError) as exc:
        errors = {"": [str(exc)]}
    else:
        if deleting:
            raise _redirect("/classes", "class_deleted")
        raise _redirect(f"/classes/{quote(class_id)}", "class_saved")
    return _class_form_page(view, editing, form, errors, status=400)


def _class_form_page(view: View, class_id: str | None, values, errors: dict[str, list[str]],
                     *, status: int = 200) -> web.Response:
    t = view.t
    commands = view.context.commands

    def value(name: str) -> str:
        return str(values.get(name, ""))

    def text(name: str, label: str, hint: str = "", *, kind: str = "text", area: bool = False) -> Html:
        hint_html = html('<small class="hint">{}</small>', hint) if hint else Html("")
        control = html('<textarea name="{}" id="field-{}" rows="3">{}</textarea>', name, name, value(name)) \
            if area else html('<input type="{}" name="{}" id="field-{}" value="{}">', kind, name, name, value(name))
        invalid = " invalid" if errors.get(name) else ""
        return html('<div class="field{}" data-field="{}"><label for="field-{}">{}</label>{}{}{}</div>',
                    invalid, name, name, label, control, hint_html,
                    _error(errors.get(name), name.replace(".", "-")))

    def safe_search(name: str) -> Html:
        options = join(html('<option value="{}"{}>{}</option>', mode,
                            Html(" selected") if value(name) == mode else "",
                            t("safe_search." + (mode or "default")))
                       for mode in class_form.SAFE_SEARCH_CHOICES)
        return html('<div class="field" data-field="{}"><label for="field-{}">{}</label>'
                    '<select name="{}" id="field-{}">{}</select>{}</div>', name, name,
                    t("class.safe_search"), name, name, options,
                    _error(errors.get(name), name.replace(".", "-")))

    categories = ", ".join(sorted(commands.known_categories or ())) or "-"
    services = ", ".join(sorted(commands.bundled.services)) or "-"
    rules = join([
        text("block", t("class.block"), t("class.categories_hint", names=categories)),
        text("block_services", t("class.block_services"), t("class.services_hint", names=services)),
        text("allow", t("class.allow"), t("class.domains_hint")),
        text("deny", t("class.deny"), t("class.domains_hint")),
        text("allow_only", t("class.allow_only"), t("class.allow_only_hint")),
        safe_search("safe_search")])
    home = join([
        text("home.block", t("class.block")), text("home.block_services", t("class.block_services")),
        text("home.allow", t("class.allow")), text("home.deny", t("class.deny")),
        text("home.allow_only", t("class.allow_only")), safe_search("home.safe_search")])
    identity = text("id", t("class.id"), t("class.id_hint")) if class_id is None else \
        html('<p><strong>{}</strong> {}</p>', t("class.id"), class_id)
    action = "/classes/new" if class_id is None else f"/classes/{quote(class_id)}/edit"
    body = html(
        '<form method="post" action="{action}" class="card wide" novalidate>{csrf}'
        '<input type="hidden" name="version" value="{version}">{general}'
        '<fieldset><legend>{l_class}</legend>{identity}{name}{school}{networks}{screen}</fieldset>'
        '<fieldset><legend>{l_rules}</legend>{rules}</fieldset>'
        '<fieldset><legend>{l_schedule}</legend><p class="hint">{schedule_hint}</p>{schedule}</fieldset>'
        '<fieldset><legend>{l_home}</legend><p class="hint">{home_hint}</p>{home}</fieldset>'
        '<p><button>{save}</button></p></form>',
        action=action, csrf=view.csrf, version=value("version"), general=_error(errors.get("")),
        l_class=t("class.section"), identity=identity,
        name=text("name", t("class.name")), school=text("school", t("class.school")),
        networks=text("networks", t("class.networks"), t("class.networks_hint"), area=True),
        screen=text("screen_time", t("class.screen_time"), t("class.screen_time_hint"), kind="number"),
        l_rules=t("class.rules"), rules=rules, l_schedule=t("class.schedule"),
        schedule_hint=t("class.schedule_hint"), schedule=_schedule_rows(view, values, errors),
        l_home=t("class.home"), home_hint=t("class.home_hint"), home=home, save=t("class.save"))
    if class_id is not None:
        body = html('{}<form method="post" action="/classes/{}/delete" class="card danger">{}'
                    '<input type="hidden" name="version" value="{}"><button class="danger">{}</button>'
                    '</form>', body, class_id, view.csrf, value("version"), t("class.delete"))
    title = t("class.new_title") if class_id is None else t("class.edit_title", id=class_id)
    return page(view, title, body, status=status)


def _schedule_rows(view: View, values, errors: dict[str, list[str]]) -> Html:
    t = view.t
    rows = []
    for index in range(class_form.row_count(values)):
        prefix = f"schedule-{index}-"

        def cell(key: str, label: str, kind: str = "text", size: str = "") -> Html:
            return html('<label class="{}">{}<input type="{}" name="{}" value="{}"></label>', size, label,
                        kind, prefix + key, str(values.get(prefix + key, "")))

        def check(key: str, label: str) -> Html:
            on = Html(" checked") if values.get(prefix + key) else ""
            return html('<label class="check"><input type="checkbox" name="{}"{}> {}</label>',
                        prefix + key, on, label)
        where = values.get(prefix + "where", "")
        places = join(html('<option value="{}"{}>{}</option>', code, Html(" selected") if where == code else "",
                           t(label)) for code, label in (("", "class.where_always"), ("home", "class.where_home")))
        rows.append(html(
            '<div class="window">{}{}{}{}{}{}{}<label>{}<select name="{}">{}</select></label></div>',
            cell("days", t("class.days"), size="short"), cell("from", t("class.from"), size="short"),
            cell("to", t("class.to"), size="short"), cell("block", t("class.block")),
            cell("block_services", t("class.block_services")), check("closed", t("class.closed")),
            check("school_days_only", t("class.school_days_only")), t("class.where"),
            prefix + "where", places))
    return html('<div class="field" data-field="schedule">{}{}</div>', join(rows),
                _error(errors.get("schedule"), "schedule"))


# --- a class, for its teacher -----------------------------------------------------------------------------


@routes.get("/classes/{class_id}")
async def class_page(request: web.Request) -> web.Response:
    view = await view_of(request)
    return await _class_page(view, _visible_class(view, request.match_info["class_id"]), {})


async def _class_page(view: View, class_id: str, errors: dict[str, str], *,
                      status: int = 200) -> web.Response:
    t = view.t
    state = view.context.state
    now = state.clock()
    policy = state.snapshot.policy
    item = policy.classes[class_id]
    class_state = state.snapshot.engine.class_state(class_id, "school", now)
    overrides = sorted((override for override in state.snapshot.overrides
                        if override.class_id == class_id and override.active(now)),
                       key=lambda override: override.until)
    # What is in force, and until when.
    if class_state.closed == "paused":
        status_line = t("state.paused", until=view.clock(class_state.valid_until))
    elif class_state.closed:
        status_line = t("class_page.closed_by", rule=class_state.closed_rule,
                        until=view.clock(class_state.valid_until))
    else:
        status_line = t("state.open")
    blocked_now = ", ".join(sorted(class_state.block | class_state.block_services)) or "-"
    until = t("class_page.until", at=view.clock(class_state.valid_until)) \
        if class_state.timed and not math.isinf(class_state.valid_until) else t("class_page.no_change")
    rows = []
    for override in overrides:
        what = t("override.pause") if override.kind == "pause" else \
            t("override.allow", target=override.target)
        cancel = html('<form method="post" action="/classes/{}/cancel" class="inline">{}'
                      '<input type="hidden" name="id" value="{}"><button class="small">{}</button></form>',
                      class_id, view.csrf, override.id, t("override.cancel"))
        rows.append([what, view.clock(override.until), override.created_by, cancel])
    in_force = html(
        '<section class="card"><h2>{}</h2><p class="status {}" id="class-status">{}</p>'
        '<p>{} <strong>{}</strong></p><p>{}</p>{}</section>',
        t("class_page.in_force"), class_state.closed or "open", status_line,
        t("class_page.blocked_now"), blocked_now, until,
        _table([t("col.override"), t("col.until"), t("col.by"), ""], rows, empty=t("class_page.no_override")))
    # Pause, resume, allow.
    pause_buttons = join(html('<button name="minutes" value="{}">{}</button>', minutes,
                              t("class_page.pause_for", n=minutes)) for minutes in PAUSE_CHOICES)
    resume = html('<form method="post" action="/classes/{}/resume" class="inline">{}'
                  '<button class="secondary" id="resume">{}</button></form>', class_id, view.csrf,
                  t("class_page.resume")) if class_state.closed == "paused" else Html("")
    actions = html(
        '<section class="card"><h2>{pause_title}</h2>'
        '<form method="post" action="/classes/{id}/pause" id="pause-form">{csrf}{error_pause}'
        '<div class="buttons">{buttons}</div>'
        '<label>{other}<input type="number" name="minutes" min="1" max="1440" value=""></label>'
        '<button name="go" value="1">{pause}</button></form>{resume}</section>'
        '<section class="card"><h2>{allow_title}</h2>'
        '<form method="post" action="/classes/{id}/allow" id="allow-form">{csrf}{error_allow}'
        '<label>{target}<input name="target" required list="services" value=""></label>'
        '<label>{minutes}<input type="number" name="minutes" min="1" max="1440" value="60"></label>'
        '<button>{allow}</button></form><datalist id="services">{services}</datalist>'
        '<p class="hint">{allow_hint}</p></section>',
        pause_title=t("class_page.pause_title"), id=class_id, csrf=view.csrf,
        error_pause=_error(errors.get("pause"), "pause"), buttons=pause_buttons,
        other=t("class_page.other_minutes"), pause=t("class_page.pause"), resume=resume,
        allow_title=t("class_page.allow_title"), error_allow=_error(errors.get("allow"), "allow"),
        target=t("class_page.target"), minutes=t("class_page.minutes"), allow=t("class_page.allow"),
        services=join(html('<option value="{}">', name)
                      for name in sorted(view.context.commands.bundled.services)),
        allow_hint=t("class_page.allow_hint"))
    today = await _today(view)
    top = sorted((today.get("top_blocked", {}).get(class_id) or {}).items(),
                 key=lambda pair: (-pair[1], pair[0]))[:TOP_SHOWN]
    top_html = html('<section class="card"><h2>{}</h2>{}</section>', t("class_page.top_blocked"),
                    _table([t("col.domain"), t("col.count")], [list(pair) for pair in top],
                           empty=t("class_page.no_blocks") if today else t("overview.no_query_log")))
    week = html('<section class="card wide"><h2>{}</h2>{}</section>', t("class_page.week"),
                week_view(view, policy, class_id))
    edit = html('<p><a class="button secondary" href="/classes/{}/edit">{}</a> '
                '<a class="button secondary" href="/why?class={}">{}</a></p>', class_id,
                t("classes.edit"), class_id, t("nav.why")) if view.admin else \
        html('<p><a class="button secondary" href="/why?class={}">{}</a></p>', class_id, t("nav.why"))
    title = f"{item.name} ({class_id})" if item.name else class_id
    body = html('<div class="grid">{}{}{}</div>{}{}', in_force, actions, top_html, week, edit)
    return page(view, title, body, status=status)


def week_view(view: View, policy: Policy, class_id: str) -> Html:
    """This week, Monday first: each day's windows as blocks on a 24-hour column, holidays marked."""
    t = view.t
    zone = ZoneInfo(view.context.state.timezone)
    today = dt.datetime.fromtimestamp(view.context.state.clock(), zone).date()
    monday = today - dt.timedelta(days=today.weekday())
    item = policy.classes[class_id]
    windows = [(window, "") for window in item.rules.schedule] + \
        [(window, "home") for window in (item.home.schedule if item.home else ())]
    holidays = {}
    for offset in range(7):
        day = monday + dt.timedelta(days=offset)
        for holiday in policy.exceptions:
            if holiday.first <= day <= holiday.last:
                holidays[offset] = holiday.name or t("week.holiday")
    pieces: dict[int, list[Html]] = {offset: [] for offset in range(7)}
    for window, where in windows:
        end = window.end if window.end > window.start else 1440
        label = (t("week.closed") if window.closed else
                 ", ".join(window.block + window.block_services)) + (f" ({t('class.where_home')})" if where else "")
        span = f"{window.start // 60:02d}:{window.start % 60:02d}–{window.end // 60:02d}:{window.end % 60:02d}"
        for day in window.days:
            parts = [(day, window.start, end)]
            if window.end <= window.start and window.end > 0:  # crosses midnight
                parts.append(((day + 1) % 7, 0, window.end))
            for offset, start, stop in parts:
                off = window.school_days_only and offset in holidays
                kind = "closed" if window.closed else "block"
                pieces[offset].append(html(
                    '<div class="slot {}{}" style="top:{:.2f}%;height:{:.2f}%" title="{} {}">'
                    '<span>{} {}</span></div>', kind, " off" if off else "", start / 14.4,
                    max((stop - start) / 14.4, 2.5), span, label, span, label))
    columns = []
    for offset in range(7):
        day = monday + dt.timedelta(days=offset)
        holiday = holidays.get(offset)
        columns.append(html(
            '<div class="day{}{}"><div class="day-name">{} {}{}</div><div class="day-body">{}</div></div>',
            " today" if day == today else "", " holiday" if holiday else "", t("day." + WEEKDAYS[offset]),
            day.strftime("%d/%m"), html('<br><small>{}</small>', holiday) if holiday else "",
            join(pieces[offset])))
    upcoming = [holiday for holiday in policy.exceptions if holiday.last >= today][:6]
    listing = join(html("<li>{}{} {}</li>", holiday.first.isoformat(),
                        f" → {holiday.last.isoformat()}" if holiday.last != holiday.first else "",
                        holiday.name) for holiday in upcoming)
    legend = html('<p class="hint">{}</p>', t("week.legend"))
    holidays_html = html('<h3>{}</h3><ul>{}</ul>', t("week.holidays"), listing) if upcoming else \
        html('<p class="hint">{}</p>', t("week.no_holidays"))
    return html('<div class="week">{}</div>{}{}', join(columns), legend, holidays_html)


def _minutes(form) -> Any:
    """The minutes a form sends: the pause form has one-tap buttons and a field, both `minutes`;
    the one that has a value counts. The commands check the number."""
    text = next((str(value).strip() for value in form.getall("minutes", []) if str(value).strip()), "")
    return int(text) if text.isdigit() else text


@routes.post("/classes/{class_id}/pause")
async def pause(request: web.Request) -> web.Response:
    view = await view_of(request)
    class_id = _visible_class(view, request.match_info["class_id"])
    form = await request.post()
    try:
        await view.context.commands.override_add(
            {"class": class_id, "kind": "pause", "minutes": _minutes(form)}, view.identity.actor)
    except (ControlError, StoreError) as exc:
        return await _class_page(view, class_id, {"pause": str(exc)}, status=400)
    raise _redirect(f"/classes/{quote(class_id)}", "paused")


@routes.post("/classes/{class_id}/resume")
async def resume(request: web.Request) -> web.Response:
    view = await view_of(request)
    class_id = _visible_class(view, request.match_info["class_id"])
    for override in view.context.state.snapshot.overrides:
        if override.class_id == class_id and override.kind == "pause":
            try:
                await view.context.commands.override_cancel({"id": override.id}, view.identity.actor)
            except ControlError:
                continue  # it ended meanwhile
    raise _redirect(f"/classes/{quote(class_id)}", "resumed")


@routes.post("/classes/{class_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    view = await view_of(request)
    class_id = _visible_class(view, request.match_info["class_id"])
    form = await request.post()
    override_id = str(form.get("id", ""))
    if not any(override.id == override_id and override.class_id == class_id
               for override in view.context.state.snapshot.overrides):
        raise web.HTTPNotFound(reason=view.t("error.no_override"))
    try:
        await view.context.commands.override_cancel({"id": override_id}, view.identity.actor)
    except ControlError as exc:
        return await _class_page(view, class_id, {"pause": str(exc)}, status=400)
    raise _redirect(f"/classes/{quote(class_id)}", "cancelled")


@routes.post("/classes/{class_id}/allow")
async def allow(request: web.Request) -> web.Response:
    view = await view_of(request)
    class_id = _visible_class(view, request.match_info["class_id"])
    form = await request.post()
    try:
        await view.context.commands.override_add(
            {"class": class_id, "kind": "allow", "minutes": _minutes(form),
             "target": str(form.get("target", ""))}, view.identity.actor)
    except (ControlError, StoreError) as exc:
        return await _class_page(view, class_id, {"allow": str(exc)}, status=400)
    raise _redirect(f"/classes/{quote(class_id)}", "allowed")


# --- why is this blocked? ----------------------------------------------------------------------------------


@routes.get("/why")
async def why(request: web.Request) -> web.Response:
    view = await view_of(request)
    t, state = view.t, view.context.state
    policy = state.snapshot.policy
    query = request.query
    visible = [class_id for class_id in policy.classes if view.identity.may_see(class_id)]
    name, class_id = query.get("name", "").strip(), query.get("class", "")
    at_text, scope = query.get("at", "").strip(), query.get("scope", "school")
    errors: dict[str, str] = {}
    answer = Html("")
    if class_id and class_id not in visible:
        _visible_class(view, class_id)  # 403 or 404
    if name:
        normalized = normalize_domain(name)
        zone = ZoneInfo(state.timezone)
        at = state.clock()
        if at_text:
            try:
                moment = dt.datetime.fromisoformat(at_text)
                at = (moment if moment.tzinfo else moment.replace(tzinfo=zone)).timestamp()
            except ValueError:
                errors["at"] = t("why.bad_time")
        if normalized is None:
            errors["name"] = t("why.bad_name", name=name)
        if scope not in ("school", "home"):
            errors["scope"] = t("why.bad_scope")
        if not class_id:
            errors["class"] = t("why.pick_class")
        if not errors:
            explanation = state.snapshot.engine.explain(normalized, class_id, scope, at)
            decision = explanation.decision
            rows = [[t("why.decision"), t("why.blocked") if decision.blocked else decision.action.value],
                    [t("why.step"), decision.step], [t("why.rule"), decision.rule],
                    [t("why.at"), view.clock(at, day=True) + f" ({state.timezone})"]]
            if decision.reason:
                rows.append([t("why.reason"), decision.reason])
            if explanation.in_force:
                rows.append([t("why.in_force"), explanation.in_force])
            if explanation.until is not None:
                rows.append([t("why.until"), view.clock(explanation.until, day=True)])
            answer = html('<section class="card answer {}" id="why-answer"><h2>{}</h2>{}</section>',
                          "blocked" if decision.blocked else "resolves", normalized,
                          _table([t("col.what"), t("col.value")], rows, empty=""))
    options = join(html('<option value="{}"{}>{}</option>', item, Html(" selected") if item == class_id else "",
                        f"{policy.classes[item].name} ({item})" if policy.classes[item].name else item)
                   for item in visible)
    scopes = join(html('<option value="{}"{}>{}</option>', code, Html(" selected") if code == scope else "",
                       t("why.scope_" + code)) for code in ("school", "home"))
    form = html(
        '<form method="get" action="/why" class="card">'
        '<div class="field"><label for="why-name">{}</label><input id="why-name" name="name" value="{}" '
        'placeholder="www.example.org">{}</div>'
        '<div class="field"><label for="why-class">{}</label><select id="why-class" name="class">{}</select>{}</div>'
        '<div class="field"><label for="why-at">{}</label><input id="why-at" type="datetime-local" name="at" '
        'value="{}">{}<small class="hint">{}</small></div>'
        '<div class="field"><label for="why-scope">{}</label><select id="why-scope" name="scope">{}</select>{}</div>'
        '<button>{}</button></form>',
        t("why.name"), name, _error(errors.get("name"), "name"), t("why.class"), options,
        _error(errors.get("class"), "class"), t("why.at"), at_text, _error(errors.get("at"), "at"),
        t("why.at_hint"), t("why.scope"), scopes, _error(errors.get("scope"), "scope"), t("why.submit"))
    return page(view, t("why.title"), html("{}{}", form, answer), status=400 if errors else 200)


# --- devices ---------------------------------------------------------------------------------------------


async def _device_op(view: View, request: dict[str, Any]) -> dict[str, Any]:
    """A device operation of the control protocol; ControlError with its message when refused."""
    result = await view.context.commands.handle(request, view.identity.actor)
    if not result.get("ok"):
        raise ControlError(result.get("error", "refused"))
    return result


@routes.get("/devices")
async def devices(request: web.Request) -> web.Response:
    view = await view_of(request)
    return await _devices_page(view, {})


async def _devices_page(view: View, errors: dict[str, str], values: dict[str, str] | None = None,
                        *, status: int = 200) -> web.Response:
    t = view.t
    values = values or {}
    policy = view.context.state.snapshot.policy
    listed = (await _device_op(view, {"op": "device.list"}))["devices"]
    rows = []
    for item in listed:
        if not view.identity.may_see(item["class"]):
            continue
        actions = Html("")
        if view.admin:
            actions = html(
                '<form method="post" action="/devices/{id}/rotate" class="inline">{csrf}'
                '<button class="small">{rotate}</button></form> '
                '<form method="post" action="/devices/{id}/revoke" class="inline">{csrf}'
                '<button class="small danger"{disabled}>{revoke}</button></form>',
                id=item["id"], csrf=view.csrf, rotate=t("devices.rotate"), revoke=t("devices.revoke"),
                disabled=Html("") if item.get("token") else Html(" disabled"))
        rows.append([item["id"], item["class"], ", ".join(item.get("addresses", ())),
                     t("devices.token_yes") if item.get("token") else t("devices.token_no"), actions])
    table = _table([t("col.id"), t("col.class"), t("col.addresses"), t("col.token"), ""], rows,
                   empty=t("devices.none"))
    if not view.admin:
        return page(view, t("devices.title"), table, status=status)
    classes = join(html('<option value="{}"{}>{}</option>', class_id,
                        Html(" selected") if values.get("class") == class_id else "", class_id)
                   for class_id in policy.classes)
    enrol = html(
        '<section class="card"><h2>{title}</h2><form method="post" action="/devices/enrol">{csrf}{error}'
        '<label>{id_label}<input name="id" value="{id}" required></label>'
        '<label>{class_label}<select name="class">{classes}</select></label>'
        '<label>{addresses_label}<input name="addresses" value="{addresses}"></label>'
        '<small class="hint">{addresses_hint}</small><button>{submit}</button></form></section>',
        title=t("devices.enrol"), csrf=view.csrf, error=_error(errors.get("enrol"), "enrol"),
        id_label=t("devices.id"), id=values.get("id", ""), class_label=t("col.class"), classes=classes,
        addresses_label=t("col.addresses"), addresses=values.get("addresses", ""),
        addresses_hint=t("devices.addresses_hint"), submit=t("devices.enrol_submit"))
    bulk = html(
        '<section class="card"><h2>{title}</h2>'
        '<form method="post" action="/devices/import" enctype="multipart/form-data">'
        '{csrf}{error}<label>{file_label}<input type="file" name="csv" accept=".csv,text/csv" required>'
        '</label><small class="hint">{hint}</small><button>{submit}</button></form></section>',
        title=t("devices.import"), csrf=view.csrf,
        error=_error(errors.get("import"), "import"), file_label=t("devices.csv_file"),
        hint=t("devices.csv_hint"), submit=t("devices.import_submit"))
    return page(view, t("devices.title"), html('<div class="grid">{}{}</div>{}', enrol, bulk, table),
                status=status)


def _need_addresses(view: View) -> None:
    config = view.service.config
    if config.doh is None and not (config.dot or {}).get("hostname"):
        raise ControlError(view.t("devices.no_addresses"))


def _issued_page(view: View, device_id: str, class_id: str, token: str, title: str) -> web.Response:
    """The DoH URL, DoT hostname, QR code and Apple profile of a new token: shown this once."""
    import segno

    from resolver.devices import doh_url, dot_hostname
    from resolver.mobileconfig import profile

    t, config = view.t, view.service.config
    url, hostname = doh_url(config, token), dot_hostname(config, token)
    data = profile(device_id, doh_url=url) if url else profile(device_id, dot_server=hostname)
    download = "data:application/x-apple-aspen-config;base64," + base64.b64encode(data).decode()
    qr = Html(segno.make(url, error="m").svg_inline(scale=5, dark="#111", light="#fff")) if url else Html("")
    rows = [[t("devices.doh_url"), html('<code id="doh-url">{}</code>', url or "-")],
            [t("devices.dot_hostname"), html('<code id="dot-hostname">{}</code>', hostname or "-")],
            [t("col.class"), class_id]]
    body = html(
        '<section class="card wide"><p class="notice">{}</p>{}<div class="qr">{}</div>'
        '<p><a class="button" id="mobileconfig" download="{}.mobileconfig" href="{}">{}</a> '
        '<a class="button secondary" href="/devices">{}</a></p></section>',
        t("devices.shown_once"), _table([t("col.what"), t("col.value")], rows, empty=""), qr,
        device_id, download, t("devices.mobileconfig"), t("devices.back"))
    return page(view, title, body)


@routes.post("/devices/enrol")
async def device_enrol(request: web.Request) -> web.Response:
    from resolver.devices import new_token, token_sha256

    view = await view_of(request)
    _admin(view)
    form = await request.post()
    values = {key: str(form.get(key, "")).strip() for key in ("id", "class", "addresses")}
    token = new_token()
    try:
        _need_addresses(view)
        await _device_op(view, {"op": "device.add", "id": values["id"], "class": values["class"],
                                "token_sha256": token_sha256(token),
                                "addresses": class_form.split(values["addresses"])})
    except ControlError as exc:
        return await _devices_page(view, {"enrol": str(exc)}, values, status=400)
    return _issued_page(view, values["id"], values["class"], token,
                        view.t("devices.enrolled", id=values["id"]))


@routes.post("/devices/{device_id}/rotate")
async def device_rotate(request: web.Request) -> web.Response:
    from resolver.devices import new_token, token_sha256

    view = await view_of(request)
    _admin(view)
    device_id = request.match_info["device_id"]
    device = view.context.state.snapshot.policy.devices.get(device_id)
    token = new_token()
    try:
        _need_addresses(view)
        await _device_op(view, {"op": "device.rotate", "tokens": {device_id: token_sha256(token)}})
    except ControlError as exc:
        return await _devices_page(view, {"enrol": str(exc)}, status=400)
    return _issued_page(view, device_id, device.class_id if device else "-", token,
                        view.t("devices.rotated", id=device_id))


@routes.post("/devices/{device_id}/revoke")
async def device_revoke(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    try:
        await _device_op(view, {"op": "device.revoke", "id": request.match_info["device_id"]})
    except ControlError as exc:
        return await _devices_page(view, {"enrol": str(exc)}, status=400)
    raise _redirect("/devices", "revoked")


@routes.post("/devices/import")
async def device_import(request: web.Request) -> web.Response:
    from resolver.devices import new_token, parse_csv, token_sha256, urls_csv

    view = await view_of(request)
    _admin(view)
    form = await request.post()
    upload = form.get("csv")
    t = view.t
    try:
        _need_addresses(view)
        if upload is None or isinstance(upload, str):
            raise ControlError(t("devices.csv_missing"))
        text = upload.file.read().decode("utf-8-sig")
        rows = parse_csv(text, upload.filename or "upload.csv")
        issued = [(row.id, new_token()) for row in rows]
        await _device_op(view, {"op": "device.import", "source": upload.filename or "upload.csv",
                                "devices": [{"id": row.id, "class": row.class_id,
                                             "token_sha256": token_sha256(token),
                                             "addresses": list(row.addresses)}
                                            for row, (_, token) in zip(rows, issued)]})
    except PolicyError as exc:
        return await _devices_page(view, {"import": "; ".join(exc.errors[:10])}, status=400)
    except (ControlError, UnicodeDecodeError) as exc:
        return await _devices_page(view, {"import": str(exc)}, status=400)
    urls = urls_csv(view.service.config, issued)
    download = "data:text/csv;charset=utf-8;base64," + base64.b64encode(urls.encode()).decode()
    table_rows = [line.split(",", 2) for line in urls.splitlines()[1:]]
    body = html('<section class="card wide"><p class="notice">{}</p><p><a class="button" download="{}" '
                'href="{}">{}</a> <a class="button secondary" href="/devices">{}</a></p>{}</section>',
                t("devices.shown_once"), "classguard-urls.csv", download, t("devices.download_csv"),
                t("devices.back"), _table([t("col.id"), t("devices.doh_url"), t("devices.dot_hostname")],
                                          table_rows, empty=""))
    return page(view, t("devices.imported", n=len(rows)), body)


# --- lists, audit, users -------------------------------------------------------------------------------


@routes.get("/lists")
async def lists(request: web.Request) -> web.Response:
    from blocklists.update import read_status

    view = await view_of(request)
    _admin(view)
    t = view.t
    report = await asyncio.to_thread(read_status, view.context.state_dir)
    now = time.time()
    rows = []
    for row in (report.category_rows(now) if report is not None else []):
        error = f"{view.clock(row['last_error_at'], day=True)}: {row['last_error']}" \
            if row["last_error"] else "-"
        rows.append([row["source"], row["category"], row["entries"], _duration(view, row["age_seconds"]),
                     view.clock(row["last_success"], day=True) if row["last_success"] else "-", error])
    summary = t("lists.summary", entries=report.entries,
                compiled=view.clock(report.compiled_at, day=True) if report.compiled_at else "-",
                checked=view.clock(report.checked_at, day=True) if report.checked_at else "-") \
        if report is not None else t("lists.never")
    refresh = html('<form method="post" action="/lists/refresh">{}<button>{}</button></form>',
                   view.csrf, t("lists.refresh"))
    body = html('<p>{}</p>{}{}', summary, refresh,
                _table([t("col.source"), t("col.category"), t("col.entries"), t("col.age"),
                        t("col.last_success"), t("col.last_error")], rows, empty=t("lists.none")))
    return page(view, t("lists.title"), body)


@routes.post("/lists/refresh")
async def lists_refresh(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    view.service.refresh_lists_now()
    raise _redirect("/lists", "refresh_started")


@routes.get("/audit")
async def audit(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    t = view.t
    entries = await view.context.store.audit(AUDIT_SHOWN)
    rows = [[view.clock(entry.at, day=True), entry.actor, entry.action, entry.before, entry.after]
            for entry in entries]
    return page(view, t("audit.title"), _table(
        [t("col.at"), t("col.actor"), t("col.action"), t("col.before"), t("col.after")], rows,
        empty=t("audit.none")))


@routes.get("/users")
async def users(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    return await _users_page(view, {})


async def _users_page(view: View, errors: dict[str, str], values: dict[str, Any] | None = None,
                      *, status: int = 200) -> web.Response:
    t = view.t
    values = values or {}
    rows = []
    for user in sorted(await view.context.store.users(), key=lambda user: user.name):
        reset = html('<form method="post" action="/users/{}/password" class="inline">{}'
                     '<input type="password" name="password" autocomplete="new-password" '
                     'aria-label="{}" placeholder="{}"><button class="small">{}</button></form>',
                     user.name, view.csrf, t("users.new_password"), t("users.new_password"),
                     t("users.reset"))
        rows.append([user.name, t("role." + user.role), ", ".join(user.classes) or "-",
                     i18n.NAMES.get(i18n.choose(user.language), ""), reset])
    policy = view.context.state.snapshot.policy
    chosen = set(values.get("classes", ()))
    class_boxes = join(html('<label class="check"><input type="checkbox" name="classes" value="{}"{}> {}</label>',
                            class_id, Html(" checked") if class_id in chosen else "", class_id)
                       for class_id in policy.classes)
    roles = join(html('<option value="{}"{}>{}</option>', role, Html(" selected") if values.get("role") == role else "",
                      t("role." + role)) for role in auth.ROLES)
    languages = join(html('<option value="{}">{}</option>', code, i18n.NAMES[code]) for code in i18n.LANGUAGES)
    form = html(
        '<section class="card"><h2>{title}</h2><form method="post" action="/users/add">{csrf}{error}'
        '<label>{name_label}<input name="name" value="{name}" required></label>'
        '<label>{role_label}<select name="role">{roles}</select></label>'
        '<fieldset><legend>{classes_label}</legend>{classes}</fieldset>'
        '<label>{language_label}<select name="language">{languages}</select></label>'
        '<label>{password_label}<input type="password" name="password" autocomplete="new-password" '
        'required></label><button>{submit}</button></form></section>',
        title=t("users.add"), csrf=view.csrf, error=_error(errors.get("add"), "add"),
        name_label=t("users.name"), name=values.get("name", ""), role_label=t("users.role"), roles=roles,
        classes_label=t("users.classes"), classes=class_boxes, language_label=t("nav.language"),
        languages=languages, password_label=t("login.password"), submit=t("users.add_submit"))
    table = _table([t("users.name"), t("users.role"), t("users.classes"), t("nav.language"), ""], rows,
                   empty="")
    return page(view, t("users.title"), html('{}{}{}', _error(errors.get("reset"), "reset"), table, form),
                status=status)


@routes.post("/users/add")
async def user_add(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    form = await request.post()
    store = view.context.store
    values = {"name": str(form.get("name", "")).strip(), "role": str(form.get("role", "")),
              "classes": [str(item) for item in form.getall("classes", [])]}
    try:
        if await store.get_user(values["name"]) is not None:
            raise auth.AuthError(view.t("users.exists", name=values["name"]))
        missing = [item for item in values["classes"]
                   if item not in view.context.state.snapshot.policy.classes]
        if missing:
            raise auth.AuthError(view.t("error.no_class", id=missing[0]))
        user = await asyncio.to_thread(auth.make_user, values["name"], values["role"],
                                       tuple(values["classes"]), str(form.get("password", "")))
        user = dataclasses.replace(user, language=i18n.choose(str(form.get("language", ""))))
        await store.put_user(user, actor=view.identity.actor, action="user.add")
    except auth.AuthError as exc:
        return await _users_page(view, {"add": str(exc)}, values, status=400)
    raise _redirect("/users", "user_added")


@routes.post("/users/{name}/password")
async def user_password(request: web.Request) -> web.Response:
    view = await view_of(request)
    _admin(view)
    form = await request.post()
    store = view.context.store
    user = await store.get_user(request.match_info["name"])
    if user is None:
        raise web.HTTPNotFound(reason=view.t("users.none", name=request.match_info["name"]))
    password = str(form.get("password", ""))
    try:
        auth.check_password_rules(password)
    except auth.AuthError as exc:
        return await _users_page(view, {"reset": f"{user.name}: {exc}"}, status=400)
    digest = await asyncio.to_thread(auth.hash_password, password)
    await store.put_user(dataclasses.replace(user, password_hash=digest, sessions_after=time.time()),
                         actor=view.identity.actor, action="user.reset")
    raise _redirect("/users", "password_set")
