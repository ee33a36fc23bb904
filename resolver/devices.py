"""Devices at home: tokens (made here, stored as SHA-256 only), their URLs, enrolment in bulk.

The command line makes every token itself and sends only its hash, so a plain token never
crosses the control socket, never reaches a server's memory and is never stored: it is printed
once, in the device's DoH URL and DoT hostname. The changes themselves are control operations
(`device.add`, `device.import`, `device.rotate`, `device.revoke`, `device.list`) run by
`resolver.control.Commands`: by the running server through its control socket, or by the CLI
on the store under its lock; each one is one audited policy version.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
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
from typing import Any

from policies.export import export_policy
from policies.loader import ID_PATTERN, PolicyError, parse_policy
from policies.model import Device, Policy
from policies.yaml_lines import parse_yaml
from resolver.config import Config, parse_listen
from resolver.control import ControlError, parse_stored
from resolver.store import VersionConflict

TOKEN_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_LENGTH = 26  # 26 * log2(36) = 134 random bits (SPEC §5: 22 to 63 characters, 128 bits or more)
TOKEN_PATTERN = re.compile(r"[a-z0-9]{22,63}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
CSV_HEADER = ("id", "doh_url", "dot_hostname")
COMMANDS = ("add", "import", "export-urls", "rotate", "revoke")  # `classguard device ...`
MAX_RETRIES = 5  # a change that races another write is made again on the newer policy


def new_token() -> str:
    """A fresh device token: 26 characters of a-z0-9 from the OS's secure random source."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


def token_sha256(token: str) -> str:
    """What the store keeps of a token."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


# --- the addresses a device is given --------------------------------------------------------------


def doh_base(config: Config) -> str | None:
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


def doh_url(config: Config, token: str) -> str | None:
    base = doh_base(config)
    return None if base is None else f"{base}/{token}"


def dot_hostname(config: Config, token: str) -> str | None:
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
        bad = [address for address in addresses if not _is_address(address)]
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


def urls_csv(config: Config, issued: list[tuple[str, str]]) -> str:
    """`id,doh_url,dot_hostname` for (device id, token) pairs, header first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for device_id, token in issued:
        writer.writerow((device_id, doh_url(config, token) or "", dot_hostname(config, token) or ""))
    return out.getvalue()


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- the control operations (run by resolver.control.Commands) -------------------------------------


async def device_erase(commands, request: dict, actor: str) -> dict[str, Any]:
    from resolver.gdpr import device_erase as erase  # GDPR art. 17: see there

    return await erase(commands, request, actor)


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


async def device_list(commands, request: dict, actor: str) -> dict[str, Any]:
    _, policy = await _stored_policy(commands)
    class_id = request.get("class")
    if class_id is not None and class_id not in policy.classes:
        raise ControlError(_no_class(class_id, policy))
    return {"devices": [device_json(device) for device in policy.devices.values()
                        if class_id is None or device.class_id == class_id]}


async def device_add(commands, request: dict, actor: str) -> dict[str, Any]:
    entry = _entry(request)

    def change(policy: Policy) -> tuple[dict[str, Device], str]:
        devices = dict(policy.devices)
        if entry["id"] in devices:
            raise ControlError(f"device {entry['id']!r} exists already (class "
                               f"{devices[entry['id']].class_id}); `device rotate` gives it a "
                               "new token")
        devices[entry["id"]] = _new_device(entry, policy, _Taken(devices))
        return devices, _describe(devices[entry["id"]])

    version = await _change(commands, actor, "device.add", change)
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

    def change(policy: Policy) -> tuple[dict[str, Device], str]:
        devices = dict(policy.devices)
        existing = [device_id for device_id in ids if device_id in devices]
        if existing:
            shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
            raise ControlError(f"{len(existing)} of these devices exist already ({shown}); remove "
                               "them from the file, or give them new tokens with `device rotate`")
        errors = []
        taken = _Taken(devices)
        for entry in entries:
            try:
                devices[entry["id"]] = _new_device(entry, policy, taken)
            except ControlError as exc:
                errors.append(f"{entry['id']}: {exc}")
        if errors:
            raise ControlError(f"{len(errors)} devices cannot be enrolled, none was: "
                               + "; ".join(errors[:5]) + ("; ..." if len(errors) > 5 else ""))
        per_class = Counter(entry["class"] for entry in entries)
        return devices, (f"{len(entries)} devices from {source}: "
                         + ", ".join(f"{name} {count}" for name, count in sorted(per_class.items())))

    version = await _change(commands, actor, "device.import", change)
    return {"version": version, "devices": len(entries)}


async def device_rotate(commands, request: dict, actor: str) -> dict[str, Any]:
    """New token hashes for existing devices: {"tokens": {id: token_sha256}}."""
    tokens = request.get("tokens")
    if not isinstance(tokens, dict) or not tokens:
        raise ControlError('device.rotate needs "tokens": {device id: token_sha256}')
    for digest in tokens.values():
        if not isinstance(digest, str) or not SHA256_PATTERN.fullmatch(digest):
            raise ControlError("a token_sha256 is 64 lowercase hexadecimal digits")
    if len(set(tokens.values())) != len(tokens):
        raise ControlError("two devices cannot share a token")

    def change(policy: Policy) -> tuple[dict[str, Device], str]:
        devices = dict(policy.devices)
        missing = [device_id for device_id in tokens if device_id not in devices]
        if missing:
            raise ControlError(_no_device(missing[0], policy))
        used = {device.token_sha256: device.id for device in devices.values()
                if device.token_sha256 and device.id not in tokens}
        for device_id, digest in tokens.items():
            if digest in used:
                raise ControlError(f"that token belongs to device {used[digest]!r}")
            devices[device_id] = dataclasses.replace(devices[device_id], token_sha256=digest)
        names = list(tokens)
        shown = names[0] if len(names) == 1 else f"{len(names)} devices ({', '.join(names[:3])}" \
                                                 + (", ..." if len(names) > 3 else "") + ")"
        return devices, f"{shown}: new token, the old one no longer works"

    version = await _change(commands, actor, "device.rotate", change)
    return {"version": version, "devices": list(tokens)}


async def device_revoke(commands, request: dict, actor: str) -> dict[str, Any]:
    def edit(device: Device, policy: Policy, devices: dict[str, Device]):
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

    def edit(device: Device, policy: Policy, devices: dict[str, Device]):
        class_id = request.get("class", device.class_id)
        if not isinstance(class_id, str) or class_id not in policy.classes:
            raise ControlError(_no_class(class_id, policy))
        others = _Taken({key: item for key, item in devices.items() if key != device.id})
        new_addresses = device.addresses if addresses is None else \
            tuple(_claim_addresses(device.id, addresses, others))
        moved = dataclasses.replace(device, class_id=class_id, addresses=new_addresses)
        return moved, _describe(moved)

    return await _change_device(commands, request, actor, "device.update", edit)


async def device_remove(commands, request: dict, actor: str) -> dict[str, Any]:
    """Take a device out of the policy: its token and addresses no longer count. What the query
    log and screen time hold about it stays until retention ends it, or `device erase`."""
    def edit(device: Device, policy: Policy, devices: dict[str, Device]):
        return None, f"{device.id} removed (was in class {device.class_id})"

    return await _change_device(commands, request, actor, "device.remove", edit)


async def _change_device(commands, request: dict, actor: str, action: str, edit) -> dict[str, Any]:
    """`action` on the one device that request["id"] names: `edit(device, policy, devices)`
    gives the device as it becomes (None: removed) and the audit text."""
    device_id = request.get("id")
    if not isinstance(device_id, str) or not device_id:
        raise ControlError(f"{action} needs an id")

    def change(policy: Policy) -> tuple[dict[str, Device], str]:
        devices = dict(policy.devices)
        device = devices.get(device_id)
        if device is None:
            raise ControlError(_no_device(device_id, policy))
        changed, description = edit(device, policy, devices)
        if changed is None:
            del devices[device_id]
        else:
            devices[device_id] = changed
        return devices, description

    version = await _change(commands, actor, action, change)
    return {"version": version, "device": device_id}


async def _stored_policy(commands):
    """(stored policy or None, Policy): what is stored, else the seed a server would import."""
    stored = await commands.store.get_policy()
    if stored is None:
        return None, await commands.current_policy()
    policy = await asyncio.to_thread(parse_stored, stored, known_categories=commands.known_categories,
                                     known_services=commands.known_services)
    return stored, policy


async def _change(commands, actor: str, action: str, change) -> int:
    """Apply `change` (policy -> (devices, audit text)) to the stored policy as one new version;
    made again on the newer policy when another write came first."""
    for _ in range(MAX_RETRIES):
        stored, policy = await _stored_policy(commands)
        devices, description = change(policy)
        new = dataclasses.replace(policy, devices=devices)
        text = export_policy(new)
        await asyncio.to_thread(_validate, text, commands)  # the same checks as a policy file
        try:
            result = await commands.store.put_policy(
                text, actor=actor, expected_version=0 if stored is None else stored.version,
                action=action, before="" if stored is None else f"version {stored.version}",
                after=description)
        except VersionConflict:
            continue
        if commands.after_write is not None:
            await commands.after_write()
        return result.version
    raise ControlError("the policy kept changing while this change was made; try again")


def _validate(text: str, commands) -> None:
    parse_policy(parse_yaml(text, "the changed policy"), source="the changed policy",
                 known_categories=commands.known_categories, known_services=commands.known_services)


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
    if not isinstance(digest, str) or not SHA256_PATTERN.fullmatch(digest):
        raise ControlError("a token_sha256 is 64 lowercase hexadecimal digits")
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise ControlError('"addresses" is a list of IP addresses')
    return {"id": device_id, "class": class_id, "token_sha256": digest, "addresses": addresses}


class _Taken:
    """The addresses and token hashes the devices hold, kept up to date as devices are added."""

    def __init__(self, devices: dict[str, Device]) -> None:
        self.addresses = {address: device.id for device in devices.values()
                          for address in device.addresses}
        self.tokens = {device.token_sha256 for device in devices.values() if device.token_sha256}


def _new_device(entry: dict, policy: Policy, taken: _Taken) -> Device:
    if entry["class"] not in policy.classes:
        raise ControlError(_no_class(entry["class"], policy))
    if entry["token_sha256"] in taken.tokens:
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
        owner = taken.addresses.get(address)
        if owner is not None and owner != device_id:
            raise ControlError(f"address {address} already belongs to device {owner!r}")
        if address not in addresses:
            addresses.append(address)
    taken.addresses.update((address, device_id) for address in addresses)
    return addresses


def device_json(device: Device) -> dict[str, Any]:
    """A device as the API and `device.list` show it: never its token, only whether it has one."""
    return {"id": device.id, "class": device.class_id, "token": device.token_sha256 is not None,
            "addresses": [str(address) for address in device.addresses]}


def _describe(device: Device) -> str:
    where = f", addresses {', '.join(map(str, device.addresses))}" if device.addresses else ""
    return f"{device.id} in class {device.class_id}{where}"


def _no_class(class_id: Any, policy: Policy) -> str:
    import difflib

    close = difflib.get_close_matches(str(class_id), list(policy.classes), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"no class {class_id!r} in the policy ({hint}classes: {', '.join(policy.classes) or 'none'})"


def _no_device(device_id: Any, policy: Policy) -> str:
    import difflib

    close = difflib.get_close_matches(str(device_id), list(policy.devices), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no device {device_id!r} in the policy{hint}"


# --- the command line: `classguard device ...` ----------------------------------------------------

EXPORT_HELP = """\
classguard keeps only the SHA-256 of each device token, so the URLs given out when devices were
enrolled (by `device add` and `device import`) cannot be shown again. `export-urls --rotate`
gives every device (or those of --class) a new token and prints the new URLs as
id,doh_url,dot_hostname for an MDM; the old tokens stop working at once, so push the new URLs
right away. Without --rotate nothing is changed and the command explains this."""


def add_parser(commands, common) -> None:
    """`classguard device ...` on the CLI's subparsers."""
    import argparse

    device = commands.choices.get("device")
    if device is None:
        device = commands.add_parser("device", parents=[common],
                                     help="devices: enrolment, tokens, DoH URLs, DoT hostnames")
        sub = device.add_subparsers(dest="device_command", required=True)
    else:  # `device data` and `device erase` are there already: add ours beside them
        sub = next(action for action in device._actions
                   if isinstance(action, argparse._SubParsersAction))
    add = sub.add_parser("add", parents=[common], help="enrol a device; prints its DoH URL and DoT "
                                                         "hostname (the token is shown only then)")
    add.add_argument("id", metavar="ID")
    add.add_argument("--class", dest="class_id", metavar="CLASS", required=True)
    add.add_argument("--address", action="append", default=[], metavar="IP",
                     help="a school address of the device (repeatable)")
    add.add_argument("--mobileconfig", type=Path, metavar="FILE",
                     help="also write an Apple configuration profile (DoH, else DoT) for an MDM")
    enrol = sub.add_parser("import", parents=[common],
                           help="enrol every device of a CSV (id,class[,address]) at once")
    enrol.add_argument("csv", type=Path, metavar="CSV")
    enrol.add_argument("--output", type=Path, metavar="FILE",
                       help="write id,doh_url,dot_hostname to this new file (owner-only) "
                            "instead of printing them")
    export = sub.add_parser("export-urls", parents=[common], help="new tokens and their URLs for an "
                                                                  "MDM (needs --rotate)",
                            description=EXPORT_HELP)
    export.add_argument("--rotate", action="store_true",
                        help="give the devices new tokens (the old ones stop working) and print the URLs")
    export.add_argument("--class", dest="class_id", metavar="CLASS", help="only the devices of this class")
    export.add_argument("--output", type=Path, metavar="FILE", help="write the CSV to this new file")
    rotate = sub.add_parser("rotate", parents=[common],
                            help="a new token for a device; the old one stops working at once")
    rotate.add_argument("id", metavar="ID")
    revoke = sub.add_parser("revoke", parents=[common],
                            help="the device's token stops working (its school addresses still count)")
    revoke.add_argument("id", metavar="ID")


def run(config: Config, args, send: Callable[[Config, dict], dict]) -> int:
    """One `classguard device` command; `send` carries a request to the running server or the
    store (and raises on a refusal)."""
    import sys

    command = args.device_command
    if command == "revoke":
        response = send(config, {"op": "device.revoke", "id": args.id})
        print(f"device {args.id}: token revoked; its DoH URL and DoT hostname stop working "
              f"{applied(config, response)}")
        return 0
    if command == "export-urls" and not args.rotate:
        raise ControlError("nothing exported: " + " ".join(EXPORT_HELP.split()))
    _need_addresses(config)
    if command == "add":
        token = new_token()
        response = send(config, {"op": "device.add", "id": args.id, "class": args.class_id,
                                 "token_sha256": token_sha256(token), "addresses": args.address})
        print(f"device {args.id} enrolled in class {args.class_id} {applied(config, response)}")
        _print_addresses(config, token)
        if args.mobileconfig is not None:
            _write_profile(config, args.id, token, args.mobileconfig)
        return 0
    if command == "rotate":
        token = new_token()
        response = send(config, {"op": "device.rotate", "tokens": {args.id: token_sha256(token)}})
        print(f"device {args.id}: new token; the old one no longer works {applied(config, response)}")
        _print_addresses(config, token)
        return 0
    if command == "import":
        rows = read_csv(args.csv)
        issued = [(row.id, new_token()) for row in rows]
        devices = [{"id": row.id, "class": row.class_id, "token_sha256": token_sha256(token),
                    "addresses": list(row.addresses)} for row, (_, token) in zip(rows, issued)]
        with _Output(args.output) as output:
            response = send(config, {"op": "device.import", "devices": devices,
                                     "source": args.csv.name})
            output.write(urls_csv(config, issued))
        print(f"{len(rows)} devices enrolled from {args.csv} {applied(config, response)}"
              + (f"; their URLs are in {args.output}" if args.output else ""), file=sys.stderr)
        return 0
    # export-urls --rotate
    request: dict[str, Any] = {"op": "device.list"}
    if args.class_id:
        request["class"] = args.class_id
    listed = send(config, request)["devices"]
    if not listed:
        raise ControlError("no device to export" + (f" in class {args.class_id}" if args.class_id else ""))
    issued = [(item["id"], new_token()) for item in listed]
    with _Output(args.output) as output:
        response = send(config, {"op": "device.rotate", "tokens": {
            device_id: token_sha256(token) for device_id, token in issued}})
        output.write(urls_csv(config, issued))
    print(f"{len(issued)} devices have new tokens, the old ones no longer work "
          f"{applied(config, response)}" + (f"; their URLs are in {args.output}" if args.output else ""),
          file=sys.stderr)
    return 0


def _write_profile(config: Config, device_id: str, token: str, path: Path) -> None:
    """The device's Apple profile, owner-only like everything that holds a token."""
    from resolver.mobileconfig import profile

    url, server = doh_url(config, token), dot_hostname(config, token)
    data = profile(device_id, doh_url=url) if url else profile(device_id, dot_server=server)
    with open_secret_file(path) as out:
        out.write(data.decode("utf-8"))
    print(f"Apple configuration profile written to {path} (it holds the token: keep it private)")


def _need_addresses(config: Config) -> None:
    """A token is shown only in the URLs: without a doh or dot section there would be none."""
    import sys

    if config.doh is None and not (config.dot or {}).get("hostname"):
        raise ControlError("the configuration has no doh section and no dot.hostname, so a "
                           "device's URL cannot be printed; add doh: {public_url: "
                           "\"https://YOUR-HOST/dns-query\"} first")
    if config.doh is not None and not config.doh.get("public_url"):
        print(f"note: doh.public_url is not set; the URLs use {doh_base(config)}, which tablets "
              "at home cannot reach", file=sys.stderr)


def _print_addresses(config: Config, token: str) -> None:
    url, hostname = doh_url(config, token), dot_hostname(config, token)
    print(f"  DoH URL:      {url or '- (no doh section)'}")
    print(f"  DoT hostname: {hostname or '- (no dot.hostname)'}")
    print("  shown only now: classguard keeps just the token's SHA-256")


def applied(config: Config, response: dict) -> str:
    """Where a change went, for the CLI's message: "(policy version 7; ...)"."""
    version = response.get("version")
    if response.get("via") == "server":
        return f"(policy version {version}; the running server applied it)"
    if config.store != "embedded":
        return (f"(policy version {version}, written {store_place(config)}; every server on it "
                "applies it within a second)")
    return f"(policy version {version}; no server runs on {config.state_dir}, the next one uses it)"


def store_place(config: Config) -> str:
    """"under ./state" or "in Redis (redis://host:6379/0)": where the configured store is."""
    if config.store == "embedded":
        return f"under {config.state_dir}"
    from resolver.redis_store import redacted_url

    return f"in Redis ({redacted_url(config.store)})"


class _Output:
    """Where the URLs go: stdout, or a new owner-only file created before anything changes (so
    that tokens are never issued with nowhere to write them) and removed if nothing was."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.file = None
        self.written = False

    def __enter__(self) -> _Output:
        if self.path is not None:
            self.file = open_secret_file(self.path)
        return self

    def write(self, text: str) -> None:
        import sys

        (self.file or sys.stdout).write(text)
        self.written = True

    def __exit__(self, kind, error, traceback) -> None:
        if self.file is None:
            return
        self.file.close()
        if not self.written:
            self.path.unlink(missing_ok=True)
