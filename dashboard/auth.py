"""Accounts and credentials: scrypt password hashes, sessions, CSRF, login throttling, API tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from resolver.store import ApiToken, Session, Store, User

ROLES = ("admin", "teacher")
SESSION_SECONDS = 12 * 3600  # a school day, then log in again
MIN_PASSWORD = 10

# scrypt (RFC 7914): N=2^15, r=8, p=1 is 32 MiB and ~0.1 s a check (OWASP's minimum is N=2^17
# with r=8 p=1 *or* equivalent; this one keeps a login under 100 ms on a small server).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024


class AuthError(Exception):
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


# A password check costs as much for an unknown account as for a known one.
_DUMMY_HASH = hash_password(secrets.token_hex(16))


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"a password has at least {MIN_PASSWORD} characters")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_user(name: str, role: str, classes: tuple[str, ...], password: str) -> User:
    if role not in ROLES:
        raise AuthError(f"role must be {' or '.join(ROLES)}")
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
        raise AuthError("a user name is 1 to 64 letters, digits or . _ - @")
    if role == "teacher" and not classes:
        raise AuthError("a teacher needs at least one --class")
    check_password_rules(password)
    return User(name=name, role=role, classes=tuple(classes) if role == "teacher" else (),
                password_hash=hash_password(password), created_at=time.time())


async def authenticate(store: Store, name: str, password: str) -> User | None:
    import asyncio

    user = await store.get_user(name)
    stored = user.password_hash if user is not None else _DUMMY_HASH
    ok = await asyncio.to_thread(verify_password, password, stored)
    return user if ok and user is not None else None


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
    import dataclasses

    from resolver.store import NotFound

    for record in await store.tokens():
        if record.id == token_id and not record.revoked:
            return await store.put_token(dataclasses.replace(record, revoked=True), actor=actor,
                                         action="token.revoke")
    raise NotFound(f"no token {token_id!r} in force")


# --- login throttling ---------------------------------------------------------------------------


@dataclass
class Throttle:
    """Failed logins per (account, source address): after `free` failures each further attempt
    waits `base * 2^(k-free)` seconds (capped). Keyed by both, so that someone guessing from one
    address cannot lock a teacher out everywhere."""

    free: int = 3
    base: float = 1.0
    cap: float = 900.0
    clock: object = time.monotonic
    _entries: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)

    def retry_after(self, account: str, address: str) -> float:
        """Seconds before this pair may try again (0: now)."""
        failures, last = self._entries.get((account.lower(), address), (0, 0.0))
        if failures < self.free:
            return 0.0
        wait = min(self.cap, self.base * 2 ** (failures - self.free)) - (self.clock() - last)
        return max(0.0, wait)

    def failed(self, account: str, address: str) -> None:
        key = (account.lower(), address)
        failures, _last = self._entries.get(key, (0, 0.0))
        self._entries[key] = (failures + 1, self.clock())
        if len(self._entries) > 100_000:  # bounded: the oldest pairs go first
            for old in sorted(self._entries, key=lambda k: self._entries[k][1])[:10_000]:
                del self._entries[old]

    def succeeded(self, account: str, address: str) -> None:
        self._entries.pop((account.lower(), address), None)
