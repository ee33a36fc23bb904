"""The policy as data: what the policy file says, validated, with no behaviour of its own."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field

SAFE_SEARCH_MODES = ("off", "moderate", "strict")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Window:
    """One schedule window of a class: `from` inclusive, `to` exclusive, in minutes of the day."""

    days: frozenset[int]  # 0 = Monday .. 6 = Sunday: the days on which the window *starts*
    start: int  # minutes after local midnight, 0..1439
    end: int  # minutes after local midnight, 1..1440; end < start means it crosses midnight
    block: tuple[str, ...] = ()  # categories added while the window is active
    block_services: tuple[str, ...] = ()
    closed: bool = False
    school_days_only: bool = False
    line: int = 0


@dataclass(frozen=True, slots=True)
class Rules:
    """The keys a class and its `home:` overlay share."""

    block: tuple[str, ...] = ()
    block_services: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()  # normalised domain names
    deny: tuple[str, ...] = ()
    allow_only: tuple[str, ...] = ()  # allowlist categories
    safe_search: str | None = None  # None in an overlay means "as the base"
    schedule: tuple[Window, ...] = ()


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    id: str
    name: str = ""
    school: str = ""
    networks: tuple[IPNetwork, ...] = ()
    rules: Rules = field(default_factory=Rules)
    screen_time_minutes: int | None = None
    home: Rules | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    class_id: str
    token_sha256: str | None = None  # hex; the plain token is never kept
    addresses: tuple[IPAddress, ...] = ()
    line: int = 0


@dataclass(frozen=True, slots=True)
class Exception_:
    """A holiday: a single date or an inclusive date range, local dates."""

    first: dt.date
    last: dt.date
    name: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    classes: dict[str, ClassPolicy] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    default_class: str | None = None
    always_allow: tuple[str, ...] = ()
    locked_categories: tuple[str, ...] = ()
    exceptions: tuple[Exception_, ...] = ()
    bypass_protection: bool = True
    source: str = "<embedded>"  # file the policy came from, for messages


@dataclass(frozen=True, slots=True)
class Override:
    """A teacher's temporary change to one class, in force from `created_at` until `until`."""

    id: str
    class_id: str
    kind: str  # pause | allow
    until: float  # POSIX time at which it ends by itself
    target: str | None = None  # for allow: a normalised domain name or a bundled service id
    target_kind: str | None = None  # for allow: domain | service
    created_at: float = 0.0
    created_by: str = ""

    def active(self, now: float) -> bool:
        return self.created_at <= now < self.until
