"""Issue 20, items 7 and 8: a class network that opens the resolver to the internet, and input
nested too deep (YAML policy files, JSON request bodies) refused with a clear 400 / FILE:LINE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from policies.loader import PolicyError, load_policy
from tests.dashboard_fixtures import dashboard  # noqa: F401 (a fixture)

CLASSGUARD = str(Path(sys.executable).with_name("classguard"))


def _policy(tmp_path: Path, network: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(f"""\
        classes:
          everyone:
            networks: ["10.1.0.0/16", "{network}"]
            block: [adult]
        """))
    return path


@pytest.mark.parametrize("network", ["0.0.0.0/0", "::/0", "0.0.0.0/1", "2000::/3"])
def test_a_class_network_covering_the_internet_is_refused(tmp_path: Path, network: str) -> None:
    path = _policy(tmp_path, network)
    with pytest.raises(PolicyError) as caught:
        load_policy(path, known_categories=None, known_services=None)
    [error] = caught.value.errors
    assert error.startswith(f"{path}:3: networks: '{network}' covers addresses anywhere")
    assert "dns.allow_open: true" in error
    policy = load_policy(path, known_categories=None, known_services=None, allow_open=True)
    assert len(policy.classes["everyone"].networks) == 2


@pytest.mark.parametrize("network", ["10.0.0.0/8", "fc00::/7", "193.50.12.0/24", "2a01:e0a::/32",
                                     "192.168.0.0/16", "100.64.0.0/10"])
def test_school_networks_of_any_size_stay_accepted(tmp_path: Path, network: str) -> None:
    policy = load_policy(_policy(tmp_path, network), known_categories=None, known_services=None)
    assert len(policy.classes["everyone"].networks) == 2


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLASSGUARD, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CLASSGUARD_CONFIG": ""})


def _school(tmp_path: Path, *, allow_open: bool) -> Path:
    (tmp_path / "classguard.yaml").write_text(textwrap.dedent(f"""\
        state_dir: state
        dns:
          listen: ["127.0.0.1:1053"]
          upstreams: ["udp://127.0.0.1:9"]
          allow_open: {"true" if allow_open else "false"}
        blocklists:
          bundled: true
        """))
    return tmp_path


def test_policy_validate_follows_dns_allow_open(tmp_path: Path) -> None:
    _policy(tmp_path, "::/0")
    refused = run("policy", "validate", "policy.yaml", cwd=_school(tmp_path, allow_open=False))
    assert refused.returncode == 1
    assert "policy.yaml:3: networks: '::/0' covers addresses anywhere" in refused.stderr
    accepted = run("policy", "validate", "policy.yaml", cwd=_school(tmp_path, allow_open=True))
    assert accepted.returncode == 0, accepted.stderr


def test_policy_validate_of_yaml_nested_too_deep(tmp_path: Path) -> None:
    (tmp_path / "deep.yaml").write_text("classes:\n  a:\n    block: " + "[" * 5000 + "]" * 5000
                                        + "\n")
    result = run("policy", "validate", "deep.yaml", cwd=_school(tmp_path, allow_open=False))
    assert result.returncode == 1
    assert result.stderr.strip() == "deep.yaml:3: nested too deep (more than 64 levels)"
    assert "Traceback" not in result.stderr


def test_yaml_nested_by_indentation(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("classes:\n" + "".join("  " * depth + f"k{depth}:\n" for depth in range(1, 300)))
    with pytest.raises(PolicyError) as caught:
        load_policy(path, known_categories=None, known_services=None)
    assert caught.value.errors == [f"{path}:64: nested too deep (more than 64 levels)"]


async def test_deeply_nested_json_bodies_are_a_400(dashboard, caplog) -> None:  # noqa: F811
    client = dashboard.client
    deep = '{"name": ' + "[" * 100_000 + "]" * 100_000 + ', "password": "x"}'
    response = await client.post("/api/v1/login", data=deep,
                                 headers={"Content-Type": "application/json"})
    assert response.status == 400, await response.text()
    assert "nested too deep" in (await response.json())["error"]

    headers = {"X-CSRF-Token": await dashboard.login("alice")}
    body: object = ["adult"]
    for _ in range(900):
        body = {"block": body}
    response = await client.put("/api/v1/classes/pupils", data=json.dumps(body),
                                headers={**headers, "Content-Type": "application/json"})
    assert response.status == 400, await response.text()
    assert "nested too deep" in (await response.json())["error"]
    # Brackets inside strings do not count, and ordinary bodies still work.
    response = await client.post("/api/v1/login", json={"name": "[" * 500, "password": "{" * 500})
    assert response.status == 401
    assert "Traceback" not in caplog.text
