"""A full disk under state_dir (a small tmpfs): every change is refused with one clear line (CLI
exit 1, API 507), DNS keeps answering, and what was stored before is intact (issues 19, 24)."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import aiohttp
import pytest

from policies.model import Override
from store.embedded import EmbeddedStore
from store.records import DiskFull, new_override_id
from tests.conftest import ede
from tests.ports import free_port
from tests.serving import addresses, ask, cli, start_server, write_school

PASSWORD = "a long enough password"


@pytest.fixture
def small_disk():
    """mount(8) a 4 MB tmpfs on a folder; skipped where this process may not mount."""
    mounted: list[Path] = []

    def mount(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of the file system under `folder`; the file that does."""
    filler = folder / "filler"
    with open(filler, "wb") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def pause(class_id: str, minutes: int = 30) -> Override:
    import time
    return Override(id=new_override_id(), class_id=class_id, kind="pause", target=None,
                    until=time.time() + minutes * 60, created_by="test", created_at=time.time())


async def test_the_embedded_store_refuses_a_change_and_keeps_what_it_holds(tmp_path, small_disk):
    state = small_disk(tmp_path / "disk") / "state"
    store = EmbeddedStore(state)
    kept = await store.add_override(pause("cm2-a"), actor="test")
    filler = fill(state.parent)
    with pytest.raises(DiskFull, match="full; nothing was changed"):
        await store.add_override(pause("cm2-b"), actor="test")
    filler.unlink()
    again = EmbeddedStore(state)
    assert [override.id for override in await again.overrides()] == [kept.id]
    assert not [path for path in state.iterdir() if path.name.endswith(".tmp")]


async def test_a_full_disk_is_one_line_for_the_cli_507_for_the_api_and_dns_answers(
        tmp_path, upstream, small_disk):
    port = write_school(tmp_path, upstream.url)
    board = free_port()
    with open(tmp_path / "classguard.yaml", "a") as config:
        config.write(f"dashboard: {{listen: \"127.0.0.1:{board}\"}}\n")
    state = small_disk(tmp_path / "state")
    created = await cli(tmp_path, "token", "create", "ci")
    assert created.returncode == 0, created.stderr
    bearer = {"Authorization": f"Bearer {created.stdout.strip()}"}
    server = await start_server(tmp_path, port)
    api = f"http://127.0.0.1:{board}/api/v1"
    try:
        filler = fill(state)
        added = await cli(tmp_path, "user", "add", "alice", "--role", "admin", "--password-stdin",
                          stdin=PASSWORD + "\n")
        assert added.returncode == 1
        assert added.stderr.count("\n") == 1 and "full" in added.stderr, added.stderr
        async with aiohttp.ClientSession() as http:
            async with http.post(api + "/classes/pupils/pause", json={"minutes": 5},
                                 headers=bearer) as refused:
                body = await refused.json()
                assert refused.status == 507, body
                assert "full" in body["error"]
            assert ede(await ask(port, "adult.example", "127.0.0.2")) == [(15, "category:adult")]
            assert addresses(await ask(port, "example.com", "127.0.0.2")) == ["93.184.215.14"]
            filler.unlink()
            async with http.post(api + "/classes/pupils/pause", json={"minutes": 5},
                                 headers=bearer) as paused:
                assert paused.status == 201, await paused.text()
        assert ede(await ask(port, "example.com", "127.0.0.2")) == [(15, "paused")]
    finally:
        await server.stop()
