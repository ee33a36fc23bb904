"""The Store contract (store.protocol.Store), each test run on both backends: the embedded store
and a real Redis. What only one backend does stays in test_store.py (files, kill -9, two
processes) and test_redis_store.py (outages, a lost store, lists)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import time

import pytest

from dashboard import auth
from policies.model import Device
from store.records import (
    ADD, SET, UPDATE, DeviceConflict, NotFound, Session, StoreError, VersionConflict,
)
from tests.dashboard_fixtures import quick_user
from tests.store_fixtures import another_client, pause, redis_server, store  # noqa: F401 (fixtures)

# --- policy, versions, overrides, audit --------------------------------------------------------


async def test_policy_versions_and_the_global_version(store):
    assert await store.get_policy() is None and await store.version() == 0
    first = await store.put_policy("classes: {}\n", actor="alice")
    assert (first.version, first.updated_by, first.text) == (1, "alice", "classes: {}\n")
    assert abs(first.updated_at - time.time()) < 5
    after_first = await store.version()
    assert after_first > 0
    # the same text again is no change: no new version, nothing audited
    assert (await store.put_policy("classes: {}\n", actor="bob")).version == 1
    assert await store.version() == after_first
    assert len(await store.audit()) == 1
    second = await store.put_policy("classes: {a: {}}\n", actor="bob", expected_version=1)
    assert second.version == 2 and await store.version() > after_first
    # an override is a write too: the global version moves, the policy version does not
    before = await store.version()
    await store.add_override(pause(), actor="carol")
    assert await store.version() > before and (await store.get_policy()).version == 2
    # another store object on the same state (another process, another instance) sees the same
    other = another_client(store)
    try:
        assert (await other.get_policy()).text == "classes: {a: {}}\n"
        assert await other.version() == await store.version()
    finally:
        await other.close()


async def test_a_stale_versioned_write_is_refused(store):
    with pytest.raises(VersionConflict):
        await store.put_policy("classes: {}\n", actor="a", expected_version=3)
    await store.put_policy("classes: {}\n", actor="a", expected_version=0)  # only when empty
    with pytest.raises(VersionConflict) as conflict:
        await store.put_policy("classes: {x: {}}\n", actor="b", expected_version=0)
    assert (conflict.value.expected, conflict.value.actual) == (0, 1)
    await store.put_policy("classes: {x: {}}\n", actor="b", expected_version=1)
    with pytest.raises(VersionConflict, match="version 2, expected 1"):
        await store.put_policy("classes: {y: {}}\n", actor="c", expected_version=1)
    assert (await store.get_policy()).text == "classes: {x: {}}\n"


async def test_overrides_add_list_cancel_and_audit(store):
    short, long = pause("cm2-a", minutes=0.2 / 60), pause("cm2-b")
    await store.add_override(short, actor="t1")
    await store.add_override(long, actor="t1")
    assert [item.id for item in await store.overrides()] == [short.id, long.id]  # oldest first
    assert (await store.overrides())[1] == long  # every field back as written
    with pytest.raises(StoreError, match="exists already"):
        await store.add_override(long, actor="t1")
    await asyncio.sleep(0.25)
    assert [item.id for item in await store.overrides()] == [long.id]  # ended: not listed
    with pytest.raises(NotFound):
        await store.cancel_override(short.id, actor="t2")  # it has ended
    with pytest.raises(NotFound):
        await store.cancel_override("no-such-override", actor="t2")
    assert await store.cancel_override(long.id, actor="t2") == long
    assert await store.overrides() == []
    entries = await store.audit(limit=2)
    assert [(entry.actor, entry.action) for entry in entries] == [("t2", "override.cancel"),
                                                                  ("t1", "override.add")]
    assert long.id in entries[0].before and entries[0].after == "cancelled"
    assert len(await store.audit()) == 3


async def test_policy_writes_are_audited_newest_first(store):
    await store.put_policy("classes: {}\n", actor="a")
    await store.put_policy("classes: {b: {}}\n", actor="b", before="x", after="y")
    await store.put_policy("classes: {c: {}}\n", actor="c", action="policy.edit")
    entries = await store.audit()
    assert [(e.actor, e.action, e.before, e.after) for e in entries] == [
        ("c", "policy.edit", "version 2", "version 3"), ("b", "policy.import", "x", "y"),
        ("a", "policy.import", "", "version 1")]
    assert [entry.actor for entry in await store.audit(limit=2)] == ["c", "b"]


# --- screen time and a device's data -----------------------------------------------------------


async def test_screen_time_minutes_merge_by_or(store):
    merged = await store.merge_active_minutes("2026-03-02", {"tab-1": b"\x01\x00", "tab-2": b"\x80"})
    assert merged == {"tab-1": b"\x01\x00", "tab-2": b"\x80"}
    merged = await store.merge_active_minutes("2026-03-02", {"tab-1": b"\x02\x04"})
    assert merged == {"tab-1": b"\x03\x04", "tab-2": b"\x80"}
    assert await store.merge_active_minutes("2026-03-03", {}) == {}


def tablet(device_id: str, class_id: str = "cm2-a", token: str | None = None,
           addresses: tuple[str, ...] = ()) -> Device:
    return Device(id=device_id, class_id=class_id, token_sha256=token,
                  addresses=tuple(ipaddress.ip_address(text) for text in addresses))


async def test_device_data_then_erase_device(store):
    await store.put_policy("classes: {cm2-a: {}}\n", actor="admin")
    await store.change_devices([tablet("tablet-1", token="ab" * 32), tablet("tablet-2")],
                               mode=ADD, actor="admin", action="device.import", after="2 devices")
    await store.merge_active_minutes("2026-03-02", {"tablet-1": b"\x01\x02", "tablet-2": b"\x01"})
    assert await store.device_data("tablet-1") == {
        "device_record": {"class": "cm2-a", "token_sha256": "***"},  # no token shown
        "screen_time_minutes": {"2026-03-02": [0, 9]},
    }
    assert await store.device_data("nobody") == {"device_record": None, "screen_time_minutes": {}}
    version = await store.version()
    assert await store.erase_device("tablet-1", actor="dpo") == {"device_record": True,
                                                                 "screen_time_days": 1}
    assert await store.version() > version
    assert await store.device_data("tablet-1") == {"device_record": None,
                                                   "screen_time_minutes": {}}
    # the other device keeps its record and its minutes
    assert await store.device_data("tablet-2") == {"device_record": {"class": "cm2-a"},
                                                   "screen_time_minutes": {"2026-03-02": [0]}}
    assert (await store.get_policy()).version == 1  # the policy is not touched
    [entry] = await store.audit(1)
    assert (entry.actor, entry.action, entry.before, entry.after) == \
        ("dpo", "device.erase", "device tablet-1", "erased")
    version = await store.version()
    assert await store.erase_device("tablet-1", actor="dpo") == {"device_record": False,
                                                                 "screen_time_days": 0}
    assert await store.version() == version  # nothing left to erase: no change


async def test_devices_are_records_of_their_own(store):
    """Each change is one audited write of the devices it touches, checked whole (nothing is
    stored unless all of it can be), with its own sequence; the policy is not touched."""
    await store.put_policy("classes: {cm2-a: {}, cm2-b: {}}\n", actor="admin")
    assert await store.devices() == ([], 0)
    assert await store.device_changes(0) == ([], 0)
    seq = await store.change_devices([tablet("t1", token="a" * 64, addresses=("10.0.0.1",))],
                                     mode=ADD, actor="admin", action="device.add", after="t1")
    assert seq == 1
    second = tablet("t2", "cm2-b", token="b" * 64, addresses=("10.0.0.2", "2001:db8::2"))
    assert await store.change_devices([second], mode=ADD, actor="admin", action="device.add",
                                      after="t2") == 2
    devices, seq = await store.devices()
    assert seq == 2 and [device.id for device in devices] == ["t1", "t2"]
    assert devices[1] == second
    assert await store.device_changes(1) == ([("t2", second)], 2)
    assert (await store.audit(1))[0].action == "device.add"
    assert (await store.get_policy()).version == 1

    version = await store.version()
    refusals = [
        ([tablet("t1")], ADD, "exists already"),
        ([tablet("t3")], UPDATE, "no device 't3'"),
        ([tablet("t3", token="a" * 64)], ADD, "that token belongs to device 't1'"),
        ([tablet("t3", addresses=("10.0.0.2",))], SET, "10.0.0.2 already belongs to device 't2'"),
        ([tablet("t3"), tablet("t4", token="b" * 64)], ADD, "belongs to device 't2'"),
    ]
    for put, mode, message in refusals:
        with pytest.raises(DeviceConflict, match=message):
            await store.change_devices(put, mode=mode, actor="admin", action="device.add")
    with pytest.raises(DeviceConflict, match="no device 'nobody'"):
        await store.change_devices([], ["nobody"], mode=UPDATE, actor="admin",
                                   action="device.remove")
    assert await store.version() == version and [d.id for d in (await store.devices())[0]] == \
        ["t1", "t2"]  # nothing of a refused change was stored (not even t3)

    # a move and a removal: the removed one's token and address are free again
    moved = dataclasses.replace(second, class_id="cm2-a", token_sha256="c" * 64)
    seq = await store.change_devices([moved], ["t1"], mode=UPDATE, actor="admin",
                                     action="device.update")
    assert seq == 3 and await store.version() > version
    assert await store.device_changes(2) == ([("t1", None), ("t2", moved)], 3) or \
        await store.device_changes(2) == ([("t2", moved), ("t1", None)], 3)
    again = tablet("t5", token="a" * 64, addresses=("10.0.0.1",))
    assert await store.change_devices([again], mode=ADD, actor="admin", action="device.add") == 4
    assert await store.device_changes(4) == ([], 4)
    assert await store.device_changes(9) is None  # ahead of the store: read them whole


# --- dashboard accounts ------------------------------------------------------------------------


async def test_users_are_stored_listed_and_audited_without_their_hash(store):
    assert await store.get_user("tom") is None and await store.users() == []
    tom = quick_user("tom", "teacher", ("cm2-a", "cm2-b"))
    await store.put_user(tom, actor="admin-os-user", action="user.add")
    await store.put_user(quick_user("alice", "admin"), actor="admin-os-user", action="user.add")
    assert await store.get_user("tom") == tom  # the classes come back as a tuple
    assert sorted(user.name for user in await store.users()) == ["alice", "tom"]
    reset = dataclasses.replace(tom, password_hash=auth.hash_password("x" * 12, n=2 ** 10),
                                sessions_after=time.time())
    await store.put_user(reset, actor="admin-os-user", action="user.reset")
    assert await store.get_user("tom") == reset
    entries = await store.audit(3)
    assert [entry.action for entry in entries] == ["user.reset", "user.add", "user.add"]
    assert entries[0].after == "user tom, role teacher, classes cm2-a, cm2-b"
    assert "scrypt$" not in json.dumps([dataclasses.asdict(entry) for entry in entries])


async def test_changed_and_removed_users_keep_their_language_and_are_audited(store):
    tom = dataclasses.replace(quick_user("tom", "teacher", ("cm2-a",)), language="en")
    await store.put_user(tom, actor="alice", action="user.add")
    await store.put_user(quick_user("alice", "admin"), actor="t", action="user.add")
    changed = await auth.change_user(store, "tom", actor="alice (dashboard)", known_classes=None,
                                     classes=["cm2-b"], disabled=True)
    assert await store.get_user("tom") == changed
    assert changed.language == "en" and changed.disabled and changed.classes == ("cm2-b",)
    [entry] = await store.audit(1)
    assert (entry.action, entry.actor) == ("user.change", "alice (dashboard)")
    assert entry.before == "user tom, role teacher, classes cm2-a, language en"
    assert entry.after == "user tom, role teacher, classes cm2-b, language en, disabled"
    await auth.remove_user(store, "tom", actor="alice (dashboard)")
    assert await store.get_user("tom") is None
    assert [user.name for user in await store.users()] == ["alice"]
    [entry] = await store.audit(1)
    assert (entry.action, entry.after) == ("user.remove", "")
    assert entry.before.startswith("user tom, role teacher, classes cm2-b")
    await store.delete_user("tom", actor="alice")  # nobody there: nothing audited
    assert (await store.audit(1))[0].action == "user.remove"
    assert len(await store.audit(10)) == 4


async def test_tokens_are_known_by_their_hash_and_revocable(store):
    text, record = await auth.create_token(store, "ci", actor="alice")
    assert await store.get_token(auth.sha256(text)) == record
    assert (await auth.token_user(store, text)).name == "ci"
    assert text not in repr(await store.tokens())
    await auth.revoke_token(store, record.id, actor="alice")
    assert await auth.token_user(store, text) is None
    [stored] = await store.tokens()
    assert stored.revoked and stored.id == record.id
    assert [entry.action for entry in await store.audit(2)] == ["token.revoke", "token.create"]


async def test_sessions_expire_and_end(store):
    live = Session(sha256="a" * 64, user="tom", csrf="c", expires=time.time() + 60)
    soon = Session(sha256="c" * 64, user="tom", csrf="c", expires=time.time() + 0.3)
    gone = Session(sha256="b" * 64, user="tom", csrf="c", expires=time.time() - 1)
    for session in (live, soon, gone):
        await store.put_session(session)
    assert await store.get_session(live.sha256) == live
    assert await store.get_session(soon.sha256) == soon
    assert await store.get_session(gone.sha256) is None
    await asyncio.sleep(0.4)
    assert await store.get_session(soon.sha256) is None  # it has expired meanwhile
    await store.delete_session(live.sha256)
    assert await store.get_session(live.sha256) is None
    await store.delete_session("d" * 64)  # none there: nothing happens
    assert await store.audit() == []  # sessions are not changes anyone audits


# --- backup and restore (issue 19, item 3) -----------------------------------------------------


async def test_import_audit_adds_a_backups_entries_in_time_order_once(store):
    from store.records import AuditEntry
    await store.put_policy("classes: {}\n", actor="now")
    older = [AuditEntry(at=1000.0, actor="a", action="x", before="", after="1"),
             AuditEntry(at=2000.0, actor="b", action="y", before="", after="2")]
    version = await store.version()
    assert await store.import_audit(older) == 2
    assert await store.import_audit(older) == 0  # not twice
    assert await store.version() == version
    entries = await store.audit()
    assert [entry.actor for entry in entries] == ["now", "b", "a"]  # newest first


async def test_a_backup_restores_the_whole_state(store):
    from admin import backup as backups
    from store.records import ApiToken
    await store.put_policy("classes: {cm2-a: {}}\n", actor="alice")
    await store.change_devices([Device(id="tab-1", class_id="cm2-a", token_sha256="ab" * 32,
                                       addresses=(ipaddress.ip_address("10.0.0.7"),))],
                               mode=ADD, actor="alice", action="device.add")
    await store.put_user(quick_user("tom", "teacher", ("cm2-a",)), actor="alice", action="user.add")
    await store.put_token(ApiToken(id="t1", name="ci", sha256="cd" * 32, created_at=1.0),
                          actor="alice", action="token.create")
    kept = await store.add_override(pause(), actor="tom")
    today = time.strftime("%Y-%m-%d")
    await store.merge_active_minutes(today, {"tab-1": (1 << 600).to_bytes(180, "little")})
    saved = backups.read_backup(json.loads(json.dumps(await backups.backup(store, days=(today,)))),
                                "b.json")
    assert saved["screen_time_minutes"] == {today: {"tab-1": [600]}}
    assert [item["actor"] for item in saved["audit"]][:2] == ["alice", "alice"]

    # what happens after the backup, then the restore
    await store.put_policy("classes: {other: {}}\n", actor="bob")
    await store.change_devices([Device(id="tab-2", class_id="other")], ["tab-1"], mode=SET,
                               actor="bob", action="device.import")
    await store.delete_user("tom", actor="bob")
    await store.put_user(quick_user("eve", "admin"), actor="bob", action="user.add")
    await store.put_token(ApiToken(id="t2", name="late", sha256="ef" * 32), actor="bob",
                          action="token.create")
    await store.cancel_override(kept.id, actor="bob")
    before = await store.version()
    assert not backups.empty(await backups.holds(store))
    await backups.restore(store, saved, actor="carol")
    assert await store.version() > before  # a running server's watcher applies it
    assert (await store.get_policy()).text == "classes: {cm2-a: {}}\n"
    devices, _seq = await store.devices()
    assert [(device.id, device.token_sha256, device.addresses) for device in devices] == \
        [("tab-1", "ab" * 32, (ipaddress.ip_address("10.0.0.7"),))]
    assert [user.name for user in await store.users()] == ["tom"]
    tokens = {token.id: token.revoked for token in await store.tokens()}
    assert tokens == {"t1": False, "t2": True}  # a token made since is revoked, not kept
    assert [item.id for item in await store.overrides()] == [kept.id]
    assert (await store.device_data("tab-1"))["screen_time_minutes"] == {today: [600]}
    actions = [entry.action for entry in await store.audit(1000)]
    assert "store.restore" in actions and actions.count("device.add") == 1


def test_a_bad_backup_is_refused_naming_the_place():
    from admin import backup as backups
    from admin.errors import ControlError
    with pytest.raises(ControlError, match="not a classguard backup"):
        backups.read_backup({"policy": None}, "b.json")
    document = {"format": "classguard-backup", "version": 1, "policy": None, "devices": [{"id": 1}],
                "users": [], "tokens": [], "overrides": [], "audit": []}
    with pytest.raises(ControlError, match=r"b.json: devices\[0\]: unreadable"):
        backups.read_backup(document, "b.json")
