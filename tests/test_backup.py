"""`classguard store backup|restore` (issue 19, item 3): an owner-only versioned file, a restore
that says what it replaces and needs --force on a store that is not empty, applied at once by a
running server, and a migration embedded → Redis through them."""

from __future__ import annotations

import json
import stat

from store.redis_backend import RedisStore
from tests.conftest import PUPILS
from tests.serving import SCHOOL_POLICY, addresses, ask, cli, start_server, write_school
from tests.store_fixtures import redis_server  # noqa: F401 (a fixture)


async def test_backup_restore_on_a_running_server_and_a_migration_to_redis(tmp_path, upstream,
                                                                        redis_server):
    upstream.add("other.example", "A", "198.51.100.8")
    port = write_school(tmp_path, upstream.url)
    with open(tmp_path / "classguard.yaml", "a") as config:
        config.write('doh: {public_url: "https://dns.example.org/dns-query"}\n')
    (tmp_path / "new.yaml").write_text(SCHOOL_POLICY.replace("denied.example", "other.example"))
    assert (await cli(tmp_path, "policy", "import", "new.yaml")).returncode == 0
    assert (await cli(tmp_path, "device", "add", "tab-1", "--class", "pupils")).returncode == 0
    assert (await cli(tmp_path, "user", "add", "tom", "--role", "teacher", "--class", "pupils",
                      "--password-stdin", stdin="a long enough password\n")).returncode == 0
    assert (await cli(tmp_path, "override", "pause", "staff", "--minutes", "30")).returncode == 0

    made = await cli(tmp_path, "store", "backup", "backup.json")
    assert made.returncode == 0, made.stderr
    assert "backup of policy version 1, 1 devices, 1 users, 0 API tokens, 1 overrides" in made.stdout
    assert stat.S_IMODE((tmp_path / "backup.json").stat().st_mode) == 0o600
    data = json.loads((tmp_path / "backup.json").read_text())
    assert (data["format"], data["version"]) == ("classguard-backup", 1)
    again = await cli(tmp_path, "store", "backup", "backup.json")
    assert again.returncode == 1 and "exists already" in again.stderr

    # the policy changes after the backup; a running server gets the backup's back at once
    assert (await cli(tmp_path, "policy", "import", "policies.yaml")).returncode == 0
    server = await start_server(tmp_path, port)
    try:
        assert addresses(await ask(port, "other.example", PUPILS)) == ["198.51.100.8"]
        refused = await cli(tmp_path, "store", "restore", "backup.json")
        assert refused.returncode == 1
        assert "is not empty: restoring backup.json replaces what it holds (policy version 2, " \
               "1 devices, 1 users" in refused.stderr and "--force" in refused.stderr
        restored = await cli(tmp_path, "store", "restore", "--force", "backup.json")
        assert restored.returncode == 0, restored.stderr
        for _ in range(50):
            if addresses(await ask(port, "other.example", PUPILS)) == ["0.0.0.0"]:
                break
            await __import__("asyncio").sleep(0.1)
        assert addresses(await ask(port, "other.example", PUPILS)) == ["0.0.0.0"]
    finally:
        await server.stop()

    # embedded → Redis: the same file restored into an empty Redis store
    redis_server.command("FLUSHALL")
    config = (tmp_path / "classguard.yaml").read_text()
    (tmp_path / "classguard.yaml").write_text(config + f"store: \"{redis_server.url}\"\n")
    moved = await cli(tmp_path, "store", "restore", "backup.json")
    assert moved.returncode == 0, moved.stderr
    assert "restored policy version 1, 1 devices, 1 users, 0 API tokens, 1 overrides" in moved.stdout
    redis = RedisStore(redis_server.url)
    try:
        assert "other.example" in (await redis.get_policy()).text
        assert [device.id for device in (await redis.devices())[0]] == ["tab-1"]
        assert [user.name for user in await redis.users()] == ["tom"]
        assert [item.class_id for item in await redis.overrides()] == ["staff"]
        assert any(entry.action == "device.add" for entry in await redis.audit(100))
    finally:
        await redis.close()
    bad = tmp_path / "bad.json"
    bad.write_text("{\"format\": \"classguard-backup\", \"version\": 9}")
    wrong = await cli(tmp_path, "store", "restore", "bad.json")
    assert wrong.returncode == 1 and "backup format version 9" in wrong.stderr
