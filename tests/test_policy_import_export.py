"""`policy import` / `policy export`, seeding from `policies:`, and a seed file that drifted."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
import logging
import textwrap
import time
from pathlib import Path

import dns.exception

from blocklists.settings import BlocklistSettings
from classguard.config import Config
from classguard.service import prepare
from policies.export import export_policy
from policies.loader import parse_policy
from policies.yaml_lines import parse_yaml
from resolver.settings import DnsSettings
from store.embedded import EmbeddedStore
from tests.conftest import PUPILS, STAFF, ede
from tests.serving import SCHOOL_POLICY, addresses, ask, cli, start_server, write_school

EVERYTHING = """\
default_class: visitors
always_allow: [apple.com, École.fr.example]
locked_categories: [adult, malware]
bypass_protection: false
exceptions:
  - {from: 2026-12-19, to: 2027-01-04, name: "vacances de Noël"}
  - {date: 2027-05-01}
classes:
  cm2-a:
    name: "CM2 A, école \\"Jean Jaurès\\"\\n2nd line"
    school: jean-jaures
    networks: ["10.12.3.0/24", "2001:db8:12:3::/64"]
    block: [adult, gambling]
    block_services: [tiktok]
    allow: [wikipedia.org, lumni.fr]
    deny: [tiktok.com]
    safe_search: strict
    schedule:
      - {days: mon-fri, from: "08:30", to: "16:30", block: [streaming], school_days_only: true}
      - {days: [mon, wed, fri-sun], from: 21:00, to: "00:00", closed: true}
      - {days: all, from: "12:00", to: "24:00", block_services: [roblox]}
    screen_time: {daily_minutes: 120}
    home: {block: [games], safe_search: off}
  "on": {}
  "123":
    home: {}
  cp-b:
    allow_only: [child]
  visitors:
    block: [adult]
devices:
  tablet-0042: {class: cm2-a, token: "k7q2m9x4v8w1z6r3t5y0p2a9", addresses: ["10.12.3.42", "2001:db8::42"]}
  tablet-0043: {class: "123", token_sha256: "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB"}
  tablet-0044: {class: cp-b}
"""


def parse(text: str):
    return parse_policy(parse_yaml(text, "t.yaml"), source="t.yaml", known_categories=None,
                        known_services=None)


def without_lines(value):
    """A Policy as plain data, without the line numbers and file name that differ by source."""
    if dataclasses.is_dataclass(value):
        return {f.name: without_lines(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name not in ("line", "source")}
    if isinstance(value, Mapping):  # a dict, or the policy's DeviceBook
        return {key: without_lines(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_lines(item) for item in value]
    return value


def test_export_imports_back_to_the_same_policy_and_the_same_text():
    original = parse(EVERYTHING)
    exported = export_policy(original)
    assert "token:" not in exported and "k7q2m9x4v8w1z6r3t5y0p2a9" not in exported
    assert exported.count("token_sha256:") == 2 and "abababab" in exported
    again = parse(exported)
    assert without_lines(again) == without_lines(original)
    assert export_policy(again) == exported
    assert '"on": {}' in exported and '"123":' in exported  # keys YAML would misread stay quoted
    assert "days: \"mon,wed,fri-sun\"" in exported and 'to: "24:00"' in exported
    assert export_policy(parse("")) == "{}\n" and without_lines(parse("{}\n")) == without_lines(parse(""))


def school_config(folder: Path) -> Config:
    return Config(timezone="Europe/Paris", state_dir=folder / "state", policies=folder / "policies.yaml",
                  dns=DnsSettings(listen=("127.0.0.1:0",), upstreams=("udp://127.0.0.1:9",)),
                  blocklists=BlocklistSettings(bundled=False))


def test_an_empty_store_is_seeded_then_a_changed_seed_file_is_reported_not_applied(tmp_path, caplog):
    (tmp_path / "policies.yaml").write_text(SCHOOL_POLICY)
    first = prepare(school_config(tmp_path))
    assert first.policy_drift is None and first.control.policy_version == 1
    stored = EmbeddedStore(tmp_path / "state").read_state().policy
    assert stored.text == export_policy(first.state.snapshot.policy)
    assert stored.updated_by == "classguard serve"

    (tmp_path / "policies.yaml").write_text(SCHOOL_POLICY.replace("deny: [denied.example]",
                                                                  "deny: [other.example]"))
    with caplog.at_level(logging.WARNING, logger="classguard"):
        second = prepare(school_config(tmp_path))
    assert second.state.snapshot.policy.classes["pupils"].rules.deny == ("denied.example",)
    drift = second.policy_drift
    assert f"the policy file {tmp_path / 'policies.yaml'} was edited after the stored policy " \
           "(version 1" in drift
    assert f"classguard policy diff {tmp_path / 'policies.yaml'}" in drift
    assert "policy import" not in drift
    assert [record.getMessage() for record in caplog.records] == [drift]

    (tmp_path / "policies.yaml").write_text("classes: {broken: {block: [nope]}}\n")
    third = prepare(school_config(tmp_path))  # a broken seed cannot stop a server that has a policy
    assert "does not validate" in third.policy_drift and "unknown category 'nope'" in third.policy_drift
    assert third.state.snapshot.policy.classes["pupils"].rules.deny == ("denied.example",)

    (tmp_path / "policies.yaml").write_text(SCHOOL_POLICY)
    assert prepare(school_config(tmp_path)).policy_drift is None


async def test_import_and_export_from_the_cli_round_trip(tmp_path):
    (tmp_path / "policies.yaml").write_text("classes: {}\n")
    (tmp_path / "classguard.yaml").write_text("policies: policies.yaml\nstate_dir: state\n"
                                              "dns: {upstreams: ['udp://127.0.0.1:9']}\n")
    (tmp_path / "everything.yaml").write_text(EVERYTHING)
    imported = await cli(tmp_path, "policy", "import", "everything.yaml")
    assert imported.returncode == 0, imported.stderr
    assert "imported as policy version 1; no server runs" in imported.stdout
    exported = await cli(tmp_path, "policy", "export")
    assert exported.returncode == 0 and exported.stdout == export_policy(parse(EVERYTHING))
    (tmp_path / "exported.yaml").write_text(exported.stdout)
    again = await cli(tmp_path, "policy", "import", "exported.yaml")
    assert "unchanged, the stored policy is version 1" in again.stdout

    (tmp_path / "bad.yaml").write_text("classes:\n  x:\n    networks: ['10.0.0.1/8']\n")
    bad = await cli(tmp_path, "policy", "import", "bad.yaml")
    assert bad.returncode == 1 and bad.stderr.startswith("bad.yaml:3: ") and "host bits" in bad.stderr
    assert (await cli(tmp_path, "policy", "export")).stdout == exported.stdout
    assert (await EmbeddedStore(tmp_path / "state").get_policy()).version == 1


async def test_import_reaches_a_running_server_at_once_and_a_bad_one_changes_nothing(tmp_path, upstream):
    upstream.add("denied.example", "A", "198.51.100.7")
    upstream.add("other.example", "A", "198.51.100.8")
    port = write_school(tmp_path, upstream.url)
    server = await start_server(tmp_path, port)
    try:
        before = await ask(port, "denied.example", PUPILS)
        assert addresses(before) == ["0.0.0.0"] and ede(before) == [(15, "deny")]
        assert addresses(await ask(port, "other.example", PUPILS)) == ["198.51.100.8"]

        # Queries keep being answered while the policy is swapped.
        unanswered = 0
        # A flag, not cancel(): on 3.11 a cancellation that arrives as dnspython's wait_for gets
        # its answer is swallowed, and the loop would go on for ever.
        imported_yet = asyncio.Event()

        async def keep_asking():
            nonlocal unanswered
            while not imported_yet.is_set():
                try:
                    await ask(port, "example.com", STAFF, timeout=0.5)
                except dns.exception.Timeout:
                    unanswered += 1
                await asyncio.sleep(0.01)

        asker = asyncio.create_task(keep_asking())
        (tmp_path / "new.yaml").write_text(SCHOOL_POLICY.replace("deny: [denied.example]",
                                                                 "deny: [other.example]"))
        imported = await cli(tmp_path, "policy", "import", "new.yaml")
        imported_yet.set()
        await asker
        assert imported.returncode == 0, imported.stderr
        assert "policy version 2; the running server applied it" in imported.stdout
        assert unanswered == 0
        after = await ask(port, "other.example", PUPILS)
        assert addresses(after) == ["0.0.0.0"] and ede(after) == [(15, "deny")]
        assert addresses(await ask(port, "denied.example", PUPILS)) == ["198.51.100.7"]

        (tmp_path / "bad.yaml").write_text(textwrap.dedent("""\
            classes:
              pupils:
                networks: ["127.0.0.2/32"]
                block: [adultt]
            """))
        bad = await cli(tmp_path, "policy", "import", "bad.yaml")
        assert bad.returncode == 1 and bad.stderr.startswith("bad.yaml:4: unknown category 'adultt'")
        still = await ask(port, "other.example", PUPILS)
        assert addresses(still) == ["0.0.0.0"] and ede(still) == [(15, "deny")]

        # A write straight into the store (another tool, a server's own CLI without the socket)
        # is picked up by the server's watcher within a second.
        store = EmbeddedStore(server.state_dir)
        await store.put_policy(export_policy(parse(SCHOOL_POLICY)), actor="direct", expected_version=2)
        started = time.monotonic()
        while ede(await ask(port, "other.example", PUPILS)) == [(15, "deny")]:
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.05)
        assert ede(await ask(port, "denied.example", PUPILS)) == [(15, "deny")]
    finally:
        log = await server.stop()
    assert "policy version 2 applied" in log and "policy version 3 applied" in log
    audit = await EmbeddedStore(server.state_dir).audit()
    assert [entry.action for entry in audit] == ["policy.import", "policy.import", "policy.seed"]
    assert audit[1].before.startswith("version 1: 2 classes") and audit[0].actor == "direct"
