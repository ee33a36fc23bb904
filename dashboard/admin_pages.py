"""The overview (each class today, and for an admin the service's health), the lists, the audit
log and the users."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from aiohttp import web

from dashboard import auth, i18n
from dashboard.pages import (View, ago, class_counts, error_text, page, redirect, require_admin,
                             state_text, table, today_aggregates, view_of)
from dashboard.render import Html, html, join

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
            state = t("health.up") if upstream.healthy else t("health.unknown") \
                if upstream.healthy is None else t("health.down", error=upstream.last_error or "?")
            rows.append([t("health.upstream", name=upstream.name) + (f" ({zone})" if zone else ""), state])
    probe = ReadinessProbe(service)  # what /readyz says: a Redis away is a note, not a reason
    store_problem = await probe.store_reason()
    rows.append([t("health.store", kind=type(view.context.store).__name__),
                 store_problem or (t("health.up") if probe.store_up else t("health.snapshot"))])
    rows.extend([t("health.note"), note] for note in probe.notes())
    ages = [source.age(now) for source in report.sources] if report is not None else []
    oldest = max((age for age in ages if age is not None), default=None)
    if oldest is not None:
        rows.append([t("health.lists_age"), ago(view, oldest)])
    return html("<section><h2>{}</h2>{}</section>", t("overview.health"),
                table([t("col.what"), t("col.state")], rows, empty=""))


@routes.get("/lists")
async def lists(request: web.Request) -> web.Response:
    from blocklists.update import read_status

    view = await view_of(request)
    require_admin(view)
    t = view.t
    report = await asyncio.to_thread(read_status, view.context.state_dir)
    now = time.time()
    rows = []
    for row in (report.category_rows(now) if report is not None else []):
        error = f"{view.clock(row['last_error_at'], day=True)}: {row['last_error']}" \
            if row["last_error"] else "-"
        rows.append([row["source"], row["category"], row["entries"], ago(view, row["age_seconds"]),
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
    view.service.refresh_lists_now()
    raise redirect("/lists", "refresh_started")


@routes.get("/audit")
async def audit(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    t = view.t
    entries = await view.context.store.audit(AUDIT_SHOWN)
    rows = [[view.clock(entry.at, day=True), entry.actor, entry.action, entry.before, entry.after]
            for entry in entries]
    return page(view, t("audit.title"), table(
        [t("col.at"), t("col.actor"), t("col.action"), t("col.before"), t("col.after")], rows,
        empty=t("audit.none")))


@routes.get("/users")
async def users(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
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
        title=t("users.add"), csrf=view.csrf, error=error_text(errors.get("add"), "add"),
        name_label=t("users.name"), name=values.get("name", ""), role_label=t("users.role"), roles=roles,
        classes_label=t("users.classes"), classes=class_boxes, language_label=t("nav.language"),
        languages=languages, password_label=t("login.password"), submit=t("users.add_submit"))
    listing = table([t("users.name"), t("users.role"), t("users.classes"), t("nav.language"), ""],
                    rows, empty="")
    return page(view, t("users.title"), html('{}{}{}', error_text(errors.get("reset"), "reset"), listing, form),
                status=status)


@routes.post("/users/add")
async def user_add(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
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
    raise redirect("/users", "user_added")


@routes.post("/users/{name}/password")
async def user_password(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
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
    raise redirect("/users", "password_set")
