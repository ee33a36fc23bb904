"""A server configured without DoH, metrics, a dashboard, https upstreams or list URLs does not
load the HTTP stack only those need (aiohttp and its C extensions: ~14 MiB of every worker's
memory; docs/scaling.md). Checked on a running `classguard serve`, from what it has mapped."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import PUPILS
from tests.serving import addresses, ask, start_server, write_school


def mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def test_a_plain_server_loads_no_http_stack(tmp_path, upstream):
    port = write_school(tmp_path, upstream.url)
    server = await start_server(tmp_path, port)
    try:
        assert addresses(await ask(port, "example.com", PUPILS)) == ["93.184.215.14"]
        maps = mapped_files(server.process.pid)
        assert "/aiohttp/" not in maps and "/multidict/" not in maps and "/yarl/" not in maps
        assert "uvloop" in maps  # the check reads the right process
    finally:
        await server.stop()
