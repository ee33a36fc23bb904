"""What only the embedded store does: its files (owner-only, pruned, a torn line or a damaged file),
and what a crash or a second writer does. The Store contract is test_store_contract.py's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from policies.model import Override
from store.embedded import EmbeddedStore
from store.records import StoreError, new_override_id

ROOT = Path(__file__).resolve().parent.parent


def pause(class_id: str = "cm2-a", minutes: float = 60, **fields) -> Override:
    now = time.time()
    return Override(id=new_override_id(), class_id=class_id, kind="pause", until=now + minutes * 60,
                    created_at=now, created_by="test", **fields)


def child(code: str) -> subprocess.Popen:
    """A Python child process running `code` with this checkout importable."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


async def test_ended_overrides_are_pruned_from_the_file_by_the_next_write(tmp_path):
    store = EmbeddedStore(tmp_path)
    short, long = pause("cm2-a", minutes=0.2 / 60), pause("cm2-b")
    await store.add_override(short, actor="t1")
    await store.add_override(long, actor="t1")
    time.sleep(0.25)
    assert [item["id"] for item in json.loads((tmp_path / "store.json").read_text())["overrides"]] \
        == [short.id, long.id]  # ended, not listed, but not written away yet
    await store.cancel_override(long.id, actor="t2")
    assert json.loads((tmp_path / "store.json").read_text())["overrides"] == []


async def test_files_are_owner_only_and_a_torn_audit_line_is_skipped(tmp_path):
    store = EmbeddedStore(tmp_path)
    await store.put_policy("classes: {}\n", actor="a")
    for name in ("store.json", "audit.jsonl", "store.lock"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    with open(tmp_path / "audit.jsonl", "a") as audit:
        audit.write('{"at": 1, "actor": "torn')  # a crash in the middle of an append
    (tmp_path / ".store.json.123.dead.tmp").write_text("half")  # a writer killed before rename
    await store.put_policy("classes: {b: {}}\n", actor="b")
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    assert [entry.actor for entry in await store.audit()] == ["b", "a"]


async def test_a_damaged_state_file_is_an_error_not_an_empty_store(tmp_path):
    (tmp_path / "store.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        await EmbeddedStore(tmp_path).get_policy()


WRITER = """\
import sys, time
from policies.model import Override
from store.embedded import EmbeddedStore
store = EmbeddedStore(sys.argv[1] if len(sys.argv) > 1 else {state!r})
for i in range(100000):
    now = time.time()
    override = Override(id=f"{tag}{{i}}", class_id="c", kind="pause", until=now + 3600, created_at=now)
    store.add_override_now(override, actor="writer")
    print("override", override.id, flush=True)
    stored = store.put_policy_now("classes: {{c%d: {{}}}}\\n" % i + "# padding\\n" * (i % 50), actor="writer")
    print("policy", stored.version, flush=True)
"""


def test_kill_9_in_a_burst_of_writes_loses_nothing_acknowledged(tmp_path):
    state = tmp_path / "state"
    acknowledged_ids: set[str] = set()
    last_version = 0
    for round_number, writes in enumerate((7, 23, 41)):
        process = child(WRITER.format(state=str(state), tag=f"r{round_number}-"))
        seen = 0
        while seen < writes:
            kind, value = process.stdout.readline().split()
            if kind == "override":
                acknowledged_ids.add(value)
            else:
                last_version = int(value)
            seen += 1
        process.send_signal(signal.SIGKILL)  # somewhere in the middle of its next writes
        assert process.wait() == -signal.SIGKILL  # killed, not finished
        process.stdout.close()
        process.stderr.close()
        store = EmbeddedStore(state)
        stored = store.read_state()  # parses, or raises
        assert acknowledged_ids <= {item.id for item in stored.overrides}
        assert stored.policy.version >= last_version
        assert stored.policy.text.startswith("classes: {c")
        audited = " ".join(entry.after for entry in store.read_audit(limit=100_000))
        assert all(f"(id {override_id})" in audited for override_id in acknowledged_ids)


LOCK_HOLDER = """\
import sys, time
from store.embedded import EmbeddedStore
store = EmbeddedStore({state!r})
with store._locked():
    print("locked", flush=True)
    time.sleep(0.6)
"""

ADDER = """\
import time
from policies.model import Override
from store.embedded import EmbeddedStore
store = EmbeddedStore({state!r})
for i in range(25):
    now = time.time()
    store.add_override_now(Override(id=f"{tag}{{i}}", class_id="c", kind="pause", until=now + 3600,
                                    created_at=now), actor="{tag}")
print("done", flush=True)
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    state = tmp_path / "state"
    holder = child(LOCK_HOLDER.format(state=str(state)))
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    EmbeddedStore(state).put_policy_now("classes: {}\n", actor="waiter")  # waits for the lock
    assert time.monotonic() - started > 0.3
    holder.communicate(timeout=10)
    adders = [child(ADDER.format(state=str(state), tag=tag)) for tag in ("a", "b")]
    outputs = [adder.communicate(timeout=30) for adder in adders]
    assert all(adder.returncode == 0 for adder in adders), outputs
    ids = {item.id for item in EmbeddedStore(state).read_state().overrides}
    assert ids == {f"{tag}{i}" for tag in "ab" for i in range(25)}
