"""Accounts and credentials: scrypt password hashes, sessions, CSRF, login throttling, API tokens."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from common.errors import ClassguardError
from dashboard.i18n import LANGUAGES
from store.protocol import CountsLoginFailures, Store
from store.records import ApiToken, NotFound, Session, User, describe_user

ROLES = ("admin", "teacher")
SESSION_SECONDS = 12 * 3600  # a school day, then log in again
MIN_PASSWORD = 10

# scrypt (RFC 7914) at OWASP's minimum, N=2^17, r=8, p=1: 128 MiB and about 0.3 s a check. A
# hash made with a smaller N (before this) is made again at the account's next good login.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 17, 8, 1
SCRYPT_MAXMEM = 160 * 1024 * 1024  # 128 * N * r, and room
# Password checks at once in one process (each holds 128 MiB and a core for ~0.3 s), and one at a
# time per client address: more are answered 429 at once, never queued.
MAX_PASSWORD_CHECKS = 2
# Failed logins from one address, whatever the account names, before that address waits too:
# guessing with random account names is throttled like guessing one account's password.
ADDRESS_FREE = 20
ANY_ACCOUNT = "\0any account"  # the throttle's account for an address's failures


class AuthError(ClassguardError):
    """A credential was refused; the message is safe to show."""


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=SCRYPT_MAXMEM, dklen=32)
    encode = base64.b64encode
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n),
                                r=int(r), p=int(p), maxmem=SCRYPT_MAXMEM, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def needs_rehash(stored: str) -> bool:
    """Whether a stored hash is weaker than what hash_password makes now."""
    try:
        kind, n, r, p, _salt, _digest = stored.split("$")
    except ValueError:
        return True
    return kind != "scrypt" or int(n) < SCRYPT_N or (int(r), int(p)) != (SCRYPT_R, SCRYPT_P)


@functools.cache
def _dummy_hash() -> str:
    """A password check costs as much for an unknown account as for a known one (made once,
    when first needed: not at import, which every command does)."""
    return hash_password(secrets.token_hex(16))


class AccountError(AuthError):
    """An account change refused by the rules below. `field` is the form field or JSON key at
    fault; `key` and `values` let the pages say it in the user's language (`account.KEY`)."""

    def __init__(self, message: str, *, field: str, key: str, **values: object) -> None:
        super().__init__(message)
        self.field, self.key, self.values = field, key, values


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password has at least {MIN_PASSWORD} characters", field="password",
                           key="password", n=MIN_PASSWORD)


def check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
        raise AccountError("a user name is 1 to 64 letters, digits or . _ - @", field="name",
                           key="name")


def check_role_and_classes(role: object, classes: Iterable[object],
                           known_classes: Collection[str] | None) -> tuple[str, ...]:
    """The one check of a role and its classes, for the CLI, the API and the pages: the classes
    an account of this role keeps (none for an admin, who sees every class). `known_classes`:
    the policy's classes, which a teacher's must be among (None: not checked here)."""
    if role not in ROLES:
        raise AccountError(f"role must be {' or '.join(ROLES)}", field="role", key="role")
    listed = tuple(classes)
    if not all(isinstance(item, str) for item in listed):
        raise AccountError("classes is a list of class ids", field="classes", key="classes_type")
    chosen = tuple(dict.fromkeys(listed))  # in order, once each
    if role == "admin":
        return ()
    if not chosen:
        raise AccountError("a teacher needs at least one class", field="classes",
                           key="teacher_needs_class")
    missing = [item for item in chosen if known_classes is not None and item not in known_classes]
    if missing:
        raise AccountError(f"no class {missing[0]!r} in the policy", field="classes",
                           key="no_class", id=missing[0])
    return chosen


def check_language(language: object) -> str:
    """"" (the default, French) or a language the dashboard speaks."""
    if language != "" and language not in LANGUAGES:
        raise AccountError(f"language must be {' or '.join(LANGUAGES)} (or \"\" for the default)",
                           field="language", key="language")
    return str(language)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_user(name: str, role: str, classes: Iterable[str], password: str, *,
              known_classes: Collection[str] | None = None, language: str = "") -> User:
    check_name(name)
    kept = check_role_and_classes(role, classes, known_classes)
    language = check_language(language)
    check_password_rules(password)
    return User(name=name, role=role, classes=kept, password_hash=hash_password(password),
                created_at=time.time(), language=language)


def _active_admin(user: User | None) -> bool:
    return user is not None and user.role == "admin" and not user.disabled


async def _keep_an_admin(store: Store, before: User, after: User | None) -> None:
    """Refuse the change that would leave no enabled admin: nobody could manage accounts."""
    if _active_admin(before) and not _active_admin(after):
        others = [user for user in await store.users() if user.name != before.name]
        if not any(_active_admin(user) for user in others):
            raise AccountError(f"{before.name} is the last enabled admin", field="role",
                               key="last_admin", name=before.name)


async def change_user(store: Store, name: str, *, actor: str,
                      known_classes: Collection[str] | None, role: str | None = None,
                      classes: Iterable[str] | None = None, language: str | None = None,
                      disabled: bool | None = None, password: str | None = None) -> User:
    """Change an account's role, classes, language, state or password (None: unchanged),
    checked like `make_user` and audited with the before and after (never a hash). Disabling
    or a new password ends the account's sessions on every instance at once: the session
    check reads the account on each request (`sessions_after`)."""

    before = await store.get_user(name)
    if before is None:
        raise NotFound(f"no user {name!r}")
    role = before.role if role is None else role
    if known_classes is not None:  # a class the account has kept since it left the policy
        known_classes = {*known_classes, *before.classes}  # is no new error: not refused here
    kept = check_role_and_classes(role, before.classes if classes is None else classes,
                                  known_classes)
    after = dataclasses.replace(before, role=role, classes=kept)
    if language is not None:
        after = dataclasses.replace(after, language=check_language(language))
    if disabled is not None:
        if not isinstance(disabled, bool):
            raise AccountError("disabled is true or false", field="disabled", key="disabled")
        after = dataclasses.replace(after, disabled=disabled)
        if disabled and not before.disabled:
            after = dataclasses.replace(after, sessions_after=time.time())
    if password is not None:
        check_password_rules(password)
        after = dataclasses.replace(after, password_hash=await asyncio.to_thread(
            hash_password, password), sessions_after=time.time())
    if after == before:
        return before
    await _keep_an_admin(store, before, after)
    action = "user.reset" if password is not None and dataclasses.replace(
        after, password_hash=before.password_hash, sessions_after=before.sessions_after) == before \
        else "user.change"
    return await store.put_user(after, actor=actor, action=action, before=describe_user(before))


async def remove_user(store: Store, name: str, *, actor: str) -> User:
    """Delete an account (audited); its sessions stop working at once (no account, no session)."""

    before = await store.get_user(name)
    if before is None:
        raise NotFound(f"no user {name!r}")
    await _keep_an_admin(store, before, None)
    await store.delete_user(name, actor=actor)
    return before


async def authenticate(store: Store, name: str, password: str) -> User | None:

    user = await store.get_user(name)
    stored = user.password_hash if user is not None else await asyncio.to_thread(_dummy_hash)
    ok = await asyncio.to_thread(verify_password, password, stored)  # off the event loop
    # a disabled account is refused like a wrong password: nothing tells a guesser it exists
    if not ok or user is None or user.disabled:
        return None
    if needs_rehash(user.password_hash):
        stronger = await asyncio.to_thread(hash_password, password)
        user = dataclasses.replace(user, password_hash=stronger)
        await store.put_user(user, actor=user.name, action="user.rehash",
                             before=describe_user(user))
    return user


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    user: User | None  # None: refused (wrong name or password, or not checked)
    retry_after: float = 0.0  # > 0: not checked; the client waits this long (429)


_checking: set[str] = set()  # client addresses whose password check is under way


async def check_login(throttle: Throttle | StoreThrottle, store: Store, name: str, password: str,
                      address: str) -> LoginOutcome:
    """A login attempt, as POST /api/v1/login and the login page make it: refused before any
    password check while the pair (account, address) or the address waits, or while this address
    or too many others already have a check under way; the failure counted before the check, so
    that guesses sent in parallel see it."""
    wait = max(await throttle.retry_after(name, address),
               await throttle.retry_after(ANY_ACCOUNT, address, free=ADDRESS_FREE))
    if wait > 0:
        return LoginOutcome(None, wait)
    if address in _checking or len(_checking) >= MAX_PASSWORD_CHECKS:
        return LoginOutcome(None, 1.0)
    _checking.add(address)
    try:
        await throttle.failed(name, address)
        user = await authenticate(store, name, password)
    finally:
        _checking.discard(address)
    if user is None:
        await throttle.failed(ANY_ACCOUNT, address, free=ADDRESS_FREE)
        return LoginOutcome(None)
    await throttle.succeeded(name, address)
    return LoginOutcome(user)


# --- sessions ----------------------------------------------------------------------------------


async def new_session(store: Store, user: User) -> tuple[str, Session]:
    """(cookie value, session); only the value's SHA-256 is stored."""
    value = secrets.token_urlsafe(32)
    session = Session(sha256=sha256(value), user=user.name, csrf=secrets.token_urlsafe(32),
                      expires=time.time() + SESSION_SECONDS)
    await store.put_session(session)
    return value, session


# --- API tokens ---------------------------------------------------------------------------------

TOKEN_PREFIX = "cg_"


async def create_token(store: Store, name: str, *, actor: str) -> tuple[str, ApiToken]:
    """(token text, record): the text is shown once; the store keeps its SHA-256."""
    text = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = ApiToken(id=secrets.token_hex(4), name=name, sha256=sha256(text), role="admin",
                      created_at=time.time(), created_by=actor)
    await store.put_token(record, actor=actor, action="token.create")
    return text, record


async def token_user(store: Store, text: str) -> ApiToken | None:
    if not text.startswith(TOKEN_PREFIX):
        return None
    record = await store.get_token(sha256(text))
    return None if record is None or record.revoked else record


async def revoke_token(store: Store, token_id: str, *, actor: str) -> ApiToken:

    for record in await store.tokens():
        if record.id == token_id and not record.revoked:
            return await store.put_token(dataclasses.replace(record, revoked=True), actor=actor,
                                         action="token.revoke")
    raise NotFound(f"no token {token_id!r} in force")


# --- login throttling ---------------------------------------------------------------------------
#
# Failed logins per (account, source address): after `free` failures each further attempt waits
# `base * 2^(k-free)` seconds (capped). Keyed by both, so that someone guessing from one address
# cannot lock a teacher out everywhere. A pair quiet for `forget` seconds after its wait ended
# starts again from nothing. Two homes for the counts, one behaviour: `Throttle` in the process
# (the embedded store: one process serves the dashboard, worker 0 under `serve --workers N`) and
# `StoreThrottle` in Redis, shared by every instance and kept across restarts.


@dataclass
class _Delays:
    free: int = 3
    base: float = 1.0
    cap: float = 900.0
    forget: float = 900.0

    def delay(self, failures: int, free: int | None = None) -> float:
        """The wait after the `failures`-th failure in a row (`free` of them cost nothing)."""
        free = self.free if free is None else free
        if failures < free:
            return 0.0
        return min(self.cap, self.base * 2 ** min(failures - free, 32))


@dataclass
class Throttle(_Delays):
    """The counts in this process's memory (bounded)."""

    clock: object = time.monotonic
    _entries: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)

    async def retry_after(self, account: str, address: str, *, free: int | None = None) -> float:
        """Seconds before this pair may try again (0: now)."""
        failures, last = self._entries.get((account.lower(), address), (0, 0.0))
        elapsed = self.clock() - last
        if failures == 0 or elapsed > self.delay(failures, free) + self.forget:
            return 0.0
        return max(0.0, self.delay(failures, free) - elapsed)

    async def failed(self, account: str, address: str, *, free: int | None = None) -> None:
        key = (account.lower(), address)
        failures, last = self._entries.get(key, (0, 0.0))
        if self.clock() - last > self.delay(failures, free) + self.forget:
            failures = 0  # forgotten, as the Redis key would have expired
        self._entries[key] = (failures + 1, self.clock())
        if len(self._entries) > 100_000:  # bounded: the oldest pairs go first
            for old in sorted(self._entries, key=lambda k: self._entries[k][1])[:10_000]:
                del self._entries[old]

    async def succeeded(self, account: str, address: str) -> None:
        self._entries.pop((account.lower(), address), None)


@dataclass
class StoreThrottle(_Delays):
    """The counts in the store (Redis): one key a pair, whose time to live after the k-th
    failure is `delay(k) + forget`, so that the wait still to come is the key's remaining life
    minus `forget`. Failures counted through one instance delay the next attempt on every other
    one, and a restart forgets nothing."""

    store: CountsLoginFailures | None = None  # a Redis store

    def _pair(self, account: str, address: str) -> str:
        # hashed: an account name or an address holds no character a key could stumble on
        return sha256(f"{account.lower()}\n{address}")

    async def retry_after(self, account: str, address: str, *, free: int | None = None) -> float:
        failures, ttl_ms = await self.store.failures(self._pair(account, address))
        if failures < (self.free if free is None else free):
            return 0.0
        return max(0.0, ttl_ms / 1000 - self.forget)

    async def failed(self, account: str, address: str, *, free: int | None = None) -> None:
        await self.store.count_failure(self._pair(account, address),
                                       lambda count: (self.delay(count, free) + self.forget) * 1000)

    async def succeeded(self, account: str, address: str) -> None:
        await self.store.forget_failures(self._pair(account, address))


def throttle_for(store: Store) -> Throttle | StoreThrottle:
    """In the store when it is shared (Redis), else in this process."""
    return StoreThrottle(store=store) if isinstance(store, CountsLoginFailures) else Throttle()
