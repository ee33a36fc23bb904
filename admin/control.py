"""How changes reach a running server: the commands, the local control socket, the store watcher.

A command that changes state (`policy import`, `override ...`) is one JSON object, e.g.
`{"op": "override.add", "class": "cm2-a", "kind": "pause", "minutes": 30}`, answered by
`{"ok": true, ...}` or `{"ok": false, "error": "..."}`. When a server runs on the state_dir the
CLI sends it over the server's control socket (`state_dir/control.sock`, owner-only, one JSON
object a line each way) and the server writes the store and applies the change at once;
otherwise the CLI runs the same `Commands` on the store itself, under the store's lock. Either
way the server also polls the store's version and applies whatever changed, whoever wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import difflib
import fcntl
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admin.devices import migrate_devices
from admin.devices import operations as device_operations
from admin.errors import ControlError, NeedsForce, NoAnswer
from admin.policy_diff import PolicyDiff, diff_policies
from admin.stored import parse_stored
from blocklists.bundled import Bundled
from blocklists.compiled import CompiledLists
from blocklists.names import normalize_domain
from common.addresses import is_ip
from policies.export import export_policy
from policies.loader import PolicyError, load_policy, parse_policy, public_suffix_kind
from policies.model import Device, DeviceBook, Override, Policy
from policies.yaml_lines import YamlError, parse_yaml
from privacy import gdpr
from store.protocol import RecoversLostStore, Store, StoreAbilities
from store.records import (
    SET, DeviceConflict, NotFound, device_to_record, StoredPolicy, StoreError, StoreUnavailable, VersionConflict,
    new_override_id,
)

log = logging.getLogger("classguard.control")

SOCKET_NAME = "control.sock"
SOCKET_LOCK = "control.lock"  # held by the one server that answers the socket
MAX_MESSAGE = 64 * 1024 * 1024  # one line: a whole policy fits
POLL_INTERVAL = 0.5  # seconds between two looks at the store's version (a change shows within 1 s)
MAX_OVERRIDE_MINUTES = 1440
SEED_ACTOR = "classguard serve"




def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


def os_user() -> str:
    """The user running this process, as the audit log names a CLI user."""
    return _user_name(os.getuid())


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"




def summarize(policy: Policy, previous: Policy | None = None, *, devices: int | None = None) -> str:
    """`3 classes (+cm2-b, -cp-a), 12 devices`: what the audit log says of a policy."""
    text = f"{len(policy.classes)} classes"
    if previous is not None:
        added = [name for name in policy.classes if name not in previous.classes]
        removed = [name for name in previous.classes if name not in policy.classes]
        changes = [f"+{name}" for name in added] + [f"-{name}" for name in removed]
        if changes:
            shown = changes[:5] + ([f"{len(changes) - 5} more"] if len(changes) > 5 else [])
            text += f" ({', '.join(shown)})"
    return f"{text}, {len(policy.devices) if devices is None else devices} devices"


def override_json(override: Override) -> dict[str, Any]:
    return dataclasses.asdict(override)


# --- startup: seed an empty store, load what it holds, notice a seed file that changed -----------


@dataclass(frozen=True, slots=True)
class Boot:
    """What a server starts from: the stored policy and overrides, and the store's version."""

    policy: Policy
    policy_version: int
    overrides: tuple[Override, ...]
    version: int
    drift: Drift | None  # why the configured policy file is not what runs, or None
    devices_seq: int = 0  # the devices' sequence that policy.devices (the book) was read at


async def load_or_seed(store: Store, *, recovery: RecoversLostStore | None, seed: Path,
                       seed_configured: bool, known_categories: Collection[str] | None,
                       known_services: Collection[str] | None, allow_open: bool = False) -> Boot:
    """An empty store gets the seed file's policy (SPEC §4: `policies:` is a seed); afterwards the
    stored policy is what runs, and a configured seed file that says otherwise is reported.

    A store that lost its state (SPEC §7: a Redis that came back empty) is not a new one: when
    this instance saved a copy of the store under state_dir (RedisStore.restore_saved), that copy
    is written back instead of the seed file, unless the store holds a higher version already.
    `recovery` is that ability of `store` (a Redis store), or None."""
    seeded: Policy | None = None
    if await store.get_policy() is None and (recovery is None or not await recovery.restore_saved()):
        seeded = load_policy(seed, known_categories=known_categories, known_services=known_services,
                             allow_open=allow_open)
        try:
            stored = await store.put_policy(export_policy(seeded, devices=False), actor=SEED_ACTOR,
                                            expected_version=0, action="policy.seed",
                                            after=f"version 1 from {seed}: {summarize(seeded)}")
            log.info("the store was empty: seeded it with %s (policy version %d)", seed, stored.version)
            if seeded.devices:  # the file's devices become records of their own
                await store.change_devices(list(seeded.devices.values()), mode=SET,
                                           actor=SEED_ACTOR, action="device.seed",
                                           after=f"{len(seeded.devices)} devices from {seed}")
        except VersionConflict:
            seeded = None  # another process seeded it first: use what it stored
    # a policy stored before devices were records of their own: its devices move out, once
    moved = await migrate_devices(store, known_categories=known_categories,
                                  known_services=known_services, actor=SEED_ACTOR)
    if moved:
        log.info("the stored policy held %d devices: each is now a record of its own", moved)
    version = await store.version()  # first, so that a write after this is noticed by the watcher
    stored = await store.get_policy()
    if stored is None:
        raise StoreError("the store lost its policy while starting; try again")
    if seeded is not None and stored.text == export_policy(seeded, devices=False):
        policy = seeded
    else:
        try:
            policy = parse_stored(stored, known_categories=known_categories,
                                  known_services=known_services, allow_open=allow_open)
        except PolicyError as exc:
            raise StoreError(f"the stored policy (version {stored.version}) does not validate with "
                             f"this configuration: {exc.errors[0]}; fix it with "
                             "`classguard policy import FILE`") from None
        seeded = None
    devices, devices_seq = await store.devices()
    policy = dataclasses.replace(policy, devices=DeviceBook(devices))
    drift = None
    if seeded is None and seed_configured:
        drift = await asyncio.to_thread(seed_drift, seed, stored, known_categories, known_services,
                                        allow_open)
        if drift:
            log.warning("%s", drift)
    overrides = tuple(await store.overrides())
    if recovery is not None:  # the Redis store's copy, for a lost store
        await recovery.remember()
    return Boot(policy, stored.version, overrides, version, drift, devices_seq)


@dataclass(frozen=True, slots=True)
class Drift:
    """The configured policy file is not the stored policy (which is what runs): which side is
    newer, and what brings them together without losing anything. str(): one English line (the
    log, /readyz, the control status); the dashboard says it in its own words from the fields."""

    seed: str
    newer: str  # "store": changed since (dashboard, CLI); "file": edited after; "invalid"
    version: int
    when: str  # the stored policy's time, ISO 8601
    by: str
    error: str = ""  # the file's first error, when it does not validate

    def __str__(self) -> str:
        stored = f"the stored policy (version {self.version}, {self.when}, by {self.by})"
        export = f"classguard policy export > {self.seed}"
        see = f"classguard policy diff {self.seed}"
        if self.newer == "invalid":
            return (f"the policy file {self.seed} is not the stored policy and does not validate "
                    f"({self.error}); {stored} keeps running; to bring the file up to date: "
                    f"{export}")
        if self.newer == "store":
            return (f"{stored} is newer than the policy file {self.seed} and is what runs; to "
                    f"bring the file up to date: {export}; to see the difference: {see}")
        return (f"the policy file {self.seed} was edited after {stored}, which is what runs (the "
                f"file only seeds an empty store); to see what importing it would change: {see}")


def seed_drift(seed: Path, stored: StoredPolicy, known_categories: Collection[str] | None,
               known_services: Collection[str] | None, allow_open: bool = False) -> Drift | None:
    """Why the configured policy file is not the stored policy, or None when it is."""
    when = dt.datetime.fromtimestamp(stored.updated_at).isoformat(timespec="seconds")
    fields = {"seed": str(seed), "version": stored.version, "when": when, "by": stored.updated_by}
    try:
        policy = load_policy(seed, known_categories=known_categories, known_services=known_services,
                             allow_open=allow_open)
    except PolicyError as exc:
        return Drift(newer="invalid", error=exc.errors[0], **fields)
    if export_policy(policy, devices=False) == stored.text:
        return None  # the file's devices were seeded once; they are records of their own
    try:
        edited = os.stat(seed).st_mtime
    except OSError:
        edited = 0.0
    return Drift(newer="file" if edited > stored.updated_at else "store", **fields)


# --- the commands ------------------------------------------------------------------------------


class Commands:
    """The operations of the control protocol on one store, for the server or the CLI alone.

    `current_policy`, `current_lists` and `current_overrides` give what the checks are made
    against: the running snapshot in a server, the store and the compiled lists on disk in a CLI.
    `after_write` runs once a change is stored (a server applies it at once).
    """

    def __init__(self, store: Store, *, bundled: Bundled, known_categories: Collection[str] | None,
                 known_services: Collection[str] | None,
                 current_policy: Callable[[], Awaitable[Policy]],
                 current_lists: Callable[[], Awaitable[CompiledLists | None]],
                 current_overrides: Callable[[], Awaitable[list[Override]]] | None = None,
                 current_devices: Callable[[], Awaitable[DeviceBook]] | None = None,
                 after_write: Callable[[], Awaitable[None]] | None = None,
                 status: Callable[[], dict] | None = None,
                 via: str = "store", allow_open: bool = False) -> None:
        self.store = store
        self.bundled = bundled
        self.known_categories = known_categories
        self.known_services = known_services
        self.allow_open = allow_open  # dns.allow_open: class networks may cover the internet
        self.current_policy = current_policy
        self.current_lists = current_lists
        self.current_overrides = current_overrides or store.overrides
        self.current_devices = current_devices or self._stored_devices
        self.after_write = after_write
        self.status_extra = status
        self.via = via
        self._ops = {
            "status": self.status,
            "policy.get": self.policy_get,
            "policy.put": self.policy_put,
            "policy.diff": self.policy_diff,
            "override.add": self.override_add,
            "override.list": self.override_list,
            "override.cancel": self.override_cancel,
            "audit": self.audit,
        }

        self._ops.update(device_operations(self))

    async def handle(self, request: Any, actor: str) -> dict[str, Any]:
        """The response to one request; refusals and failures become `{"ok": false, ...}`."""
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": 'a request is a JSON object with an "op"'}
        operation = self._ops.get(request["op"])
        if operation is None:
            return {"ok": False, "error": f"unknown op {request['op']!r} "
                                          f"(known: {', '.join(self._ops)})"}
        try:
            return {"ok": True, "via": self.via, **await operation(request, actor)}
        except PolicyError as exc:
            return {"ok": False, "error": exc.errors[0], "errors": exc.errors}
        except NeedsForce as exc:
            return {"ok": False, "error": str(exc), "needs_force": True, "diff": exc.diff}
        except (ControlError, StoreError) as exc:
            return {"ok": False, "error": str(exc)}

    async def _stored_devices(self) -> DeviceBook:
        devices, _seq = await self.store.devices()
        return DeviceBook(devices)

    def add_operation(self, op: str, operation: Callable[[dict, str], Awaitable[dict]]) -> None:
        """An operation only the running server can carry out (e.g. `lists.refresh`)."""
        self._ops[op] = operation

    async def run(self, op: str, request: dict, actor: str) -> dict[str, Any]:
        """One operation with its refusals raised (ControlError, PolicyError, StoreError), for
        callers inside the server such as the REST API, which answer them in their own way."""
        return await self._ops[op]({**request, "op": op}, actor)

    async def status(self, request: dict, actor: str) -> dict[str, Any]:
        stored = await self.store.get_policy()
        result = {"version": await self.store.version(),
                  "policy_version": 0 if stored is None else stored.version}
        if self.status_extra is not None:
            result.update(self.status_extra())
        return result

    async def policy_get(self, request: dict, actor: str) -> dict[str, Any]:
        stored = await self.store.get_policy()
        return {"policy": None if stored is None else dataclasses.asdict(stored)}

    async def _plan(self, request: dict, actor: str):
        """What `policy.put` of this request would store: (policy, with_devices, book, previous,
        old policy or None, PolicyDiff). Refusals raised (PolicyError, ControlError)."""
        text = request.get("text")
        if not isinstance(text, str):
            raise ControlError(f'{request.get("op", "policy.put")} needs "text": the policy as YAML')
        source = str(request.get("source") or "import")
        data, policy = await asyncio.to_thread(self._parse, text, source)
        # Devices are records of their own: a file with a `devices:` section replaces the
        # enrolled devices with its own; a file without one keeps them (their classes must stay).
        with_devices = isinstance(data, dict) and "devices" in data
        if self.via == "store":  # the CLI alone: a stored policy may still hold its devices
            await migrate_devices(self.store, known_categories=self.known_categories,
                                  known_services=self.known_services, actor=actor)
        book = await self.current_devices()
        if not with_devices:
            orphaned = sorted(class_id for class_id in book.classes() if class_id not in policy.classes)
            if orphaned:
                shown = ", ".join(f"{name} ({book.count(name)})" for name in orphaned[:5])
                raise PolicyError([f"{source}: classes with enrolled devices are missing: {shown}; "
                                   "move or remove their devices first (`classguard device "
                                   "update|remove`), or give the file a devices: section"])
        previous = await self.store.get_policy()
        old = None if previous is None else await self.current_policy()
        diff = diff_policies(old, book, policy, policy.devices if with_devices else None)
        return policy, with_devices, book, previous, old, diff

    async def policy_diff(self, request: dict, actor: str) -> dict[str, Any]:
        """What `policy.put` of this text would change, changing nothing."""
        _policy, _with, _book, previous, _old, diff = await self._plan(request, actor)
        return {"version": 0 if previous is None else previous.version, "changed": False,
                "dry_run": True, "diff": diff.lines, "removals": diff.removals}

    async def policy_put(self, request: dict, actor: str) -> dict[str, Any]:
        expected = request.get("expected_version")
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise ControlError('"expected_version" must be a whole number')
        if request.get("dry_run"):
            return await self.policy_diff(request, actor)
        source = str(request.get("source") or "import")
        policy, with_devices, book, previous, old, diff = await self._plan(request, actor)
        if diff.removals and request.get("force") is not True:
            raise NeedsForce(f"{source}: this import removes {' and '.join(diff.removals)}; "
                             "nothing was changed: see the diff, then confirm with --force "
                             "(the REST API: ?force=true)", diff.lines)
        canonical = export_policy(policy, devices=False)
        count = len(policy.devices) if with_devices else len(book)
        policy_lines = PolicyDiff([line for line in diff.lines
                                   if not line[2:].startswith("device ")])
        device_lines = PolicyDiff([line for line in diff.lines if line[2:].startswith("device ")])
        before = after = ""
        if previous is not None:
            before = f"version {previous.version}: {summarize(old, devices=len(book))}"
            after = f"version {previous.version + 1}: {summarize(policy, old, devices=count)}"
            if not policy_lines.empty:
                after += "\n" + policy_lines.compact()
        stored = await self.store.put_policy(canonical, actor=actor, expected_version=expected,
                                             action="policy.import", before=before,
                                             after=after or f"version 1: "
                                                            f"{summarize(policy, devices=count)}")
        changed = previous is None or stored.version != previous.version
        if with_devices:
            put = [device for device in policy.devices.values()
                   if book.get(device.id) is None or device_to_record(book[device.id])
                   != device_to_record(device)]
            gone = [device_id for device_id in book if device_id not in policy.devices]
            if put or gone:
                summary = (f"{source}: {len(policy.devices)} devices ({len(put)} new or "
                           f"changed, {len(gone)} removed)")
                if not device_lines.empty:
                    summary += "\n" + device_lines.compact()
                try:
                    await self.store.change_devices(
                        put, gone, mode=SET, actor=actor, action="device.import", after=summary)
                except DeviceConflict as exc:
                    raise ControlError(f"the policy is stored (version {stored.version}) but not "
                                       f"its devices: {exc}") from None
                changed = True
        if changed and self.after_write is not None:
            await self.after_write()
        return {"version": stored.version, "changed": changed, "diff": diff.lines}

    def _parse(self, text: str, source: str):
        """(the YAML data, the Policy): in a thread, off the event loop."""
        try:
            data = parse_yaml(text, source)
        except YamlError as exc:
            raise PolicyError([str(exc)]) from None
        return data, parse_policy(data, source=source, known_categories=self.known_categories,
                                  known_services=self.known_services, allow_open=self.allow_open)

    async def override_add(self, request: dict, actor: str) -> dict[str, Any]:
        class_id, kind, minutes = request.get("class"), request.get("kind"), request.get("minutes")
        if kind not in ("pause", "allow"):
            raise ControlError('"kind" must be pause or allow')
        if isinstance(minutes, bool) or not isinstance(minutes, int) \
                or not 1 <= minutes <= MAX_OVERRIDE_MINUTES:
            raise ControlError(f"--minutes must be a whole number from 1 to {MAX_OVERRIDE_MINUTES}")
        policy = await self.current_policy()
        if not isinstance(class_id, str) or class_id not in policy.classes:
            close = difflib.get_close_matches(str(class_id), list(policy.classes), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ControlError(f"no class {class_id!r} in the policy ({hint}classes: "
                               f"{', '.join(policy.classes) or 'none'})")
        target = target_kind = None
        if kind == "allow":
            target, target_kind = await self.allow_target(request.get("target"), policy)
        now = time.time()
        override = Override(id=new_override_id(), class_id=class_id, kind=kind,
                            until=now + minutes * 60, target=target, target_kind=target_kind,
                            created_at=now, created_by=actor)
        await self.store.add_override(override, actor=actor)
        if self.after_write is not None:
            await self.after_write()
        return {"override": override_json(override)}

    async def allow_target(self, name: Any, policy: Policy) -> tuple[str, str]:
        """(target, "domain" | "service") for a temporary allow, or ControlError saying why not."""
        if not isinstance(name, str) or not name.strip():
            raise ControlError("allow needs a NAME: a domain name or a bundled service id")
        text = name.strip()
        service = self.bundled.services.get(text.lower())
        if service is not None:
            domains, target, target_kind = service.domains, service.id, "service"
        else:
            domain = normalize_domain(text)
            if domain is None or "." not in domain or is_ip(domain) or "/" in text:
                close = difflib.get_close_matches(text.lower(), list(self.bundled.services), n=1)
                hint = f" (did you mean the service {close[0]!r}?)" if close else ""
                raise ControlError(f"{text!r} is neither a domain name nor a bundled service id"
                                   f"{hint}")
            if public_suffix_kind(domain) is not None:
                raise ControlError(f"{text!r} is a public suffix, shared by unrelated sites; "
                                   f"allow one site such as 'example.{domain}'")
            domains, target, target_kind = (domain,), domain, "domain"
        locked = policy.locked_categories
        if locked:
            lists = await self.current_lists()
            if lists is None:
                raise ControlError("cannot check the locked categories: no lists are compiled "
                                   "yet (run `classguard lists update`)")
            for domain in domains:
                categories = lists.categories_of(domain)
                hit = next((category for category in locked if category in categories), None)
                if hit is not None:
                    listed = categories[hit]
                    what = f"{domain} (of the service {target})" if target_kind == "service" \
                        else domain
                    raise ControlError(f"{what} is in the locked category {hit!r} (listed as "
                                       f"{listed}); a temporary allow cannot open it, only the "
                                       "class allow list in the policy can")
        return target, target_kind

    async def override_list(self, request: dict, actor: str) -> dict[str, Any]:
        now = time.time()
        overrides = [item for item in await self.current_overrides() if item.until > now]
        return {"overrides": [override_json(item) for item in overrides]}

    async def override_cancel(self, request: dict, actor: str) -> dict[str, Any]:
        override_id = request.get("id")
        if not isinstance(override_id, str) or not override_id:
            raise ControlError("override.cancel needs an id (see classguard override list)")
        try:
            override = await self.store.cancel_override(override_id, actor=actor)
        except NotFound as exc:
            raise ControlError(str(exc)) from None
        if self.after_write is not None:
            await self.after_write()
        return {"override": override_json(override)}

    async def audit(self, request: dict, actor: str) -> dict[str, Any]:
        limit = request.get("limit", 100)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ControlError('"limit" must be a whole number above 0')
        entries = await self.store.audit(limit)
        return {"entries": [dataclasses.asdict(entry) for entry in entries]}




# --- the client side ---------------------------------------------------------------------------


async def request(state_dir: Path, message: dict[str, Any], *,
                  timeout: float = 60.0) -> dict[str, Any] | None:
    """Send one request to the server of `state_dir`; None when no server listens there."""
    path = socket_path(state_dir)
    if not path.exists():
        return None
    try:
        with _addressable(path) as address:
            reader, writer = await asyncio.open_unix_connection(address, limit=MAX_MESSAGE)
    except (FileNotFoundError, ConnectionRefusedError):
        return None  # a socket left by a server that has stopped
    except PermissionError:
        raise ControlError(f"{path}: permission denied; run this as the user that runs "
                           "classguard serve") from None
    try:
        writer.write(json.dumps(message).encode("utf-8") + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (ConnectionError, asyncio.TimeoutError) as exc:
        raise NoAnswer(f"the server on {path} did not answer ({exc or 'timeout'})") from None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise NoAnswer(f"the server on {path} closed the connection without answering")
    try:
        response = json.loads(line)
    except ValueError:
        raise ControlError(f"the server on {path} answered something that is not JSON") from None
    if not isinstance(response, dict):
        raise ControlError(f"the server on {path} answered something that is not a JSON object")
    return response


@contextlib.contextmanager
def _addressable(path: Path) -> Iterator[str]:
    """A name for `path` that fits in a Unix socket address (108 bytes): the path itself, or the
    same file reached through /proc/self/fd when the state_dir's path is longer."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# --- the server side ---------------------------------------------------------------------------


class ControlPlane:
    """A running server's link to the store: it answers the control socket and applies store
    changes to the running state (RuntimeState), by polling the store's version.

    Only this watcher reads the store; DNS answers come from `state.snapshot` alone.
    """

    def __init__(self, store: Store, state, boot: Boot, *, state_dir: Path, bundled: Bundled,
                 known_categories: Collection[str] | None, known_services: Collection[str] | None,
                 seed: Path, seed_configured: bool, store_abilities: StoreAbilities,
                 poll_interval: float = POLL_INTERVAL, allow_open: bool = False) -> None:
        self.store = store
        self.store_abilities = store_abilities
        self.allow_open = allow_open
        self.state = state
        self.state_dir = Path(state_dir)
        self.known_categories = known_categories
        self.known_services = known_services
        self.seed = seed
        self.seed_configured = seed_configured
        self.poll_interval = poll_interval
        self.applied_version = boot.version
        # the store's generation (a Redis store adopting another instance's rebuild of a lost
        # store): a change of it means everything is read again, even at an equal version
        self.applied_generation = self._store_generation()
        self.policy_version = boot.policy_version
        self.devices_seq = boot.devices_seq  # the devices' sequence the running book is at
        self.overrides = boot.overrides
        self.drift = boot.drift
        self.serving_socket = False
        self.commands = Commands(
            store, bundled=bundled, known_categories=known_categories,
            known_services=known_services, current_policy=self._policy,
            current_lists=self._lists, current_overrides=self._overrides,
            current_devices=self._devices, after_write=self._apply_now, status=self._status,
            via="server", allow_open=allow_open)
        self._server: asyncio.base_events.Server | None = None
        self._lock_fd: int | None = None
        self._socket_inode: int | None = None
        self._task: asyncio.Task | None = None
        self._sync_lock: asyncio.Lock | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        # Erasing a device (SPEC §8) reaches every process: devices removed from the policy wait
        # here until this process has dropped its buffers of the erased ones (privacy.gdpr).
        self.query_log = None  # the service's, when it has one
        self._removed: set[str] = set()
        self._removed_since = time.time()  # the previous policy's time: erasures are newer
        self.commands.flush_buffers = self._flush_buffers

    async def _policy(self) -> Policy:
        return self.state.snapshot.policy

    async def _lists(self) -> CompiledLists | None:
        return self.state.snapshot.lists

    async def _overrides(self) -> list[Override]:
        return list(self.state.snapshot.overrides)

    async def _devices(self) -> DeviceBook:
        return self.state.snapshot.policy.devices

    def _store_generation(self) -> int:
        recovery = self.store_abilities.recovery
        return 0 if recovery is None else recovery.generation

    def _status(self) -> dict[str, Any]:
        status = {"pid": os.getpid(), "applied_version": self.applied_version,
                  "policy_drift": None if self.drift is None else str(self.drift)}
        counted = self.store_abilities.counters  # the Redis store's outages, losses, drops
        if counted is not None:
            status["store"] = {"available": counted.available, **counted.counters}
        return status

    async def start(self) -> None:
        self._sync_lock = asyncio.Lock()
        sock = self._bind()
        if sock is not None:
            self._server = await asyncio.start_unix_server(self._serve_connection, sock=sock,
                                                           limit=MAX_MESSAGE)
            self.serving_socket = True
            log.info("control socket: %s", socket_path(self.state_dir))
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()
            self._server = None
            path = socket_path(self.state_dir)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == self._socket_inode:
                    path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _bind(self) -> socket.socket | None:
        """The listening socket, owner-only (0600) from the moment it has its name; None when
        another server on this state_dir answers the socket already."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.state_dir / SOCKET_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            log.info("another classguard server answers the control socket of %s; this one "
                     "follows the store", self.state_dir)
            return None
        path = socket_path(self.state_dir)
        temporary = path.with_name(f".{SOCKET_NAME}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _addressable(temporary) as address:
                sock.bind(address)
            os.chmod(temporary, 0o600)
            os.replace(temporary, path)  # over a socket left by a server that died
            sock.listen(64)
            sock.setblocking(False)
            self._socket_inode = os.stat(path).st_ino
        except BaseException:
            sock.close()
            os.close(lock_fd)
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise
        self._lock_fd = lock_fd
        return sock

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        actor = _peer_user(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_MESSAGE
                    await self._send(writer, {"ok": False, "error": "request too long"})
                    break
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    response = {"ok": False, "error": "a request is one JSON object on one line"}
                else:
                    try:
                        response = await self.commands.handle(message, actor)
                    except Exception as exc:  # a bug: said on the socket, logged here
                        log.exception("control request failed")
                        response = {"ok": False, "error": f"internal error: {exc}"}
                await self._send(writer, response)
        except ConnectionError:
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        writer.write(json.dumps(response, ensure_ascii=False).encode("utf-8") + b"\n")
        await writer.drain()

    async def _apply_now(self) -> None:
        """After a write made through the socket: the change is stored, so a failure to read it
        back is only logged (the next poll tries again), never reported as a failed command."""
        try:
            await self.sync()
        except (StoreError, OSError) as exc:
            log.error("cannot read the store back, the next poll tries again: %s", exc)

    async def _poll(self) -> None:
        # A store that publishes its changes (Redis) nudges the watcher at once; the poll is what
        # guarantees that a change arrives even when a notification is lost.
        changes = self.store_abilities.changes
        nudge: asyncio.Event | None = changes.subscribe() if changes is not None else None
        while True:
            if nudge is None:
                await asyncio.sleep(self.poll_interval)
            else:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
                # arrives as the event is set (Redis answering again while the server stops), and
                # the server's stop would then wait forever for this watcher.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await nudge.wait()
                nudge.clear()
            try:
                await self.sync()
            except StoreUnavailable:
                pass  # said once by the store; the running state stays until it is back
            except (StoreError, OSError) as exc:
                log.error("cannot read the store, the running state stays: %s", exc)
            except Exception:  # a bug must not end the watcher: changes would stop arriving
                log.exception("applying a store change failed; the running state stays")

    async def sync(self) -> None:
        """Apply what changed in the store since the last look (a no-op when nothing did)."""
        assert self._sync_lock is not None, "start() first"
        async with self._sync_lock:
            version = await self.store.version()
            generation = self._store_generation()  # after version(): it may move it
            if version == self.applied_version and generation == self.applied_generation:
                await self._forget_erased()  # one that failed is tried again at each look
                return
            stored = await self.store.get_policy()
            if stored is not None and (stored.version != self.policy_version
                                       or generation != self.applied_generation):
                await self._apply_policy(stored)
            overrides = tuple(await self.store.overrides())
            if overrides != self.overrides:
                self.state.replace_overrides(overrides)
                self.overrides = overrides
                log.info("overrides in force: %s",
                         ", ".join(_describe(item) for item in overrides) or "none")
            await self._apply_devices(whole=generation != self.applied_generation)
            if self.store_abilities.recovery is not None:
                await self.store_abilities.recovery.remember()
            self.applied_version, self.applied_generation = version, generation
            await self._forget_erased()

    async def _apply_policy(self, stored: StoredPolicy) -> None:
        self.policy_version = stored.version  # a policy that fails is reported once, not each poll
        try:
            policy = await asyncio.to_thread(parse_stored, stored,
                                             known_categories=self.known_categories,
                                             known_services=self.known_services,
                                             allow_open=self.allow_open)
        except PolicyError as exc:
            log.error("stored policy version %d does not validate, the running policy stays: %s",
                      stored.version, exc.errors[0])
            return
        book = self.state.snapshot.policy.devices  # devices are records of their own: kept
        policy = dataclasses.replace(policy, devices=book)
        self.state.replace_policy(policy)
        log.info("policy version %d applied (%s, by %s)", stored.version, summarize(policy),
                 stored.updated_by)
        if self.seed_configured:
            self.drift = await asyncio.to_thread(seed_drift, self.seed, stored,
                                                 self.known_categories, self.known_services,
                                                 self.allow_open)

    async def _apply_devices(self, *, whole: bool = False) -> None:
        """The device records changed since the sequence applied, applied to the running book
        one by one (the client and token indexes follow; nothing else is rebuilt); all of them,
        compared with the book, when the store no longer knows what changed since then."""
        changes = None if whole else await self.store.device_changes(self.devices_seq)
        if changes is None:
            devices, seq = await self.store.devices()
            book = self.state.snapshot.policy.devices
            fresh = {device.id: device for device in devices}
            delta: list[tuple[str, Device | None]] = [
                (device_id, None) for device_id in book if device_id not in fresh]
            delta += [(device.id, device) for device in devices if book.get(device.id) != device]
        else:
            delta, seq = changes
        if delta:
            removed = self.state.apply_devices(delta)  # from here no answer counts for removed ones
            self._removed |= removed
            log.info("devices: %d changed (sequence %d, %d enrolled)", len(delta), seq,
                     len(self.state.snapshot.policy.devices))
        self.devices_seq = seq

    async def _forget_erased(self) -> None:
        """Of the devices removed from the policy, the erased ones: this process drops what it
        buffers of them and erases the store again (privacy.gdpr.forget_erased). A store that
        cannot answer now keeps them for the next look."""
        if not self._removed:
            return

        removed, since = set(self._removed), self._removed_since
        try:
            erased = await gdpr.erased_among(self.store, removed, since)
            if erased:
                await gdpr.forget_erased(self.store, erased, query_log=self.query_log,
                                         screen_time=self.state.screen_time)
                log.info("erased device(s) %s: their buffered data dropped, the store erased "
                         "again", ", ".join(sorted(erased)))
        except (StoreError, OSError) as exc:
            log.warning("erasing the removed devices' buffered data waits for the store: %s", exc)
            return
        self._removed -= removed
        self._removed_since = time.time() - 1.0

    async def _flush_buffers(self) -> None:
        """What this process holds of the last answers, written (before an erasure, so that
        its counts include them)."""
        if self.query_log is not None:
            await self.query_log.flush()
        tracker = self.state.screen_time
        if tracker.store is not None:
            await tracker.flush(self.state.clock())


def _describe(override: Override) -> str:
    target = f" {override.target}" if override.target else ""
    return f"{override.kind}{target} for {override.class_id} (id {override.id})"


def _peer_user(writer: asyncio.StreamWriter) -> str:
    """The OS user at the other end of the socket (SO_PEERCRED), as the audit log names it."""
    sock = writer.get_extra_info("socket")
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return "unknown"
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return _user_name(uid)


# --- the CLI on its own (no server on this state_dir) --------------------------------------------


def local_commands(store: Store, *, bundled: Bundled, known_categories: Collection[str] | None,
                   known_services: Collection[str] | None, seed: Path,
                   load_lists: Callable[[], CompiledLists | None],
                   allow_open: bool = False) -> Commands:
    """Commands run by the CLI itself on the store (under its lock), checked against the stored
    policy (the seed file's while the store is empty) and the lists compiled on disk."""

    async def current_policy() -> Policy:
        return await stored_or_seed_policy(store, seed=seed, known_categories=known_categories,
                                           known_services=known_services, allow_open=allow_open)

    async def current_lists() -> CompiledLists | None:
        return await asyncio.to_thread(load_lists)

    return Commands(store, bundled=bundled, known_categories=known_categories,
                    known_services=known_services, current_policy=current_policy,
                    current_lists=current_lists, via="store", allow_open=allow_open)


async def stored_or_seed_policy(store: Store, *, seed: Path,
                                known_categories: Collection[str] | None,
                                known_services: Collection[str] | None,
                                allow_open: bool = False) -> Policy:
    """The policy a server on this store runs (or would run when it starts: the seed file's)."""
    stored = await store.get_policy()
    if stored is None:
        return await asyncio.to_thread(load_policy, seed, known_categories=known_categories,
                                       known_services=known_services, allow_open=allow_open)
    policy = await asyncio.to_thread(parse_stored, stored, known_categories=known_categories,
                                     known_services=known_services, allow_open=allow_open)
    if policy.devices:  # stored before devices were records of their own, not migrated yet
        return policy
    devices, _seq = await store.devices()
    return dataclasses.replace(policy, devices=DeviceBook(devices))
