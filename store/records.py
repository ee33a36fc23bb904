"""What a store holds and how it fails: the records (policy, audit, accounts) and the store's errors."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass, fields

from common.errors import ClassguardError
from policies.model import Device, Override


class StoreError(ClassguardError):
    """The store cannot do what was asked; the message says why."""


class StoreUnavailable(StoreError):
    """A shared store (Redis) cannot be reached; the running state stays until it can."""


class VersionConflict(StoreError):
    """The policy changed since it was read: reload it and apply the change again."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"the policy changed meanwhile (version {actual}, expected {expected}); "
                         "reload it and try again")
        self.expected = expected
        self.actual = actual


class DiskFull(StoreError):
    """The disk under state_dir is full: the change was not made, what was stored is intact."""


class NotFound(StoreError):
    """No such record."""


class DeviceConflict(StoreError):
    """A device change the stored devices refuse (an id, token or address taken, a device gone)."""


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """The policy as stored: YAML text (as policies.export writes it) and its metadata."""

    text: str
    version: int  # 1 for the first policy, +1 on every change; 0 means none stored
    updated_at: float  # POSIX time
    updated_by: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float  # POSIX time
    actor: str  # an OS user, a dashboard user, or "classguard serve" for the seed
    action: str  # policy.import, policy.seed, override.add, override.cancel, ...
    before: str  # a one-line summary of what was there ("" for nothing)
    after: str


@dataclass(frozen=True, slots=True)
class User:
    """A dashboard account. `password_hash` is an scrypt string (dashboard.auth); never shown."""

    name: str
    role: str  # admin | teacher
    classes: tuple[str, ...] = ()  # a teacher's classes
    password_hash: str = ""
    created_at: float = 0.0
    sessions_after: float = 0.0  # sessions opened before this (a password reset) are void
    language: str = ""  # the dashboard's language for this user (fr, en); "" is the default, fr
    disabled: bool = False  # an admin switched the account off: no login, no session

    @classmethod
    def from_record(cls, data: dict) -> User:
        """A stored record (JSON), keys this version does not know left aside."""
        known = {item.name for item in fields(cls)}
        return cls(**{**{key: value for key, value in data.items() if key in known},
                      "classes": tuple(data.get("classes", ()))})


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An API token, known by the SHA-256 of its text alone (the text is shown once)."""

    id: str
    name: str
    sha256: str
    role: str = "admin"
    created_at: float = 0.0
    created_by: str = ""
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Session:
    """A dashboard session, known by the SHA-256 of its cookie value."""

    sha256: str
    user: str
    csrf: str
    expires: float


def new_override_id() -> str:
    return secrets.token_hex(4)


def describe_override(override: Override) -> str:
    """One line for the audit log: "pause for cm2-a until 2026-12-01T13:30:00+00:00 (id 1a2b3c4d)"."""
    what = override.kind if override.target is None else f"{override.kind} {override.target}"
    until = dt.datetime.fromtimestamp(override.until, dt.timezone.utc).isoformat(timespec="seconds")
    return f"{what} for {override.class_id} until {until} (id {override.id})"


def describe_user(user: User) -> str:
    """The audit log's line for an account (never its password hash)."""
    return f"user {user.name}, role {user.role}" + (
        f", classes {', '.join(user.classes)}" if user.classes else "") + (
        f", language {user.language}" if user.language else "") + (
        ", disabled" if user.disabled else "")


def describe_token(token: ApiToken) -> str:
    """The audit log's line for an API token (never its hash)."""
    return f"token {token.id} ({token.name}, {token.role})" + (" revoked" if token.revoked else "")


# --- devices: records of their own, one a key (Redis) or a row (embedded)

# How a batch of device changes meets what is stored (Store.change_devices):
ADD = "add"  # every device is new (its id is not stored)
UPDATE = "update"  # every device is stored already (a move, a new token, a revocation)
SET = "set"  # either (a migration, an import that replaces the devices)


def device_to_record(device: Device) -> dict:
    """A device as stored (JSON): never a token, only its SHA-256."""
    return {"id": device.id, "class": device.class_id, "token_sha256": device.token_sha256,
            "addresses": [str(address) for address in device.addresses]}


def device_from_record(data: dict) -> Device:
    return Device(id=data["id"], class_id=data["class"], token_sha256=data.get("token_sha256"),
                  addresses=tuple(ipaddress.ip_address(text) for text in data.get("addresses", ())))


def device_record(device: Device | None) -> dict | None:
    """The device's record as `device data` shows it (GDPR art. 15), its token digest as ***."""
    if device is None:
        return None
    record: dict = {"class": device.class_id}
    if device.token_sha256 is not None:
        record["token_sha256"] = "***"
    if device.addresses:
        record["addresses"] = [str(address) for address in device.addresses]
    return record


def minutes_of(bits: bytes) -> list[int]:
    """A screen-time bitmap as the minutes after local midnight it marks."""
    value = int.from_bytes(bits, "little")
    return [minute for minute in range(value.bit_length()) if value >> minute & 1]
