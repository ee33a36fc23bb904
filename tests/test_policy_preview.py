"""Preview before apply (issue 19): `policy diff`, `policy import --dry-run`, `--force` for an
import that removes data, the REST API's 409 with the diff, and the diff in the audit log."""

from __future__ import annotations

import textwrap

from admin.policy_diff import diff_policies
from policies.loader import parse_policy
from policies.yaml_lines import parse_yaml
from store.embedded import EmbeddedStore
from tests.dashboard_fixtures import dashboard  # noqa: F401 (a fixture)
from tests.serving import SCHOOL_POLICY, cli, write_school


def parse(text: str):
    return parse_policy(parse_yaml(text, "t"), source="t", known_categories=None,
                        known_services=None)


OLD = """\
exceptions:
  - {from: 2026-12-19, to: 2027-01-04, name: "Noël"}
classes:
  cm2-a:
    block: [adult]
    schedule:
      - {days: mon-fri, from: "08:30", to: "16:30", block: [games]}
    home: {block: [games]}
  cp-a:
    block: [adult]
  cp-b: {}
devices:
  tab-1: {class: cm2-a}
  tab-2: {class: cp-a}
  tab-3: {class: cp-a}
"""

NEW = """\
default_class: cm2-a
exceptions:
  - {date: 2027-05-01, name: "1er mai"}
classes:
  cm2-a:
    block: [adult, gambling]
    schedule:
      - {days: mon-fri, from: "08:30", to: "17:00", block: [games]}
    home: {block: [games, streaming]}
  cp-b: {}
  ce1: {block: [adult]}
devices:
  tab-1: {class: cp-b}
"""


def test_the_diff_says_every_change_one_line_each():
    old, new = parse(OLD), parse(NEW)
    diff = diff_policies(old, old.devices, new, new.devices)
    assert diff.lines == [
        "~ default_class: (none) → cm2-a",
        '- exceptions holiday {from: 2026-12-19, to: 2027-01-04, name: Noël}',
        '+ exceptions holiday {date: 2027-05-01, name: 1er mai}',
        "- class cp-a (2 devices)",
        "+ class ce1 (block)",
        "~ class cm2-a: block: +gambling",
        "- class cm2-a: schedule window {days: mon-fri, from: 08:30, to: 16:30, block: [games]}",
        "+ class cm2-a: schedule window {days: mon-fri, from: 08:30, to: 17:00, block: [games]}",
        "~ class cm2-a: home.block: +streaming",
        "- device tab-2 (class cp-a)",
        "- device tab-3 (class cp-a)",
        "~ device tab-1: class cm2-a → cp-b",
    ]
    assert diff.removals == ["class cp-a (2 devices)", "2 devices (tab-2, tab-3)"]
    kept = diff_policies(old, old.devices, parse(OLD.split("devices:")[0]), None)
    assert kept.empty and not kept.removals


WITH_DEVICES = SCHOOL_POLICY + textwrap.dedent("""\
      gone: {networks: ["127.0.0.9/32"]}
    devices:
      tablet-1: {class: pupils}
      tablet-2: {class: gone}
    """)


async def test_diff_and_dry_run_change_nothing_and_a_removal_needs_force(tmp_path):
    write_school(tmp_path, "udp://127.0.0.1:9", WITH_DEVICES)
    (tmp_path / "seed.yaml").write_text(WITH_DEVICES)
    first = await cli(tmp_path, "policy", "import", "seed.yaml")
    assert first.returncode == 0, first.stderr
    store = EmbeddedStore(tmp_path / "state")
    version = await store.version()
    (tmp_path / "new.yaml").write_text(SCHOOL_POLICY.replace("deny: [denied.example]",
                                                             "deny: [other.example]")
                                       + "devices:\n  tablet-1: {class: staff}\n")

    for args in (("policy", "diff", "new.yaml"), ("policy", "import", "--dry-run", "new.yaml")):
        shown = await cli(tmp_path, *args)
        assert shown.returncode == 0, shown.stderr
        assert "new.yaml against the stored policy (version 1): 4 changes" in shown.stdout
        for line in ("~ class pupils: deny: +other.example -denied.example",
                     "- class gone (1 devices)", "- device tablet-2 (class gone)",
                     "~ device tablet-1: class pupils → staff"):
            assert f"  {line}\n" in shown.stdout, shown.stdout
        assert await store.version() == version
    assert "dry run: nothing was changed; importing removes class gone (1 devices) and 1 device " \
           "(tablet-2) and needs --force" in shown.stdout

    refused = await cli(tmp_path, "policy", "import", "new.yaml")
    assert refused.returncode == 1
    assert "- device tablet-2 (class gone)" in refused.stdout
    assert "this import removes class gone (1 devices) and 1 device (tablet-2); nothing was " \
           "changed" in refused.stderr and "--force" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert await store.version() == version

    forced = await cli(tmp_path, "policy", "import", "--force", "new.yaml")
    assert forced.returncode == 0, forced.stderr
    assert "imported as policy version 2" in forced.stdout
    devices, _seq = await store.devices()
    assert [(device.id, device.class_id) for device in devices] == [("tablet-1", "staff")]
    entries = await store.audit(2)
    assert entries[1].action == "policy.import"
    assert entries[1].after.splitlines() == [
        "version 2: 2 classes (-gone), 1 devices", "- class gone (1 devices)",
        "~ class pupils: deny: +other.example -denied.example"]
    assert entries[0].action == "device.import"
    assert entries[0].after.splitlines()[1:] == [
        "- device tablet-2 (class gone)", "~ device tablet-1: class pupils → staff"]

    same = await cli(tmp_path, "policy", "diff", "new.yaml")
    assert same.returncode == 0 and "new.yaml: no change against the stored policy" in same.stdout


async def test_the_api_answers_409_with_the_diff_unless_forced(dashboard):
    store = dashboard.resolver.service.store
    from policies.model import Device
    await store.change_devices([Device(id="tablet-1", class_id="staff")], mode="add",
                               actor="test", action="device.add")
    await dashboard.resolver.service.control.sync()
    text = SCHOOL_POLICY.replace("  staff:\n    networks: [\"127.0.0.3/32\"]\n", "") \
        + "devices: {}\n"
    headers = dashboard.bearer()
    version = (await store.get_policy()).version

    dry = await dashboard.client.put("/api/v1/policy?dry_run=true", json={"text": text},
                                     headers=headers)
    assert dry.status == 200, await dry.text()
    body = await dry.json()
    assert body["dry_run"] is True and body["changed"] is False
    assert "- class staff (1 devices)" in body["diff"]

    refused = await dashboard.client.put("/api/v1/policy", json={"text": text}, headers=headers)
    assert refused.status == 409, await refused.text()
    body = await refused.json()
    assert "this import removes class staff (1 devices)" in body["error"]
    assert "?force=true" in body["error"] and "- class staff (1 devices)" in body["diff"]
    assert (await store.get_policy()).version == version

    bad = await dashboard.client.put("/api/v1/policy", json={"text": "classes: {x: {block: [nope]}}"},
                                     headers=headers)
    assert bad.status == 400

    forced = await dashboard.client.put("/api/v1/policy?force=true", json={"text": text},
                                        headers=headers)
    assert forced.status == 200, await forced.text()
    body = await forced.json()
    assert body["changed"] is True and body["version"] == version + 1
    assert (await store.devices())[0] == []


# --- the drift note (issue 19, item 2) ---------------------------------------------------------


async def test_the_drift_note_says_which_side_is_newer_and_never_advises_an_import(tmp_path):
    import os
    import time as clock

    from admin.control import Drift
    from classguard.metrics import ReadinessProbe
    from classguard.service import prepare
    from dashboard.admin_pages import _drift
    from dashboard.i18n import translator
    from tests.test_policy_import_export import school_config

    seed = tmp_path / "policies.yaml"
    seed.write_text(SCHOOL_POLICY)
    prepare(school_config(tmp_path))  # seeds the store
    store = EmbeddedStore(tmp_path / "state")
    # a change made in the dashboard or the CLI: the store is newer than the file
    await store.put_policy(SCHOOL_POLICY.replace("denied.example", "other.example"),
                           actor="alice (dashboard)")
    os.utime(seed, (clock.time() - 3600, clock.time() - 3600))
    service = prepare(school_config(tmp_path))
    drift = service.drift
    assert isinstance(drift, Drift) and drift.newer == "store"
    text = service.policy_drift
    assert text.startswith("the stored policy (version 2, ")
    assert f"by alice (dashboard)) is newer than the policy file {seed}" in text
    assert f"classguard policy export > {seed}" in text and f"classguard policy diff {seed}" in text
    notes = ReadinessProbe(service).notes()
    assert notes == [f"policy drift: {text}"]  # what /readyz says after "ready"
    assert ReadinessProbe(service).notes(drift=False) == []
    view = type("View", (), {"t": staticmethod(translator("fr"))})()
    french = _drift(view, drift)
    assert french.startswith("La politique enregistrée (version 2, ")
    assert "par alice (dashboard)) est plus récente que le fichier" in french
    assert f"Pour mettre le fichier à jour : classguard policy export > {seed}" in french

    # the file edited after: the note says so, and offers the diff
    seed.write_text(SCHOOL_POLICY.replace("denied.example", "third.example"))
    service = prepare(school_config(tmp_path))
    assert service.drift.newer == "file"
    assert f"the policy file {seed} was edited after the stored policy (version 2" \
           in service.policy_drift
    assert "only seeds an empty store" in service.policy_drift
    french = _drift(view, service.drift)
    assert "a été modifié après la politique enregistrée" in french and "policy diff" in french

    seed.write_text("classes: {x: {block: [nope]}}\n")
    broken = prepare(school_config(tmp_path)).policy_drift
    assert "does not validate" in broken and f"classguard policy export > {seed}" in broken
    for said in (text, french, broken, service.policy_drift):
        assert "policy import" not in said and "to apply the file" not in said
