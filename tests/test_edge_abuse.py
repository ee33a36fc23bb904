"""Abuse of the DNS edge (issue 18): a client that never reads, slots held by unknown clients,
descriptor exhaustion, log floods. Each test targets 127.0.0.1 only, is bounded in count and
time, and states its bound (memory, connections, time, log bytes) in its assertions."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from tests.conftest import PUPILS, STAFF, UNKNOWN
from tests.nameserver import FakeNameserver
from tests.serving import Server, addresses, start_server, write_school

MB = 1024 * 1024
BIG_TXT = [f'"{i:03d}{"x" * 247}"' for i in range(60)]  # about 15 KB of answer


def rss(server: Server) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def descriptors(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def framed_query(name: str, qid: int, rdtype: str = "A") -> bytes:
    query = dns.message.make_query(name, rdtype)
    query.id = qid
    wire = query.to_wire()
    return struct.pack("!H", len(wire)) + wire


def tune(folder: Path, **dns_settings) -> None:
    """More `dns:` settings in the school's classguard.yaml."""
    config = folder / "classguard.yaml"
    lines = "".join(f"  {key}: {value}\n" for key, value in dns_settings.items())
    config.write_text(config.read_text().replace("  upstream_timeout: 1\n", "  upstream_timeout: 1\n" + lines))


@pytest.fixture
async def big_upstream():
    server = FakeNameserver()
    server.add("big.example", "TXT", *BIG_TXT)
    server.add("example.com", "A", "93.184.215.14")
    await server.start()
    yield server
    await server.stop()


async def tcp_ask(port: int, name: str, source: str, rdtype: str = "A", timeout: float = 3.0):
    return await dns.asyncquery.tcp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port,
                                    source=source, timeout=timeout)


async def test_a_tcp_client_that_never_reads_is_cut_off_and_costs_bounded_memory(tmp_path, big_upstream):
    port = write_school(tmp_path, big_upstream.url)
    tune(tmp_path, tcp_idle_timeout=1)
    server = await start_server(tmp_path, port)
    try:
        assert len((await tcp_ask(port, "big.example", PUPILS, "TXT")).answer[0]) == 60  # now cached
        await asyncio.sleep(0.3)
        rss_before, fds_before = rss(server), descriptors(server)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # we never read anyway
        sock.bind((PUPILS, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        # 5,000 pipelined queries for the 15 KB answer (75 MB of replies), never reading.
        burst = b"".join(framed_query("big.example", i, "TXT") for i in range(5000))
        started = time.monotonic()
        try:
            await asyncio.wait_for(loop.sock_sendall(sock, burst), 4)
        except (TimeoutError, ConnectionError):
            pass  # the server stopped reading us: what we want
        await asyncio.sleep(0.5)
        grown = rss(server) - rss_before
        assert grown < 20 * MB, f"the server grew by {grown / MB:.0f} MB for one client that does not read"
        # Cut off within the idle timeout (1 s) and a margin, although replies are pending.
        for _ in range(60):
            if descriptors(server) <= fds_before:
                break
            await asyncio.sleep(0.1)
        assert descriptors(server) <= fds_before, "the connection still open 6 s after the client stopped reading"
        assert time.monotonic() - started < 12
        sock.close()
        # Others are served meanwhile and after.
        assert len((await tcp_ask(port, "big.example", STAFF, "TXT")).answer[0]) == 60
    finally:
        await server.stop()


def process_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
async def dot_school(make_resolver, tmp_path):
    """An in-process server with DoT; returns (resolver, port, client TLS context)."""
    import trustme

    from tests.test_dot import DEVICE_POLICY, HOSTNAME

    async def start(**dns_settings):
        ca = trustme.CA()
        cert = ca.issue_cert(HOSTNAME, f"*.{HOSTNAME}")
        cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        resolver = await make_resolver(DEVICE_POLICY, settings={
            "dot": {"listen": "127.0.0.1:0", "hostname": HOSTNAME},
            "tls": {"cert": str(cert_file), "key": str(key_file)},
        }, **dns_settings)
        import ssl
        context = ssl.create_default_context()
        ca.configure_trust(context)
        return resolver, resolver.service.dot.port, context
    return start


async def test_a_dot_client_that_never_reads_is_cut_off(dot_school, upstream):
    from tests.test_dot import HOSTNAME, TOKEN

    upstream.add("big.example", "TXT", *BIG_TXT)
    resolver, port, context = await dot_school(tcp_idle_timeout=1.0)
    assert len((await resolver.query("big.example", "TXT", tcp=True)).answer[0]) == 60  # cached
    before = process_rss()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=f"{TOKEN}.{HOSTNAME}", local_addr=(UNKNOWN, 0))
    writer.transport.set_write_buffer_limits(high=256 * 1024)
    started = time.monotonic()
    try:
        for i in range(3000):  # 45 MB of replies asked for; our reader takes at most 128 KB of them
            writer.write(framed_query("big.example", i, "TXT"))
            if writer.transport.get_write_buffer_size() > 256 * 1024:
                try:
                    await asyncio.wait_for(writer.drain(), 3)
                except (TimeoutError, ConnectionError):
                    break  # the server stopped reading us
        dot = resolver.service.dot
        for _ in range(30):
            await asyncio.sleep(0.1)  # the server reads, answers, and fills its buffers
        for _ in range(80):
            if dot.connections == 0:
                break
            await asyncio.sleep(0.1)
        assert dot.connections == 0, "the DoT connection still open 8 s after its client stopped reading"
        for _ in range(20):  # the socket itself is closed too, not only the task
            if writer.transport.is_closing() or reader.at_eof() or reader.exception():
                break
            await asyncio.sleep(0.1)
        assert time.monotonic() - started < 15
        grown = process_rss() - before
        assert grown < 25 * MB, f"DoT server and client grew by {grown / MB:.0f} MB"
    finally:
        writer.transport.abort()


async def open_many(port: int, count: int, source: str, **kwargs) -> list:
    opened = []
    for _ in range(count):
        try:
            opened.append(await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0), **kwargs), 5))
        except (ConnectionError, OSError, TimeoutError):
            pass
    return opened


async def still_open(connections: list, wait: float = 0.3) -> int:
    """How many of the connections the server has not closed (EOF or reset within `wait`)."""
    async def alive(reader) -> bool:
        try:
            return not await asyncio.wait_for(reader.read(1), wait) == b""
        except TimeoutError:
            return True
        except (ConnectionError, OSError):
            return False
    return sum(await asyncio.gather(*(alive(reader) for reader, _ in connections)))


def close_all(connections: list) -> None:
    for _, writer in connections:
        writer.transport.abort()


async def test_idle_unknown_clients_never_hold_a_class_clients_tcp_slot(tmp_path, big_upstream):
    port = write_school(tmp_path, big_upstream.url)
    tune(tmp_path, tcp_max_connections=200)
    server = await start_server(tmp_path, port)
    fds_before = descriptors(server)
    squatters = await open_many(port, 1000, UNKNOWN)
    try:
        # An address in no class holds at most a tenth of tcp_max_connections (20), whatever it opens.
        assert await still_open(squatters) <= 20
        assert descriptors(server) <= fds_before + 25
        # A class client still gets its answers over TCP, on many connections at once.
        answers = await asyncio.gather(*(tcp_ask(port, "example.com", PUPILS) for _ in range(30)))
        assert all(addresses(answer) == ["93.184.215.14"] for answer in answers)
    finally:
        close_all(squatters)
    try:
        # Once they are gone, an unknown client's query is REFUSED, then its connection closed.
        await asyncio.sleep(0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.10", 0))
        try:
            writer.write(framed_query("example.com", 7))
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))
            assert dns.message.from_wire(await reader.readexactly(length)).rcode() == dns.rcode.REFUSED
            assert await asyncio.wait_for(reader.read(1), 3) == b""
        finally:
            writer.close()
    finally:
        output = await server.stop()
    assert len(output) < 20_000, "1,000 refused connections must not flood the log"


async def test_one_address_holds_at_most_64_tcp_connections(tmp_path, big_upstream):
    port = write_school(tmp_path, big_upstream.url)
    server = await start_server(tmp_path, port)
    mine = await open_many(port, 100, STAFF)
    try:
        assert await still_open(mine) <= 64
        assert addresses(await tcp_ask(port, "example.com", PUPILS)) == ["93.184.215.14"]
    finally:
        close_all(mine)
        await server.stop()


async def test_dot_without_sni_from_unknown_addresses_never_holds_a_devices_slot(dot_school):
    from tests.test_dot import HOSTNAME, TOKEN, dot_query

    import ssl

    resolver, port, context = await dot_school(tcp_max_connections=20)
    loose = ssl.create_default_context()  # no SNI: no name to check the certificate against
    loose.check_hostname, loose.verify_mode = False, ssl.CERT_NONE
    no_sni = await open_many(port, 60, UNKNOWN, ssl=loose, server_hostname=None)
    try:
        assert await still_open(no_sni) <= 2  # a tenth of 20
        answer = await dot_query(port, context, f"{TOKEN}.{HOSTNAME}", "example.com")
        assert addresses(answer) == ["93.184.215.14"]
        answer = await dot_query(port, loose, None, "example.com", source=PUPILS)
        assert addresses(answer) == ["93.184.215.14"]
    finally:
        close_all(no_sni)


async def test_idle_doh_connections_cannot_exhaust_the_descriptors(tmp_path, big_upstream):
    from tests.ports import free_port

    port = write_school(tmp_path, big_upstream.url)
    doh_port = free_port()
    with (tmp_path / "classguard.yaml").open("a") as config:
        config.write(f'doh: {{listen: "127.0.0.1:{doh_port}", idle_timeout: 2}}\n')
    for i in range(40):
        big_upstream.add(f"n{i}.example", "A", f"192.0.2.{i + 1}")
    # 1,024 descriptors, the hard limit too: as on a default system.
    server = await start_server(tmp_path, port, prefix=("prlimit", "--nofile=1024:1024"))
    squatters = await open_many(doh_port, 1003, UNKNOWN)
    try:
        # (1024 - 256 reserved) / 3 = 256 DoH connections at most, a quarter of them per address.
        assert await still_open(squatters) <= 64
        assert descriptors(server) < 200
        # Uncached queries still reach the upstream (they need sockets), over UDP and DoH.
        for i in range(20):
            answer = await dns.asyncquery.udp(dns.message.make_query(f"n{i}.example", "A"), "127.0.0.1",
                                              port=port, source=PUPILS, timeout=3)
            assert addresses(answer) == [f"192.0.2.{i + 1}"], answer
        query = dns.message.make_query("n30.example", "A")
        answer = await dns.asyncquery.https(query, f"http://127.0.0.1:{doh_port}/dns-query",
                                            source=PUPILS, timeout=3)
        assert addresses(answer) == ["192.0.2.31"]
        # The squatters are cut off after doh.idle_timeout (2 s), whatever they send.
        started = time.monotonic()
        await asyncio.sleep(3.5)
        assert await still_open(squatters, wait=0.05) == 0
        assert time.monotonic() - started < 8
    finally:
        close_all(squatters)
        await server.stop()


async def test_a_half_sent_doh_request_is_cut_off(tmp_path, big_upstream):
    from tests.ports import free_port

    port = write_school(tmp_path, big_upstream.url)
    doh_port = free_port()
    with (tmp_path / "classguard.yaml").open("a") as config:
        config.write(f'doh: {{listen: "127.0.0.1:{doh_port}", idle_timeout: 1}}\n')
    server = await start_server(tmp_path, port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", doh_port, local_addr=(PUPILS, 0))
        started = time.monotonic()
        writer.write(b"POST /dns-query HTTP/1.1\r\nHost: x\r\nContent-Type: application/dns-message\r\n"
                     b"Content-Length: 40\r\n\r\n\x00\x01")  # the body never completes
        try:
            assert await asyncio.wait_for(reader.read(), 4) == b""
        except ConnectionError:
            pass
        assert time.monotonic() - started < 3, "a half-sent request held longer than idle_timeout (1 s) + 2 s"
        writer.close()
    finally:
        await server.stop()


async def test_oversized_labels_and_names_are_formerr_and_write_nothing(tmp_path, big_upstream):
    port = write_school(tmp_path, big_upstream.url)
    server = await start_server(tmp_path, port)
    header = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    long_label = header + b"\x40" + b"a" * 64 + b"\x02ex\x00" + struct.pack("!HH", 1, 1)
    assert len(long_label) == 85
    many_labels = header + b"\x01a" * 21_000 + b"\x00" + struct.pack("!HH", 1, 1)  # 42 KB, 21,000 labels
    loop = asyncio.get_running_loop()
    try:
        for source in (UNKNOWN, PUPILS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((source, 0))
            sock.setblocking(False)
            try:
                await loop.sock_sendto(sock, long_label, ("127.0.0.1", port))
                reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), 3)
            finally:
                sock.close()
            assert struct.unpack_from("!H", reply, 2)[0] & 0xF == 1  # FORMERR
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
            writer.write(struct.pack("!H", len(many_labels)) + many_labels)
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))
            reply = await reader.readexactly(length)
            writer.close()
            if source == PUPILS:
                assert struct.unpack_from("!H", reply, 2)[0] & 0xF == 1  # FORMERR
    finally:
        output = await server.stop()
    after_start = output.split("lists in force", 1)[-1].split("\n", 1)[-1]
    queries_wrote = "".join(line + "\n" for line in after_start.splitlines() if "stopping" not in line
                            and "stopped" not in line)
    assert len(queries_wrote) < 200, f"four malformed queries wrote {len(queries_wrote)} bytes of log:\n" \
        + queries_wrote[:2000]


def test_a_repeated_warning_is_written_once_with_a_count():
    import io
    import logging

    from classguard.logsetup import OneLineFormatter, RepeatFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter())
    handler.addFilter(RepeatFilter(interval=0.2))
    logger = logging.getLogger("classguard.test_repeat")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(1000):
            logger.warning("upstream %s failed", i)
        time.sleep(0.25)
        logger.warning("upstream %s failed", "x")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines  # 1,001 warnings: 2 lines, about 150 bytes
    assert lines[1].endswith("(and 999 more like it in the last 0.2 s)")


async def test_malformed_doh_requests_log_no_token_and_no_queried_name(tmp_path, big_upstream):
    import base64

    from common.tokens import token_sha256
    from tests.conftest import LOG_SECRETS
    from tests.ports import free_port
    from tests.serving import SCHOOL_POLICY

    token, name = "m4x8q2w7e1r5t9y3u6i0o2p4", "secret-pupil-search.example"
    LOG_SECRETS.update({token, name})
    port = write_school(tmp_path, big_upstream.url, SCHOOL_POLICY + f"""\
devices:
  tablet-1: {{class: pupils, token_sha256: "{token_sha256(token)}"}}
""")
    doh_port = free_port()
    with (tmp_path / "classguard.yaml").open("a") as config:
        config.write(f'doh: {{listen: "127.0.0.1:{doh_port}"}}\n')
    server = await start_server(tmp_path, port)
    query = dns.message.make_query(name, "A").to_wire()
    dns_param = base64.urlsafe_b64encode(query).rstrip(b"=")
    requests = [
        b"GET /dns-query/" + token.encode() + b"?dns=" + b"A" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /dns-query/" + token.encode() + b"?dns=" + dns_param + b" HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /dns-query/" + token.encode() + b"\x01\x7f?dns=" + dns_param + b" HTTP/1.1\r\n\r\n",
        b"GET /dns-query/" + token.encode() + b"?dns=" + dns_param + b" HTTP/1.1\r\nBad Header\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x40\x01\x05\x00\x00\x00\x01" + name.encode() * 3,
        b"\x16\x03\x01" + name.encode() + token.encode(),
    ]
    try:
        for request in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", doh_port, local_addr=(UNKNOWN, 0))
            writer.write(request)
            try:
                await asyncio.wait_for(reader.read(65536), 3)
            except (ConnectionError, TimeoutError):
                pass
            writer.close()
        answer = await dns.asyncquery.https(dns.message.make_query(name, "A"),
                                            f"http://127.0.0.1:{doh_port}/dns-query/{token}", timeout=3)
        assert answer.rcode() == dns.rcode.NXDOMAIN
    finally:
        output = await server.stop()
    assert "HTTP request" in output  # aiohttp did complain ...
    assert token not in output and name not in output  # ... without the request's contents
