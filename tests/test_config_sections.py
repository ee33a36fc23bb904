"""Every configuration section checked (issue 21, item 4), `classguard config validate`, the JSON
Schema made from the same definitions, and the environment's overrides (item 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema_rs
import pytest
import yaml

from classguard.config import ENVIRONMENT, ConfigError, json_schema, load_config
from tests.test_config import SPEC_CONFIG

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "classguard.schema.json"
CLASSGUARD = str(Path(sys.executable).with_name("classguard"))
NO_OVERRIDES = {name: value for name, value in os.environ.items()
                if not name.startswith("CLASSGUARD_")}


def classguard(folder: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLASSGUARD, *args], cwd=folder, capture_output=True, text=True,
                          timeout=60, env={**NO_OVERRIDES, **(env or {})})


def errors_of(path: Path, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {})
    return caught.value.errors


# The examples of the issue: each loaded without a word before.
@pytest.mark.parametrize(("text", "expected"), [
    ("dashboard:\n  listen: 127.0.0.1:8080\n  publc_url: https://admin.example.org\n",
     "3: unknown key 'publc_url' in dashboard (did you mean public_url?)"),
    ("dot:\n  hostname: dot.example.org\n  lisen: 0.0.0.0:853\n",
     "3: unknown key 'lisen' in dot (did you mean listen?)"),
    ("tls:\n  cert: cert.pem\n  key: key.pem\n  cert_file: cert.pem\n",
     "4: unknown key 'cert_file' in tls (allowed: cert, key)"),
    ("dashboard: {listen: 'localhost:8080'}\n",
     "1: dashboard.listen: 'localhost:8080': 'localhost' is not an IP address"),
    ("dashboard: {public_url: admin.example.org}\n",
     "1: dashboard.public_url: 'admin.example.org': write the address admins and teachers use"),
    ("dot: {listen: '0.0.0.0:853'}\n", "1: dot needs hostname:"),
    ("dot: {hostname: 853}\n", "1: dot.hostname: expected a host name like dot.example.org"),
    ("tls: {cert: cert.pem}\n", "1: tls needs key: (PEM files"),
    ("tls: {cert: 42, key: key.pem}\n", "1: tls.cert: expected a file or folder path, not 42"),
])
def test_dot_tls_and_dashboard_are_checked(tmp_path, text, expected):
    path = tmp_path / "classguard.yaml"
    path.write_text(text)
    errors = errors_of(path)
    assert errors == [f"{path}:{expected}"] or errors[0].startswith(f"{path}:{expected}"), errors
    assert len(errors) == 1


def test_checked_sections_keep_their_values_and_defaults(tmp_path):
    path = tmp_path / "classguard.yaml"
    path.write_text("dot: {hostname: DOT.Example.org}\ndashboard: {public_url: 'https://a.example/'}\n"
                    "tls: {cert: c.pem, key: k.pem}\n")
    config = load_config(path, {})
    assert config.dot == {"listen": "127.0.0.1:8853", "hostname": "dot.example.org"}
    assert config.dashboard == {"listen": "127.0.0.1:8080", "public_url": "https://a.example",
                                "trusted_proxies": ()}
    assert config.tls == {"cert": str(tmp_path.resolve() / "c.pem"),
                          "key": str(tmp_path.resolve() / "k.pem")}


def test_config_validate_prints_ok_or_each_error(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(SPEC_CONFIG)
    result = classguard(tmp_path, "config", "validate", "-c", str(good))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{good}: ok\n", "")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dashboard:\n  publc_url: https://admin.example.org\ndns: {block_ttl: -1}\n")
    result = classguard(tmp_path, "config", "validate", "-c", str(bad))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:2: unknown key 'publc_url' in dashboard (did you mean public_url?)",
        f"{bad}:3: dns.block_ttl: expected a whole number from 0 to 86400, not -1"]
    missing = classguard(tmp_path, "config", "validate", "-c", "nothing.yaml")
    assert missing.returncode == 1
    assert missing.stderr == "classguard: nothing.yaml: no such configuration file\n"
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml", "good.yaml"]  # nothing made


def test_the_schema_in_the_repository_is_the_one_the_code_makes():
    # regenerate with `make schema` (classguard config schema > docs/classguard.schema.json)
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()
    printed = classguard(ROOT, "config", "schema")
    assert printed.returncode == 0 and json.loads(printed.stdout) == json_schema()


@pytest.mark.parametrize("text", [
    SPEC_CONFIG,
    (ROOT / "deploy" / "classguard.yaml").read_text() if (ROOT / "deploy" / "classguard.yaml").exists()
    else "timezone: UTC\n",
    "doh: {}\nquery_log: off\ndns: {rate_limit: off, block_response: null}\n",
])
def test_files_the_parser_accepts_fit_the_schema(text):
    jsonschema_rs.validator_for(json_schema()).validate(yaml.safe_load(text))


@pytest.mark.parametrize("text", [
    "dashboard: {publc_url: 'https://admin.example.org'}\n",
    "dot: {listen: '0.0.0.0:853'}\n",
    "dns: {block_ttl: 90000}\n",
    "query_log: {mode: everything}\n",
    "blocklists: {sources: [{name: a, path: a.txt}]}\n",
])
def test_files_the_parser_refuses_do_not_fit_the_schema(tmp_path, text):
    path = tmp_path / "classguard.yaml"
    path.write_text(text)
    errors_of(path)
    assert not jsonschema_rs.validator_for(json_schema()).is_valid(yaml.safe_load(text))


def test_environment_overrides_the_keys_a_container_sets(tmp_path, monkeypatch):
    path = tmp_path / "classguard.yaml"
    path.write_text("dns:\n  listen: ['127.0.0.1:1053']\n  block_ttl: 30\n")
    secret = tmp_path / "redis-url"
    secret.write_text("redis://:s3cret@redis:6379/0\n")
    config = load_config(path, {
        "CLASSGUARD_DNS_LISTEN": "0.0.0.0:53, [::]:53", "CLASSGUARD_STORE_FILE": str(secret),
        "CLASSGUARD_STATE_DIR": "/var/lib/classguard", "CLASSGUARD_METRICS_LISTEN": "0.0.0.0:9153",
        "CLASSGUARD_TLS_CERT": "/run/secrets/cert.pem", "CLASSGUARD_TLS_KEY": "/run/secrets/key.pem"})
    assert config.dns.listen == ("0.0.0.0:53", "[::]:53") and config.dns.block_ttl == 30
    assert config.store == "redis://:s3cret@redis:6379/0"
    assert config.state_dir == Path("/var/lib/classguard")
    assert config.metrics == {"listen": "0.0.0.0:9153"}
    assert config.tls == {"cert": "/run/secrets/cert.pem", "key": "/run/secrets/key.pem"}
    # without a file, the overrides apply to the defaults
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    config = load_config(None, {"CLASSGUARD_STORE": "redis://redis:6379/0"})
    assert config.store == "redis://redis:6379/0" and config.path is None
    assert set(ENVIRONMENT) >= {"CLASSGUARD_STORE", "CLASSGUARD_DNS_LISTEN", "CLASSGUARD_TLS_KEY"}


def test_environment_mistakes_name_the_variable_and_never_show_a_secret(tmp_path):
    path = tmp_path / "classguard.yaml"
    path.write_text("timezone: UTC\n")
    errors = errors_of(path, {"CLASSGUARD_STORE": "mysql://root:hunter2@db",
                              "CLASSGUARD_DNS_LISTEN": "0.0.0.0:53,localhost:53"})
    assert errors[0].startswith("CLASSGUARD_STORE (environment): store: expected embedded")
    assert errors[1].startswith("CLASSGUARD_DNS_LISTEN (environment): dns.listen: 'localhost:53'")
    assert not any("hunter2" in error for error in errors)
    secret = tmp_path / "url"
    secret.write_text("redis://:hunter2@redis:6379/0")
    assert errors_of(path, {"CLASSGUARD_STORE": "embedded", "CLASSGUARD_STORE_FILE": str(secret)}) \
        == ["environment: set CLASSGUARD_STORE or CLASSGUARD_STORE_FILE, not both"]
    assert errors_of(path, {"CLASSGUARD_STORE_FILE": str(tmp_path / "none")}) == [
        f"environment: CLASSGUARD_STORE_FILE: cannot read {tmp_path / 'none'}: "
        "No such file or directory"]
    # through the command line, the same lines and exit 1
    result = classguard(tmp_path, "config", "validate", "-c", str(path),
                        env={"CLASSGUARD_STORE": "mysql://root:hunter2@db"})
    assert result.returncode == 1 and "hunter2" not in result.stderr + result.stdout
    assert result.stderr.startswith("CLASSGUARD_STORE (environment): store: expected embedded")


def test_store_file_key_reads_the_url_from_a_file(tmp_path):
    (tmp_path / "redis-url").write_text("rediss://:hunter2@redis:6380/1\n")
    path = tmp_path / "classguard.yaml"
    path.write_text("store_file: redis-url\n")
    assert load_config(path, {}).store == "rediss://:hunter2@redis:6380/1"
    path.write_text("store: embedded\nstore_file: redis-url\n")
    assert errors_of(path) == [f"{path}:2: give store: or store_file:, not both"]
    (tmp_path / "redis-url").write_text("mysql://root:hunter2@db\n")
    path.write_text("store_file: redis-url\n")
    [error] = errors_of(path)
    assert error.startswith(f"{path}:1: store_file: {tmp_path.resolve() / 'redis-url'}: expected")
    assert "hunter2" not in error
