"""The overview (each class today, and for an admin the service's health), the lists, the audit
log and the users."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from typing import Any

from aiohttp import web

from admin.control import Drift
from blocklists.update import read_status
from dashboard import auth, i18n
from dashboard.pages import (
    View, ago, class_counts, error_text, page, redirect, require_admin, state_text, table,
    today_aggregates, view_of,
)
from dashboard.render import Html, html, join
from store.records import NotFound, User

routes = web.RouteTableDef()
AUDIT_SHOWN = 200


@routes.get("/")
async def overview(request: web.Request) -> web.Response:
    view = await view_of(request)
    t, policy = view.t, view.context.state.snapshot.policy
    today = await today_aggregates(view)
    rows = []
    for class_id, item in policy.classes.items():
        if view.identity.may_see(class_id):
            queries, blocked = class_counts(today, class_id)
            rows.append([html('<a href="/classes/{}">{}</a>', class_id, item.name or class_id),
                         queries, blocked, state_text(view, class_id)])
    parts = [html("<section><h2>{}</h2>{}{}</section>", t("overview.classes"),
                  table([t("col.class"), t("col.queries_today"), t("col.blocked_today"),
                          t("col.state")], rows, empty=t("classes.none")),
                  Html("") if today else html('<p class="hint">{}</p>', t("overview.no_query_log")))]
    if view.admin:
        parts.append(await _health(view))
    return page(view, t("overview.title"), join(parts))


async def _health(view: View) -> Html:
    t = view.t
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
    health = await view.context.health() if view.context.health is not None else None
    if health is not None:
        for upstream in health.upstreams:
            state = t("health.up") if upstream.healthy else t("health.unknown") \
                if upstream.healthy is None else t("health.down", error=upstream.last_error or "?")
            rows.append([t("health.upstream", name=upstream.name)
                         + (f" ({upstream.zone})" if upstream.zone else ""), state])
        # what /readyz says: a Redis away is a note, not a reason
        rows.append([t("health.store", kind=health.store_kind),
                     health.store_problem or (t("health.up") if health.store_up else t("health.snapshot"))])
        rows.extend([t("health.note"), note] for note in health.notes)
        if health.drift is not None:
            rows.append([t("health.note"), _drift(view, health.drift)])
    ages = [source.age(now) for source in report.sources] if report is not None else []
    oldest = max((age for age in ages if age is not None), default=None)
    if oldest is not None:
        rows.append([t("health.lists_age"), ago(view, oldest)])
    return html("<section><h2>{}</h2>{}</section>", t("overview.health"),
                table([t("col.what"), t("col.state")], rows, empty=""))


def _drift(view: View, drift: Drift) -> str:
    """Which side is newer, and the commands that lose nothing (never an import)."""
    fields = {"seed": drift.seed, "version": drift.version, "by": drift.by,
              "when": drift.when.replace("T", " "), "error": drift.error,
              "export": f"classguard policy export > {drift.seed}",
              "diff": f"classguard policy diff {drift.seed}"}
    return view.t(f"health.drift_{drift.newer}", **fields)


@routes.get("/lists")
async def lists(request: web.Request) -> web.Response:

    view = await view_of(request)
    require_admin(view)
    t = view.t
    report = await asyncio.to_thread(read_status, view.context.state_dir)
    now = time.time()
    rows = []
    for row in (report.category_rows(now) if report is not None else []):
        error = f"{view.clock(row['last_error_at'], day=True)}: {row['last_error']}" \
            if row["last_error"] else "-"
        category = view.categories.word(row["category"], view.language)
        rows.append([row["source"], category, row["entries"], ago(view, row["age_seconds"]),
                     view.clock(row["last_success"], day=True) if row["last_success"] else "-", error])
    summary = t("lists.summary", entries=report.entries,
                compiled=view.clock(report.compiled_at, day=True) if report.compiled_at else "-",
                checked=view.clock(report.checked_at, day=True) if report.checked_at else "-") \
        if report is not None else t("lists.never")
    refresh = html('<form method="post" action="/lists/refresh">{}<button>{}</button></form>',
                   view.csrf, t("lists.refresh"))
    body = html('<p>{}</p>{}{}', summary, refresh,
                table([t("col.source"), t("col.category"), t("col.entries"), t("col.age"),
                        t("col.last_success"), t("col.last_error")], rows, empty=t("lists.none")))
    return page(view, t("lists.title"), body)


@routes.post("/lists/refresh")
async def lists_refresh(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    view.context.refresh_lists_now()
    raise redirect("/lists", "refresh_started")


@routes.get("/audit")
async def audit(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    t = view.t
    entries = await view.context.store.audit(AUDIT_SHOWN)
    known = i18n.catalogue(view.language)
    rows = [[view.clock(entry.at, day=True), entry.actor,
             t("audit.action." + entry.action) if "audit.action." + entry.action in known else entry.action,
             _audit_text(view, entry.before), _audit_text(view, entry.after)]
            for entry in entries]
    return page(view, t("audit.title"), table(
        [t("col.at"), t("col.actor"), t("col.action"), t("col.before"), t("col.after")], rows,
        empty=t("audit.none")))


# store.records.describe_override's line, as the store keeps it (English, UTC, for the CLI and
# any reader of the raw log); the page says it in the reader's language and the school's time.
_OVERRIDE = re.compile(r"(?P<kind>pause|allow)(?: (?P<target>\S+))? for (?P<class_id>\S+) until "
                       r"(?P<until>\S+) \(id (?P<id>\w+)\)")


def _audit_text(view: View, text: str) -> str:
    t = view.t
    if text == "cancelled":
        return t("audit.cancelled")
    found = _OVERRIDE.fullmatch(text)
    if found is None:
        return text
    try:
        until = view.clock(dt.datetime.fromisoformat(found["until"]).timestamp(), day=True)
    except ValueError:
        return text
    what = t("audit.pause") if found["kind"] == "pause" else t("audit.allow", target=found["target"] or "")
    return t("audit.override", what=what, class_id=found["class_id"], until=until, id=found["id"])


@routes.get("/users")
async def users(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    return await _users_page(view, {})


def account_message(view: View, exc: auth.AuthError) -> str:
    """An account rule's refusal in the page's language (the English text otherwise)."""
    key = f"account.{exc.key}" if isinstance(exc, auth.AccountError) else ""
    return view.t(key, **exc.values) if key in i18n.catalogue(view.language) else str(exc)


def _class_boxes(view: View, chosen: set[str]) -> Html:
    return join(html('<label class="check"><input type="checkbox" name="classes" value="{}"{}> {}</label>',
                     class_id, Html(" checked") if class_id in chosen else "", class_id)
                for class_id in view.context.state.snapshot.policy.classes)


def _role_options(view: View, chosen: str) -> Html:
    return join(html('<option value="{}"{}>{}</option>', role, Html(" selected") if chosen == role else "",
                     view.t("role." + role)) for role in auth.ROLES)


def _language_options(view: View, chosen: str, *, default: bool) -> Html:
    codes = ([""] if default else []) + list(i18n.LANGUAGES)
    return join(html('<option value="{}"{}>{}</option>', code, Html(" selected") if chosen == code else "",
                     i18n.NAMES[code] if code else view.t("users.language_default"))
                for code in codes)


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
        edit = html('<a href="/users/{}">{}</a>', user.name, t("users.edit"))
        rows.append([user.name, t("role." + user.role), ", ".join(user.classes) or "-",
                     i18n.NAMES.get(i18n.choose(user.language), ""),
                     t("users.state_disabled") if user.disabled else t("users.state_active"),
                     edit, reset])
    added = {field: error_text(errors.get(field), field)
             for field in ("name", "role", "classes", "language", "password")}
    form = html(
        '<section class="card"><h2>{title}</h2><form method="post" action="/users/add">{csrf}{error}'
        '<label>{name_label}<input name="name" value="{name}" required></label>{name_error}'
        '<label>{role_label}<select name="role">{roles}</select></label>{role_error}'
        '<fieldset><legend>{classes_label}</legend>{classes}</fieldset>{classes_error}'
        '<label>{language_label}<select name="language">{languages}</select></label>{language_error}'
        '<label>{password_label}<input type="password" name="password" autocomplete="new-password" '
        'required></label>{password_error}<button>{submit}</button></form></section>',
        title=t("users.add"), csrf=view.csrf, error=error_text(errors.get("add"), "add"),
        name_error=added["name"], role_error=added["role"], classes_error=added["classes"],
        language_error=added["language"], password_error=added["password"],
        name_label=t("users.name"), name=values.get("name", ""), role_label=t("users.role"),
        roles=_role_options(view, values.get("role", "")),
        classes_label=t("users.classes"), classes=_class_boxes(view, set(values.get("classes", ()))),
        language_label=t("nav.language"),
        languages=_language_options(view, values.get("language", ""), default=False),
        password_label=t("login.password"), submit=t("users.add_submit"))
    listing = table([t("users.name"), t("users.role"), t("users.classes"), t("nav.language"),
                     t("users.state"), "", ""], rows, empty="")
    return page(view, t("users.title"), html('{}{}{}', error_text(errors.get("reset"), "reset"), listing, form),
                status=status)


@routes.post("/users/add")
async def user_add(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    form = await request.post()
    store = view.context.store
    values = {"name": str(form.get("name", "")).strip(), "role": str(form.get("role", "")),
              "classes": [str(item) for item in form.getall("classes", [])],
              "language": i18n.choose(str(form.get("language", "")))}
    try:
        if await store.get_user(values["name"]) is not None:
            return await _users_page(view, {"name": view.t("users.exists", name=values["name"])},
                                     values, status=400)
        user = await asyncio.to_thread(
            auth.make_user, values["name"], values["role"], values["classes"],
            str(form.get("password", "")), known_classes=tuple(view.context.state.snapshot.policy.classes),
            language=values["language"])
        await store.put_user(user, actor=view.identity.actor, action="user.add")
    except auth.AuthError as exc:  # said next to the field at fault
        field = exc.field if isinstance(exc, auth.AccountError) else "add"
        return await _users_page(view, {field: account_message(view, exc)}, values, status=400)
    raise redirect("/users", "user_added")


@routes.post("/users/{name}/password")
async def user_password(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    form = await request.post()
    name = request.match_info["name"]
    try:
        await auth.change_user(view.context.store, name, actor=view.identity.actor,
                               known_classes=None, password=str(form.get("password", "")))
    except NotFound:
        raise web.HTTPNotFound(reason=view.t("users.none", name=name)) from None
    except auth.AuthError as exc:
        return await _users_page(view, {"reset": f"{name}: {account_message(view, exc)}"}, status=400)
    raise redirect("/users", "password_set")


# --- one account: role, classes, language, disabled; removal ----------------------------------


async def _user_or_404(view: View, name: str) -> User:
    user = await view.context.store.get_user(name)
    if user is None:
        raise web.HTTPNotFound(reason=view.t("users.none", name=name))
    return user


@routes.get("/users/{name}")
async def user_page(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    return _user_form(view, await _user_or_404(view, request.match_info["name"]), {})


def _user_form(view: View, user: User, errors: dict[str, str], values: dict[str, Any] | None = None,
               *, status: int = 200) -> web.Response:
    """The account's form; `values` what was sent (shown again when it was refused)."""
    t = view.t
    values = values or {"role": user.role, "classes": user.classes, "language": user.language,
                        "disabled": user.disabled}
    form = html(
        '<form method="post" action="/users/{name}/edit" class="card">{csrf}{form_error}'
        '<label>{role_label}<select name="role" aria-describedby="error-role">{roles}</select></label>{role_error}'
        '<fieldset aria-describedby="error-classes"><legend>{classes_label}</legend><p class="hint">{classes_hint}</p>'
        '{classes}</fieldset>{classes_error}'
        '<label>{language_label}<select name="language">{languages}</select></label>{language_error}'
        '<label class="check"><input type="checkbox" name="disabled" value="1"{disabled}> {disabled_label}</label>'
        '<button>{submit}</button></form>'
        '<form method="post" action="/users/{name}/remove" class="card">{csrf}{remove_error}'
        '<p>{remove_hint}</p><button class="danger">{remove}</button></form>'
        '<p><a href="/users">{back}</a></p>',
        name=user.name, csrf=view.csrf, form_error=error_text(errors.get("form")),
        role_label=t("users.role"), roles=_role_options(view, values["role"]),
        role_error=error_text(errors.get("role"), "role"), classes_label=t("users.classes"),
        classes_hint=t("users.classes_hint"), classes=_class_boxes(view, set(values["classes"])),
        classes_error=error_text(errors.get("classes"), "classes"), language_label=t("nav.language"),
        languages=_language_options(view, values["language"], default=True),
        language_error=error_text(errors.get("language"), "language"),
        disabled=Html(" checked") if values["disabled"] else "", disabled_label=t("users.disabled"),
        submit=t("users.save"), remove_error=error_text(errors.get("remove"), "remove"),
        remove_hint=t("users.remove_hint"), remove=t("users.remove"), back=t("users.back"))
    return page(view, t("users.edit_title", name=user.name), form, status=status)


@routes.post("/users/{name}/edit")
async def user_edit(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    user = await _user_or_404(view, request.match_info["name"])
    form = await request.post()
    values = {"role": str(form.get("role", "")), "classes": [str(item) for item in form.getall("classes", [])],
              "language": str(form.get("language", "")), "disabled": "disabled" in form}
    try:
        await auth.change_user(view.context.store, user.name, actor=view.identity.actor,
                               known_classes=tuple(view.context.state.snapshot.policy.classes),
                               **values)
    except NotFound:
        raise web.HTTPNotFound(reason=view.t("users.none", name=user.name)) from None
    except auth.AuthError as exc:
        field = exc.field if isinstance(exc, auth.AccountError) and exc.field in values else "form"
        return _user_form(view, user, {field: account_message(view, exc)}, values, status=400)
    raise redirect("/users", "user_saved")


@routes.post("/users/{name}/remove")
async def user_remove(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    user = await _user_or_404(view, request.match_info["name"])
    try:
        await auth.remove_user(view.context.store, user.name, actor=view.identity.actor)
    except NotFound:
        raise web.HTTPNotFound(reason=view.t("users.none", name=user.name)) from None
    except auth.AuthError as exc:
        return _user_form(view, user, {"remove": account_message(view, exc)}, status=400)
    raise redirect("/users", "user_removed")
