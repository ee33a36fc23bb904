"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

tests/test_api.py checks it against the routes the app serves and the statuses it answers.
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}


def _responses(*statuses: int, ok: dict | None = None, etag: bool = False) -> dict[str, Any]:
    text = {200: "OK", 201: "Created", 202: "Accepted: it runs in the background",
            204: "No content", 400: "Invalid request: `field` names the "
            "key at fault", 401: "Not logged in, or an invalid or revoked token", 403: "Not allowed "
            "for this role or class, or a missing CSRF token", 404: "No such resource",
            405: "Method not allowed", 409: "A stale write (If-Match), a conflict with what "
            "exists (a class or device of that id, a device without a token), or a policy import "
            "that removes data without ?force=true (`diff` says what it would change)",
            415: "Not JSON", 429: "Too many failed logins: wait Retry-After seconds",
            503: "The store (Redis) cannot be reached: try again after Retry-After seconds; DNS "
            "keeps answering from each server's snapshot",
            507: "The disk under state_dir is full: nothing was changed"}
    responses: dict[str, Any] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": text[status]}
        if status < 300 and status != 204:
            entry["content"] = {"application/json": {"schema": ok or {"type": "object"}}}
            if etag:
                entry["headers"] = {"ETag": {"description": "the policy version, for If-Match",
                                             "schema": {"type": "string"}}}
        elif status >= 400:
            entry["content"] = {"application/json": {"schema": ERROR}}
        responses[str(status)] = entry
    return responses


CLASS_ID = {"name": "class_id", "in": "path", "required": True, "schema": {"type": "string"}}
USER_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
DEVICE_ID = {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"}}
ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # policies.loader.ID_PATTERN
IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
            "description": 'the ETag read (e.g. "7"); a stale one gets 409'}
MINUTES = {"type": "integer", "minimum": 1, "maximum": 1440}
ADDRESSES = {"type": "array", "items": {"type": "string"}, "description": "school IP addresses"}
FORCE = {"name": "force", "in": "query", "required": False,
         "schema": {"enum": ["true", "false"]},
         "description": "confirm an import that removes devices or a class with devices "
                        "(else 409 with the diff)"}
DRY_RUN = {"name": "dry_run", "in": "query", "required": False,
           "schema": {"enum": ["true", "false"]},
           "description": "only say what would change (the diff); nothing is changed"}
DIFF = {"type": "array", "items": {"type": "string"},
        "description": "what changes, one line a change: '+ class cm2-b (networks, block)', "
                       "'- device tab-02 (class cm2-a)', '~ class cm2-a: block: +games'"}
AUTHED = (401, 403, 503, 507)  # every operation but login and this document


def _json_body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def document() -> dict[str, Any]:
    class_body = {"$ref": "#/components/schemas/ClassBody"}
    override = {"type": "object", "properties": {"override": {"$ref": "#/components/schemas/Override"}}}
    device = {"$ref": "#/components/schemas/Device"}
    issued = {"$ref": "#/components/schemas/IssuedToken"}
    user = {"$ref": "#/components/schemas/User"}
    user_fields = {"role": {"enum": ["admin", "teacher"]},
                   "classes": {"type": "array", "items": {"type": "string"},
                               "description": "a teacher's classes (at least one); none for an admin"},
                   "language": {"enum": ["", "fr", "en"], "description": '"" is the default, fr'},
                   "password": {"type": "string", "minLength": 10}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "classguard REST API", "version": "1",
                 "description": "Session cookie + X-CSRF-Token for the browser, or "
                                "`Authorization: Bearer <token>` (classguard token create)."},
        "servers": [{"url": "/"}],
        "security": [{"session": []}, {"bearer": []}],
        "paths": {
            "/api/v1/login": {"post": {
                "summary": "Open a session (throttled per account and source address)",
                "security": [],
                "requestBody": _json_body({"type": "object", "required": ["name", "password"],
                                           "properties": {"name": {"type": "string"},
                                                          "password": {"type": "string"}}}),
                "responses": _responses(200, 400, 401, 415, 429, 503, 507,
                                        ok={"$ref": "#/components/schemas/Session"})}},
            "/api/v1/logout": {"post": {"summary": "End the session (CSRF token required)",
                                        "responses": _responses(204, *AUTHED)}},
            "/api/v1/session": {"get": {"summary": "Who is logged in; the session's CSRF token",
                                        "responses": _responses(200, 401, ok={
                                            "$ref": "#/components/schemas/Session"})}},
            "/api/v1/users": {
                "get": {"summary": "The dashboard accounts (admin); never a password hash",
                        "responses": _responses(200, *AUTHED, ok={
                            "type": "object", "properties": {"users": {
                                "type": "array", "items": user}}})},
                "post": {"summary": "Add an account (admin), checked like `classguard user add`",
                         "requestBody": _json_body({
                             "type": "object", "required": ["name", "role", "password"],
                             "properties": {"name": {"type": "string"}, **user_fields}}),
                         "responses": _responses(201, 400, *AUTHED, 409, ok=user)}},
            "/api/v1/users/{name}": {
                "parameters": [USER_NAME],
                "get": {"summary": "An account (admin)",
                        "responses": _responses(200, *AUTHED, 404, ok=user)},
                "patch": {"summary": "Change what the body names (admin): role, classes, "
                                     "language, disabled, password. Disabling or a new password "
                                     "ends the account's sessions at once; the last enabled "
                                     "admin cannot be disabled or made a teacher",
                          "requestBody": _json_body({"type": "object", "properties": {
                              **user_fields, "disabled": {"type": "boolean"}}}),
                          "responses": _responses(200, 400, *AUTHED, 404, ok=user)},
                "delete": {"summary": "Remove an account (admin); its sessions stop working at "
                                      "once. Not the last enabled admin",
                           "responses": _responses(204, 400, *AUTHED, 404)}},
            "/api/v1/classes": {
                "get": {"summary": "The classes the caller may see",
                        "responses": _responses(200, 401, etag=True)},
                "post": {"summary": "Create a class (admin)", "parameters": [IF_MATCH],
                         "requestBody": _json_body({"allOf": [class_body, {
                             "type": "object", "required": ["id"],
                             "properties": {"id": {"type": "string"}}}]}),
                         "responses": _responses(201, 400, *AUTHED, 409, etag=True)}},
            "/api/v1/classes/{class_id}": {
                "parameters": [CLASS_ID],
                "get": {"summary": "A class as its policy-file mapping, and its overrides",
                        "responses": _responses(200, *AUTHED, 404, etag=True)},
                "put": {"summary": "Replace a class (admin), validated like the policy file",
                        "parameters": [IF_MATCH], "requestBody": _json_body(class_body),
                        "responses": _responses(200, 400, *AUTHED, 404, 409, etag=True)},
                "delete": {"summary": "Delete a class (admin)", "parameters": [IF_MATCH],
                           "responses": _responses(200, 400, *AUTHED, 404, 409, etag=True)}},
            "/api/v1/classes/{class_id}/pause": {
                "parameters": [CLASS_ID],
                "post": {"summary": "Pause the class now: only its allow lists resolve",
                         "requestBody": _json_body({"type": "object", "required": ["minutes"],
                                                    "properties": {"minutes": MINUTES}}),
                         "responses": _responses(201, 400, *AUTHED, 404, ok=override)},
                "delete": {"summary": "End the class's pause",
                           "responses": _responses(200, *AUTHED, 404)}},
            "/api/v1/classes/{class_id}/allow": {
                "parameters": [CLASS_ID],
                "post": {"summary": "Allow a domain or a bundled service for N minutes "
                                    "(never a locked category)",
                         "requestBody": _json_body({
                             "type": "object", "required": ["minutes"],
                             "properties": {"domain": {"type": "string"},
                                            "service": {"type": "string"}, "minutes": MINUTES}}),
                         "responses": _responses(201, 400, *AUTHED, 404, ok=override)}},
            "/api/v1/check": {"get": {
                "summary": "The decision for a name in a class now",
                "parameters": [
                    {"name": "name", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "class", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "scope", "in": "query", "required": False,
                     "schema": {"enum": ["school", "home"]}}],
                "responses": _responses(200, 400, *AUTHED, 404, ok={
                    "$ref": "#/components/schemas/Decision"})}},
            "/api/v1/policy": {"put": {
                "summary": "Import a policy file (admin), as `classguard policy import`; devices "
                           "are kept unless the file has a devices: section",
                "parameters": [IF_MATCH, FORCE, DRY_RUN],
                "requestBody": _json_body({"type": "object", "required": ["text"], "properties": {
                    "text": {"type": "string", "description": "the policy file, as YAML"}}}),
                "responses": _responses(200, 400, 409, *AUTHED, ok={
                    "type": "object", "properties": {
                        "version": {"type": "integer"}, "changed": {"type": "boolean"},
                        "dry_run": {"type": "boolean"}, "diff": DIFF}}, etag=True)}},
            "/api/v1/audit": {"get": {
                "summary": "Who changed what, newest first (admin)",
                "parameters": [{"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}],
                "responses": _responses(200, 400, *AUTHED)}},
            "/api/v1/lists": {"get": {"summary": "Blocklist status (admin)",
                                      "responses": _responses(200, *AUTHED)}},
            "/api/v1/lists/refresh": {"post": {
                "summary": "Download and compile the blocklists now, in the background (admin); "
                           "GET /lists shows the refresh once it has run",
                "responses": _responses(202, *AUTHED, 409)}},
            "/api/v1/devices": {
                "get": {"summary": "One page of devices in id order (no token, ever: `token` says "
                                   "whether one is set); `next` is the cursor of the next page, "
                                   "null on the last one",
                        "parameters": [
                            {"name": "class", "in": "query", "required": False,
                             "schema": {"type": "string"}},
                            {"name": "q", "in": "query", "required": False,
                             "description": "text found in the device's id or class",
                             "schema": {"type": "string"}},
                            {"name": "limit", "in": "query", "required": False,
                             "description": "devices in the page (default 100)",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                            {"name": "cursor", "in": "query", "required": False,
                             "description": "the `next` of the page before",
                             "schema": {"type": "string"}}],
                        "responses": _responses(200, 400, *AUTHED)},
                "post": {"summary": "Enrol a device (admin); its token is in this answer only",
                         "requestBody": _json_body({
                             "type": "object", "required": ["id", "class"],
                             "properties": {"id": {"type": "string", "pattern": ID_PATTERN},
                                            "class": {"type": "string"}, "addresses": ADDRESSES}}),
                         "responses": _responses(201, 400, *AUTHED, 409, ok=issued)}},
            "/api/v1/devices/{device_id}": {
                "parameters": [DEVICE_ID],
                "get": {"summary": "A device: class, addresses, whether it has a token",
                        "responses": _responses(200, *AUTHED, 404, ok=device)},
                "put": {"summary": "Move a device to another class and/or set its addresses "
                                   "(admin); the token stays",
                        "requestBody": _json_body({
                            "type": "object", "properties": {"class": {"type": "string"},
                                                             "addresses": ADDRESSES}}),
                        "responses": _responses(200, 400, *AUTHED, 404)},
                "delete": {"summary": "Take a device out of the policy (admin); POST .../erase "
                                      "also deletes its data",
                           "responses": _responses(200, 400, *AUTHED, 404)}},
            "/api/v1/devices/{device_id}/rotate": {
                "parameters": [DEVICE_ID],
                "post": {"summary": "A new token (admin), in this answer only; the old one stops "
                                    "working", "responses": _responses(200, 400, *AUTHED, 404, ok=issued)}},
            "/api/v1/devices/{device_id}/revoke": {
                "parameters": [DEVICE_ID],
                "post": {"summary": "The token stops working (admin); school addresses still count",
                         "responses": _responses(200, 400, *AUTHED, 404, 409)}},
            "/api/v1/devices/{device_id}/data": {
                "parameters": [DEVICE_ID],
                "get": {"summary": "Everything held about a device (admin; GDPR art. 15): query "
                                   "log entries, stats, its record, screen-time minutes. An id, "
                                   "or the address of a client known by its network",
                        "responses": _responses(200, 400, *AUTHED)}},
            "/api/v1/devices/{device_id}/erase": {
                "parameters": [DEVICE_ID],
                "post": {"summary": "Delete everything held about a device (admin; GDPR art. 17), "
                                    "its record in the policy included",
                         "responses": _responses(200, 400, *AUTHED)}},
            "/api/v1/stats": {"get": {
                "summary": "Answers per class and hour by outcome, and the most blocked "
                           "domains, for one local day (aggregate query log; nothing per device)",
                "parameters": [{"name": "class", "in": "query", "required": False,
                                "schema": {"type": "string"}},
                               {"name": "day", "in": "query", "required": False,
                                "schema": {"type": "string", "format": "date"}}],
                "responses": _responses(200, 400, *AUTHED)}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                             "responses": _responses(200)}},
        },
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "classguard_session"},
                "bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"}, "field": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "string"}},
                    "diff": DIFF}},
                "Session": {"type": "object", "properties": {
                    "name": {"type": "string"}, "role": {"enum": ["admin", "teacher"]},
                    "classes": {"type": "array", "items": {"type": "string"}},
                    "csrf_token": {"type": ["string", "null"]}}},
                "ClassBody": {"type": "object", "description": "the keys of a class in the "
                              "policy file (docs/policy.md): name, school, networks, block, "
                              "block_services, allow, deny, allow_only, safe_search, schedule, "
                              "screen_time, home"},
                "Override": {"type": "object", "properties": {
                    "id": {"type": "string"}, "class_id": {"type": "string"},
                    "kind": {"enum": ["pause", "allow"]}, "until": {"type": "number"},
                    "target": {"type": ["string", "null"]},
                    "target_kind": {"enum": ["domain", "service", None]},
                    "created_at": {"type": "number"}, "created_by": {"type": "string"}}},
                "User": {"type": "object", "properties": {
                    "name": {"type": "string"}, "role": {"enum": ["admin", "teacher"]},
                    "classes": {"type": "array", "items": {"type": "string"}},
                    "language": {"type": "string"}, "disabled": {"type": "boolean"},
                    "created_at": {"type": "number"}}},
                "Device": {"type": "object", "properties": {
                    "id": {"type": "string"}, "class": {"type": "string"},
                    "token": {"type": "boolean", "description": "whether it has one (never the token)"},
                    "addresses": ADDRESSES}},
                "IssuedToken": {"type": "object", "description": "a device's new token, shown "
                                "this once: classguard keeps only its SHA-256", "properties": {
                    "id": {"type": "string"}, "version": {"type": "integer"},
                    "token": {"type": "string"}, "doh_url": {"type": ["string", "null"]},
                    "dot_hostname": {"type": ["string", "null"]}}},
                "Decision": {"type": "object", "properties": {
                    "name": {"type": "string"}, "class": {"type": "string"},
                    "scope": {"type": "string"}, "decision": {"type": "string"},
                    "blocked": {"type": "boolean"}, "step": {"type": "string"},
                    "rule": {"type": "string"}, "reason": {"type": ["string", "null"]}}},
            },
        },
    }
