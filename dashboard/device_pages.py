"""The devices' pages: the list, enrolment (DoH URL, DoT hostname, QR code, Apple profile, shown
once), a school's CSV, a new token, revocation."""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

from aiohttp import web

from admin.devices import doh_url, dot_hostname, new_token, parse_csv, urls_csv
from admin.errors import ControlError
from admin.mobileconfig import profile
from common.tokens import token_sha256
from dashboard import class_form
from dashboard.pages import View, error_text, page, redirect, require_admin, table, view_of
from dashboard.render import Html, html, join
from policies.loader import PolicyError

routes = web.RouteTableDef()


async def _device_op(view: View, request: dict[str, Any]) -> dict[str, Any]:
    """A device operation of the control protocol; ControlError with its message when refused."""
    result = await view.context.commands.handle(request, view.identity.actor)
    if not result.get("ok"):
        raise ControlError(result.get("error", "refused"))
    return result


@routes.get("/devices")
async def devices(request: web.Request) -> web.Response:
    view = await view_of(request)
    return await _devices_page(view, {}, query=request.query)


PAGE = 50  # devices a page shows


async def _devices_page(view: View, errors: dict[str, str], values: dict[str, str] | None = None,
                        *, status: int = 200, query=None) -> web.Response:
    """One page of devices (PAGE, in id order) with a search field and a class filter, then the
    enrolment forms: what the page weighs does not grow with the number of devices."""
    t = view.t
    values = values or {}
    query = query or {}
    policy = view.context.state.snapshot.policy
    class_id = query.get("class") or None
    if class_id is not None and (class_id not in policy.classes
                                 or not view.identity.may_see(class_id)):
        class_id = None
    search, cursor = query.get("q", "").strip(), query.get("cursor") or None
    listed = await _device_op(view, {
        "op": "device.list", "limit": PAGE, "q": search, "cursor": cursor,
        "visible": lambda device: view.identity.may_see(device.class_id),
        **({"class": class_id} if class_id else {})})
    rows = []
    for item in listed["devices"]:
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
    options = join(html('<option value="{}"{}>{}</option>', name,
                        Html(" selected") if name == class_id else "", name)
                   for name in policy.classes if view.identity.may_see(name))
    finder = html(
        '<form method="get" action="/devices" class="inline" role="search">'
        '<label>{search_label}<input type="search" name="q" value="{q}"></label> '
        '<label>{class_label}<select name="class"><option value="">{all}</option>{options}'
        '</select></label> <button class="small">{filter}</button></form>',
        search_label=t("devices.search"), q=search, class_label=t("col.class"),
        all=t("devices.all_classes"), options=options, filter=t("devices.filter"))
    kept = {key: value for key, value in (("q", search), ("class", class_id or "")) if value}
    links = []
    if cursor is not None:
        links.append(html('<a href="/devices{}">{}</a>', _query(kept), t("devices.first_page")))
    if listed["next"] is not None:
        links.append(html('<a href="/devices{}" rel="next">{}</a>',
                          _query({**kept, "cursor": listed["next"]}), t("devices.next_page")))
    listing = html('<section class="card">{}<p>{}</p>{}<p class="pager">{}</p></section>', finder,
                   t("devices.count", n=len(policy.devices), shown=len(rows)),
                   table([t("col.id"), t("col.class"), t("col.addresses"), t("col.token"), ""],
                         rows, empty=t("devices.none")),
                   join(links, " · ") if links else "")
    if not view.admin:
        return page(view, t("devices.title"), listing, status=status)
    classes = join(html('<option value="{}"{}>{}</option>', class_id,
                        Html(" selected") if values.get("class") == class_id else "", class_id)
                   for class_id in policy.classes)
    enrol = html(
        '<section class="card"><h2>{title}</h2><form method="post" action="/devices/enrol">{csrf}{error}'
        '<label>{id_label}<input name="id" value="{id}" required></label>'
        '<label>{class_label}<select name="class">{classes}</select></label>'
        '<label>{addresses_label}<input name="addresses" value="{addresses}"></label>'
        '<small class="hint">{addresses_hint}</small><button>{submit}</button></form></section>',
        title=t("devices.enrol"), csrf=view.csrf, error=error_text(errors.get("enrol"), "enrol"),
        id_label=t("devices.id"), id=values.get("id", ""), class_label=t("col.class"), classes=classes,
        addresses_label=t("col.addresses"), addresses=values.get("addresses", ""),
        addresses_hint=t("devices.addresses_hint"), submit=t("devices.enrol_submit"))
    bulk = html(
        '<section class="card"><h2>{title}</h2>'
        '<form method="post" action="/devices/import" enctype="multipart/form-data">'
        '{csrf}{error}<label>{file_label}<input type="file" name="csv" accept=".csv,text/csv" required>'
        '</label><small class="hint">{hint}</small><button>{submit}</button></form></section>',
        title=t("devices.import"), csrf=view.csrf,
        error=error_text(errors.get("import"), "import"), file_label=t("devices.csv_file"),
        hint=t("devices.csv_hint"), submit=t("devices.import_submit"))
    return page(view, t("devices.title"), html('<div class="grid">{}{}</div>{}', enrol, bulk, listing),
                status=status)


def _query(values: dict[str, str]) -> str:
    return "?" + urllib.parse.urlencode(values) if values else ""


def _need_addresses(view: View) -> None:
    config = view.context.config
    if config.doh is None and not (config.dot or {}).get("hostname"):
        raise ControlError(view.t("devices.no_addresses"))


def _issued_page(view: View, device_id: str, class_id: str, token: str, title: str) -> web.Response:
    """The DoH URL, DoT hostname, QR code and Apple profile of a new token: shown this once."""
    import segno  # lazy: the QR code library, only when a code is drawn

    t, config = view.t, view.context.config
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
        t("devices.shown_once"), table([t("col.what"), t("col.value")], rows, empty=""), qr,
        device_id, download, t("devices.mobileconfig"), t("devices.back"))
    return page(view, title, body)


@routes.post("/devices/enrol")
async def device_enrol(request: web.Request) -> web.Response:

    view = await view_of(request)
    require_admin(view)
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

    view = await view_of(request)
    require_admin(view)
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
    require_admin(view)
    try:
        await _device_op(view, {"op": "device.revoke", "id": request.match_info["device_id"]})
    except ControlError as exc:
        return await _devices_page(view, {"enrol": str(exc)}, status=400)
    raise redirect("/devices", "revoked")


@routes.post("/devices/import")
async def device_import(request: web.Request) -> web.Response:

    view = await view_of(request)
    require_admin(view)
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
    urls = urls_csv(view.context.config, issued)
    download = "data:text/csv;charset=utf-8;base64," + base64.b64encode(urls.encode()).decode()
    table_rows = [line.split(",", 2) for line in urls.splitlines()[1:]]
    body = html('<section class="card wide"><p class="notice">{}</p><p><a class="button" download="{}" '
                'href="{}">{}</a> <a class="button secondary" href="/devices">{}</a></p>{}</section>',
                t("devices.shown_once"), "classguard-urls.csv", download, t("devices.download_csv"),
                t("devices.back"), table([t("col.id"), t("devices.doh_url"), t("devices.dot_hostname")],
                                          table_rows, empty=""))
    return page(view, t("devices.imported", n=len(rows)), body)
