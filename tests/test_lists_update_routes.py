"""`classguard lists update` goes where the lists are served: to the server running on the
state_dir (which serves the new lists at once), else into the configured store (Redis shares them
with every instance)."""

from __future__ import annotations

import pytest

from tests.conftest import ede
from tests.redis_server import MISSING_REASON, REDIS_SERVER, RedisServer
from tests.serving import ask, cli, start_server, write_school


async def test_lists_update_is_made_by_the_running_server(tmp_path, upstream):
    port = write_school(tmp_path, upstream.url)
    server = await start_server(tmp_path, port)
    try:
        assert ede(await ask(port, "new-adult.example", "127.0.0.2")) == []
        (tmp_path / "adult.txt").write_text("adult.example\nnew-adult.example\n")
        updated = await cli(tmp_path, "lists", "update")
        assert updated.returncode == 0, updated.stderr
        assert "refreshed its lists" in updated.stderr and "adult" in updated.stdout
        # served at once: the server compiled them itself, nothing waits for its next refresh
        assert ede(await ask(port, "new-adult.example", "127.0.0.2")) == [(15, "category:adult")]
    finally:
        await server.stop()


@pytest.mark.skipif(REDIS_SERVER is None, reason=MISSING_REASON)
async def test_lists_update_without_a_server_publishes_them_in_redis(tmp_path, upstream):
    with RedisServer(tmp_path / "redis") as redis:
        folder = tmp_path / "school"
        folder.mkdir()
        write_school(folder, upstream.url)
        with open(folder / "classguard.yaml", "a") as config:
            config.write(f"store: {redis.url}\n")
        updated = await cli(folder, "lists", "update")
        assert updated.returncode == 0, updated.stderr
        assert "published in Redis" in updated.stderr
        assert redis.command("EXISTS", "classguard:lists:manifest").strip() == b":1"
        # a second instance with an empty state_dir starts with them, compiling nothing
        other = tmp_path / "other"
        other.mkdir()
        other_port = write_school(other, upstream.url)
        (other / "adult.txt").unlink()  # it could not compile them itself
        with open(other / "classguard.yaml", "a") as config:
            config.write(f"store: {redis.url}\n")
        # the CLI there decides and checks locked categories with them too
        checked = await cli(other, "check", "www.adult.example", "--class", "pupils")
        assert checked.returncode == 0 and "category:adult" in checked.stdout, checked.stderr
        assert "compiling" not in checked.stderr
        refused = await cli(other, "override", "allow", "pupils", "adult.example", "--minutes", "5")
        assert refused.returncode == 1 and "locked category 'adult'" in refused.stderr
        server = await start_server(other, other_port)
        try:
            answer = await ask(other_port, "adult.example", "127.0.0.2")
            assert ede(answer) == [(15, "category:adult")]
        finally:
            await server.stop()
