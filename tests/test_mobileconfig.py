"""Apple configuration profiles, parsed back with plistlib and checked key by key."""

from __future__ import annotations

import plistlib

import pytest

from admin.mobileconfig import profile

URL = "https://dns.school.example/dns-query/k7q2m9x4v8w1z6r3t5y0p2a9"


def test_a_doh_profile_has_the_device_url_and_cannot_be_disabled():
    data = plistlib.loads(profile("tablet-0042", doh_url=URL, organization="Ville de Test"))
    assert data["PayloadType"] == "Configuration" and data["PayloadVersion"] == 1
    assert data["PayloadIdentifier"] == "org.classguard.dns.tablet-0042"
    assert data["PayloadOrganization"] == "Ville de Test"
    (payload,) = data["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.dnsSettings.managed"
    assert payload["DNSSettings"] == {"DNSProtocol": "HTTPS", "ServerURL": URL}
    assert payload["ProhibitDisablement"] is True
    assert payload["PayloadUUID"] != data["PayloadUUID"]


def test_a_dot_profile_names_the_server_and_uuids_are_stable_per_device():
    first = plistlib.loads(profile("tablet-7", dot_server="k7q2m9x4v8w1z6r3t5y0p2a9.dot.school.example"))
    again = plistlib.loads(profile("tablet-7", dot_server="k7q2m9x4v8w1z6r3t5y0p2a9.dot.school.example"))
    other = plistlib.loads(profile("tablet-8", dot_server="x" * 22 + ".dot.school.example"))
    assert first["PayloadContent"][0]["DNSSettings"] == {
        "DNSProtocol": "TLS", "ServerName": "k7q2m9x4v8w1z6r3t5y0p2a9.dot.school.example"}
    assert first["PayloadUUID"] == again["PayloadUUID"] != other["PayloadUUID"]


def test_a_profile_needs_exactly_one_transport():
    with pytest.raises(ValueError):
        profile("t", doh_url=URL, dot_server="x.dot.example")
    with pytest.raises(ValueError):
        profile("t")


async def test_device_add_writes_a_profile_an_mdm_can_push(tmp_path, upstream):
    from tests.serving import cli, write_school

    write_school(tmp_path, upstream.url)
    config = tmp_path / "classguard.yaml"
    config.write_text(config.read_text() + 'doh: {listen: "127.0.0.1:0", public_url: "https://dns.school.example/dns-query"}\n')
    result = await cli(tmp_path, "device", "add", "tablet-0042", "--class", "pupils",
                       "--mobileconfig", "tablet-0042.mobileconfig")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "tablet-0042.mobileconfig"
    assert path.stat().st_mode & 0o777 == 0o600
    (payload,) = plistlib.loads(path.read_bytes())["PayloadContent"]
    url = payload["DNSSettings"]["ServerURL"]
    assert url.startswith("https://dns.school.example/dns-query/") and url in result.stdout
    assert payload["ProhibitDisablement"] is True
