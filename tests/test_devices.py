"""Devices at home: tokens, their URLs, enrolment one by one and in bulk, rotation, revocation."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import math
import os
import re
import stat
from pathlib import Path

import aiohttp
import dns.message
import pytest

from admin import devices
from admin.devices import doh_url, dot_hostname, new_token, read_csv
from classguard.config import DOH_DEFAULTS, Config
from common.tokens import token_sha256
from policies.loader import PolicyError
from store.embedded import EmbeddedStore
from tests.serving import addresses, cli, free_port, start_server, write_school
from tests.store_fixtures import stored_devices  # noqa: F401

HOME = "127.0.0.1"  # no class network in the school policy


def school(folder: Path, upstream_url: str, *, dot: bool = False) -> tuple[int, int]:
    """The test school (tests/serving.py) with DoH on a free port; (DNS port, DoH port)."""
    port = write_school(folder, upstream_url)
    doh_port = free_port()
    extra = (f"doh:\n  listen: \"127.0.0.1:{doh_port}\"\n"
             f"  public_url: \"http://127.0.0.1:{doh_port}/dns-query\"\n")
    if dot:
        extra += "dot: {hostname: dot.example.org}\n"
    with open(folder / "classguard.yaml", "a") as config:
        config.write(extra)
    return port, doh_port


async def doh_get(url: str, name: str) -> tuple[int, dns.message.Message | None]:
    wire = dns.message.make_query(name, "A").to_wire()
    param = base64.urlsafe_b64encode(wire).rstrip(b"=").decode()
    connector = aiohttp.TCPConnector(local_addr=(HOME, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{url}?dns={param}") as response:
            body = await response.read()
            return response.status, dns.message.from_wire(body) if response.status == 200 else None


# --- tokens and addresses --------------------------------------------------------------------------


def test_tokens_are_long_random_and_fit_a_dns_label():
    tokens = {new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    for token in tokens:
        assert re.fullmatch(r"[a-z0-9]{22,63}", token)
    assert len(next(iter(tokens))) * math.log2(36) >= 128
    assert set("".join(tokens)) == set("abcdefghijklmnopqrstuvwxyz0123456789")
    assert token_sha256("k7q2m9x4v8w1z6r3t5y0p2a9") == hashlib.sha256(b"k7q2m9x4v8w1z6r3t5y0p2a9").hexdigest()


def test_the_urls_a_device_is_given():
    config = Config(doh={**DOH_DEFAULTS, "public_url": "https://dns.example.org/dns-query"},
                    dot={"hostname": "DoT.Example.org."})
    assert doh_url(config, "abc") == "https://dns.example.org/dns-query/abc"
    assert dot_hostname(config, "abc") == "abc.dot.example.org"
    derived = Config(doh={**DOH_DEFAULTS, "listen": "[::1]:8443", "path": "/q"}, tls={"cert": "c"})
    assert doh_url(derived, "abc") == "https://[::1]:8443/q/abc"
    assert doh_url(Config(), "abc") is None and dot_hostname(Config(), "abc") is None


def test_read_csv_with_or_without_header(tmp_path):
    path = tmp_path / "pupils.csv"
    path.write_text("\ufeffid,class,address\ntablet-1,cm2-a,10.12.3.41\n\n"
                    "tablet-2,cm2-a,10.12.3.42 2001:db8::42\ntablet-3,cp-b\n")
    rows = read_csv(path)
    assert [(row.id, row.class_id, row.addresses, row.line) for row in rows] == [
        ("tablet-1", "cm2-a", ("10.12.3.41",), 2),
        ("tablet-2", "cm2-a", ("10.12.3.42", "2001:db8::42"), 4),
        ("tablet-3", "cp-b", (), 5)]
    path.write_text("tablet-1,cm2-a\n")
    assert [row.id for row in read_csv(path)] == ["tablet-1"]


def test_read_csv_names_every_bad_row(tmp_path):
    path = tmp_path / "pupils.csv"
    path.write_text("tablet-1,cm2-a\nbad id,cm2-a\ntablet-1,cm2-b\ntablet-4\n"
                    "tablet-5,cm2-a,10.0.0.300\ntablet-6,cm2-a,1.2.3.4,extra\n")
    with pytest.raises(PolicyError) as caught:
        read_csv(path)
    assert [error.split(": ", 1)[0] for error in caught.value.errors] == [
        f"{path}:{line}" for line in (2, 3, 4, 5, 6)]
    assert "already on line 1" in caught.value.errors[1]
    path.write_text("id,class\n")
    with pytest.raises(PolicyError, match="no device"):
        read_csv(path)


# --- the command line on the store (no server running) ------------------------------------------


async def test_device_add_prints_the_urls_once_and_stores_only_the_hash(tmp_path, upstream):
    school(tmp_path, upstream.url, dot=True)
    result = await cli(tmp_path, "device", "add", "tablet-42", "--class", "pupils",
                       "--address", "127.0.0.2")
    assert result.returncode == 0, result.stderr
    url = re.search(r"DoH URL: +(http://127\.0\.0\.1:\d+/dns-query/([a-z0-9]{26}))$", result.stdout, re.M)
    assert url, result.stdout
    token = url.group(2)
    assert f"DoT hostname: {token}.dot.example.org" in result.stdout
    assert "no server runs" in result.stdout
    stored = await stored_devices(EmbeddedStore(tmp_path / "state"))
    assert token not in stored and token_sha256(token) in stored
    assert "tablet-42: {class: pupils, token_sha256:" in stored and "127.0.0.2" in stored
    for path in (tmp_path / "state").iterdir():  # nothing under state_dir holds the token
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    audit = await EmbeddedStore(tmp_path / "state").audit()
    assert audit[0].action == "device.add" and "tablet-42 in class pupils" in audit[0].after

    again = await cli(tmp_path, "device", "add", "tablet-42", "--class", "pupils")
    assert again.returncode == 1 and "exists already" in again.stderr
    unknown = await cli(tmp_path, "device", "add", "tablet-43", "--class", "pupil")
    assert unknown.returncode == 1 and "did you mean 'pupils'" in unknown.stderr
    taken = await cli(tmp_path, "device", "add", "tablet-44", "--class", "staff", "--address", "127.0.0.2")
    assert taken.returncode == 1 and "already belongs to device 'tablet-42'" in taken.stderr
    assert len(taken.stderr.splitlines()) == 1


async def test_without_doh_or_dot_no_token_is_issued(tmp_path, upstream):
    write_school(tmp_path, upstream.url)
    result = await cli(tmp_path, "device", "add", "tablet-1", "--class", "pupils")
    assert result.returncode == 1 and "no doh section" in result.stderr
    assert await EmbeddedStore(tmp_path / "state").get_policy() is None


async def test_export_urls_explains_why_it_needs_rotate(tmp_path, upstream):
    school(tmp_path, upstream.url)
    result = await cli(tmp_path, "device", "export-urls")
    assert result.returncode == 1
    assert "keeps only the SHA-256" in result.stderr and "--rotate" in result.stderr


# --- with a running server ------------------------------------------------------------------------


async def test_add_rotate_revoke_reach_the_running_server_at_once(tmp_path, upstream):
    port, _ = school(tmp_path, upstream.url)
    server = await start_server(tmp_path, port)
    try:
        added = await cli(tmp_path, "device", "add", "tablet-1", "--class", "pupils")
        assert added.returncode == 0, added.stderr
        assert "the running server applied it" in added.stdout
        first = re.search(r"DoH URL: +(\S+)", added.stdout).group(1)
        status, answer = await doh_get(first, "adult.example")
        assert status == 200 and addresses(answer) == ["0.0.0.0"]  # the class pupils, at home

        rotated = await cli(tmp_path, "device", "rotate", "tablet-1")
        assert rotated.returncode == 0, rotated.stderr
        second = re.search(r"DoH URL: +(\S+)", rotated.stdout).group(1)
        assert second != first
        assert (await doh_get(first, "example.com"))[0] == 403  # at once
        status, answer = await doh_get(second, "example.com")
        assert status == 200 and addresses(answer) == ["93.184.215.14"]

        revoked = await cli(tmp_path, "device", "revoke", "tablet-1")
        assert revoked.returncode == 0, revoked.stderr
        assert (await doh_get(second, "example.com"))[0] == 403
        again = await cli(tmp_path, "device", "revoke", "tablet-1")
        assert again.returncode == 1 and "no token to revoke" in again.stderr
        missing = await cli(tmp_path, "device", "rotate", "tablet-9")
        assert missing.returncode == 1 and "no device 'tablet-9'" in missing.stderr

        actions = [entry.action for entry in await EmbeddedStore(server.state_dir).audit()]
        assert actions[:3] == ["device.revoke", "device.rotate", "device.add"]
        log = await server.stop()
        for token in (first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]):
            assert token not in log
    finally:
        if server.process.returncode is None:
            await server.stop()


async def test_a_school_of_500_devices_is_enrolled_in_one_command(tmp_path, upstream):
    port, _ = school(tmp_path, upstream.url)
    rows = ["id,class,address"] + [
        f"tablet-{n:03d},{'pupils' if n % 2 else 'staff'},{f'10.20.{n // 250}.{n % 250 + 1}' if n < 100 else ''}"
        for n in range(500)]
    (tmp_path / "school.csv").write_text("\n".join(rows) + "\n")
    server = await start_server(tmp_path, port)
    try:
        result = await cli(tmp_path, "device", "import", "school.csv", "--output", "urls.csv")
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        assert "500 devices enrolled" in result.stderr and "applied it" in result.stderr
        output = tmp_path / "urls.csv"
        assert stat.S_IMODE(os.stat(output).st_mode) == 0o600
        table = list(csv.DictReader(io.StringIO(output.read_text())))
        assert [row["id"] for row in table] == [f"tablet-{n:03d}" for n in range(500)]
        assert len({row["doh_url"] for row in table}) == 500
        for index in (0, 1, 250, 499):  # a few of them, over DoH
            status, answer = await doh_get(table[index]["doh_url"], "adult.example")
            assert status == 200
            expected = ["0.0.0.0"] if index % 2 else ["198.51.100.1"]  # pupils block adult
            assert addresses(answer) == expected, index
        stored = await stored_devices(EmbeddedStore(server.state_dir))
        assert stored.count("token_sha256") == 500
        audit = await EmbeddedStore(server.state_dir).audit()
        assert audit[0].action == "device.import"
        assert audit[0].after == "500 devices from school.csv: pupils 250, staff 250"

        twice = await cli(tmp_path, "device", "import", "school.csv")
        assert twice.returncode == 1 and "500 of these devices exist already" in twice.stderr
        clobber = await cli(tmp_path, "device", "import", "school.csv", "--output", "urls.csv")
        assert clobber.returncode == 1 and "exists already" in clobber.stderr

        exported = await cli(tmp_path, "device", "export-urls", "--rotate", "--class", "staff")
        assert exported.returncode == 0, exported.stderr
        fresh = list(csv.DictReader(io.StringIO(exported.stdout)))
        assert len(fresh) == 250 and all(row["id"] in {r["id"] for r in table} for row in fresh)
        old = next(row for row in table if row["id"] == fresh[0]["id"])
        assert (await doh_get(old["doh_url"], "example.com"))[0] == 403
        assert (await doh_get(fresh[0]["doh_url"], "example.com"))[0] == 200
        untouched = table[1]  # a pupil's tablet keeps its token
        assert (await doh_get(untouched["doh_url"], "example.com"))[0] == 200
    finally:
        await server.stop()


async def test_an_import_with_a_bad_row_enrols_nobody(tmp_path, upstream):
    school(tmp_path, upstream.url)
    (tmp_path / "school.csv").write_text("tablet-1,pupils\ntablet-2,nobody\n")
    result = await cli(tmp_path, "device", "import", "school.csv")
    assert result.returncode == 1 and "no class 'nobody'" in result.stderr
    assert result.stdout == ""
    assert await EmbeddedStore(tmp_path / "state").get_policy() is None


def test_operations_are_registered_on_the_control_commands():
    assert set(devices.operations(object())) == {"device.add", "device.import", "device.rotate",
                                                 "device.revoke", "device.list", "device.update",
                                                 "device.remove", "device.erase"}
