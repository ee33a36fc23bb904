"""Accounts: passwords, sessions and their cookie, CSRF, login throttling, API tokens, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from classguard.config import ConfigError, parse_config
from dashboard import auth
from tests.dashboard_fixtures import PASSWORD, dashboard  # noqa: F401 (a fixture)


def test_password_hash_is_scrypt_and_salted():
    first, second = auth.hash_password("a long password", n=2 ** 10), \
        auth.hash_password("a long password", n=2 ** 10)
    assert first.startswith("scrypt$1024$8$1$") and first != second
    assert auth.verify_password("a long password", first)
    assert not auth.verify_password("a long passwore", first)
    assert not auth.verify_password("x", "garbage")


async def test_login_sets_a_hardened_session_cookie(dashboard):
    response = await dashboard.client.post("/api/v1/login",
                                           json={"name": "alice", "password": PASSWORD})
    assert response.status == 200
    body = await response.json()
    assert body["role"] == "admin" and body["csrf_token"]
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # public_url is not https here
    assert "password" not in json.dumps(body)
    session = await (await dashboard.client.get("/api/v1/session")).json()
    assert session == {"name": "alice", "role": "admin", "classes": [], "via": "session",
                       "csrf_token": body["csrf_token"]}


async def test_wrong_password_and_unknown_user_look_the_same(dashboard):
    for name, password in (("alice", "wrong password"), ("nobody", PASSWORD)):
        response = await dashboard.client.post("/api/v1/login", json={"name": name, "password": password})
        assert response.status == 401
        assert (await response.json())["error"] == "wrong name or password"


async def test_nothing_without_credentials(dashboard):
    response = await dashboard.client.get("/api/v1/classes")
    assert response.status == 401
    response = await dashboard.client.get("/api/v1/classes",
                                          headers={"Authorization": "Bearer cg_not-a-token"})
    assert response.status == 401
    assert (await dashboard.client.get("/api/v1/openapi.json")).status == 200


async def test_csrf_refused_without_its_token_and_accepted_with_it(dashboard):
    csrf = await dashboard.login("tom")
    pause = "/api/v1/classes/pupils/pause"
    assert (await dashboard.client.post(pause, json={"minutes": 5})).status == 403
    wrong = await dashboard.client.post(pause, json={"minutes": 5}, headers={"X-CSRF-Token": "x" * 43})
    assert wrong.status == 403
    assert not dashboard.resolver.service.state.snapshot.overrides
    ok = await dashboard.client.post(pause, json={"minutes": 5}, headers={"X-CSRF-Token": csrf})
    assert ok.status == 201, await ok.text()
    cancelled = await dashboard.client.delete(pause, data={"csrf_token": csrf})  # a form field
    assert cancelled.status == 200, await cancelled.text()


async def test_logout_is_post_only_and_ends_the_session(dashboard):
    csrf = await dashboard.login("alice")
    assert (await dashboard.client.get("/api/v1/logout")).status == 405
    assert (await dashboard.client.post("/api/v1/logout")).status == 403  # no CSRF token
    response = await dashboard.client.post("/api/v1/logout", headers={"X-CSRF-Token": csrf})
    assert response.status == 204
    assert (await dashboard.client.get("/api/v1/session")).status == 401


async def test_a_stolen_cookie_value_is_useless_after_logout(dashboard):
    csrf = await dashboard.login("alice")
    cookie = dashboard.client.session.cookie_jar.filter_cookies(dashboard.client.make_url("/"))
    value = cookie["classguard_session"].value
    await dashboard.client.post("/api/v1/logout", headers={"X-CSRF-Token": csrf})
    dashboard.client.session.cookie_jar.clear()
    response = await dashboard.client.get("/api/v1/session", cookies={"classguard_session": value})
    assert response.status == 401
    stored = await dashboard.resolver.service.store.tokens()
    assert all(value not in json.dumps(record.__repr__()) for record in stored)


async def test_login_throttled_per_account_and_address_with_growing_delays(dashboard):
    client, throttle = dashboard.client, dashboard.throttle
    for _ in range(3):
        response = await client.post("/api/v1/login", json={"name": "tom", "password": "guess"})
        assert response.status == 401
    # The fourth attempt waits 1 s, even with the right password (it is not even checked).
    response = await client.post("/api/v1/login", json={"name": "tom", "password": PASSWORD})
    assert response.status == 429 and response.headers["Retry-After"] == "1"
    # Another account from the same address is not locked.
    assert (await client.post("/api/v1/login", json={"name": "alice", "password": PASSWORD})).status == 200
    throttle.now[0] += 1.0
    assert (await client.post("/api/v1/login", json={"name": "tom", "password": "guess"})).status == 401
    response = await client.post("/api/v1/login", json={"name": "tom", "password": PASSWORD})
    assert response.status == 429 and response.headers["Retry-After"] == "2"  # it grows
    # The same account from another address is not locked either.
    assert await throttle.retry_after("tom", "192.0.2.7") == 0
    throttle.now[0] += 2.0
    assert (await client.post("/api/v1/login", json={"name": "tom", "password": PASSWORD})).status == 200
    assert await throttle.retry_after("tom", "127.0.0.1") == 0  # success forgets the failures


BEHIND_PROXY = {"dashboard": {"listen": "127.0.0.1:0", "trusted_proxies": ("127.0.0.1/32",)}}


def forwarded(*hops: str) -> dict[str, str]:
    return {"X-Forwarded-For": ", ".join(hops)}


@pytest.mark.parametrize("resolver_settings", [BEHIND_PROXY])
async def test_behind_a_trusted_proxy_the_throttle_counts_the_forwarded_client(dashboard):
    """Every user reaches the dashboard through the TLS proxy (127.0.0.1 here): a guesser must
    not lock a teacher out of every address the proxy forwards."""
    client, throttle = dashboard.client, dashboard.throttle
    guesser, teacher = "203.0.113.9", "198.51.100.20"
    for _ in range(3):
        response = await client.post("/api/v1/login", json={"name": "tom", "password": "guess"},
                                     headers=forwarded(guesser))
        assert response.status == 401
    response = await client.post("/api/v1/login", json={"name": "tom", "password": PASSWORD},
                                 headers=forwarded(guesser))
    assert response.status == 429
    assert await throttle.retry_after("tom", guesser) > 0
    assert await throttle.retry_after("tom", "127.0.0.1") == 0
    # The teacher, through the same proxy, logs in (the form and the API share the throttle).
    response = await client.post("/login", data={"name": "tom", "password": PASSWORD},
                                 headers=forwarded(teacher), allow_redirects=False)
    assert response.status == 303
    # A hop the client wrote itself (left of what the proxy saw) changes nothing: the rightmost
    # hop that is not a trusted proxy is the client.
    response = await client.post("/api/v1/login", json={"name": "tom", "password": PASSWORD},
                                 headers=forwarded(teacher, guesser))
    assert response.status == 429
    response = await client.post("/api/v1/login", json={"name": "tom", "password": PASSWORD},
                                 headers=forwarded(guesser, teacher, "127.0.0.1"))
    assert response.status == 200


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(dashboard):
    """Without dashboard.trusted_proxies (the default) the header would let a guesser pick a new
    address for each guess: it is ignored, and the peer's address is counted."""
    client, throttle = dashboard.client, dashboard.throttle
    for index in range(3):
        response = await client.post("/api/v1/login", json={"name": "tom", "password": "guess"},
                                     headers=forwarded(f"203.0.113.{index + 1}"))
        assert response.status == 401
    response = await client.post("/api/v1/login", json={"name": "tom", "password": PASSWORD},
                                 headers=forwarded("203.0.113.99"))
    assert response.status == 429
    assert await throttle.retry_after("tom", "127.0.0.1") > 0
    assert await throttle.retry_after("tom", "203.0.113.1") == 0


def test_dashboard_trusted_proxies_are_checked(tmp_path):
    config = parse_config({"dashboard": {"listen": "127.0.0.1:8080",
                                         "trusted_proxies": ["10.0.0.5", "fd00::/64"]}},
                          path=tmp_path / "classguard.yaml")
    assert config.dashboard["trusted_proxies"] == ("10.0.0.5/32", "fd00::/64")
    assert config.dashboard["listen"] == "127.0.0.1:8080"
    default = parse_config({"dashboard": {"listen": "127.0.0.1:8080"}}, path=tmp_path / "c.yaml")
    assert default.dashboard["trusted_proxies"] == ()
    with pytest.raises(ConfigError, match=r"dashboard\.trusted_proxies: '10\.0\.0\.1/8' has host "
                                          r"bits set; did you mean '10\.0\.0\.0/8'\?"):
        parse_config({"dashboard": {"trusted_proxies": ["10.0.0.1/8"]}}, path=tmp_path / "c.yaml")


async def test_api_token_needs_no_csrf_and_can_be_revoked(dashboard):
    response = await dashboard.client.post("/api/v1/classes/pupils/pause", json={"minutes": 2},
                                           headers=dashboard.bearer())
    assert response.status == 201
    store = dashboard.resolver.service.store
    [record] = await store.tokens()
    assert record.sha256 == auth.sha256(dashboard.token) and dashboard.token not in repr(record)
    await auth.revoke_token(store, record.id, actor="test")
    response = await dashboard.client.get("/api/v1/classes", headers=dashboard.bearer())
    assert response.status == 401
    audit = await store.audit(10)
    assert [entry.action for entry in audit][:2] == ["token.revoke", "override.add"]
    assert audit[1].actor == f"API token {record.id} (ci)"


def _cli(tmp_path, *args, stdin=""):
    return subprocess.run([sys.executable, "-m", "classguard.cli", *args], input=stdin, text=True,
                          capture_output=True, cwd=tmp_path, timeout=60)


def test_cli_user_and_token(tmp_path):
    added = _cli(tmp_path, "user", "add", "alice", "--role", "admin", "--password-stdin",
                 stdin="a very long password\n")
    assert added.returncode == 0, added.stderr
    again = _cli(tmp_path, "user", "add", "alice", "--role", "admin", "--password-stdin",
                 stdin="a very long password\n")
    assert again.returncode == 1 and "exists already" in again.stderr
    teacher = _cli(tmp_path, "user", "add", "tom", "--role", "teacher", "--class", "nope",
                   "--password-stdin", stdin="a very long password\n")
    assert teacher.returncode == 1 and "no class 'nope' in the policy (classes: " in teacher.stderr
    teacher = _cli(tmp_path, "user", "add", "tom", "--role", "teacher", "--password-stdin",
                   stdin="a very long password\n")
    assert teacher.returncode == 1 and "a teacher needs at least one --class" in teacher.stderr
    teacher = _cli(tmp_path, "user", "add", "tom", "--role", "teacher", "--class", "local",
                   "--password-stdin", stdin="a very long password\n")
    assert teacher.returncode == 0, teacher.stderr
    short = _cli(tmp_path, "user", "reset", "tom", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 10" in short.stderr
    reset = _cli(tmp_path, "user", "reset", "tom", "--password-stdin", stdin="another long one\n")
    assert reset.returncode == 0, reset.stderr
    token = _cli(tmp_path, "token", "create", "ci")
    assert token.returncode == 0 and token.stdout.startswith("cg_")
    stored = (tmp_path / "classguard-state" / "auth.json").read_text()
    assert token.stdout.strip() not in stored and "another long one" not in stored
    assert auth.sha256(token.stdout.strip()) in stored
    token_id = json.loads(stored)["tokens"][auth.sha256(token.stdout.strip())]["id"]
    revoked = _cli(tmp_path, "token", "revoke", token_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout


async def test_a_password_reset_ends_the_sessions_opened_before(dashboard):
    import dataclasses
    import time

    await dashboard.login("tom")
    assert (await dashboard.client.get("/api/v1/session")).status == 200
    store = dashboard.resolver.service.store
    user = await store.get_user("tom")
    await store.put_user(dataclasses.replace(user, sessions_after=time.time() + 0.001),
                         actor="test", action="user.reset")
    assert (await dashboard.client.get("/api/v1/session")).status == 401


async def test_parallel_guesses_are_throttled_as_if_sent_one_by_one(dashboard):
    """60 wrong passwords for one teacher sent at once all got 401 and no 429: the wait was
    looked at before the password check and the failure counted after it (issue 22)."""
    import asyncio

    guesses = [dashboard.client.post("/api/v1/login", json={"name": "tom", "password": f"guess {n}"})
               for n in range(60)]
    statuses = [response.status for response in await asyncio.gather(*guesses)]
    assert statuses.count(401) <= dashboard.throttle.free, statuses
    assert statuses.count(429) >= 60 - dashboard.throttle.free


async def test_guessing_with_random_account_names_is_throttled_too(dashboard):
    """Random account names were never throttled: one address could make a dozen password
    checks a second for ever (issue 22)."""
    statuses = []
    for n in range(auth.ADDRESS_FREE + 3):
        response = await dashboard.client.post("/api/v1/login",
                                               json={"name": f"nobody{n}", "password": PASSWORD})
        statuses.append(response.status)
    assert statuses[:auth.ADDRESS_FREE] == [401] * auth.ADDRESS_FREE
    assert statuses[-1] == 429
    dashboard.throttle.now[0] += 3600  # and the address is forgiven with time
    response = await dashboard.client.post("/api/v1/login", json={"name": "tom", "password": PASSWORD})
    assert response.status == 200


async def test_a_weak_hash_is_made_again_at_the_next_good_login(dashboard):
    """Hashes made before scrypt's N was raised to OWASP's 2^17 are strengthened on use."""
    store = dashboard.resolver.service.store
    assert not (await store.get_user("tom")).password_hash.startswith(f"scrypt${auth.SCRYPT_N}$")
    assert (await dashboard.client.post("/api/v1/login", json={"name": "tom", "password": PASSWORD})).status == 200
    stronger = (await store.get_user("tom")).password_hash
    assert stronger.startswith(f"scrypt${auth.SCRYPT_N}$8$1$") and auth.SCRYPT_N >= 2 ** 17
    assert auth.verify_password(PASSWORD, stronger) and not auth.needs_rehash(stronger)
    entries = await store.audit(5)
    assert entries[0].action == "user.rehash" and "$" not in entries[0].after


@pytest.mark.parametrize("target", ["/\t/evil.example", "//evil.example", "/\\evil.example",
                                    "https://evil.example/", "/\n/evil.example", "javascript:x",
                                    " //evil.example"])
async def test_login_and_language_redirect_only_inside_this_site(dashboard, target):
    """`/login?next=/%09/evil.example` sent a teacher to //evil.example after logging in, and
    the public POST /language did the same (issue 22)."""
    login = await dashboard.client.post("/login", params={"next": target},
                                        data={"name": "tom", "password": PASSWORD}, allow_redirects=False)
    assert login.status == 303 and login.headers["Location"] == "/"
    language = await dashboard.client.post("/language", data={"language": "fr", "next": target},
                                           allow_redirects=False)
    assert language.status == 303 and language.headers["Location"] == "/"
    kept = await dashboard.client.post("/language", data={"language": "fr", "next": "/classes/pupils?x=1"},
                                       allow_redirects=False)
    assert kept.headers["Location"] == "/classes/pupils?x=1"


async def test_every_answer_carries_the_security_headers(dashboard):
    """No CSP, no frame-ancestors, no nosniff, no Referrer-Policy, no no-store on a page that
    shows a new token, and aiohttp's version in Server (issue 22)."""
    await dashboard.login("alice")
    for path in ("/login", "/", "/api/v1/classes", "/devices", "/no-such-page"):
        response = await dashboard.client.get(path, allow_redirects=False)
        headers = response.headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"
        assert headers["Server"] == "classguard", path
