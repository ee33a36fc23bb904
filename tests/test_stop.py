"""Stopping a server: quiet and whole, whatever its clients are doing."""

from __future__ import annotations

import asyncio

from tests.serving import start_server, write_school


async def test_a_stop_with_open_tcp_connections_logs_no_traceback(tmp_path, upstream):
    """Each open TCP connection wrote a CancelledError traceback at every stop (issue 24);
    `Server.stop` asserts that the output has no traceback."""
    port = write_school(tmp_path, upstream.url)
    server = await start_server(tmp_path, port)
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    half_sent = connections[0][1]
    half_sent.write(b"\x00\x40\x12")  # a query's length and the start of its bytes
    await half_sent.drain()
    await asyncio.sleep(0.2)
    output = await server.stop()
    assert "CancelledError" not in output and "stopping" in output
    for _, writer in connections:
        writer.close()
