"""Devices as records of their own (issue 17): a device change is one small write of that
device, applied by every running server as that change, never a parse or a rewrite of the whole
policy; a policy stored with a `devices:` section moves them out once; `policy import` keeps the
enrolled devices unless its file has a `devices:` section."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import time

import pytest

from admin import control as control_module
from admin.control import ControlPlane, load_or_seed
from admin.errors import ControlError, NeedsForce
from blocklists.bundled import load_bundled
from policies.loader import PolicyError
from resolver.state import RuntimeState
from store.embedded import EmbeddedStore
from store.protocol import StoreAbilities
from store.redis_backend import RedisStore
from tests.store_fixtures import needs_redis, redis_server  # noqa: F401 (fixture)

CLASSES = 20
POLICY = "classes:\n" + "".join(
    f"  c{n}: {{networks: ['10.{n}.0.0/16']}}\n" for n in range(CLASSES))


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def entry(n: int) -> dict:
    return {"id": f"tab-{n:05d}", "class": f"c{n % CLASSES}", "token_sha256": digest(str(n)),
            "addresses": [f"10.200.{n // 250}.{n % 250 + 1}"]}


@pytest.fixture
def bundled():
    return load_bundled()


async def plane(store, folder, bundled) -> ControlPlane:
    """A running server's state and watcher on `store` (no DNS listener: the state is what it
    answers from)."""
    seed = folder / "policies.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    seed.write_text(POLICY)
    abilities = StoreAbilities.of(store)
    boot = await load_or_seed(store, recovery=abilities.recovery, seed=seed, seed_configured=False,
                              known_categories=None, known_services=None)
    state = RuntimeState(boot.policy, None, bundled)
    control = ControlPlane(store, state, boot, state_dir=folder / "state", bundled=bundled,
                           known_categories=None, known_services=None, seed=seed,
                           seed_configured=False, store_abilities=abilities, poll_interval=0.05)
    await control.start()
    return control


def device_at(control: ControlPlane, address: str) -> str | None:
    client = control.state.clients.identify(address)
    return None if client is None else client.device_id


class Counted:
    """What a device change costs: whole-policy parses, policy writes, device deltas applied."""

    def __init__(self, monkeypatch, control: ControlPlane) -> None:
        self.parses = self.policy_writes = 0
        self.applied: list[int] = []
        real_parse, real_put = control_module.parse_stored, control.store.put_policy
        real_apply = control.state.apply_devices

        def parse(*args, **kwargs):
            self.parses += 1
            return real_parse(*args, **kwargs)

        async def put(*args, **kwargs):
            self.policy_writes += 1
            return await real_put(*args, **kwargs)

        def apply(changes):
            self.applied.append(len(changes))
            return real_apply(changes)

        monkeypatch.setattr(control_module, "parse_stored", parse)
        monkeypatch.setattr(control.store, "put_policy", put)
        monkeypatch.setattr(control.state, "apply_devices", apply)

    def reset(self) -> None:
        self.parses = self.policy_writes = 0
        self.applied.clear()


async def test_the_5001st_device_costs_what_the_first_did(tmp_path, monkeypatch, bundled):
    control = await plane(EmbeddedStore(tmp_path / "state"), tmp_path, bundled)
    try:
        counted = Counted(monkeypatch, control)
        first = await control.commands.run("device.add", entry(0), "admin")
        assert (counted.parses, counted.policy_writes, counted.applied) == (0, 0, [1])
        assert control.state.clients.identify("10.200.0.1").device_id == "tab-00000"

        await control.commands.run("device.import", {"devices": [entry(n) for n in range(1, 5000)]},
                                   "admin")
        assert len(control.state.snapshot.policy.devices) == 5000
        counted.reset()
        engine = control.state.engine
        store_json = (tmp_path / "state" / "store.json").stat()
        last = await control.commands.run("device.add", entry(5000), "admin")
        # the same cost as the first: no parse, no policy write, one device applied
        assert (counted.parses, counted.policy_writes, counted.applied) == (0, 0, [1])
        assert (tmp_path / "state" / "store.json").stat().st_mtime_ns == store_json.st_mtime_ns
        assert control.state.engine is engine  # the policy's engine (and its memo) stays
        assert last["version"] > first["version"]
        client = control.state.clients.identify("10.200.20.1")
        assert (client.device_id, client.class_id) == ("tab-05000", "c0")
        assert control.state.snapshot.policy.devices.by_token(digest("5000")).id == "tab-05000"

        # a move, a rotation, a revocation, a removal: each one device, nothing else
        counted.reset()
        await control.commands.run("device.update", {"id": "tab-05000", "class": "c3"}, "admin")
        await control.commands.run("device.rotate", {"tokens": {"tab-05000": digest("new")}},
                                   "admin")
        await control.commands.run("device.revoke", {"id": "tab-04999"}, "admin")
        await control.commands.run("device.remove", {"id": "tab-04998"}, "admin")
        assert (counted.parses, counted.policy_writes, counted.applied) == (0, 0, [1, 1, 1, 1])
        assert control.state.clients.identify("10.200.20.1").class_id == "c3"
        assert control.state.snapshot.policy.devices.by_token(digest("5000")) is None
        assert control.state.snapshot.policy.devices.by_token(digest("new")).id == "tab-05000"
        assert control.state.clients.identify("10.200.19.249") is None  # its address is free
        actions = [item.action for item in await control.store.audit(5)]
        assert actions == ["device.remove", "device.revoke", "device.rotate", "device.update",
                           "device.add"]
        with pytest.raises(ControlError, match="already belongs to device 'tab-00001'"):
            await control.commands.run("device.add", {**entry(9000), "addresses": ["10.200.0.2"]},
                                       "admin")
    finally:
        await control.stop()
        await control.store.close()


async def test_a_change_on_another_process_arrives_as_that_change(tmp_path, monkeypatch, bundled):
    """The CLI (or another server) writes the store; the running server's watcher applies that
    device alone within a second, without reading the policy again."""
    control = await plane(EmbeddedStore(tmp_path / "state"), tmp_path, bundled)
    try:
        counted = Counted(monkeypatch, control)
        other = EmbeddedStore(tmp_path / "state")
        from store.records import ADD, device_from_record  # noqa: PLC0415 (test-local)
        device = device_from_record({**entry(7), "class": "c7"})
        await other.change_devices([device], mode=ADD, actor="cli", action="device.add")
        deadline = time.monotonic() + 1.0
        while device_at(control, "10.200.0.8") is None:
            assert time.monotonic() < deadline, "not applied within a second"
            await asyncio.sleep(0.02)
        assert (counted.parses, counted.applied) == (0, [1])
        await other.close()
    finally:
        await control.stop()
        await control.store.close()


@needs_redis
async def test_a_device_added_on_instance_a_is_served_on_b_within_a_second(
        tmp_path, monkeypatch, bundled, redis_server):  # noqa: F811
    redis_server.command("FLUSHALL")
    a = await plane(RedisStore(redis_server.url, state_dir=tmp_path / "a" / "state"),
                    tmp_path / "a", bundled)
    b = await plane(RedisStore(redis_server.url, state_dir=tmp_path / "b" / "state"),
                    tmp_path / "b", bundled)
    try:
        await a.commands.run("device.import", {"devices": [entry(n) for n in range(300)]}, "admin")
        deadline = time.monotonic() + 2.0
        while len(b.state.snapshot.policy.devices) < 300:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        counted = Counted(monkeypatch, b)
        started = time.monotonic()
        await a.commands.run("device.add", {**entry(300), "class": "c5"}, "admin")
        while device_at(b, "10.200.1.51") is None:
            assert time.monotonic() - started < 1.0, "not on instance B within a second"
            await asyncio.sleep(0.01)
        client = b.state.clients.identify("10.200.1.51")
        assert (client.device_id, client.class_id) == ("tab-00300", "c5")
        assert (counted.parses, counted.applied) == (0, [1])  # B read that device, nothing else
        await a.commands.run("device.remove", {"id": "tab-00300"}, "admin")
        while "tab-00300" in b.state.snapshot.policy.devices:
            assert time.monotonic() - started < 2.0
            await asyncio.sleep(0.01)
        assert device_at(b, "10.200.1.51") is None
        assert counted.parses == 0
    finally:
        for control in (a, b):
            await control.stop()
            await control.store.close()


async def test_a_policy_that_held_its_devices_moves_them_out_once(tmp_path, bundled):
    store = EmbeddedStore(tmp_path / "state")
    legacy = POLICY + "devices:\n" + "".join(
        f"  tab-{n}: {{class: c{n}, token_sha256: \"{digest(str(n))}\", addresses: [10.200.0.{n + 1}]}}\n"
        for n in range(3))
    await store.put_policy(legacy, actor="old classguard")
    control = await plane(store, tmp_path, bundled)
    try:
        devices, _ = await store.devices()
        assert [device.id for device in devices] == ["tab-0", "tab-1", "tab-2"]
        stored = await store.get_policy()
        assert "devices:" not in stored.text and stored.version == 2
        actions = [item.action for item in await store.audit(3)]
        assert actions[:2] == ["policy.migrate", "device.migrate"]
        assert control.state.clients.identify("10.200.0.2").device_id == "tab-1"
        # once: a second start finds nothing to move
        again = await load_or_seed(store, recovery=None, seed=tmp_path / "policies.yaml",
                                   seed_configured=False, known_categories=None,
                                   known_services=None)
        assert again.policy_version == 2 and len(again.policy.devices) == 3
    finally:
        await control.stop()
        await store.close()


async def test_policy_import_keeps_the_devices_unless_its_file_has_a_devices_section(
        tmp_path, bundled):
    control = await plane(EmbeddedStore(tmp_path / "state"), tmp_path, bundled)
    try:
        await control.commands.run("device.import", {"devices": [entry(n) for n in range(40)]},
                                   "admin")
        # without devices: the 40 stay
        renamed = POLICY.replace("c0: {", "c0: {name: Zero, ")
        result = await control.commands.run("policy.put", {"text": renamed}, "admin")
        assert result["changed"] and len(control.state.snapshot.policy.devices) == 40
        # a class with devices cannot go away under them: refused, nothing changed
        fewer = "classes:\n" + "".join(f"  c{n}: {{}}\n" for n in range(CLASSES - 1))
        with pytest.raises(PolicyError, match=r"classes with enrolled devices are missing: c19 \(2\)"):
            await control.commands.run("policy.put", {"text": fewer}, "admin")
        assert (await control.store.get_policy()).version == result["version"]
        # with a devices: section: the file's devices are the devices
        with_devices = fewer + "devices:\n  solo: {class: c1, addresses: [10.9.9.9]}\n"
        # (it removes 40 devices and a class that had some: only with its confirmation)
        with pytest.raises(NeedsForce, match=r"removes class c19 \(2 devices\) and 40 devices"):
            await control.commands.run("policy.put", {"text": with_devices}, "admin")
        await control.commands.run("policy.put", {"text": with_devices, "force": True}, "admin")
        assert list(control.state.snapshot.policy.devices) == ["solo"]
        assert control.state.clients.identify("10.9.9.9").device_id == "solo"
        assert device_at(control, "10.200.0.1") is None
        stored = await control.store.get_policy()
        assert "devices:" not in stored.text
    finally:
        await control.stop()
        await control.store.close()


def test_paging_returns_every_device_exactly_once():
    from policies.model import Device, DeviceBook  # noqa: PLC0415
    book = DeviceBook(Device(id=f"d{n:04d}", class_id=f"c{n % 7}",
                             addresses=(ipaddress.ip_address(f"10.1.{n // 200}.{n % 200}"),))
                      for n in range(1234))
    for class_id, query in ((None, ""), ("c3", ""), (None, "d01"), ("c2", "d1")):
        seen, cursor = [], None
        while True:
            page, cursor = book.page(class_id=class_id, query=query, limit=50, after=cursor)
            assert len(page) <= 50
            seen.extend(device.id for device in page)
            if cursor is None:
                break
        expected = [key for key in sorted(book) if (class_id is None or book[key].class_id == class_id)
                    and query in key]
        assert seen == expected
