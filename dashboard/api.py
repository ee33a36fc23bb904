"""REST API /api/v1 (SPEC §6): JSON, the session or a Bearer token, the CLI's own commands."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from typing import Any

import yaml
from aiohttp import web

from admin import devices
from admin.control import override_json
from admin.devices import device_json
from admin.errors import ControlError
from blocklists.names import normalize_domain
from blocklists.update import read_status
from common.tokens import token_sha256
from dashboard import auth
from dashboard.context import (
    CONTEXT, COOKIE, IDENTITY, Context, Identity, client_address,
)
from dashboard.errors import POLICY_TEXT, Refused, etag
from dashboard.openapi import document
from policies.export import export_policy
from policies.loader import ID_PATTERN
from policies.model import Policy
from privacy import gdpr
from privacy.querylog import QueryLogSettings, subject_of
from store.records import VersionConflict

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # our own text: the C loader
DEVICE_PAGE = 100  # devices in a page of GET /devices when `limit` is not given
PREFIX = "/api/v1"
routes = web.RouteTableDef()


# --- helpers -----------------------------------------------------------------------------------


def _context(request: web.Request) -> Context:
    return request.app[CONTEXT]


def _identity(request: web.Request) -> Identity:
    return request[IDENTITY]


def _admin(request: web.Request) -> Identity:
    identity = _identity(request)
    if identity.role != "admin":
        raise Refused(403, "only an admin may do this")
    return identity


def _class_of(request: web.Request) -> str:
    """The class in the path, which the caller may see (else 403; 404 when there is none)."""
    class_id = request.match_info["class_id"]
    if not _identity(request).may_see(class_id):
        raise Refused(403, f"class {class_id!r} is not one of yours")
    if class_id not in _context(request).state.snapshot.policy.classes:
        raise Refused(404, f"no class {class_id!r}")
    return class_id


# No request body nests deeper than a few levels (a class, its schedule, a window, its days);
# json.loads recurses, and a deeper body ended in RecursionError (500) before reaching any check.
MAX_JSON_DEPTH = 32
_JSON_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKETS = re.compile(r"[\[\]{}]")


def _too_deep(text: str) -> bool:
    """Whether the JSON text nests deeper than MAX_JSON_DEPTH (brackets in strings ignored)."""
    depth = 0
    for bracket in _JSON_BRACKETS.findall(_JSON_STRINGS.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        text = await request.text()
        if _too_deep(text):
            raise Refused(400, f"the body is nested too deep (more than {MAX_JSON_DEPTH} levels)")
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise Refused(400, "the body must be a JSON object")
    return data


def _if_match(request: web.Request) -> int | None:
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    text = header.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise Refused(400, 'If-Match takes the ETag of the policy, e.g. "7"', field="If-Match")
    return int(text)


def _class_json(policy: Policy, class_id: str) -> dict[str, Any]:
    """A class as its policy-file mapping (what PUT takes back)."""
    only = Policy(classes={class_id: policy.classes[class_id]})
    return yaml.load(export_policy(only), Loader=_LOADER)["classes"][class_id] or {}


def _summary(policy: Policy, class_id: str) -> dict[str, Any]:
    item = policy.classes[class_id]
    return {"id": class_id, "name": item.name, "school": item.school,
            "networks": [str(network) for network in item.networks],
            "devices": policy.devices.count(class_id)}


def _policy_version(context: Context) -> int:
    """The version of the policy the running state holds: from memory, no store read, no parse
    (a write checks it against the store's: a stale one is refused with 409)."""
    return context.policy_version()


async def _policy_document(context: Context) -> tuple[int, dict[str, Any]]:
    """(version, the running policy as a policy file's mapping, without its devices): for a
    change of the classes. Our own text, read by the C loader, in a thread."""
    version, policy = _policy_version(context), context.state.snapshot.policy
    text = export_policy(policy, devices=False)
    return version, (await asyncio.to_thread(yaml.load, text, Loader=_LOADER) or {})


def _class_document(context: Context, class_id: str) -> dict[str, Any]:
    """One class as its policy-file mapping, from the running policy (small: no thread)."""
    return _class_json(context.state.snapshot.policy, class_id)


async def _put_classes(request: web.Request, change, expected: int | None) -> web.Response:
    """Apply `change(classes dict)` to the stored policy through `policy.put` (validated like a
    file, audited, applied by the running server at once)."""
    context, identity = _context(request), _identity(request)
    version, document = await _policy_document(context)
    if expected is not None and expected != version:
        raise VersionConflict(expected, version)
    classes = document.setdefault("classes", {}) or {}
    document["classes"] = classes
    change(classes)
    text = json.dumps(document, indent=1, ensure_ascii=False, default=str) + "\n"
    request[POLICY_TEXT] = text
    result = await context.commands.policy_put(
        {"op": "policy.put", "text": text, "expected_version": version,
         "source": f"{request.method} {request.path}"}, identity.actor)
    return result


def _overrides_of(context: Context, class_id: str, kind: str | None = None) -> list:
    return [item for item in context.state.snapshot.overrides
            if item.class_id == class_id and (kind is None or item.kind == kind)]


# --- accounts ----------------------------------------------------------------------------------


@routes.post(PREFIX + "/login")
async def login(request: web.Request) -> web.Response:
    """Open a session: JSON {name, password}; throttled per (account, source address)."""
    context = _context(request)
    if request.content_type != "application/json":
        raise Refused(415, "send JSON: {\"name\": ..., \"password\": ...}")
    data = await _body(request)
    name, password = data.get("name"), data.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        raise Refused(400, "name and password are strings", field="name")
    address = client_address(request)  # behind a trusted proxy, the client it names
    outcome = await auth.check_login(context.throttle, context.store, name, password, address)
    if outcome.retry_after > 0:
        wait = outcome.retry_after
        raise Refused(429, f"too many failed logins; try again in {wait:.0f} s",
                      headers={"Retry-After": str(max(1, round(wait)))})
    user = outcome.user
    if user is None:
        raise Refused(401, "wrong name or password")
    value, session = await auth.new_session(context.store, user)
    response = web.json_response({"name": user.name, "role": user.role,
                                  "classes": list(user.classes), "csrf_token": session.csrf})
    response.set_cookie(COOKIE, value, httponly=True, samesite="Strict", path="/",
                        secure=context.secure_cookies, max_age=auth.SESSION_SECONDS)
    return response


@routes.post(PREFIX + "/logout")
async def logout(request: web.Request) -> web.Response:
    """End the session (POST only, with the CSRF token)."""
    identity = _identity(request)
    if identity.session is not None:
        await _context(request).store.delete_session(identity.session.sha256)
    response = web.Response(status=204)
    response.del_cookie(COOKIE, path="/")
    return response


@routes.get(PREFIX + "/session")
async def session(request: web.Request) -> web.Response:
    """Who is logged in, and the CSRF token of the session."""
    identity = _identity(request)
    return web.json_response({
        "name": identity.name, "role": identity.role, "classes": list(identity.classes),
        "via": identity.via,
        "csrf_token": identity.session.csrf if identity.session is not None else None})


# --- users (admin) -------------------------------------------------------------------------------
# The same rules as `classguard user add` and the Users page (dashboard.auth): a role, a teacher's
# classes among the policy's, a language the dashboard speaks; never a password hash in an answer.

USER_KEYS = frozenset({"role", "classes", "language", "disabled", "password"})


def user_json(user) -> dict[str, Any]:
    return {"name": user.name, "role": user.role, "classes": list(user.classes),
            "language": user.language, "disabled": user.disabled, "created_at": user.created_at}


def _known_classes(request: web.Request) -> tuple[str, ...]:
    return tuple(_context(request).state.snapshot.policy.classes)


@routes.get(PREFIX + "/users")
async def users_list(request: web.Request) -> web.Response:
    _admin(request)
    users = sorted(await _context(request).store.users(), key=lambda user: user.name)
    return web.json_response({"users": [user_json(user) for user in users]})


@routes.post(PREFIX + "/users")
async def user_create(request: web.Request) -> web.Response:
    identity = _admin(request)
    data = await _body(request)
    unknown = sorted(set(data) - (USER_KEYS - {"disabled"}) - {"name"})
    if unknown:
        raise Refused(400, f"unknown key {unknown[0]!r}", field=unknown[0])
    name, password = data.get("name"), data.get("password")
    if not isinstance(name, str):
        raise Refused(400, "name is a string", field="name")
    if not isinstance(password, str):
        raise Refused(400, "password is a string", field="password")
    classes = data.get("classes", [])
    if not isinstance(classes, list):
        raise Refused(400, "classes is a list of class ids", field="classes")
    store = _context(request).store
    if await store.get_user(name) is not None:
        raise Refused(409, f"user {name!r} exists already", field="name")
    user = await asyncio.to_thread(auth.make_user, name, data.get("role"), classes, password,
                                   known_classes=_known_classes(request),
                                   language=data.get("language", ""))
    await store.put_user(user, actor=identity.actor, action="user.add")
    return web.json_response(user_json(user), status=201)


async def _user_named(request: web.Request):
    user = await _context(request).store.get_user(request.match_info["name"])
    if user is None:
        raise Refused(404, f"no user {request.match_info['name']!r}")
    return user


@routes.get(PREFIX + "/users/{name}")
async def user_get(request: web.Request) -> web.Response:
    _admin(request)
    return web.json_response(user_json(await _user_named(request)))


@routes.patch(PREFIX + "/users/{name}")
async def user_change(request: web.Request) -> web.Response:
    """Change what the body names: role, classes, language, disabled, password."""
    identity = _admin(request)
    data = await _body(request)
    unknown = sorted(set(data) - USER_KEYS)
    if unknown:
        raise Refused(400, f"unknown key {unknown[0]!r}", field=unknown[0])
    for key, kind, text in (("classes", list, "a list of class ids"), ("password", str, "a string"),
                            ("disabled", bool, "true or false")):
        if key in data and not isinstance(data[key], kind):
            raise Refused(400, f"{key} is {text}", field=key)
    await _user_named(request)
    user = await auth.change_user(
        _context(request).store, request.match_info["name"], actor=identity.actor,
        known_classes=_known_classes(request), role=data.get("role"),
        classes=data.get("classes"), language=data.get("language"),
        disabled=data.get("disabled"), password=data.get("password"))
    return web.json_response(user_json(user))


@routes.delete(PREFIX + "/users/{name}")
async def user_remove(request: web.Request) -> web.Response:
    """Remove an account: its sessions stop working at once, on every instance."""
    identity = _admin(request)
    await _user_named(request)
    await auth.remove_user(_context(request).store, request.match_info["name"],
                           actor=identity.actor)
    return web.Response(status=204)


# --- classes -----------------------------------------------------------------------------------


@routes.get(PREFIX + "/classes")
async def classes_list(request: web.Request) -> web.Response:
    identity, context = _identity(request), _context(request)
    version = _policy_version(context)
    policy = context.state.snapshot.policy
    return web.json_response({"version": version, "classes": [
        _summary(policy, class_id) for class_id in policy.classes if identity.may_see(class_id)]},
        headers=etag(version))


@routes.get(PREFIX + "/classes/{class_id}")
async def class_get(request: web.Request) -> web.Response:
    class_id = _class_of(request)
    context = _context(request)
    version = _policy_version(context)
    policy = context.state.snapshot.policy
    return web.json_response({
        "id": class_id, "version": version, "class": _class_json(policy, class_id),
        "overrides": [override_json(item) for item in _overrides_of(context, class_id)]},
        headers=etag(version))


@routes.post(PREFIX + "/classes")
async def class_create(request: web.Request) -> web.Response:
    _admin(request)
    data = await _body(request)
    class_id = data.pop("id", None)
    if not isinstance(class_id, str) or not class_id:
        raise Refused(400, "a new class needs an \"id\"", field="id")
    body = data.get("class", data) if set(data) <= {"class"} and data else data

    def change(classes: dict) -> None:
        if class_id in classes:
            raise Refused(409, f"class {class_id!r} exists already; PUT it to change it")
        classes[class_id] = body
    result = await _put_classes(request, change, _if_match(request))
    return web.json_response({"id": class_id, "version": result["version"]}, status=201,
                             headers=etag(result["version"]))


@routes.put(PREFIX + "/classes/{class_id}")
async def class_update(request: web.Request) -> web.Response:
    _admin(request)
    class_id = _class_of(request)
    data = await _body(request)
    body = data["class"] if set(data) == {"class"} else data

    def change(classes: dict) -> None:
        classes[class_id] = body
    result = await _put_classes(request, change, _if_match(request))
    return web.json_response({"id": class_id, "version": result["version"],
                              "changed": result["changed"]}, headers=etag(result["version"]))


@routes.delete(PREFIX + "/classes/{class_id}")
async def class_delete(request: web.Request) -> web.Response:
    _admin(request)
    class_id = _class_of(request)

    def change(classes: dict) -> None:
        classes.pop(class_id, None)
    result = await _put_classes(request, change, _if_match(request))
    return web.json_response({"id": class_id, "version": result["version"]},
                             headers=etag(result["version"]))


# --- a teacher's pause and temporary allow -----------------------------------------------------


def _minutes(data: dict) -> Any:
    minutes = data.get("minutes")
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 1440:
        raise Refused(400, "minutes must be a whole number from 1 to 1440", field="minutes")
    return minutes


@routes.post(PREFIX + "/classes/{class_id}/pause")
async def pause(request: web.Request) -> web.Response:
    class_id = _class_of(request)
    data = await _body(request)
    result = await _context(request).commands.override_add(
        {"class": class_id, "kind": "pause", "minutes": _minutes(data)}, _identity(request).actor)
    return web.json_response(result, status=201)


@routes.delete(PREFIX + "/classes/{class_id}/pause")
async def unpause(request: web.Request) -> web.Response:
    class_id = _class_of(request)
    context = _context(request)
    cancelled = []
    for item in _overrides_of(context, class_id, "pause"):
        try:
            result = await context.commands.override_cancel({"id": item.id}, _identity(request).actor)
            cancelled.append(result["override"])
        except ControlError:
            continue  # it ended meanwhile
    if not cancelled:
        raise Refused(404, f"class {class_id!r} is not paused")
    return web.json_response({"cancelled": cancelled})


@routes.post(PREFIX + "/classes/{class_id}/allow")
async def allow(request: web.Request) -> web.Response:
    class_id = _class_of(request)
    data = await _body(request)
    domain, service = data.get("domain"), data.get("service")
    if (domain is None) == (service is None):
        raise Refused(400, "give either \"domain\" or \"service\"", field="domain")
    target = domain if domain is not None else service
    if not isinstance(target, str) or not target.strip():
        raise Refused(400, "a domain name or a bundled service id",
                       field="domain" if domain is not None else "service")
    if service is not None and service.strip().lower() not in _context(request).commands.bundled.services:
        raise Refused(400, f"no bundled service {service!r}", field="service")
    minutes = _minutes(data)
    try:
        result = await _context(request).commands.override_add(
            {"class": class_id, "kind": "allow", "minutes": minutes, "target": target},
            _identity(request).actor)
    except ControlError as exc:
        raise Refused(400, str(exc), field="domain" if domain is not None else "service") from None
    return web.json_response(result, status=201)


# --- check, audit, lists, devices ---------------------------------------------------------------


@routes.get(PREFIX + "/check")
async def check(request: web.Request) -> web.Response:
    """The decision for a name in a class now: action, the step of SPEC §2.3, the rule."""
    name, class_id = request.query.get("name"), request.query.get("class")
    if not name:
        raise Refused(400, "check needs ?name=", field="name")
    if not class_id:
        raise Refused(400, "check needs &class=", field="class")
    if not _identity(request).may_see(class_id):
        raise Refused(403, f"class {class_id!r} is not one of yours")
    state = _context(request).state
    if class_id not in state.snapshot.policy.classes:
        raise Refused(404, f"no class {class_id!r}")
    normalized = normalize_domain(name)
    if normalized is None:
        raise Refused(400, f"{name!r} is not a valid domain name", field="name")
    scope = request.query.get("scope", "school")
    if scope not in ("school", "home"):
        raise Refused(400, "scope is school or home", field="scope")
    why = await _context(request).explain(normalized, class_id, scope, None)
    return web.json_response({"name": normalized, "class": class_id, "scope": scope,
                              "decision": why.decision, "blocked": why.blocked,
                              "step": why.step, "rule": why.rule, "reason": why.reason})


def _flag(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise Refused(400, f"{name} is true or false", field=name)
    return text in ("true", "1")


@routes.put(PREFIX + "/policy")
async def policy_import(request: web.Request) -> web.Response:
    """Import a policy file (what `classguard policy import` does): `{"text": YAML}`. With
    `?dry_run=true` only the diff; an import that removes devices or a class with devices is
    answered 409 with the diff unless `?force=true`."""
    identity, context = _admin(request), _context(request)
    force, dry_run = _flag(request, "force"), _flag(request, "dry_run")
    data = await _body(request)
    text = data.get("text")
    if not isinstance(text, str):
        raise Refused(400, '"text" is the policy file, as YAML text', field="text")
    request[POLICY_TEXT] = text
    result = await context.commands.run(
        "policy.put", {"text": text, "source": "PUT /api/v1/policy", "force": force,
                       "dry_run": dry_run, "expected_version": _if_match(request)},
        identity.actor)
    return web.json_response({key: result[key] for key in ("version", "changed", "diff")}
                             | {"dry_run": dry_run}, headers=etag(result["version"]))


@routes.get(PREFIX + "/audit")
async def audit(request: web.Request) -> web.Response:
    _admin(request)
    text = request.query.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= 10000:
        raise Refused(400, "limit is a number from 1 to 10000", field="limit")
    entries = await _context(request).store.audit(int(text))
    return web.json_response({"entries": [
        {"at": item.at, "actor": item.actor, "action": item.action, "before": item.before,
         "after": item.after} for item in entries]})


@routes.get(PREFIX + "/lists")
async def lists(request: web.Request) -> web.Response:
    _admin(request)

    context = _context(request)
    report = await asyncio.to_thread(read_status, context.state_dir)
    loaded = context.state.snapshot.lists
    return web.json_response({
        "loaded": loaded is not None,
        "entries": loaded.entry_count if loaded is not None else 0,
        "status": report.to_json() if report is not None else None})


@routes.post(PREFIX + "/lists/refresh")
async def lists_refresh(request: web.Request) -> web.Response:
    """Download and compile the blocklists now, in the background of the running server (as
    `classguard lists update` does, never deferred); GET /lists shows when it has run."""
    _admin(request)
    refresh = _context(request).refresh_lists
    if refresh is None or refresh() is None:
        raise Refused(409, "this process does not refresh the lists (a worker other than 0)")
    return web.json_response({"requested": True}, status=202)


# --- devices (the operations of `classguard device`, admin/devices.py) ----------------------


def _device_of(request: web.Request):
    """The device in the path, whose class the caller may see (else 403; 404 when there is
    none in the running policy)."""
    device_id = request.match_info["device_id"]
    device = _context(request).state.snapshot.policy.devices.get(device_id)
    if device is None:
        raise Refused(404, f"no device {device_id!r}")
    if not _identity(request).may_see(device.class_id):
        raise Refused(403, f"device {device_id!r} is not in one of your classes")
    return device


def _device_fields(data: dict, *, creating: bool) -> dict[str, Any]:
    """{id, class, addresses} from a body, each checked for shape (400 naming the field)."""

    fields: dict[str, Any] = {}
    if creating:
        device_id = data.get("id")
        if not isinstance(device_id, str) or not ID_PATTERN.fullmatch(device_id):
            raise Refused(400, "a device id is 1 to 64 letters, digits, '.', '_' or '-', "
                                "starting with a letter or digit", field="id")
        fields["id"] = device_id
    if "class" in data or creating:
        if not isinstance(data.get("class"), str) or not data["class"]:
            raise Refused(400, "\"class\" is the id of a class", field="class")
        fields["class"] = data["class"]
    if "addresses" in data:
        addresses = data["addresses"]
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise Refused(400, "\"addresses\" is a list of IP addresses", field="addresses")
        fields["addresses"] = addresses
    if not creating and "id" in data:
        raise Refused(400, "a device keeps its id (the one in the path)", field="id")
    unknown = sorted(set(data) - {"id", "class", "addresses"})
    if unknown:
        raise Refused(400, f"unknown key {unknown[0]!r} (a device has id, class, addresses)",
                       field=unknown[0])
    return fields


def _device_refusal(exc: ControlError) -> Refused:
    """A refusal of the device operations, with the field it is about."""
    text = str(exc)
    field = "class" if text.startswith("no class") else \
        "addresses" if "address" in text else None
    return Refused(400, text, **({"field": field} if field else {}))


def _issued(context: Context, device_id: str, token: str, version: int) -> dict[str, Any]:
    """What a new token's answer holds: shown this once, classguard keeps only its SHA-256."""

    return {"id": device_id, "version": version, "token": token,
            "doh_url": devices.doh_url(context.config, token),
            "dot_hostname": devices.dot_hostname(context.config, token)}


@routes.get(PREFIX + "/devices")
async def devices_list(request: web.Request) -> web.Response:
    """One page of devices in id order, with their class and addresses (`token` says only
    whether one is set): `class`, `q` (in the id or the class), `limit` (1 to 1000, default
    DEVICE_PAGE), `cursor` (the `next` of the page before; null on the last page). Read from
    the running state's device book: no store read."""
    identity = _identity(request)
    class_id = request.query.get("class") or None
    if class_id is not None and not identity.may_see(class_id):
        raise Refused(403, f"class {class_id!r} is not one of yours")
    text = request.query.get("limit", str(DEVICE_PAGE))
    if not text.isdigit() or not 1 <= int(text) <= devices.MAX_PAGE:
        raise Refused(400, f"limit is a whole number from 1 to {devices.MAX_PAGE}", field="limit")
    query = {"limit": int(text), "q": request.query.get("q", ""),
             "cursor": request.query.get("cursor") or None,
             "visible": lambda device: identity.may_see(device.class_id)}
    try:
        result = await _context(request).commands.run(
            "device.list", {**query, **({"class": class_id} if class_id else {})}, identity.actor)
    except ControlError as exc:
        raise Refused(400, str(exc), field="class") from None
    return web.json_response({"devices": result["devices"], "next": result["next"]})


@routes.post(PREFIX + "/devices")
async def device_create(request: web.Request) -> web.Response:
    """Enrol a device: its token is made here and shown in this answer only (in its DoH URL and
    DoT hostname); the store keeps the SHA-256."""

    identity, context = _admin(request), _context(request)
    fields = _device_fields(await _body(request), creating=True)
    if fields["id"] in context.state.snapshot.policy.devices:
        raise Refused(409, f"device {fields['id']!r} exists already; POST "
                            f"{PREFIX}/devices/{fields['id']}/rotate gives it a new token")
    token = devices.new_token()
    try:
        result = await context.commands.run("device.add", {
            **fields, "addresses": fields.get("addresses", []),
            "token_sha256": token_sha256(token)}, identity.actor)
    except ControlError as exc:
        raise _device_refusal(exc) from None
    return web.json_response({**_issued(context, fields["id"], token, result["version"]),
                              "class": fields["class"]}, status=201)


@routes.get(PREFIX + "/devices/{device_id}")
async def device_get(request: web.Request) -> web.Response:

    return web.json_response(device_json(_device_of(request)))


@routes.put(PREFIX + "/devices/{device_id}")
async def device_update(request: web.Request) -> web.Response:
    """Move a device to another class and/or set its school addresses; the token stays."""
    identity = _admin(request)
    device = _device_of(request)
    fields = _device_fields(await _body(request), creating=False)
    try:
        result = await _context(request).commands.run(
            "device.update", {**fields, "id": device.id}, identity.actor)
    except ControlError as exc:
        raise _device_refusal(exc) from None
    return web.json_response({"id": device.id, "version": result["version"]})


@routes.delete(PREFIX + "/devices/{device_id}")
async def device_delete(request: web.Request) -> web.Response:
    """Take a device out of the policy (its token stops working); POST .../erase also deletes
    what the query log and screen time hold about it."""
    identity = _admin(request)
    device = _device_of(request)
    result = await _context(request).commands.run("device.remove", {"id": device.id},
                                                  identity.actor)
    return web.json_response({"id": device.id, "version": result["version"]})


@routes.post(PREFIX + "/devices/{device_id}/rotate")
async def device_rotate(request: web.Request) -> web.Response:
    """A new token, shown in this answer only; the old one stops working at once."""

    identity, context = _admin(request), _context(request)
    device = _device_of(request)
    token = devices.new_token()
    result = await context.commands.run(
        "device.rotate", {"tokens": {device.id: token_sha256(token)}}, identity.actor)
    return web.json_response(_issued(context, device.id, token, result["version"]))


@routes.post(PREFIX + "/devices/{device_id}/revoke")
async def device_revoke(request: web.Request) -> web.Response:
    """The device's token stops working; its school addresses still count."""
    identity = _admin(request)
    device = _device_of(request)
    if device.token_sha256 is None:
        raise Refused(409, f"device {device.id!r} has no token to revoke")
    result = await _context(request).commands.run("device.revoke", {"id": device.id},
                                                  identity.actor)
    return web.json_response({"id": device.id, "version": result["version"]})


def _subject(request: web.Request) -> str:
    """The device of a data or erase request: an id, or the address of a client known by its
    network, as `classguard device data|erase` take (it need not be in the policy any more)."""

    device_id = request.match_info["device_id"]
    if not ID_PATTERN.fullmatch(device_id) and not subject_of(device_id).startswith("ip:"):
        raise Refused(400, f"{device_id!r} is neither a device id nor an IP address",
                       field="device_id")
    return device_id


async def _flush_query_log(context: Context) -> None:
    """Write what the last answers handed over to the query log: a device's data and its
    erasure must see those too."""
    if context.query_log is not None:
        await context.query_log.flush()


@routes.get(PREFIX + "/devices/{device_id}/data")
async def device_data(request: web.Request) -> web.Response:
    """Everything classguard holds about one device (GDPR art. 15): what `classguard device
    data` prints."""
    _admin(request)
    device_id, context = _subject(request), _context(request)
    await _flush_query_log(context)
    settings = QueryLogSettings.from_section(context.config.query_log)
    return web.json_response(await gdpr.device_report(context.store, settings, device_id))


@routes.post(PREFIX + "/devices/{device_id}/erase")
async def device_erase(request: web.Request) -> web.Response:
    """Delete everything classguard holds about one device (GDPR art. 17), its record in the
    policy included: what `classguard device erase` does."""
    identity = _admin(request)
    device_id, context = _subject(request), _context(request)
    # The control operation: this process's buffers written first, then every process on the
    # store (other workers and instances) drops what it buffers of the device (privacy.gdpr).
    erased = await context.commands.run("device.erase", {"id": device_id}, identity.actor)
    return web.json_response({key: erased[key] for key in ("device", "query_log_entries",
                                                           "store")})


STATS_TOP = 20  # most blocked registrable domains shown per class


@routes.get(PREFIX + "/stats")
async def stats(request: web.Request) -> web.Response:
    """Answers per class and hour (by outcome) and the most blocked domains, for one local day,
    from the aggregate query log (query_log.mode aggregate or full): nothing per device."""

    identity, context = _identity(request), _context(request)
    class_id = request.query.get("class")
    if class_id is not None and not identity.may_see(class_id):
        raise Refused(403, f"class {class_id!r} is not one of yours")
    query_log = context.query_log
    mode = query_log.settings.mode if query_log is not None else "off"
    today = query_log.day(query_log.clock()) if query_log is not None else None
    day = request.query.get("day", today)
    if day is not None:
        try:
            day = dt.date.fromisoformat(day).isoformat()
        except ValueError:
            raise Refused(400, "day is a date, YYYY-MM-DD", field="day") from None
    data: dict[str, Any] = {}
    if query_log is not None and mode != "off":
        if day == today:
            await query_log.flush()  # what the last minutes counted
        data = await query_log.store.aggregates(day) or {}
    hours, top = data.get("hours", {}), data.get("top_blocked", {})
    visible = [class_id] if class_id is not None else \
        [item for item in sorted(set(hours) | set(top)) if identity.may_see(item)]
    return web.json_response({"day": day, "mode": mode, "classes": {
        item: {"hours": hours.get(item, {}),
               "top_blocked": [{"domain": domain, "count": count} for domain, count in sorted(
                   top.get(item, {}).items(), key=lambda pair: (-pair[1], pair[0]))[:STATS_TOP]]}
        for item in visible}})


@routes.get(PREFIX + "/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())
