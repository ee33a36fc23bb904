"""REST API /api/v1: every endpoint, for each role, and its error paths; one end-to-end pause."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp
import dns.rcode

from dashboard import auth
from tests.conftest import PUPILS, ede
from tests.dashboard_fixtures import dashboard  # noqa: F401 (a fixture)


async def _as(dashboard, name: str) -> dict[str, str]:
    """Log in as `name`: the headers that carry the session's CSRF token."""
    return {"X-CSRF-Token": await dashboard.login(name)}


async def _json(response, status: int):
    assert response.status == status, await response.text()
    return await response.json()


# --- classes --------------------------------------------------------------------------------


async def test_classes_listed_by_role(dashboard):
    client = dashboard.client
    everything = await _json(await client.get("/api/v1/classes", headers=dashboard.bearer()), 200)
    assert [item["id"] for item in everything["classes"]] == ["pupils", "staff"]
    assert everything["classes"][0]["networks"] == ["127.0.0.2/32"]
    await dashboard.login("tom")
    response = await client.get("/api/v1/classes")
    mine = await _json(response, 200)
    assert [item["id"] for item in mine["classes"]] == ["pupils"]
    assert response.headers["ETag"] == f'"{mine["version"]}"'


async def test_class_get_and_403_across_classes(dashboard):
    client = dashboard.client
    await dashboard.login("tom")
    body = await _json(await client.get("/api/v1/classes/pupils"), 200)
    assert body["class"]["block"] == ["adult", "gambling"]
    assert body["class"]["allow"] == ["allowed.gambling.example"]
    for path, method, data in (("/api/v1/classes/staff", "GET", None),
                               ("/api/v1/classes/staff/pause", "POST", {"minutes": 5}),
                               ("/api/v1/classes/staff/pause", "DELETE", None),
                               ("/api/v1/classes/staff/allow", "POST", {"domain": "a.example", "minutes": 5}),
                               ("/api/v1/check?name=example.com&class=staff", "GET", None),
                               ("/api/v1/devices?class=staff", "GET", None)):
        csrf = (await (await client.get("/api/v1/session")).json())["csrf_token"]
        response = await client.request(method, path, json=data, headers={"X-CSRF-Token": csrf})
        assert response.status == 403, (method, path, await response.text())
    assert not dashboard.resolver.service.state.snapshot.overrides
    missing = await client.get("/api/v1/classes/nope", headers=dashboard.bearer())
    assert missing.status == 404


async def test_teacher_cannot_edit_classes_or_read_admin_resources(dashboard):
    headers = await _as(dashboard, "tom")
    client = dashboard.client
    assert (await client.put("/api/v1/classes/pupils", json={"block": []}, headers=headers)).status == 403
    assert (await client.post("/api/v1/classes", json={"id": "x"}, headers=headers)).status == 403
    assert (await client.delete("/api/v1/classes/pupils", headers=headers)).status == 403
    for path in ("/api/v1/audit", "/api/v1/lists"):
        assert (await client.get(path)).status == 403


async def test_update_class_applies_at_once_and_is_audited(dashboard):
    client, service = dashboard.client, dashboard.resolver.service
    headers = await _as(dashboard, "alice")
    current = await client.get("/api/v1/classes/pupils")
    etag = current.headers["ETag"]
    body = (await current.json())["class"]
    body["block"] = ["adult"]  # gambling opens
    response = await client.put("/api/v1/classes/pupils", json=body,
                                headers={**headers, "If-Match": etag})
    result = await _json(response, 200)
    assert result["changed"] and response.headers["ETag"] == f'"{result["version"]}"'
    assert service.state.snapshot.policy.classes["pupils"].rules.block == ("adult",)
    decision = await _json(await client.get("/api/v1/check?name=gambling.example&class=pupils"), 200)
    assert decision["decision"] == "resolve"
    entry = (await _json(await client.get("/api/v1/audit?limit=1"), 200))["entries"][0]
    assert entry["actor"] == "alice (dashboard)" and entry["action"] == "policy.import"


async def test_stale_write_gets_409(dashboard):
    client = dashboard.client
    headers = await _as(dashboard, "alice")
    first = await client.get("/api/v1/classes/pupils")
    etag, body = first.headers["ETag"], (await first.json())["class"]
    body["deny"] = ["one.example"]
    assert (await client.put("/api/v1/classes/pupils", json=body,
                             headers={**headers, "If-Match": etag})).status == 200
    body["deny"] = ["two.example"]  # made from the version read before the first write
    stale = await client.put("/api/v1/classes/pupils", json=body, headers={**headers, "If-Match": etag})
    error = await _json(stale, 409)
    assert stale.headers["ETag"] == f'"{error["version"]}"' and "changed meanwhile" in error["error"]
    assert dashboard.resolver.service.state.snapshot.policy.classes["pupils"].rules.deny == ("one.example",)
    bad = await client.put("/api/v1/classes/pupils", json=body, headers={**headers, "If-Match": "soon"})
    assert (await _json(bad, 400))["field"] == "If-Match"


async def test_validation_errors_name_the_field(dashboard):
    client = dashboard.client
    headers = await _as(dashboard, "alice")
    for body, field in (({"block": ["adult", "no-such-category"]}, "block"),
                        ({"networks": ["10.0.0.0/33"]}, "networks"),
                        ({"allow": ["fr"]}, "allow"),
                        ({"safe_search": "sometimes"}, "safe_search"),
                        ({"colour": "blue"}, "colour")):
        error = await _json(await client.put("/api/v1/classes/pupils", json=body, headers=headers), 400)
        assert error.get("field") == field, (body, error)
    assert (await _json(await client.put("/api/v1/classes/pupils", data="[", headers={
        **headers, "Content-Type": "application/json"}), 400))["error"] == "the body must be a JSON object"


async def test_create_and_delete_a_class(dashboard):
    client, service = dashboard.client, dashboard.resolver.service
    headers = await _as(dashboard, "alice")
    created = await client.post("/api/v1/classes", headers=headers, json={
        "id": "cm1-b", "name": "CM1 B", "networks": ["10.1.2.0/24"], "block": ["adult"]})
    assert (await _json(created, 201))["id"] == "cm1-b"
    assert "cm1-b" in service.state.snapshot.policy.classes
    again = await client.post("/api/v1/classes", headers=headers, json={"id": "cm1-b"})
    assert again.status == 409
    assert (await _json(await client.post("/api/v1/classes", headers=headers, json={"name": "x"}),
                        400))["field"] == "id"
    overlapping = await client.post("/api/v1/classes", headers=headers,
                                    json={"id": "cm1-c", "networks": ["10.1.2.0/24"]})
    assert overlapping.status == 400
    etag = created.headers["ETag"]
    deleted = await client.delete("/api/v1/classes/cm1-b", headers={**headers, "If-Match": etag})
    await _json(deleted, 200)
    assert "cm1-b" not in service.state.snapshot.policy.classes


# --- pause and temporary allow ------------------------------------------------------------------


async def test_pause_and_resume(dashboard):
    client = dashboard.client
    headers = await _as(dashboard, "tom")
    for minutes in (0, 1441, "5", True, None):
        error = await _json(await client.post("/api/v1/classes/pupils/pause", json={"minutes": minutes},
                                              headers=headers), 400)
        assert error["field"] == "minutes"
    paused = await _json(await client.post("/api/v1/classes/pupils/pause", json={"minutes": 10},
                                           headers=headers), 201)
    assert paused["override"]["kind"] == "pause" and paused["override"]["created_by"] == "tom (dashboard)"
    decision = await _json(await client.get("/api/v1/check?name=example.com&class=pupils"), 200)
    assert decision["decision"] == "block" and decision["reason"] == "paused"
    resumed = await _json(await client.delete("/api/v1/classes/pupils/pause", headers=headers), 200)
    assert [item["id"] for item in resumed["cancelled"]] == [paused["override"]["id"]]
    assert (await client.delete("/api/v1/classes/pupils/pause", headers=headers)).status == 404
    decision = await _json(await client.get("/api/v1/check?name=example.com&class=pupils"), 200)
    assert decision["decision"] == "resolve"


async def test_temporary_allow_and_locked_categories(dashboard):
    client = dashboard.client
    headers = await _as(dashboard, "tom")
    allowed = await client.post("/api/v1/classes/pupils/allow", headers=headers,
                                json={"domain": "casino.example", "minutes": 30})
    override = (await _json(allowed, 201))["override"]
    assert override["target"] == "casino.example" and override["target_kind"] == "domain"
    decision = await _json(await client.get("/api/v1/check?name=www.casino.example&class=pupils"), 200)
    assert decision["decision"] == "resolve"
    locked = await client.post("/api/v1/classes/pupils/allow", headers=headers,
                               json={"domain": "adult.example", "minutes": 30})
    error = await _json(locked, 400)
    assert "locked category 'adult'" in error["error"] and error["field"] == "domain"
    for body, field in (({"minutes": 5}, "domain"),
                        ({"domain": "a.example", "service": "tiktok", "minutes": 5}, "domain"),
                        ({"service": "no-such-app", "minutes": 5}, "service"),
                        ({"domain": "fr", "minutes": 5}, "domain"),
                        ({"domain": "ok.example"}, "minutes")):
        error = await _json(await client.post("/api/v1/classes/pupils/allow", json=body,
                                              headers=headers), 400)
        assert error["field"] == field, (body, error)
    service = await client.post("/api/v1/classes/pupils/allow", headers=headers,
                                json={"service": "tiktok", "minutes": 5})
    assert (await _json(service, 201))["override"]["target_kind"] == "service"


# --- check, audit, lists, devices ---------------------------------------------------------------


async def test_check(dashboard):
    client = dashboard.client
    headers = dashboard.bearer()
    decision = await _json(await client.get("/api/v1/check?name=WWW.Adult.Example.&class=pupils",
                                            headers=headers), 200)
    assert decision == {"name": "www.adult.example", "class": "pupils", "scope": "school",
                        "decision": "block", "blocked": True, "step": decision["step"],
                        "rule": decision["rule"], "reason": "category:adult"}
    assert decision["step"].startswith("9")
    for query, status in (("name=example.com", 400), ("class=pupils", 400),
                          ("name=example.com&class=nope", 404), ("name=a..b&class=pupils", 400),
                          ("name=example.com&class=pupils&scope=moon", 400)):
        assert (await client.get(f"/api/v1/check?{query}", headers=headers)).status == status, query


async def test_audit_records_who_and_what(dashboard):
    client = dashboard.client
    headers = await _as(dashboard, "tom")
    await client.post("/api/v1/classes/pupils/pause", json={"minutes": 3}, headers=headers)
    entries = (await _json(await client.get("/api/v1/audit?limit=5", headers=dashboard.bearer()),
                           200))["entries"]
    assert entries[0]["actor"] == "tom (dashboard)" and entries[0]["action"] == "override.add"
    assert "pause for pupils" in entries[0]["after"]
    text = json.dumps(entries)
    assert "scrypt$" not in text and dashboard.token not in text
    assert (await client.get("/api/v1/audit?limit=0", headers=dashboard.bearer())).status == 400


async def test_lists_status(dashboard):
    status = await _json(await dashboard.client.get("/api/v1/lists", headers=dashboard.bearer()), 200)
    assert status["loaded"] and status["entries"] > 0
    assert status["status"] is None or "sources" in status["status"]


async def test_devices_never_show_a_secret(dashboard):
    client, service = dashboard.client, dashboard.resolver.service
    device_token = "k7q2m9x4v8w1z6r3t5y0p2a9"
    digest = hashlib.sha256(device_token.encode()).hexdigest()
    added = await service.control.commands.handle({"op": "device.add", "id": "tablet-1",
                                                   "class": "pupils", "token_sha256": digest}, "test")
    assert added["ok"], added
    secrets = {device_token, digest}
    listed = await _json(await client.get("/api/v1/devices", headers=dashboard.bearer()), 200)
    assert listed["devices"] == [{"id": "tablet-1", "class": "pupils", "token": True, "addresses": []}]
    text = json.dumps(listed)
    assert not any(secret in text for secret in secrets)
    await dashboard.login("sam")  # teacher of staff: sees no pupil's tablet
    assert (await _json(await client.get("/api/v1/devices"), 200))["devices"] == []


async def test_errors_are_json(dashboard):
    client = dashboard.client
    response = await client.get("/api/v1/nothing-here", headers=dashboard.bearer())
    assert response.status == 404 and "error" in await response.json()
    response = await client.patch("/api/v1/classes", headers=dashboard.bearer())
    assert response.status == 405 and "error" in await response.json()


# --- end to end: a DNS query before and after a pause made through the API --------------------


async def test_pause_through_the_api_reaches_the_dns_path(make_resolver):
    resolver = await make_resolver(settings={"dashboard": {"listen": "127.0.0.1:0"}})
    service = resolver.service
    token, _record = await auth.create_token(service.store, "e2e", actor="test")
    host, port = service.dashboard.address
    base = f"http://{host}:{port}/api/v1"
    headers = {"Authorization": f"Bearer {token}"}
    before = await resolver.query("example.com", source=PUPILS, use_edns=0)
    assert before.rcode() == dns.rcode.NOERROR and before.answer[0][0].address == "93.184.215.14"
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{base}/classes/pupils/pause", json={"minutes": 15}) as response:
            assert response.status == 201, await response.text()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while True:
            after = await resolver.query("example.com", source=PUPILS, use_edns=0)
            if after.answer and after.answer[0][0].address == "0.0.0.0":
                break
            assert loop.time() < deadline, "the pause did not reach the DNS path within a second"
            await asyncio.sleep(0.05)
        assert (15, "paused") in ede(after)
        staff = await resolver.query("example.com", source="127.0.0.3")
        assert staff.answer[0][0].address == "93.184.215.14"  # another class is not paused
        async with session.delete(f"{base}/classes/pupils/pause") as response:
            assert response.status == 200
    again = await resolver.query("example.com", source=PUPILS)
    assert again.answer[0][0].address == "93.184.215.14"


# --- the OpenAPI document -------------------------------------------------------------------


async def test_openapi_lists_exactly_the_routes_served(dashboard):
    document = await _json(await dashboard.client.get("/api/v1/openapi.json"), 200)
    assert document["openapi"].startswith("3.1")
    served = {(route.method.lower(), route.resource.canonical)
              for route in dashboard.client.app.router.routes()
              if route.method != "HEAD" and route.resource.canonical.startswith("/api/")}  # not the pages
    documented = {(method, path) for path, item in document["paths"].items()
                  for method in item if method != "parameters"}
    assert served == documented


JUNK = (None, 0, -1, 1441, 10**20, "", "x" * 300, "a..b", "../etc", "\u00e9cole.fr", [], {}, True,
        "<script>", "fr")


async def test_junk_gets_no_500_and_only_documented_statuses(dashboard):
    """A small property-style run: every documented operation with junk in every field, for an
    admin token and a teacher's session (the fixture checks every status against the document)."""
    import itertools
    import random

    from dashboard.openapi import document

    client, rng = dashboard.client, random.Random(10)
    teacher = await _as(dashboard, "tom")
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters" or path.endswith(("/login", "/logout")):
                continue
            for junk, headers in itertools.product(JUNK, (dashboard.bearer(), teacher)):
                url = path.replace("{class_id}", rng.choice(["pupils", "staff", "nope", "x%20y"]))
                query = {"name": str(junk), "class": rng.choice(["pupils", str(junk)]),
                         "limit": str(junk)}
                body = {"minutes": junk, "domain": junk} if rng.random() < 0.5 else \
                    {"id": junk, "block": junk, "service": junk, "minutes": rng.randint(1, 5)}
                response = await client.request(method.upper(), url, params=query,
                                                headers={**headers, "If-Match": rng.choice(['"1"', "*"])},
                                                json=body if method in ("post", "put") else None)
                assert response.status < 500, (method, url, body, await response.text())
    for junk in JUNK:  # logins with junk: 400 or 401, never a 500
        response = await client.post("/api/v1/login", json={"name": junk, "password": junk})
        assert response.status in (400, 401, 429)


async def test_stats_per_class_and_hour(dashboard):
    client, resolver = dashboard.client, dashboard.resolver
    await resolver.query("www.adult.example", source=PUPILS)
    await resolver.query("casino.example", source=PUPILS)
    await resolver.query("example.com", source="127.0.0.3")
    await dashboard.login("tom")
    mine = await _json(await client.get("/api/v1/stats"), 200)
    assert mine["mode"] == "aggregate" and list(mine["classes"]) == ["pupils"]
    [hour] = mine["classes"]["pupils"]["hours"].values()
    assert hour == {"category:adult": 1, "category:gambling": 1}
    assert {item["domain"] for item in mine["classes"]["pupils"]["top_blocked"]} == \
        {"adult.example", "casino.example"}
    assert (await client.get("/api/v1/stats?class=staff")).status == 403
    assert (await client.get("/api/v1/stats?day=yesterday")).status == 400
    everything = await _json(await client.get("/api/v1/stats", headers=dashboard.bearer()), 200)
    assert set(everything["classes"]) == {"pupils", "staff"}
    assert "127.0.0" not in json.dumps(everything)
