"""The dashboard maps an error in one place (dashboard/errors.py): raised by a page or by the API,
the same exception gives the same status and message, as a page or as JSON."""

from __future__ import annotations

import html

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from admin.errors import ControlError
from classguard.web import dashboard_context
from common.errors import ClassguardError
from dashboard import auth
from dashboard.app import init_app
from dashboard.errors import Refused
from policies.loader import PolicyError
from store.records import DiskFull, NotFound, StoreUnavailable, VersionConflict

ERRORS = [
    (NotFound("no override 'x1'"), 404, {}),
    (VersionConflict(3, 4), 409, {"version": 4}),
    (ControlError("minutes must be from 1 to 1440"), 400, {}),
    (StoreUnavailable("Redis at 127.0.0.1:1 is unreachable"), 503, {}),
    (DiskFull("the disk under state is full; nothing was changed"), 507, {}),
    (PolicyError(["policy.yaml:3: no category 'gambling'", "policy.yaml:9: bad time"]), 400,
     {"errors": ["policy.yaml:3: no category 'gambling'", "policy.yaml:9: bad time"]}),
    (auth.AccountError("a password has at least 10 characters", field="password",
                       key="password", n=10), 400, {"field": "password"}),
    (Refused(403, "only an admin may do this"), 403, {}),
    (ClassguardError("something refused"), 400, {}),
]


@pytest.fixture
async def raising_app(make_resolver):
    """The dashboard app, plus a page and an API route that raise the exception asked for."""
    resolver = await make_resolver()
    token, _record = await auth.create_token(resolver.service.store, "ci", actor="test")
    raised: list[Exception] = []

    async def boom(request: web.Request) -> web.Response:
        raise raised[0]

    app = init_app(dashboard_context(resolver.service))
    app.router.add_get("/api/v1/boom", boom)
    app.router.add_get("/boom", boom)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, {"Authorization": f"Bearer {token}"}, raised
    finally:
        await client.close()


@pytest.mark.parametrize(("error", "status", "extra"), ERRORS, ids=lambda item: type(item).__name__)
async def test_an_error_gives_the_same_answer_from_a_page_and_from_the_api(
        raising_app, error, status, extra):
    client, bearer, raised = raising_app
    raised.append(error)
    message = error.errors[0] if isinstance(error, PolicyError) else str(error)

    api = await client.get("/api/v1/boom", headers=bearer)
    assert api.status == status
    assert await api.json() == {"error": message, **extra}

    page = await client.get("/boom", headers=bearer)
    assert page.status == status
    assert page.content_type == "text/html"
    assert html.escape(message) in await page.text()


async def test_a_version_conflict_names_the_current_version_in_its_etag(raising_app):
    client, bearer, raised = raising_app
    raised.append(VersionConflict(3, 7))
    response = await client.get("/api/v1/boom", headers=bearer)
    assert response.status == 409 and response.headers["ETag"] == '"7"'


async def test_an_unexpected_exception_is_a_500_without_its_text_on_the_wire(raising_app, caplog):
    client, bearer, raised = raising_app
    raised.append(RuntimeError("secret internals"))
    api = await client.get("/api/v1/boom", headers=bearer)
    page = await client.get("/boom", headers=bearer)
    assert (api.status, page.status) == (500, 500)
    assert await api.json() == {"error": "internal error; see the server's log"}
    assert "secret internals" not in await page.text()
    assert "GET /boom failed" in caplog.text


async def test_without_a_login_the_api_says_401_and_a_page_sends_to_the_login(raising_app):
    client, _bearer, raised = raising_app
    raised.append(NotFound("never reached"))
    api = await client.get("/api/v1/boom")
    assert api.status == 401 and "log in first" in (await api.json())["error"]
    page = await client.get("/boom", allow_redirects=False)
    assert page.status == 303 and page.headers["Location"] == "/login?next=/boom"
