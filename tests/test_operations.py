"""What a town's IT team meets first (issue 21): `classguard --version` and the build info in the
startup line and /metrics (item 3), a busy port said in one line before anything is written
(item 6), and read-only commands that make nothing on disk (item 7)."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from classguard.version import HOT_PATH, build_info
from tests.ports import free_port
from tests.test_metrics import METRICS, samples, scrape

CLASSGUARD = str(Path(sys.executable).with_name("classguard"))
NO_OVERRIDES = {name: value for name, value in os.environ.items()
                if not name.startswith("CLASSGUARD_")}


def classguard(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLASSGUARD, *args], cwd=folder, capture_output=True, text=True,
                          timeout=120, env=NO_OVERRIDES, stdin=subprocess.DEVNULL)


def test_version_says_what_runs(tmp_path):
    result = classguard(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert re.fullmatch(r"classguard \d+\.\d+\.\d+\S* \(commit [0-9a-f]{7,12}\), Python "
                        rf"{re.escape(platform.python_version())} \(CPython\), uvloop \S+, "
                        f"{HOT_PATH}", line), line
    assert line == build_info().line()


async def test_build_info_metric(make_resolver):
    resolver = await make_resolver(settings=METRICS)
    _status, _headers, text = await scrape(resolver.service)
    [(labels, value)] = samples(text)["classguard_build_info"]
    assert value == 1
    assert labels == build_info().labels()
    assert labels["hot_path"] == "pure Python hot path" and labels["python"] == platform.python_version()


def _config(folder: Path, listen: str) -> Path:
    path = folder / "classguard.yaml"
    path.write_text(textwrap.dedent(f"""\
        state_dir: state
        dns:
          listen: ["{listen}"]
          upstreams: ["udp://127.0.0.1:9"]
        blocklists: {{bundled: false}}
        """))
    return path


def test_a_busy_port_is_one_line_and_nothing_is_written(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        _config(tmp_path, f"127.0.0.1:{port}")
        result = classguard(tmp_path, "serve")
    assert result.returncode == 1
    assert result.stderr == (f"classguard: cannot listen on 127.0.0.1:{port}/udp: address already "
                             "in use (is another DNS server running? see docs/deploy.md)\n")
    assert result.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["classguard.yaml"]  # no state_dir, no seeded store


def test_a_busy_metrics_port_too(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = _config(tmp_path, f"127.0.0.1:{free_port()}")
        path.write_text(path.read_text() + f"metrics: {{listen: '127.0.0.1:{port}'}}\n")
        result = classguard(tmp_path, "serve")
    assert result.returncode == 1
    assert result.stderr == (f"classguard: cannot listen on 127.0.0.1:{port}/tcp: address already "
                             "in use (is another server on that port? see docs/deploy.md)\n")
    assert sorted(os.listdir(tmp_path)) == ["classguard.yaml"]


def test_read_only_commands_make_nothing_on_disk(tmp_path):
    """`classguard check example.com --class local` run from another folder made
    ./classguard-state/ there; so could the other commands that only read."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "policy.yaml").write_text("classes:\n  local:\n    networks: [127.0.0.0/8]\n")
    for args in (("check", "example.com", "--class", "local"),
                 ("policy", "validate", "policy.yaml"),
                 ("config", "validate"),
                 ("lists", "status")):
        result = classguard(elsewhere, *args)
        assert result.returncode == (1 if args[0] == "lists" else 0), (args, result.stderr)
        assert sorted(os.listdir(elsewhere)) == ["policy.yaml"], args
    with_config = tmp_path / "school"
    with_config.mkdir()
    _config(with_config, "127.0.0.1:1053")
    result = classguard(with_config, "check", "example.com", "--class", "local")
    assert result.returncode == 0, result.stderr
    assert "decision: resolve" in result.stdout
    assert sorted(os.listdir(with_config)) == ["classguard.yaml"]
