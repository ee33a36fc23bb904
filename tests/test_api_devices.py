"""REST API: devices (enrol, read, move, remove, token rotation and revocation, data export and
erasure) and a list refresh, for each role and error path."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from blocklists.settings import ListSource
from tests.conftest import ede
from tests.dashboard_fixtures import dashboard, open_dashboard  # noqa: F401 (a fixture)

FULL_LOG = {"query_log": {"mode": "full", "retention_days": 7, "scope": "all"}}


async def _json(response, status: int):
    assert response.status == status, await response.text()
    return await response.json()


async def _enrol(dashboard, device_id: str = "tablet-1", class_id: str = "pupils",
                 addresses: list[str] | None = None) -> dict:
    body = {"id": device_id, "class": class_id, **({"addresses": addresses} if addresses else {})}
    return await _json(await dashboard.client.post("/api/v1/devices", json=body,
                                                   headers=dashboard.bearer()), 201)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def test_enrol_shows_the_token_once_and_stores_its_hash(dashboard):
    client, service = dashboard.client, dashboard.resolver.service
    enrolled = await _enrol(dashboard, addresses=["127.0.0.5"])
    token = enrolled["token"]
    assert len(token) >= 22 and token.isalnum() and token.islower()
    assert enrolled["doh_url"] is None and enrolled["dot_hostname"] is None  # no doh, no dot
    device = service.state.snapshot.policy.devices["tablet-1"]  # applied at once
    assert device.token_sha256 == _sha256(token) and device.class_id == "pupils"
    stored = (await service.store.get_policy()).text
    assert token not in stored
    shown = await _json(await client.get("/api/v1/devices/tablet-1", headers=dashboard.bearer()), 200)
    assert shown == {"id": "tablet-1", "class": "pupils", "token": True, "addresses": ["127.0.0.5"]}
    assert token not in json.dumps(shown) and _sha256(token) not in json.dumps(shown)
    # the device's address now counts as the pupils' class on the DNS path
    answer = await dashboard.resolver.query("adult.example", source="127.0.0.5")
    assert ede(answer) == [(15, "category:adult")]
    entry = (await _json(await client.get("/api/v1/audit?limit=1", headers=dashboard.bearer()),
                         200))["entries"][0]
    assert entry["action"] == "device.add" and entry["actor"].startswith("API token ")


async def test_enrol_refusals_name_the_field(dashboard):
    client, headers = dashboard.client, dashboard.bearer()
    await _enrol(dashboard, addresses=["127.0.0.5"])
    for body, field in (({"class": "pupils"}, "id"),
                        ({"id": "-bad", "class": "pupils"}, "id"),
                        ({"id": "t2"}, "class"),
                        ({"id": "t2", "class": "nope"}, "class"),
                        ({"id": "t2", "class": "pupils", "addresses": "127.0.0.6"}, "addresses"),
                        ({"id": "t2", "class": "pupils", "addresses": ["not-an-ip"]}, "addresses"),
                        ({"id": "t2", "class": "pupils", "addresses": ["127.0.0.5"]}, "addresses"),
                        ({"id": "t2", "class": "pupils", "token": "x" * 24}, "token")):
        error = await _json(await client.post("/api/v1/devices", json=body, headers=headers), 400)
        assert error.get("field") == field, (body, error)
    again = await client.post("/api/v1/devices", json={"id": "tablet-1", "class": "staff"},
                              headers=headers)
    assert "exists already" in (await _json(again, 409))["error"]
    assert set(dashboard.resolver.service.state.snapshot.policy.devices) == {"tablet-1"}


async def test_only_an_admin_changes_devices_and_a_teacher_sees_their_own(dashboard):
    client = dashboard.client
    await _enrol(dashboard)
    csrf = {"X-CSRF-Token": await dashboard.login("tom")}  # teacher of pupils
    assert (await _json(await client.get("/api/v1/devices/tablet-1"), 200))["class"] == "pupils"
    for method, path, body in (("POST", "/api/v1/devices", {"id": "t9", "class": "pupils"}),
                               ("PUT", "/api/v1/devices/tablet-1", {"class": "staff"}),
                               ("DELETE", "/api/v1/devices/tablet-1", None),
                               ("POST", "/api/v1/devices/tablet-1/rotate", None),
                               ("POST", "/api/v1/devices/tablet-1/revoke", None),
                               ("GET", "/api/v1/devices/tablet-1/data", None),
                               ("POST", "/api/v1/devices/tablet-1/erase", None),
                               ("POST", "/api/v1/lists/refresh", None)):
        response = await client.request(method, path, json=body, headers=csrf)
        assert response.status == 403, (method, path, await response.text())
    await dashboard.login("sam")  # teacher of staff: not this tablet's class
    assert (await client.get("/api/v1/devices/tablet-1")).status == 403
    assert (await client.get("/api/v1/devices/nope")).status == 404
    # an admin's session still needs the CSRF token for a change
    await dashboard.login("alice")
    assert (await client.post("/api/v1/devices/tablet-1/rotate")).status == 403
    assert dashboard.resolver.service.state.snapshot.policy.devices["tablet-1"].class_id == "pupils"


async def test_move_a_device_and_set_its_addresses(dashboard):
    client, headers = dashboard.client, dashboard.bearer()
    first = await _enrol(dashboard)
    await _enrol(dashboard, "tablet-2", addresses=["127.0.0.6"])
    moved = await client.put("/api/v1/devices/tablet-1", headers=headers,
                             json={"class": "staff", "addresses": ["127.0.0.5"]})
    assert (await _json(moved, 200))["version"] > first["version"]
    device = dashboard.resolver.service.state.snapshot.policy.devices["tablet-1"]
    assert device.class_id == "staff" and [str(a) for a in device.addresses] == ["127.0.0.5"]
    assert device.token_sha256 == _sha256(first["token"])  # the token stays
    answer = await dashboard.resolver.query("adult.example", source="127.0.0.5")
    assert ede(answer) == []  # staff block nothing
    for body, field in (({"class": "nope"}, "class"), ({"addresses": ["127.0.0.6"]}, "addresses"),
                        ({"addresses": [1]}, "addresses"), ({"id": "other"}, "id")):
        error = await _json(await client.put("/api/v1/devices/tablet-1", json=body,
                                             headers=headers), 400)
        assert error.get("field") == field, (body, error)
    assert (await client.put("/api/v1/devices/nope", json={"class": "staff"},
                             headers=headers)).status == 404


async def test_rotate_revoke_and_remove(dashboard):
    client, headers = dashboard.client, dashboard.bearer()
    policy = lambda: dashboard.resolver.service.state.snapshot.policy  # noqa: E731
    first = await _enrol(dashboard)
    rotated = await _json(await client.post("/api/v1/devices/tablet-1/rotate", headers=headers), 200)
    assert rotated["token"] != first["token"]
    assert policy().devices["tablet-1"].token_sha256 == _sha256(rotated["token"])
    await _json(await client.post("/api/v1/devices/tablet-1/revoke", headers=headers), 200)
    assert policy().devices["tablet-1"].token_sha256 is None
    again = await client.post("/api/v1/devices/tablet-1/revoke", headers=headers)
    assert "no token" in (await _json(again, 409))["error"]
    assert (await client.post("/api/v1/devices/nope/rotate", headers=headers)).status == 404
    await _json(await client.delete("/api/v1/devices/tablet-1", headers=headers), 200)
    assert "tablet-1" not in policy().devices
    assert (await client.get("/api/v1/devices/tablet-1", headers=headers)).status == 404
    actions = [entry["action"] for entry in (await _json(await client.get(
        "/api/v1/audit?limit=4", headers=headers), 200))["entries"]]
    assert actions == ["device.remove", "device.revoke", "device.rotate", "device.add"]


async def test_device_data_and_erase(make_resolver):
    async with open_dashboard(make_resolver, settings=FULL_LOG) as dashboard:
        client, headers = dashboard.client, dashboard.bearer()
        await _enrol(dashboard, addresses=["127.0.0.5"])
        await dashboard.resolver.query("adult.example", source="127.0.0.5")
        await dashboard.resolver.query("example.com", source="127.0.0.5")
        data = await _json(await client.get("/api/v1/devices/tablet-1/data", headers=headers), 200)
        assert data["device"] == "tablet-1" and data["query_log"]["mode"] == "full"
        assert len(data["query_log"]["entries"]) == 2  # handed over moments ago: flushed first
        assert data["device_record"]["class"] == "pupils"
        assert "***" in json.dumps(data["device_record"])  # its token hash is not shown
        assert (await client.get("/api/v1/devices/bad%20id/data", headers=headers)).status == 400
        erased = await _json(await client.post("/api/v1/devices/tablet-1/erase", headers=headers), 200)
        assert erased["query_log_entries"] == 2 and erased["store"]["device_record"]
        assert "tablet-1" not in dashboard.resolver.service.state.snapshot.policy.devices
        entry = (await _json(await client.get("/api/v1/audit?limit=1", headers=headers),
                             200))["entries"][0]
        assert entry["action"] == "device.erase" and entry["actor"].startswith("API token ")
        after = await _json(await client.get("/api/v1/devices/tablet-1/data", headers=headers), 200)
        assert after["query_log"]["entries"] == [] and after["device_record"] is None
        # a device the policy does not know (any more) can still be asked about and erased
        unknown = await _json(await client.post("/api/v1/devices/127.0.0.9/erase", headers=headers), 200)
        assert unknown["query_log_entries"] == 0


async def test_a_list_refresh_through_the_api_runs_now(make_resolver, tmp_path):
    listed = tmp_path / "adult.txt"
    listed.write_text("adult.example\n")
    sources = (ListSource(name="adult", format="domains", category="adult", path=str(listed)),)
    async with open_dashboard(make_resolver, sources=sources) as dashboard:
        client, headers = dashboard.client, dashboard.bearer()
        before = (await _json(await client.get("/api/v1/lists", headers=headers), 200))["status"]
        assert ede(await dashboard.resolver.query("new-adult.example")) == []
        listed.write_text("adult.example\nnew-adult.example\n")
        assert (await _json(await client.post("/api/v1/lists/refresh", headers=headers), 202)) == \
            {"requested": True}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not ede(await dashboard.resolver.query("new-adult.example")):
            assert loop.time() < deadline, "the refresh asked for did not run"
            await asyncio.sleep(0.05)
        after = (await _json(await client.get("/api/v1/lists", headers=headers), 200))["status"]
        assert after["checked_at"] > before["checked_at"]


@pytest.mark.parametrize("path", ["/api/v1/devices/tablet-1/data", "/api/v1/devices/x/erase"])
async def test_data_and_erase_need_a_credential(dashboard, path):
    method = "GET" if path.endswith("/data") else "POST"
    assert (await dashboard.client.request(method, path)).status == 401


async def test_devices_come_in_pages_each_exactly_once(dashboard):
    """GET /devices pages (`limit`, `cursor`, `class`, `q`) over the running state's book:
    every device exactly once, even while devices are enrolled between two pages."""
    client, headers = dashboard.client, dashboard.bearer()
    commands = dashboard.resolver.service.control.commands
    await commands.run("device.import", {"devices": [
        {"id": f"tab-{n:04d}", "class": "pupils" if n % 3 else "staff",
         "token_sha256": _sha256(str(n))} for n in range(0, 460, 2)]}, "test")
    seen, cursor, added = [], None, 0
    while True:
        url = "/api/v1/devices?limit=50" + (f"&cursor={cursor}" if cursor else "")
        page = await _json(await client.get(url, headers=headers), 200)
        assert len(page["devices"]) <= 50
        seen.extend(item["id"] for item in page["devices"])
        cursor = page["next"]
        if cursor is None:
            break
        await _enrol(dashboard, f"tab-{added * 2 + 1:04d}")  # one enrolled between two pages
        added += 1
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert {f"tab-{n:04d}" for n in range(0, 460, 2)} <= set(seen)
    staff = await _json(await client.get("/api/v1/devices?class=staff&limit=1000", headers=headers), 200)
    assert staff["next"] is None and all(item["class"] == "staff" for item in staff["devices"])
    assert len(staff["devices"]) == len([n for n in range(0, 460, 2) if n % 3 == 0])
    found = await _json(await client.get("/api/v1/devices?q=TAB-010", headers=headers), 200)
    assert [item["id"] for item in found["devices"]] == [f"tab-{n:04d}" for n in range(100, 110, 2)]
    first = await _json(await client.get("/api/v1/devices", headers=headers), 200)
    assert len(first["devices"]) == 100 and first["next"] == first["devices"][-1]["id"]
    for bad in ("limit=0", "limit=1001", "limit=x"):
        refused = await _json(await client.get(f"/api/v1/devices?{bad}", headers=headers), 400)
        assert refused["field"] == "limit", refused
