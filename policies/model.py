"""The policy as data: what the policy file says, validated, with no behaviour of its own."""

from __future__ import annotations

import bisect
import datetime as dt
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
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


class DeviceBook(Mapping[str, Device]):
    """The enrolled devices, indexed by id (kept sorted, for paging), token digest, address and
    class. Devices are records of their own (the store keeps one a key or row): a change of
    one device is `put` or `remove` here, O(log n), never a rebuild. A running server holds one
    book for its whole life, carried from one policy to the next."""

    def __init__(self, devices: Iterable[Device] = ()) -> None:
        self._by_id: dict[str, Device] = {}
        self._ids: list[str] = []  # sorted: pages follow the ids' order
        self._tokens: dict[str, str] = {}
        self._addresses: dict[str, str] = {}  # str(address) -> device id
        self._classes: dict[str, set[str]] = {}
        for device in devices:
            self.put(device)

    def __getitem__(self, device_id: str) -> Device:
        return self._by_id[device_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._by_id

    def __repr__(self) -> str:
        return f"DeviceBook({len(self)} devices)"

    def put(self, device: Device) -> Device | None:
        """Add or replace a device; the one it replaces, or None."""
        old = self.remove(device.id)
        self._by_id[device.id] = device
        bisect.insort(self._ids, device.id)
        if device.token_sha256:
            self._tokens[device.token_sha256] = device.id
        for address in device.addresses:
            self._addresses[str(address)] = device.id
        self._classes.setdefault(device.class_id, set()).add(device.id)
        return old

    def remove(self, device_id: str) -> Device | None:
        """Take a device out; the one removed, or None when there was none."""
        old = self._by_id.pop(device_id, None)
        if old is None:
            return None
        del self._ids[bisect.bisect_left(self._ids, device_id)]
        if old.token_sha256 and self._tokens.get(old.token_sha256) == device_id:
            del self._tokens[old.token_sha256]
        for address in old.addresses:
            if self._addresses.get(str(address)) == device_id:
                del self._addresses[str(address)]
        members = self._classes.get(old.class_id)
        if members is not None:
            members.discard(device_id)
            if not members:
                del self._classes[old.class_id]
        return old

    def by_token(self, digest: str) -> Device | None:
        device_id = self._tokens.get(digest)
        return None if device_id is None else self._by_id[device_id]

    def at(self, address: str) -> Device | None:
        """The device with this school address (its text as str(ip_address) writes it)."""
        device_id = self._addresses.get(address)
        return None if device_id is None else self._by_id[device_id]

    def count(self, class_id: str) -> int:
        return len(self._classes.get(class_id, ()))

    def classes(self) -> set[str]:
        """The classes that have devices."""
        return set(self._classes)

    def page(self, *, class_id: str | None = None, query: str = "", limit: int = 50,
             after: str | None = None,
             visible=None) -> tuple[list[Device], str | None]:
        """Up to `limit` devices in id order after the id `after`, of `class_id` (any when None),
        whose id or class contains `query` (case-insensitive), and `visible(device)` when given;
        and the cursor of the next page (the last id shown), or None on the last page."""
        needle = query.strip().lower()
        start = 0 if after is None else bisect.bisect_right(self._ids, after)
        if class_id is not None and class_id not in self._classes:
            return [], None
        found: list[Device] = []
        for index in range(start, len(self._ids)):
            device = self._by_id[self._ids[index]]
            if class_id is not None and device.class_id != class_id:
                continue
            if needle and needle not in device.id.lower() and needle not in device.class_id.lower():
                continue
            if visible is not None and not visible(device):
                continue
            if len(found) == limit:
                return found, found[-1].id
            found.append(device)
        return found, None


@dataclass(frozen=True, slots=True)
class Exception_:
    """A holiday: a single date or an inclusive date range, local dates."""

    first: dt.date
    last: dt.date
    name: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    classes: dict[str, ClassPolicy] = field(default_factory=dict)
    # the enrolled devices: in a file, its `devices:` section; in a running server, the live book
    # the store's device records fill (never part of the stored policy text)
    devices: DeviceBook = field(default_factory=DeviceBook)
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
