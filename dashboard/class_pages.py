"""The classes' pages: the list, the form that edits every key of a class (SPEC §5), a class
for its teacher (pause, allow, what is in force, most blocked today, the week), and "why is this
blocked?"."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from aiohttp import web
from babel.dates import format_date

from admin.errors import ControlError
from blocklists.names import normalize_domain
from common.addresses import is_ip
from dashboard import api, class_form, i18n
from dashboard.errors import POLICY_TEXT
from dashboard.i18n import dates, policy_errors
from dashboard.pages import (
    View, error_text, page, redirect, require_admin, rule_text, state_text, step_text, table,
    today_aggregates, view_of, visible_class,
)
from dashboard.render import Html, html, join
from policies.loader import PolicyError
from policies.model import WEEKDAYS, Policy
from store.records import StoreError, VersionConflict

routes = web.RouteTableDef()
TOP_SHOWN = 10
PAUSE_CHOICES = (15, 30, 60)  # the pause form's one-tap buttons, in minutes


@routes.get("/classes")
async def classes(request: web.Request) -> web.Response:
    view = await view_of(request)
    t, policy = view.t, view.context.state.snapshot.policy
    rows = []
    for class_id, item in policy.classes.items():
        if not view.identity.may_see(class_id):
            continue
        devices = policy.devices.count(class_id)
        actions = html('<a href="/classes/{}">{}</a>', class_id, t("classes.open"))
        if view.admin:
            actions = html('{} · <a href="/classes/{}/edit">{}</a>', actions, class_id, t("classes.edit"))
        rows.append([class_id, item.name, item.school,
                     ", ".join(str(network) for network in item.networks), devices,
                     state_text(view, class_id), actions])
    body = table([t("col.id"), t("col.name"), t("col.school"), t("col.networks"), t("col.devices"),
                   t("col.state"), ""], rows, empty=t("classes.none"))
    if view.admin:
        body = html('<p><a class="button" href="/classes/new">{}</a></p>{}', t("classes.new"), body)
    return page(view, t("classes.title"), body)


@routes.get("/classes/new")
async def class_new(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    version = api._policy_version(view.context)
    return _class_form_page(view, None, {"version": str(version)}, {})


@routes.post("/classes/new")
async def class_create(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    form = await request.post()
    class_id = str(form.get("id", "")).strip()
    if not class_id:
        return _class_form_page(view, None, form, {"id": [view.t("classes.id_needed")]}, status=400)

    def change(classes: dict) -> None:
        if class_id in classes:
            raise ControlError(view.t("classes.exists", id=class_id))
        classes[class_id] = class_form.mapping_from_form(form, _names(view))
    return await _save_class(view, None, class_id, form, change)


@routes.get("/classes/{class_id}/edit")
async def class_edit(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    class_id = visible_class(view, request.match_info["class_id"])
    version = api._policy_version(view.context)
    body = api._class_document(view.context, class_id)
    values = {**class_form.form_from_mapping(body, _names(view)), "version": str(version)}
    return _class_form_page(view, class_id, values, {})


@routes.post("/classes/{class_id}/edit")
async def class_update(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    class_id = visible_class(view, request.match_info["class_id"])
    form = await request.post()

    def change(classes: dict) -> None:
        classes[class_id] = class_form.mapping_from_form(form, _names(view))
    return await _save_class(view, class_id, class_id, form, change)


@routes.post("/classes/{class_id}/delete")
async def class_delete(request: web.Request) -> web.Response:
    view = await view_of(request)
    require_admin(view)
    class_id = visible_class(view, request.match_info["class_id"])
    form = await request.post()

    def change(classes: dict) -> None:
        classes.pop(class_id, None)
    return await _save_class(view, class_id, class_id, form, change, deleting=True)


def _names(view: View) -> class_form.Names:
    """The class form's categories and services in the user's words, both ways."""
    return class_form.Names(view.categories, view.services, view.language)


async def _save_class(view: View, editing: str | None, class_id: str, form, change,
                      *, deleting: bool = False) -> web.Response:
    """Through the API's own write (policy.put: validated like the file, audited, applied)."""
    request = view.request
    version = str(form.get("version", ""))
    try:
        await api._put_classes(request, change, int(version) if version.isdigit() else None)
    except PolicyError as exc:
        known = {"category": view.categories, "service": view.services}
        errors = {field: [policy_errors.translate(message, view.language, known) for message in messages]
                  for field, messages in class_form.errors_by_field(
                      exc.errors, request.get(POLICY_TEXT)).items()}
        if deleting:
            errors = {"": [message for messages in errors.values() for message in messages]}
    except VersionConflict as exc:
        errors = {"": [view.t("classes.conflict", version=exc.actual)]}
    except (ControlError, StoreError) as exc:
        errors = {"": [str(exc)]}
    else:
        if deleting:
            raise redirect("/classes", "class_deleted")
        raise redirect(f"/classes/{quote(class_id)}", "class_saved")
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
                    error_text(errors.get(name), name.replace(".", "-")))

    def safe_search(name: str) -> Html:
        options = join(html('<option value="{}"{}>{}</option>', mode,
                            Html(" selected") if value(name) == mode else "",
                            t("safe_search." + (mode or "default")))
                       for mode in class_form.SAFE_SEARCH_CHOICES)
        return html('<div class="field" data-field="{}"><label for="field-{}">{}</label>'
                    '<select name="{}" id="field-{}">{}</select>{}</div>', name, name,
                    t("class.safe_search"), name, name, options,
                    error_text(errors.get(name), name.replace(".", "-")))

    categories = view.categories.text(commands.known_categories or (), view.language) or "-"
    services = view.services.text(commands.bundled.services, view.language) or "-"
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
        action=action, csrf=view.csrf, version=value("version"), general=error_text(errors.get("")),
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
                error_text(errors.get("schedule"), "schedule"))


@routes.get("/classes/{class_id}")
async def class_page(request: web.Request) -> web.Response:
    view = await view_of(request)
    return await _class_page(view, visible_class(view, request.match_info["class_id"]), {})


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
        status_line = t("state.closed", until=view.clock(class_state.valid_until))
    else:
        status_line = t("state.open")
    # The headline stays short (it is a card's title on a tablet); the rule comes under it.
    closing = html('<p class="rule" id="class-rule">{}</p>', rule_text(view, class_state.closed_rule)) \
        if class_state.closed == "closed" else Html("")
    blocked_now = ", ".join(part for part in (view.categories.text(class_state.block, view.language),
                                              view.services.text(class_state.block_services, view.language))
                            if part) or "-"
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
        '<section class="card"><h2>{}</h2><p class="status {}" id="class-status">{}</p>{}'
        '<p>{} <strong>{}</strong></p><p>{}</p>{}{}</section>',
        t("class_page.in_force"), class_state.closed or "open", status_line, closing,
        t("class_page.blocked_now"), blocked_now, until,
        html("<p>{}</p>", t("class_page.screen_time", n=item.screen_time_minutes))
        if item.screen_time_minutes else "",
        table([t("col.override"), t("col.until"), t("col.by"), ""], rows, empty=t("class_page.no_override")))
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
        error_pause=error_text(errors.get("pause"), "pause"), buttons=pause_buttons,
        other=t("class_page.other_minutes"), pause=t("class_page.pause"), resume=resume,
        allow_title=t("class_page.allow_title"), error_allow=error_text(errors.get("allow"), "allow"),
        target=t("class_page.target"), minutes=t("class_page.minutes"), allow=t("class_page.allow"),
        services=join(html('<option value="{}">', name)
                      for name in sorted(view.context.commands.bundled.services)),
        allow_hint=t("class_page.allow_hint"))
    today = await today_aggregates(view)
    top = sorted((today.get("top_blocked", {}).get(class_id) or {}).items(),
                 key=lambda pair: (-pair[1], pair[0]))[:TOP_SHOWN]
    top_html = html('<section class="card"><h2>{}</h2>{}</section>', t("class_page.top_blocked"),
                    table([t("col.domain"), t("col.count")], [list(pair) for pair in top],
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
                 ", ".join(part for part in (view.categories.text(window.block, view.language),
                                             view.services.text(window.block_services, view.language))
                           if part)) + (f" ({t('class.where_home')})" if where else "")
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
            format_date(day, "d MMM", locale=view.language), html('<br><small>{}</small>', holiday) if holiday else "",
            join(pieces[offset])))
    upcoming = [holiday for holiday in policy.exceptions if holiday.last >= today][:6]
    listing = join(html("<li>{}{} {}</li>", dates.date(holiday.first, view.language),
                        f" → {dates.date(holiday.last, view.language)}" if holiday.last != holiday.first else "",
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
    class_id = visible_class(view, request.match_info["class_id"])
    form = await request.post()
    try:
        await view.context.commands.override_add(
            {"class": class_id, "kind": "pause", "minutes": _minutes(form)}, view.identity.actor)
    except (ControlError, StoreError) as exc:
        return await _class_page(view, class_id, {"pause": str(exc)}, status=400)
    raise redirect(f"/classes/{quote(class_id)}", "paused")


@routes.post("/classes/{class_id}/resume")
async def resume(request: web.Request) -> web.Response:
    view = await view_of(request)
    class_id = visible_class(view, request.match_info["class_id"])
    for override in view.context.state.snapshot.overrides:
        if override.class_id == class_id and override.kind == "pause":
            try:
                await view.context.commands.override_cancel({"id": override.id}, view.identity.actor)
            except ControlError:
                continue  # it ended meanwhile
    raise redirect(f"/classes/{quote(class_id)}", "resumed")


@routes.post("/classes/{class_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    view = await view_of(request)
    class_id = visible_class(view, request.match_info["class_id"])
    form = await request.post()
    override_id = str(form.get("id", ""))
    if not any(override.id == override_id and override.class_id == class_id
               for override in view.context.state.snapshot.overrides):
        raise web.HTTPNotFound(reason=view.t("error.no_override"))
    try:
        await view.context.commands.override_cancel({"id": override_id}, view.identity.actor)
    except ControlError as exc:
        return await _class_page(view, class_id, {"pause": str(exc)}, status=400)
    raise redirect(f"/classes/{quote(class_id)}", "cancelled")


@routes.post("/classes/{class_id}/allow")
async def allow(request: web.Request) -> web.Response:
    view = await view_of(request)
    class_id = visible_class(view, request.match_info["class_id"])
    form = await request.post()
    try:
        await view.context.commands.override_add(
            {"class": class_id, "kind": "allow", "minutes": _minutes(form),
             "target": str(form.get("target", ""))}, view.identity.actor)
    except (ControlError, StoreError) as exc:
        return await _class_page(view, class_id, {"allow": str(exc)}, status=400)
    raise redirect(f"/classes/{quote(class_id)}", "allowed")


def _asker_text(view: View, why) -> str:
    """Whom the server took the asker for: "tablette-12 (CM2 A)", or an unknown client."""
    if why.class_id is None:
        return view.t("why.unknown_client")
    item = view.context.state.snapshot.policy.classes.get(why.class_id)
    shown = item.name if item is not None and item.name else why.class_id
    who = why.device_id if why.device_id is not None else why.asker
    return f"{who} ({shown})" if why.device_id is None or why.asker == f"device {who}" \
        else f"{who} ({shown}) — {why.asker}"


@routes.get("/why")
async def why(request: web.Request) -> web.Response:
    view = await view_of(request)
    t, state = view.t, view.context.state
    policy = state.snapshot.policy
    query = request.query
    visible = [class_id for class_id in policy.classes if view.identity.may_see(class_id)]
    name, class_id = query.get("name", "").strip(), query.get("class", "")
    who = query.get("who", "").strip()  # a device id or a tablet's address: asks as it would
    at_text, scope = query.get("at", "").strip(), query.get("scope", "school")
    errors: dict[str, str] = {}
    answer = Html("")
    if class_id and class_id not in visible:
        visible_class(view, class_id)  # 403 or 404
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
        if who and who not in policy.devices and not is_ip(who):
            errors["who"] = t("why.bad_who", who=who)
        if not class_id and not who:
            errors["class"] = t("why.pick_class")
        if not errors:
            why = await view.context.explain(normalized, None if who else class_id, scope, at,
                                             who or None)
            if why.class_id is not None:
                visible_class(view, why.class_id)  # a teacher asks about her classes' tablets only
            decided = t("why.blocked") if why.blocked else t("decision." + why.decision) \
                if "decision." + why.decision in i18n.catalogue(view.language) else why.decision
            rows = [[t("why.asker"), _asker_text(view, why)]] if who else []
            rows += [[t("why.decision"), decided],
                    [t("why.step"), step_text(view, why.step)], [t("why.rule"), rule_text(view, why.rule)],
                    [t("why.at"), view.clock(at, day=True) + f" ({state.timezone})"]]
            if why.reason:
                rows.append([t("why.reason"), why.reason])
            if why.in_force:
                rows.append([t("why.in_force"), rule_text(view, why.in_force)])
            if why.until is not None:
                rows.append([t("why.until"), view.clock(why.until, day=True)])
            answer = html('<section class="card answer {}" id="why-answer"><h2>{}</h2>{}</section>',
                          "blocked" if why.blocked else "resolves", normalized,
                          table([t("col.what"), t("col.value")], rows, empty=""))
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
        '<div class="field"><label for="why-who">{}</label><input id="why-who" name="who" value="{}" '
        'placeholder="tablette-12, 10.12.3.7">{}<small class="hint">{}</small></div>'
        '<div class="field"><label for="why-at">{}</label><input id="why-at" type="datetime-local" name="at" '
        'value="{}">{}<small class="hint">{}</small></div>'
        '<div class="field"><label for="why-scope">{}</label><select id="why-scope" name="scope">{}</select>{}</div>'
        '<button>{}</button></form>',
        t("why.name"), name, error_text(errors.get("name"), "name"), t("why.class"), options,
        error_text(errors.get("class"), "class"), t("why.who"), who, error_text(errors.get("who"), "who"),
        t("why.who_hint"), t("why.at"), at_text, error_text(errors.get("at"), "at"),
        t("why.at_hint"), t("why.scope"), scopes, error_text(errors.get("scope"), "scope"), t("why.submit"))
    return page(view, t("why.title"), html("{}{}", form, answer), status=400 if errors else 200)
