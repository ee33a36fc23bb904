"""Managing dashboard accounts (SPEC §1, §3, §6): /api/v1/users and the Users page change a role,
a teacher's classes, a language, disable or remove an account, all through the rules of
`classguard user add` (dashboard.auth), audited with the before and after, never a hash; a
disabled or removed account's sessions stop at the next request."""

from __future__ import annotations

import json

import aiohttp

from tests.dashboard_fixtures import PASSWORD, dashboard  # noqa: F401 (a fixture)


async def _session_of(dashboard, name: str) -> dict[str, str]:
    """Log `name` in from a client of its own: the headers its requests carry."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(dashboard.client.make_url("/api/v1/login"),
                             json={"name": name, "password": PASSWORD}) as response:
            assert response.status == 200, await response.text()
            cookie = response.cookies["classguard_session"].value
            csrf = (await response.json())["csrf_token"]
    return {"Cookie": f"classguard_session={cookie}", "X-CSRF-Token": csrf}


async def _status(dashboard, method: str, path: str, headers: dict[str, str], **kwargs) -> int:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.request(method, dashboard.client.make_url(path), headers=headers,
                                allow_redirects=False, **kwargs) as response:
            await response.read()
            return response.status


async def test_the_api_lists_adds_changes_and_removes_users_without_a_hash(dashboard):
    client, admin = dashboard.client, dashboard.bearer()
    listed = await (await client.get("/api/v1/users", headers=admin)).json()
    assert [user["name"] for user in listed["users"]] == ["alice", "sam", "tom"]
    assert "scrypt" not in json.dumps(listed) and "password_hash" not in json.dumps(listed)

    response = await client.post("/api/v1/users", headers=admin, json={
        "name": "lea", "role": "teacher", "classes": ["staff"], "password": PASSWORD, "language": "en"})
    assert response.status == 201, await response.text()
    assert (await response.json())["language"] == "en"
    again = await client.post("/api/v1/users", headers=admin, json={
        "name": "lea", "role": "admin", "password": PASSWORD})
    assert again.status == 409

    # the same rules as the CLI, the field at fault named
    for body, field in (({"classes": ["nope"]}, "classes"), ({"role": "pupil"}, "role"),
                        ({"classes": []}, "classes"), ({"language": "de"}, "language"),
                        ({"password": "short"}, "password"), ({"disabled": "yes"}, "disabled"),
                        ({"classes": [{"a": 1}]}, "classes"), ({"colour": "red"}, "colour")):
        response = await client.patch("/api/v1/users/lea", headers=admin, json=body)
        assert response.status == 400, body
        assert (await response.json())["field"] == field, body

    response = await client.patch("/api/v1/users/lea", headers=admin,
                                  json={"classes": ["pupils", "staff"], "language": "fr"})
    assert response.status == 200, await response.text()
    changed = await response.json()
    assert changed["classes"] == ["pupils", "staff"] and changed["language"] == "fr"
    [entry] = await dashboard.resolver.service.store.audit(1)
    [token] = await dashboard.resolver.service.store.tokens()
    assert entry.action == "user.change" and entry.actor == f"API token {token.id} (ci)"
    assert entry.before == "user lea, role teacher, classes staff, language en"
    assert entry.after == "user lea, role teacher, classes pupils, staff, language fr"

    # a teacher made admin keeps no class list (an admin sees every class)
    promoted = await (await client.patch("/api/v1/users/lea", headers=admin,
                                         json={"role": "admin"})).json()
    assert promoted["role"] == "admin" and promoted["classes"] == []

    assert (await client.delete("/api/v1/users/lea", headers=admin)).status == 204
    assert (await client.get("/api/v1/users/lea", headers=admin)).status == 404
    assert (await client.delete("/api/v1/users/lea", headers=admin)).status == 404
    [entry] = await dashboard.resolver.service.store.audit(1)
    assert entry.action == "user.remove" and entry.before.startswith("user lea, role admin")
    assert "scrypt$" not in repr(await dashboard.resolver.service.store.audit(20))


async def test_a_teacher_may_not_manage_users(dashboard):
    tom = await _session_of(dashboard, "tom")
    for method, path, body in (("GET", "/api/v1/users", None), ("GET", "/api/v1/users/sam", None),
                               ("PATCH", "/api/v1/users/tom", {"classes": ["staff"]}),
                               ("DELETE", "/api/v1/users/sam", None),
                               ("POST", "/api/v1/users", {"name": "x", "role": "admin",
                                                          "password": PASSWORD})):
        assert await _status(dashboard, method, path, tom, json=body) == 403, (method, path)
    assert (await dashboard.resolver.service.store.get_user("tom")).classes == ("pupils",)


async def test_disabling_or_removing_ends_the_sessions_at_once(dashboard):
    client, admin, store = dashboard.client, dashboard.bearer(), dashboard.resolver.service.store
    tom, sam = await _session_of(dashboard, "tom"), await _session_of(dashboard, "sam")
    assert await _status(dashboard, "GET", "/api/v1/classes", tom) == 200

    assert (await client.patch("/api/v1/users/tom", headers=admin, json={"disabled": True})).status == 200
    assert await _status(dashboard, "GET", "/api/v1/classes", tom) == 401
    assert await _status(dashboard, "GET", "/classes", tom) == 303  # the pages: to the login form
    refused = await _status(dashboard, "POST", "/api/v1/login", {},
                            json={"name": "tom", "password": PASSWORD})
    assert refused == 401  # like a wrong password: nothing tells a guesser the account exists
    # enabled again, the old session stays closed; a new login works
    assert (await client.patch("/api/v1/users/tom", headers=admin, json={"disabled": False})).status == 200
    assert await _status(dashboard, "GET", "/api/v1/classes", tom) == 401
    assert await _status(dashboard, "GET", "/api/v1/classes", await _session_of(dashboard, "tom")) == 200
    [entry] = await store.audit(1)
    assert (entry.before, entry.after) == ("user tom, role teacher, classes pupils, disabled",
                                           "user tom, role teacher, classes pupils")

    assert await _status(dashboard, "GET", "/api/v1/classes", sam) == 200
    assert (await client.delete("/api/v1/users/sam", headers=admin)).status == 204
    assert await _status(dashboard, "GET", "/api/v1/classes", sam) == 401
    # made again under the same name: the removed account's session does not come back to life
    assert (await client.post("/api/v1/users", headers=admin, json={
        "name": "sam", "role": "admin", "password": PASSWORD})).status == 201
    assert await _status(dashboard, "GET", "/api/v1/classes", sam) == 401


async def test_the_last_enabled_admin_stays(dashboard):
    client, admin = dashboard.client, dashboard.bearer()
    for method, body in (("PATCH", {"disabled": True}), ("PATCH", {"role": "teacher",
                                                                    "classes": ["staff"]}),
                         ("DELETE", None)):
        response = await client.request(method, "/api/v1/users/alice", headers=admin, json=body)
        assert response.status == 400, (method, body)
        assert "last enabled admin" in (await response.json())["error"]
    await client.post("/api/v1/users", headers=admin,
                      json={"name": "bob", "role": "admin", "password": PASSWORD})
    assert (await client.patch("/api/v1/users/alice", headers=admin,
                               json={"disabled": True})).status == 200
