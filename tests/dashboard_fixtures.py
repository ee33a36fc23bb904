"""Shared by the dashboard tests: a resolver, its dashboard app in a TestClient, some accounts."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient, TestServer

from classguard.web import dashboard_context
from dashboard import auth
from dashboard.app import init_app
from store.records import User

PASSWORD = "correct horse battery"


def quick_user(name: str, role: str, classes: tuple[str, ...] = ()) -> User:
    """A user whose hash is cheap to check (the tests log in many times)."""
    return User(name=name, role=role, classes=classes, created_at=time.time(),
                password_hash=auth.hash_password(PASSWORD, n=2 ** 10))


@dataclass
class Dashboard:
    client: TestClient
    resolver: object
    token: str
    throttle: auth.Throttle

    async def login(self, name: str, password: str = PASSWORD) -> str:
        """Log in; the CSRF token of the new session."""
        response = await self.client.post("/api/v1/login", json={"name": name, "password": password})
        assert response.status == 200, await response.text()
        return (await response.json())["csrf_token"]

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def dashboard(make_resolver, resolver_settings):
    async with open_dashboard(make_resolver, settings=resolver_settings) as opened:
        yield opened


@contextlib.asynccontextmanager
async def open_dashboard(make_resolver, **arguments):
    """A resolver (`arguments` as make_resolver takes them) with its dashboard app in a test
    client, three users and a token; on leaving, every status it answered must be documented."""
    resolver = await make_resolver(**arguments)
    store = resolver.service.store
    await store.put_user(quick_user("alice", "admin"), actor="test", action="user.add")
    await store.put_user(quick_user("tom", "teacher", ("pupils",)), actor="test", action="user.add")
    await store.put_user(quick_user("sam", "teacher", ("staff",)), actor="test", action="user.add")
    token, _record = await auth.create_token(store, "ci", actor="test")
    now = [0.0]
    throttle = auth.Throttle(free=3, base=1.0, clock=lambda: now[0])
    throttle.now = now  # tests move the throttle's clock
    app = init_app(dashboard_context(resolver.service, throttle=throttle))
    seen: list[tuple[str, str, int]] = []

    async def record(request, response) -> None:
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical.startswith("/api/"):  # not the pages
            seen.append((request.method.lower(), resource.canonical, response.status))

    app.on_response_prepare.append(record)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Dashboard(client, resolver, token, throttle)
    finally:
        await client.close()
    undocumented = sorted(set(seen) - documented_statuses())
    assert not undocumented, f"answers the OpenAPI document does not list: {undocumented}"


def documented_statuses() -> set[tuple[str, str, int]]:
    from dashboard.openapi import document

    return {(method, path, int(status))
            for path, item in document()["paths"].items()
            for method, operation in item.items() if method != "parameters"
            for status in operation["responses"]}
