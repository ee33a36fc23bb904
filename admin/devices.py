"""Devices at home: tokens (made here, stored as SHA-256 only), their URLs, enrolment in bulk.

The command line makes every token itself and sends only its hash, so a plain token never
crosses the control socket, never reaches a server's memory and is never stored: it is printed
once, in the device's DoH URL and DoT hostname. The changes themselves are control operations
(`device.add`, `device.import`, `device.rotate`, `device.revoke`, `device.list`) run by
`admin.control.Commands`: by the running server through its control socket, or by the CLI
on the store under its lock. Devices are records of their own in the store (one key or row
each, not part of the policy's text): each change is one audited write of the devices it
touches, applied by every running server as that change (store.Store.change_devices).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import difflib
import io
import ipaddress
import os
import re
import secrets
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from admin.errors import ControlError
from admin.stored import parse_stored
from common.addresses import is_ip, parse_listen
from common.tokens import SHA256
from policies.export import export_policy
from policies.loader import ID_PATTERN, PolicyError
from policies.model import Device, DeviceBook, Policy
from privacy import gdpr
from privacy.querylog import subject_of
from store.records import ADD, SET, UPDATE, DeviceConflict, VersionConflict

TOKEN_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_LENGTH = 26  # 26 * log2(36) = 134 random bits (SPEC §5: 22 to 63 characters, 128 bits or more)
CSV_HEADER = ("id", "doh_url", "dot_hostname")
COMMANDS = ("add", "import", "export-urls", "rotate", "revoke")  # `classguard device ...`
MAX_RETRIES = 5  # a change that races another write is made again on the newer policy
MAX_PAGE = 1000  # devices in one page of device.list


class ServedAddresses(Protocol):
    """Where devices reach this server: the configuration's doh, dot and tls sections."""

    doh: dict | None
    dot: dict | None
    tls: dict | None


def new_token() -> str:
    """A fresh device token: 26 characters of a-z0-9 from the OS's secure random source."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


# --- the addresses a device is given --------------------------------------------------------------


def doh_base(config: ServedAddresses) -> str | None:
    """The DoH URL without the token: `doh.public_url`, else the one `doh.listen` makes; None
    when there is no `doh` section."""
    doh = config.doh
    if doh is None:
        return None
    if doh.get("public_url"):
        return doh["public_url"].rstrip("/")
    host, port = parse_listen(doh.get("listen", "127.0.0.1:8053"))
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if config.tls else "http"
    return f"{scheme}://{host}:{port}{doh.get('path', '/dns-query')}"


def doh_url(config: ServedAddresses, token: str) -> str | None:
    base = doh_base(config)
    return None if base is None else f"{base}/{token}"


def dot_hostname(config: ServedAddresses, token: str) -> str | None:
    hostname = (config.dot or {}).get("hostname")
    return f"{token}.{str(hostname).strip().rstrip('.').lower()}" if hostname else None


# --- the CSV of a whole school ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrolment:
    id: str
    class_id: str
    addresses: tuple[str, ...] = ()
    line: int = 0


def read_csv(path: Path) -> list[Enrolment]:
    """Rows `id,class[,address]` (the header line is optional; several addresses in the third
    column are separated by spaces or `;`). PolicyError with `FILE:LINE: message` for each bad
    row: nothing is enrolled unless every row is right."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{path}: cannot read it: {exc}"]) from None
    return parse_csv(text, str(path))


def parse_csv(text: str, path: str) -> list[Enrolment]:
    """`read_csv` for text already read (the dashboard's upload); `path` names it in messages."""
    rows: list[Enrolment] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and [cell.lower() for cell in cells[:2]] == ["id", "class"]:
            continue  # the header
        where = f"{path}:{number}"
        if len(cells) < 2 or len(cells) > 3 or not cells[0] or not cells[1]:
            errors.append(f"{where}: expected id,class[,address], not {','.join(row)!r}")
            continue
        device_id, class_id = cells[0], cells[1]
        if not ID_PATTERN.fullmatch(device_id):
            errors.append(f"{where}: invalid device id {device_id!r}: use 1 to 64 letters, "
                          "digits, '.', '_' or '-', starting with a letter or digit")
            continue
        if device_id in seen:
            errors.append(f"{where}: device {device_id!r} is already on line {seen[device_id]}")
            continue
        seen[device_id] = number
        addresses = tuple(part for part in re.split(r"[\s;]+", cells[2]) if part) \
            if len(cells) == 3 else ()
        bad = [address for address in addresses if not is_ip(address)]
        if bad:
            errors.append(f"{where}: {bad[0]!r} is not an IP address")
            continue
        rows.append(Enrolment(device_id, class_id, addresses, number))
    if errors:
        raise PolicyError(errors)
    if not rows:
        raise PolicyError([f"{path}: no device in it (rows: id,class[,address])"])
    return rows


def open_secret_file(path: Path):
    """A new file only its owner can read (it will hold tokens), opened for writing; never an
    existing one (it may hold the only copy of other tokens)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ControlError(f"{path} exists already; choose another --output (it may hold the "
                           "only copy of other tokens)") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror}") from None
    return open(fd, "w", encoding="utf-8", newline="")


def urls_csv(config: ServedAddresses, issued: list[tuple[str, str]]) -> str:
    """`id,doh_url,dot_hostname` for (device id, token) pairs, header first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for device_id, token in issued:
        writer.writerow((device_id, doh_url(config, token) or "", dot_hostname(config, token) or ""))
    return out.getvalue()


# --- the control operations (run by admin.control.Commands) -------------------------------------


async def device_erase(commands, request: dict, actor: str) -> dict[str, Any]:
    """The `device.erase` operation (GDPR art. 17; CLI through the control socket, REST API):
    what this process has buffered is written first, so that the counts include it; then the
    erase of the record, screen-time minutes and query-log entries (privacy.gdpr). Every process
    that follows the store (this one included, at `after_write`) sees the record go, drops what
    it buffers of the device and erases again: see privacy.gdpr.forget_erased."""
    device_id = request.get("id")
    if not isinstance(device_id, str) or not (
            ID_PATTERN.fullmatch(device_id) or subject_of(device_id).startswith("ip:")):
        raise ControlError(f"{device_id!r} is neither a device id nor an IP address")
    if commands.via == "store":  # the CLI alone: a stored policy may still hold its devices
        await migrate_devices(commands.store, known_categories=commands.known_categories,
                              known_services=commands.known_services, actor="classguard")
    flush = getattr(commands, "flush_buffers", None)
    if flush is not None:
        await flush()
    erased = await gdpr.erase_device(commands.store, device_id, actor=actor)
    if commands.after_write is not None:
        await commands.after_write()  # the record's removal applies here at once
    return {"device": device_id, "query_log_entries": erased.pop("query_log_entries"),
            "store": erased}


def operations(commands) -> dict[str, Callable]:
    """The device operations of a `Commands`, by op name."""

    def bind(function):
        async def operation(request: dict, actor: str) -> dict[str, Any]:
            return await function(commands, request, actor)
        return operation

    return {"device.add": bind(device_add), "device.import": bind(device_import),
            "device.rotate": bind(device_rotate), "device.revoke": bind(device_revoke),
            "device.list": bind(device_list), "device.update": bind(device_update),
            "device.remove": bind(device_remove), "device.erase": bind(device_erase)}


# --- devices stored as records of their own, and the policies that still held them ------------


def holds_devices(text: str) -> bool:
    """Whether a stored policy's text still has a `devices:` section (stored before devices
    became records of their own; the text is export_policy's, so the key starts a line)."""
    return text.startswith("devices:") or "\ndevices:" in text


async def migrate_devices(store, *, known_categories, known_services, actor: str) -> int:
    """A stored policy that still holds its devices: they become device records, then the
    policy is stored without them (each step audited; both may be made again after a crash:
    the devices are stored as they are, whatever is stored already). How many moved."""
    for _ in range(MAX_RETRIES):
        stored = await store.get_policy()
        if stored is None or not holds_devices(stored.text):
            return 0
        # allow_open: only its devices move; its networks were judged when it was stored
        policy = await asyncio.to_thread(parse_stored, stored, known_categories=known_categories,
                                         known_services=known_services, allow_open=True)
        moved = list(policy.devices.values())
        if moved:
            await store.change_devices(
                moved, mode=SET, actor=actor, action="device.migrate",
                before=f"policy version {stored.version}",
                after=f"{len(moved)} devices moved from the policy to records of their own")
        try:
            await store.put_policy(export_policy(policy, devices=False), actor=actor,
                                   expected_version=stored.version, action="policy.migrate",
                                   before=f"version {stored.version}",
                                   after=f"version {stored.version + 1}: without its devices "
                                         "(now records of their own)")
        except VersionConflict:
            continue
        return len(moved)
    raise ControlError("the policy kept changing while its devices were moved; try again")


async def _devices(commands) -> tuple[Policy, DeviceBook]:
    """(the policy the checks are made against, the enrolled devices)."""
    if commands.via == "store":  # the CLI alone: a stored policy may still hold its devices
        await migrate_devices(commands.store, known_categories=commands.known_categories,
                              known_services=commands.known_services, actor="classguard")
    return await commands.current_policy(), await commands.current_devices()


async def _store(commands, put: list[Device], remove: list[str], *, mode: str, actor: str,
                 action: str, after: str) -> int:
    """One audited change of the device records; applied by a running server at once. The
    store's version after it."""
    if commands.via == "store" and await commands.store.get_policy() is None:
        # the CLI on an empty store: the seed file's policy is stored first, as a server does
        policy = await commands.current_policy()
        try:
            await commands.store.put_policy(
                export_policy(policy, devices=False), actor=actor, expected_version=0,
                action="policy.seed", after=f"version 1 from the policy file: "
                                            f"{len(policy.classes)} classes")
            if policy.devices:
                await commands.store.change_devices(
                    list(policy.devices.values()), mode=SET, actor=actor, action="device.seed",
                    after=f"{len(policy.devices)} devices from the policy file")
        except VersionConflict:
            pass  # another process seeded it meanwhile
    try:
        await commands.store.change_devices(put, remove, mode=mode, actor=actor, action=action,
                                            after=after)
    except DeviceConflict as exc:  # another writer came first
        raise ControlError(str(exc)) from None
    if commands.after_write is not None:
        await commands.after_write()
    return await commands.store.version()


def _limit(request: dict) -> int | None:
    limit = request.get("limit")
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ControlError(f'"limit" is a whole number from 1 to {MAX_PAGE}')
    return limit


async def device_list(commands, request: dict, actor: str) -> dict[str, Any]:
    """The devices in id order: all of them, or one page (`limit`, after `cursor`), of one
    `class`, whose id or class contains `q`; `next` is the cursor of the next page."""
    policy, book = await _devices(commands)
    class_id = request.get("class")
    if class_id is not None and class_id not in policy.classes:
        raise ControlError(_no_class(class_id, policy))
    query, cursor = request.get("q") or "", request.get("cursor")
    if not isinstance(query, str) or (cursor is not None and not isinstance(cursor, str)):
        raise ControlError('"q" and "cursor" are text')
    limit = _limit(request)
    visible = request.get("visible")  # a caller inside the server: which classes may be seen
    found, following = book.page(class_id=class_id, query=query,
                                 limit=len(book) + 1 if limit is None else limit,
                                 after=cursor, visible=visible)
    return {"devices": [device_json(device) for device in found], "next": following}


async def device_add(commands, request: dict, actor: str) -> dict[str, Any]:
    entry = _entry(request)
    policy, book = await _devices(commands)
    if entry["id"] in book:
        raise ControlError(f"device {entry['id']!r} exists already (class "
                           f"{book[entry['id']].class_id}); `device rotate` gives it a new token")
    device = _new_device(entry, policy, _Taken(book))
    version = await _store(commands, [device], [], mode=ADD, actor=actor, action="device.add",
                           after=_describe(device))
    return {"version": version, "device": entry["id"]}


async def device_import(commands, request: dict, actor: str) -> dict[str, Any]:
    items = request.get("devices")
    if not isinstance(items, list) or not items:
        raise ControlError('device.import needs "devices": a list of {id, class, token_sha256}')
    entries = [_entry(item) for item in items]
    ids = [entry["id"] for entry in entries]
    if len(set(ids)) != len(ids):
        raise ControlError("a device appears twice in the import")
    source = str(request.get("source") or "import")
    policy, book = await _devices(commands)
    existing = [device_id for device_id in ids if device_id in book]
    if existing:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise ControlError(f"{len(existing)} of these devices exist already ({shown}); remove "
                           "them from the file, or give them new tokens with `device rotate`")
    errors, new = [], []
    taken = _Taken(book)
    for entry in entries:
        try:
            new.append(_new_device(entry, policy, taken))
        except ControlError as exc:
            errors.append(f"{entry['id']}: {exc}")
    if errors:
        raise ControlError(f"{len(errors)} devices cannot be enrolled, none was: "
                           + "; ".join(errors[:5]) + ("; ..." if len(errors) > 5 else ""))
    per_class = Counter(entry["class"] for entry in entries)
    version = await _store(commands, new, [], mode=ADD, actor=actor, action="device.import",
                           after=f"{len(entries)} devices from {source}: "
                                 + ", ".join(f"{name} {count}"
                                             for name, count in sorted(per_class.items())))
    return {"version": version, "devices": len(entries)}


async def device_rotate(commands, request: dict, actor: str) -> dict[str, Any]:
    """New token hashes for existing devices: {"tokens": {id: token_sha256}}."""
    tokens = request.get("tokens")
    if not isinstance(tokens, dict) or not tokens:
        raise ControlError('device.rotate needs "tokens": {device id: token_sha256}')
    for digest in tokens.values():
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise ControlError("a token_sha256 is 64 lowercase hexadecimal digits")
    if len(set(tokens.values())) != len(tokens):
        raise ControlError("two devices cannot share a token")
    policy, book = await _devices(commands)
    missing = [device_id for device_id in tokens if device_id not in book]
    if missing:
        raise ControlError(_no_device(missing[0], book))
    changed = []
    for device_id, digest in tokens.items():
        owner = book.by_token(digest)
        if owner is not None and owner.id not in tokens:
            raise ControlError(f"that token belongs to device {owner.id!r}")
        changed.append(dataclasses.replace(book[device_id], token_sha256=digest))
    names = list(tokens)
    shown = names[0] if len(names) == 1 else f"{len(names)} devices ({', '.join(names[:3])}" \
                                             + (", ..." if len(names) > 3 else "") + ")"
    version = await _store(commands, changed, [], mode=UPDATE, actor=actor,
                           action="device.rotate",
                           after=f"{shown}: new token, the old one no longer works")
    return {"version": version, "devices": list(tokens)}


async def device_revoke(commands, request: dict, actor: str) -> dict[str, Any]:
    def edit(device: Device, policy: Policy, book: DeviceBook):
        if device.token_sha256 is None:
            raise ControlError(f"device {device.id!r} has no token to revoke")
        return dataclasses.replace(device, token_sha256=None), f"{device.id}: token revoked"

    return await _change_device(commands, request, actor, "device.revoke", edit)


async def device_update(commands, request: dict, actor: str) -> dict[str, Any]:
    """Move a device to another class and/or set its school addresses ({"id", "class",
    "addresses"}, either one may be left out); its token stays as it is."""
    addresses = request.get("addresses")
    if addresses is not None and (not isinstance(addresses, list)
                                  or not all(isinstance(a, str) for a in addresses)):
        raise ControlError('"addresses" is a list of IP addresses')

    def edit(device: Device, policy: Policy, book: DeviceBook):
        class_id = request.get("class", device.class_id)
        if not isinstance(class_id, str) or class_id not in policy.classes:
            raise ControlError(_no_class(class_id, policy))
        new_addresses = device.addresses if addresses is None else \
            tuple(_claim_addresses(device.id, addresses, _Taken(book)))
        moved = dataclasses.replace(device, class_id=class_id, addresses=new_addresses)
        return moved, _describe(moved)

    return await _change_device(commands, request, actor, "device.update", edit)


async def device_remove(commands, request: dict, actor: str) -> dict[str, Any]:
    """Take a device out: its token and addresses no longer count. What the query log and
    screen time hold about it stays until retention ends it, or `device erase`."""
    def edit(device: Device, policy: Policy, book: DeviceBook):
        return None, f"{device.id} removed (was in class {device.class_id})"

    return await _change_device(commands, request, actor, "device.remove", edit)


async def _change_device(commands, request: dict, actor: str, action: str, edit) -> dict[str, Any]:
    """`action` on the one device that request["id"] names: `edit(device, policy, book)`
    gives the device as it becomes (None: removed) and the audit text."""
    device_id = request.get("id")
    if not isinstance(device_id, str) or not device_id:
        raise ControlError(f"{action} needs an id")
    policy, book = await _devices(commands)
    device = book.get(device_id)
    if device is None:
        raise ControlError(_no_device(device_id, book))
    changed, description = edit(device, policy, book)
    if changed is None:
        version = await _store(commands, [], [device_id], mode=UPDATE, actor=actor,
                               action=action, after=description)
    else:
        version = await _store(commands, [changed], [], mode=UPDATE, actor=actor,
                               action=action, after=description)
    return {"version": version, "device": device_id}


def _entry(item: Any) -> dict[str, Any]:
    """One device of a request, checked for shape: {id, class, token_sha256, addresses}."""
    if not isinstance(item, dict):
        raise ControlError("a device is an object {id, class, token_sha256, addresses}")
    device_id, class_id, digest = item.get("id"), item.get("class"), item.get("token_sha256")
    addresses = item.get("addresses") or []
    if not isinstance(device_id, str) or not ID_PATTERN.fullmatch(device_id):
        raise ControlError(f"invalid device id {device_id!r}: use 1 to 64 letters, digits, '.', "
                           "'_' or '-', starting with a letter or digit")
    if not isinstance(class_id, str) or not class_id:
        raise ControlError(f"device {device_id!r} needs a class")
    if not isinstance(digest, str) or not SHA256.fullmatch(digest):
        raise ControlError("a token_sha256 is 64 lowercase hexadecimal digits")
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise ControlError('"addresses" is a list of IP addresses')
    return {"id": device_id, "class": class_id, "token_sha256": digest, "addresses": addresses}


class _Taken:
    """The addresses and token hashes the enrolled devices hold (the book's indexes), and
    those claimed by the devices of this change so far."""

    def __init__(self, book: DeviceBook) -> None:
        self.book = book
        self.addresses: dict[str, str] = {}
        self.tokens: set[str] = set()

    def token_owner(self, digest: str) -> str | None:
        device = self.book.by_token(digest)
        return device.id if device is not None else ("" if digest in self.tokens else None)

    def address_owner(self, address: str) -> str | None:
        device = self.book.at(address)
        return device.id if device is not None else self.addresses.get(address)


def _new_device(entry: dict, policy: Policy, taken: _Taken) -> Device:
    if entry["class"] not in policy.classes:
        raise ControlError(_no_class(entry["class"], policy))
    if taken.token_owner(entry["token_sha256"]) is not None:
        raise ControlError("that token belongs to another device")
    addresses = _claim_addresses(entry["id"], entry["addresses"], taken)
    taken.tokens.add(entry["token_sha256"])
    return Device(id=entry["id"], class_id=entry["class"], token_sha256=entry["token_sha256"],
                  addresses=tuple(addresses))


def _claim_addresses(device_id: str, texts: list[str], taken: _Taken) -> list:
    """The addresses parsed, none of them another device's; recorded as this device's."""
    addresses = []
    for text in texts:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise ControlError(f"{text!r} is not an IP address") from None
        owner = taken.address_owner(str(address))
        if owner is not None and owner != device_id:
            raise ControlError(f"address {address} already belongs to device {owner!r}")
        if address not in addresses:
            addresses.append(address)
    taken.addresses.update((str(address), device_id) for address in addresses)
    return addresses


def device_json(device: Device) -> dict[str, Any]:
    """A device as the API and `device.list` show it: never its token, only whether it has one."""
    return {"id": device.id, "class": device.class_id, "token": device.token_sha256 is not None,
            "addresses": [str(address) for address in device.addresses]}


def _describe(device: Device) -> str:
    where = f", addresses {', '.join(map(str, device.addresses))}" if device.addresses else ""
    return f"{device.id} in class {device.class_id}{where}"


def _no_class(class_id: Any, policy: Policy) -> str:

    close = difflib.get_close_matches(str(class_id), list(policy.classes), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"no class {class_id!r} in the policy ({hint}classes: {', '.join(policy.classes) or 'none'})"


def _no_device(device_id: Any, book: DeviceBook) -> str:
    close = difflib.get_close_matches(str(device_id), [key for key in book
                                                       if key[:1] == str(device_id)[:1]], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no device {device_id!r} in the policy{hint}"


# --- the command line: `classguard device ...` ----------------------------------------------------
