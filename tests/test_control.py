"""The control socket: owner-only, a JSON line each way, and changes that reach the running server."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

from admin import control
from admin.control import os_user
from blocklists.settings import BlocklistSettings
from classguard.config import Config
from classguard.service import prepare
from policies.model import Override
from resolver.settings import DnsSettings
from store.embedded import EmbeddedStore
from tests.conftest import PUPILS, STAFF, TEST_LISTS, ede
from tests.serving import addresses, ask, cli, start_server, write_school


async def raw(path, *lines: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    answers = []
    try:
        for line in lines:
            writer.write(line)
            await writer.drain()
            answers.append(await asyncio.wait_for(reader.readline(), 5))
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


async def test_teacher_overrides_through_the_cli_reach_the_running_server(tmp_path, upstream):
    port = write_school(tmp_path, upstream.url)
    server = await start_server(tmp_path, port)
    try:
        sock = server.state_dir / "control.sock"
        mode = os.stat(sock).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

        assert addresses(await ask(port, "example.com", PUPILS)) == ["93.184.215.14"]
        paused = await cli(tmp_path, "override", "pause", "pupils", "--minutes", "30")
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.startswith("pupils paused until ") and "CET" in paused.stdout
        blocked = await ask(port, "example.com", PUPILS)  # at once: the server applied it
        assert addresses(blocked) == ["0.0.0.0"] and ede(blocked) == [(15, "paused")]
        assert addresses(await ask(port, "example.com", STAFF)) == ["93.184.215.14"]

        locked = await cli(tmp_path, "override", "allow", "pupils", "www.adult.example", "--minutes", "10")
        assert locked.returncode == 1 and len(locked.stderr.splitlines()) == 1
        assert "locked category 'adult'" in locked.stderr
        nonsense = await cli(tmp_path, "override", "allow", "pupils", "not a name", "--minutes", "10")
        assert nonsense.returncode == 1 and "neither a domain name nor a bundled service id" in nonsense.stderr

        allowed = await cli(tmp_path, "override", "allow", "pupils", "example.com", "--minutes", "10")
        assert allowed.returncode == 0, allowed.stderr
        assert addresses(await ask(port, "example.com", PUPILS)) == ["93.184.215.14"]  # pause but this
        still = await ask(port, "other.example", PUPILS)
        assert addresses(still) == ["0.0.0.0"] and ede(still) == [(15, "paused")]

        listed = await control.request(server.state_dir, {"op": "override.list"})
        assert listed["ok"] and listed["via"] == "server"  # what the server's state holds
        kinds = {item["kind"]: item for item in listed["overrides"]}
        assert set(kinds) == {"pause", "allow"} and kinds["allow"]["target"] == "example.com"
        table = await cli(tmp_path, "override", "list")
        assert table.stdout.splitlines()[0] == "id\tclass\tkind\ttarget\tends"
        assert f"{kinds['pause']['id']}\tpupils\tpause\t-\t" in table.stdout

        cancelled = await cli(tmp_path, "override", "cancel", kinds["pause"]["id"])
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
        assert ede(await ask(port, "other.example", PUPILS)) == []
        audit = await EmbeddedStore(server.state_dir).audit(limit=3)
        assert [entry.action for entry in audit] == ["override.cancel", "override.add", "override.add"]
        assert {entry.actor for entry in audit} == {os_user()}  # from the socket's peer credentials
    finally:
        log = await server.stop()
    assert "overrides in force" in log
    assert not (server.state_dir / "control.sock").exists()
    # Overrides survive a restart: the next server starts with them.
    config = Config(timezone="Europe/Paris", state_dir=server.state_dir, policies=tmp_path / "policies.yaml",
                    dns=DnsSettings(listen=("127.0.0.1:0",), upstreams=(upstream.url,)),
                    blocklists=BlocklistSettings(bundled=False))
    restarted = prepare(config)
    assert [(item.kind, item.target) for item in restarted.state.overrides] == [("allow", "example.com")]


async def test_protocol_answers_errors_as_json_and_applies_at_once(make_resolver):
    resolver = await make_resolver()
    service = resolver.service
    sock = service.config.state_dir / "control.sock"
    answers = await raw(sock, b"not json\n", b'{"op": "nope"}\n', b'["op"]\n',
                        b'{"op": "override.add", "class": "pupils", "kind": "pause", "minutes": 0}\n')
    decoded = [json.loads(answer) for answer in answers]
    assert [answer["ok"] for answer in decoded] == [False] * 4
    assert "JSON object" in decoded[0]["error"] and "unknown op 'nope'" in decoded[1]["error"]
    assert "from 1 to 1440" in decoded[3]["error"]

    bad = await control.request(service.config.state_dir, {
        "op": "policy.put", "source": "new.yaml",
        "text": "classes:\n  pupils:\n    networks: ['127.0.0.2/32']\n    block: [adultt]\n"})
    assert not bad["ok"] and bad["errors"][0].startswith("new.yaml:4: unknown category 'adultt'")
    assert (await resolver.query("denied.example", use_edns=0)).answer[0][0].to_text() == "0.0.0.0"

    good = await control.request(service.config.state_dir, {
        "op": "policy.put", "source": "new.yaml",
        "text": "classes:\n  pupils:\n    networks: ['127.0.0.2/32']\n    deny: [example.com]\n"})
    assert good["ok"] and good["changed"] and good["version"] == 2
    assert service.state.snapshot.policy.classes["pupils"].rules.deny == ("example.com",)
    assert ede(await resolver.query("example.com", use_edns=0)) == [(15, "deny")]
    status = await control.request(service.config.state_dir, {"op": "status"})
    assert status["ok"] and status["policy_version"] == 2 and status["pid"] == os.getpid()


async def test_a_direct_store_write_is_applied_within_a_second(make_resolver):
    resolver = await make_resolver()
    store = EmbeddedStore(resolver.service.config.state_dir)
    now = time.time()
    await store.add_override(Override(id="direct1", class_id="staff", kind="pause", until=now + 600,
                                      created_at=now), actor="someone")
    started = time.monotonic()
    while ede(await resolver.query("example.com", source=STAFF, use_edns=0)) != [(15, "paused")]:
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.05)
    assert resolver.service.state.overrides[0].id == "direct1"


async def test_one_server_per_state_dir_answers_the_socket(make_resolver):
    first = await make_resolver()
    second = await make_resolver()
    assert first.service.control.serving_socket and not second.service.control.serving_socket
    sock = first.service.config.state_dir / "control.sock"
    assert sock.exists()
    await first.service.control.stop()
    assert not sock.exists()
    assert await control.request(first.service.config.state_dir, {"op": "status"}) is None


async def test_a_state_dir_too_long_for_a_socket_address_still_works(tmp_path, upstream):
    state_dir = tmp_path / ("a-very-long-folder-name-" * 5) / "state"
    (tmp_path / "policy.yaml").write_text("classes:\n  staff:\n    networks: ['127.0.0.3/32']\n")
    config = Config(state_dir=state_dir, policies=tmp_path / "policy.yaml",
                    dns=DnsSettings(listen=("127.0.0.1:0",), upstreams=(upstream.url,)),
                    blocklists=BlocklistSettings(sources=TEST_LISTS, bundled=False))
    assert len(str(state_dir / "control.sock")) > 108
    service = prepare(config)
    await service.start()
    try:
        answer = await control.request(state_dir, {"op": "override.add", "class": "staff", "kind": "pause",
                                                   "minutes": 5})
        assert answer["ok"] and answer["via"] == "server"
        assert [item.class_id for item in service.state.overrides] == ["staff"]
    finally:
        await service.stop()


async def test_a_server_that_stops_before_answering_is_said_with_what_the_store_holds(tmp_path, upstream):
    """A device import cut by a kill answered only "closed the connection without answering"
    (issue 24): the command now says whether the change was made, from the store's version. The
    server here is a stand-in that takes the request and hangs up, as a killed one does."""
    write_school(tmp_path, upstream.url)
    seeded = await cli(tmp_path, "override", "pause", "pupils", "--minutes", "5")  # makes the store
    assert seeded.returncode == 0, seeded.stderr
    received: list[bytes] = []

    async def hang_up(reader, writer) -> None:
        received.append(await reader.readline())
        writer.close()

    server = await asyncio.start_unix_server(hang_up, str(tmp_path / "state" / "control.sock"))
    try:
        cut = await cli(tmp_path, "override", "pause", "pupils", "--minutes", "10")
    finally:
        server.close()
        await server.wait_closed()
    assert received and b"override" in received[0]
    assert cut.returncode == 1
    assert "closed the connection without answering" in cut.stderr
    assert "nothing was changed (the store is still at version" in cut.stderr
    assert cut.stderr.count("\n") == 1, cut.stderr
