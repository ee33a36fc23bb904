"""Accounts and the REST API with the Redis store (SPEC §7): what the CLI writes goes to the Redis
the config names (or fails clearly when it is away), every instance on that Redis accepts the same
login, session and token, and a device enrolled through the API is served on its class."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import dns.asyncquery
import dns.message
import pytest

from classguard.config import DOH_DEFAULTS
from tests.conftest import ede
from tests.redis_server import MISSING_REASON, REDIS_SERVER, RedisServer
from tests.serving import ask, cli, free_port, start_server, write_school

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=MISSING_REASON)

PASSWORD = "a long enough password"


def school(folder, upstream_url: str, redis_url: str) -> tuple[int, str]:
    """A school folder whose config names the Redis store and a dashboard: (DNS port, API URL)."""
    folder.mkdir()
    port = write_school(folder, upstream_url)
    dashboard = free_port()
    with open(folder / "classguard.yaml", "a") as config:
        config.write(f"store: {redis_url}\ndashboard: {{listen: \"127.0.0.1:{dashboard}\"}}\n")
    return port, f"http://127.0.0.1:{dashboard}/api/v1"


async def answered(http: aiohttp.ClientSession, url: str) -> None:
    """Wait for the dashboard of a server that has just started (it comes up after DNS)."""
    for _ in range(100):
        try:
            async with http.get(url + "/openapi.json") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"no dashboard on {url}")


async def status(http: aiohttp.ClientSession, method: str, url: str, **kwargs) -> int:
    async with http.request(method, url, **kwargs) as response:
        await response.read()
        return response.status


async def test_cli_accounts_live_in_redis_and_every_instance_accepts_them(tmp_path, upstream):
    redis = RedisServer(tmp_path / "redis")
    a_port, a_api = school(tmp_path / "a", upstream.url, redis.url)
    b_port, b_api = school(tmp_path / "b", upstream.url, redis.url)

    # Redis not running: the CLI says so in one line, and writes nothing anywhere else
    failed = await cli(tmp_path / "a", "user", "add", "alice", "--role", "admin",
                       "--password-stdin", stdin=PASSWORD + "\n")
    assert failed.returncode == 1
    assert "is unreachable" in failed.stderr and "`store:`" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert not (tmp_path / "a" / "state").exists()

    redis.start()
    servers = []
    try:
        for args in (("user", "add", "alice", "--role", "admin"),
                     ("user", "add", "tom", "--role", "teacher", "--class", "pupils")):
            added = await cli(tmp_path / "a", *args, "--password-stdin", stdin=PASSWORD + "\n")
            assert added.returncode == 0, added.stderr
        created = await cli(tmp_path / "a", "token", "create", "ci")
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        assert not (tmp_path / "a" / "state" / "auth.json").exists()  # Redis, not the files
        assert redis.command("EXISTS", "classguard:user:alice").strip() == b":1"

        servers = [await start_server(tmp_path / "a", a_port),
                   await start_server(tmp_path / "b", b_port)]
        async with aiohttp.ClientSession() as http:
            for api in (a_api, b_api):
                await answered(http, api)
            bearer = {"Authorization": f"Bearer {token}"}
            assert await status(http, "GET", b_api + "/classes", headers=bearer) == 200

            # a session opened on A is good on B: sessions live in Redis too
            async with http.post(a_api + "/login", json={"name": "tom", "password": PASSWORD}) as login:
                assert login.status == 200, await login.text()
                cookie = {"Cookie": f"classguard_session={login.cookies['classguard_session'].value}"}
                csrf = (await login.json())["csrf_token"]
            http.cookie_jar.clear()
            async with http.post(b_api + "/classes/pupils/pause", json={"minutes": 5},
                                 headers={**cookie, "X-CSRF-Token": csrf}) as paused:
                assert paused.status == 201, await paused.text()
            # ... and the pause made through B reaches the DNS path of both within a second
            started = time.monotonic()
            for port in (b_port, a_port):
                while ede(await ask(port, "example.com", "127.0.0.2")) != [(15, "paused")]:
                    assert time.monotonic() - started < 1.0, f"not paused on port {port} in 1 s"
                    await asyncio.sleep(0.02)
            assert await status(http, "GET", b_api + "/classes/staff", headers=cookie) == 403

            # failed logins counted through A delay the next attempt through B (Redis keeps them)
            for _ in range(3):
                assert await status(http, "POST", a_api + "/login",
                                    json={"name": "alice", "password": "a guess"}) == 401
            async with http.post(b_api + "/login", json={"name": "alice", "password": PASSWORD}) as late:
                assert late.status == 429 and int(late.headers["Retry-After"]) >= 1
            assert await status(http, "POST", b_api + "/login",
                                json={"name": "tom", "password": PASSWORD}) == 200  # another account
            http.cookie_jar.clear()

            # an account disabled through B: its session made on A stops on both at once
            async with http.post(a_api + "/login", json={"name": "tom", "password": PASSWORD}) as login:
                other = {"Cookie": f"classguard_session={login.cookies['classguard_session'].value}"}
            http.cookie_jar.clear()
            assert await status(http, "GET", a_api + "/session", headers=other) == 200
            assert await status(http, "PATCH", b_api + "/users/tom", headers=bearer,
                                json={"disabled": True, "language": "en"}) == 200
            for api in (a_api, b_api):
                assert await status(http, "GET", api + "/session", headers=other) == 401
            listed = await cli(tmp_path / "a", "user", "list")
            assert "tom\tteacher\tpupils\tdisabled" in listed.stdout.splitlines(), listed.stdout
            async with http.get(a_api + "/users/tom", headers=bearer) as read:
                assert (await read.json())["language"] == "en"
            assert await status(http, "PATCH", a_api + "/users/tom", headers=bearer,
                                json={"disabled": False}) == 200
            # removed through A and made again: a session of the removed account stays dead
            async with http.post(b_api + "/login", json={"name": "tom", "password": PASSWORD}) as login:
                fresh = {"Cookie": f"classguard_session={login.cookies['classguard_session'].value}"}
            http.cookie_jar.clear()
            assert await status(http, "GET", a_api + "/session", headers=fresh) == 200
            assert await status(http, "DELETE", a_api + "/users/tom", headers=bearer) == 204
            assert await status(http, "GET", b_api + "/session", headers=fresh) == 401
            assert await status(http, "POST", b_api + "/users", headers=bearer, json={
                "name": "tom", "role": "teacher", "classes": ["pupils"], "password": PASSWORD}) == 201
            for api in (a_api, b_api):
                assert await status(http, "GET", api + "/session", headers=fresh) == 401

            users = await cli(tmp_path / "b", "user", "list")
            assert users.stdout.splitlines()[1:] == ["alice\tadmin\t-", "tom\tteacher\tpupils"]
            # revoked through the CLI: refused by both at once
            listed = await cli(tmp_path / "b", "token", "list")
            assert listed.returncode == 0 and "ci" in listed.stdout, listed.stderr
            token_id = listed.stdout.splitlines()[1].split("\t")[0]
            revoked = await cli(tmp_path / "b", "token", "revoke", token_id)
            assert revoked.returncode == 0, revoked.stderr
            for api in (a_api, b_api):
                assert await status(http, "GET", api + "/classes", headers=bearer) == 401

            # a password reset through the CLI ends tom's session everywhere
            reset = await cli(tmp_path / "b", "user", "reset", "tom", "--password-stdin",
                              stdin="another long password\n")
            assert reset.returncode == 0, reset.stderr
            for api in (a_api, b_api):
                assert await status(http, "GET", api + "/session", headers=cookie) == 401
        for server in servers:
            await server.stop()
        servers = []
    finally:
        for server in servers:
            if server.process.returncode is None:
                server.process.terminate()
                await server.process.wait()
        redis.stop()


async def test_a_device_enrolled_through_the_api_is_served_on_its_class(tmp_path, make_resolver):
    from dashboard import auth

    with RedisServer(tmp_path / "redis") as redis:
        resolver = await make_resolver(settings={
            "store": redis.url, "dashboard": {"listen": "127.0.0.1:0"},
            "doh": {**DOH_DEFAULTS, "listen": "127.0.0.1:0"}})
        service = resolver.service
        token, _record = await auth.create_token(service.store, "mdm", actor="test")
        host, port = service.dashboard.address
        api = f"http://{host}:{port}/api/v1"

        async def ask(name: str, device_token: str) -> dns.message.Message:
            query = dns.message.make_query(name, "A", use_edns=0)
            return await dns.asyncquery.https(query, f"{service.doh.url}/{device_token}",
                                              source="127.0.0.1", timeout=5)

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.post(api + "/devices", json={"id": "tablet-7", "class": "pupils"}) as response:
                assert response.status == 201, await response.text()
                enrolled = await response.json()
            assert enrolled["doh_url"].endswith("/" + enrolled["token"])
            assert enrolled["token"] not in redis.command("HGET", "classguard:policy", "text").decode()
            blocked = await ask("adult.example", enrolled["token"])
            assert ede(blocked) == [(15, "category:adult")]  # the pupils' rule, at home

            # moved to staff (no category blocked): the same token now answers as staff
            async with http.put(api + "/devices/tablet-7", json={"class": "staff"}) as response:
                assert response.status == 200, await response.text()
            deadline = time.monotonic() + 5
            while ede(await ask("adult.example", enrolled["token"])):
                assert time.monotonic() < deadline, "the move did not reach the DoH path"
                await asyncio.sleep(0.05)

            # a rotation: the old token is refused (403), the new one served
            async with http.post(api + "/devices/tablet-7/rotate") as response:
                rotated = await response.json()
            assert rotated["token"] != enrolled["token"]
            with pytest.raises(ValueError, match="403"):
                await ask("example.com", enrolled["token"])
            assert (await ask("example.com", rotated["token"])).answer

            # erased through the API: gone from the policy in Redis, its token refused
            async with http.post(api + "/devices/tablet-7/erase") as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["store"]["device_record"]
            assert "tablet-7" not in redis.command("HGET", "classguard:policy", "text").decode()
            deadline = time.monotonic() + 5
            while True:
                try:
                    await ask("example.com", rotated["token"])
                except ValueError as refused:
                    assert "403" in str(refused)
                    break
                assert time.monotonic() < deadline, "the erased device is still served"
                await asyncio.sleep(0.05)


async def test_the_api_says_503_with_the_reason_while_redis_is_away(tmp_path, upstream):
    """Every authenticated request answered 500 "internal error" while Redis was away (issue 24):
    503, the reason and Retry-After now, and DNS keeps answering."""
    redis = RedisServer(tmp_path / "redis").start()
    port, api = school(tmp_path / "a", upstream.url, redis.url)
    created = await cli(tmp_path / "a", "token", "create", "ci")
    assert created.returncode == 0, created.stderr
    bearer = {"Authorization": f"Bearer {created.stdout.strip()}"}
    server = await start_server(tmp_path / "a", port)
    try:
        async with aiohttp.ClientSession() as http:
            await answered(http, api)
            assert await status(http, "GET", api + "/classes", headers=bearer) == 200
            redis.stop()
            async with http.get(api + "/classes", headers=bearer) as response:
                body = await response.json()
                assert response.status == 503, body
                assert "unreachable" in body["error"] and response.headers["Retry-After"] == "5"
            assert ede(await ask(port, "adult.example", "127.0.0.2")) == [(15, "category:adult")]
    finally:
        await server.stop()
        redis.stop()
