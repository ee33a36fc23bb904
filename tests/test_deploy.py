"""The deployment files (issue 21, items 1, 2 and 8): the Docker image's build context installs
(CI has no Docker daemon: its build stage is replayed here), the pinned versions are the ones
the tests run with, and docs/deploy.md's walk-throughs are followed word for word wherever a
step needs no Docker and no root: the configuration and policy checks, the unit file through
`systemd-analyze verify`."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from classguard.config import DASHBOARD_DEFAULTS, DOH_DEFAULTS, load_config
from common.addresses import parse_listen
from resolver.settings import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
CLASSGUARD = str(BIN / "classguard")
DOCKERFILE = (ROOT / "Dockerfile").read_text()
BUILD_STEP = "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ."


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE)
    found: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            found.append([])
        found[-1].append((instruction.upper(), rest.strip()))
    return found


def test_the_image_build_context_installs(tmp_path):
    """What the build stage copies, copied the same way; its build step run on it; the wheel
    installed (--no-deps --target: the test venv's dependencies, pinned like the image's, stand
    in for a fresh venv, which would cost a minute) and run: --version and config validate."""
    build = stages()[0]
    source = tmp_path / "src"
    source.mkdir()
    for instruction, arguments in build:
        if instruction != "COPY":
            continue
        *sources, destination = shlex.split(arguments)
        target = source / destination
        for name in sources:
            origin = ROOT / name
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / name)
    assert ("RUN", BUILD_STEP) in build
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", *BUILD_STEP.replace("/wheels", str(wheels))
                            .split()[:-1], str(source)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = wheels.glob("classguard-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                                "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]

    def run(*args: str) -> subprocess.CompletedProcess:
        # -S: no site-packages hooks (the venv's editable install of this checkout stays out);
        # the installed wheel first, then the venv's dependencies.
        path = f"{site}:{sysconfig.get_paths()['purelib']}:{sysconfig.get_paths()['platlib']}"
        return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path, env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"})

    where = run("-c", "import classguard, dashboard, blocklists.bundled as b; b.load_bundled(); "
                      "print(classguard.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(site))
    version = run("-m", "classguard.cli", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"classguard {metadata.version('classguard')}")
    for config in ("image.yaml", "classguard.yaml"):
        checked = run("-m", "classguard.cli", "config", "validate", "-c", str(DEPLOY / config))
        assert (checked.returncode, checked.stdout) == (0, f"{DEPLOY / config}: ok\n"), checked.stderr


def test_the_runtime_stage():
    runtime = dict(stages()[1][1:])  # one of each that matters
    instructions = stages()[1]
    assert any(i == "RUN" and "--constraint /tmp/constraints.txt /tmp/wheels/classguard-" in a
               for i, a in instructions)
    assert runtime["USER"] == "classguard"
    assert runtime["VOLUME"] == "/var/lib/classguard"
    assert ("COPY", "deploy/image.yaml /etc/classguard/classguard.yaml") in instructions
    assert "CLASSGUARD_CONFIG=/etc/classguard/classguard.yaml" in runtime["ENV"]
    assert runtime["HEALTHCHECK"].endswith('CMD ["python3", "-m", "classguard.healthcheck"]')
    image = load_config(DEPLOY / "image.yaml", {})
    assert str(image.state_dir) == runtime["VOLUME"]
    # every default port: DNS as the image listens, DoT's standard port, DoH's and the
    # dashboard's defaults, metrics as documented; and what compose publishes
    exposed = set(runtime["EXPOSE"].split())
    dns_port = parse_listen(image.dns.listen[0])[1]
    wanted = {f"{dns_port}/udp", f"{dns_port}/tcp", f"{DEFAULT_PORTS['tls']}/tcp",
              f"{parse_listen(DOH_DEFAULTS['listen'])[1]}/tcp",
              f"{parse_listen(DASHBOARD_DEFAULTS['listen'])[1]}/tcp", "9153/tcp"}
    assert exposed == wanted
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name in ("classguard-1", "classguard-2"):
        for mapping in compose["services"][name]["ports"]:
            inside = mapping.rsplit(":", 1)[1]
            assert (inside if "/" in inside else inside + "/tcp") in exposed, mapping


def test_the_pinned_versions_are_the_ones_tested():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "constraints.txt").read_text(),
                           re.M))
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    requirements = metadata.requires("classguard")
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt (make lock)"
        assert metadata.version(name) == pins[name], (name, "make install pins it")
    assert "--constraint constraints.txt -e '.[test]'" in (ROOT / "Makefile").read_text()


def test_the_compose_file():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    instances = [name for name in services if name.startswith("classguard")]
    assert len(instances) == 2
    for name in instances:
        service = services[name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        mounts = [volume.split(":") for volume in service["volumes"]]
        assert ["state-" + name[-1], "/var/lib/classguard"] in mounts
        for origin, _inside, *_ in mounts:
            if origin.startswith("./"):
                assert (DEPLOY / origin).is_file(), origin
    config = load_config(DEPLOY / "classguard.yaml", {})
    assert config.store.startswith("redis://redis:")
    assert {"state-1", "state-2", "redis-data"} <= set(compose["volumes"])


def walkthrough(title: str) -> list[str]:
    """The commands of the first ```sh block under `### title` in docs/deploy.md."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split(f"### {title}\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_compose_walkthrough_word_for_word():
    """Each step that needs no Docker is run as written; the Docker ones are named and left."""
    folder, ran, skipped = ROOT, [], []
    for line in walkthrough("With Docker Compose"):
        words = shlex.split(line)
        if words[0] == "cd":
            folder = folder / words[1]
        elif words[0] == "classguard":
            result = subprocess.run([CLASSGUARD, *words[1:]], cwd=folder, capture_output=True,
                                    text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
            assert result.returncode == 0, (line, result.stderr)
            ran.append(result.stdout.strip())
        else:
            assert words[0] in ("docker", "dig"), line
            skipped.append(line)
    assert ran == ["classguard.yaml: ok", "policies.yaml: ok"]
    assert skipped[0] == "docker compose up -d --build"


def test_the_systemd_walkthrough_and_unit():
    unit = (DEPLOY / "classguard.service").read_text()
    for wanted in ("User=classguard", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                   "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "StateDirectory=classguard",
                   "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                   "ExecStartPre=/opt/classguard/venv/bin/classguard config validate"):
        assert re.search(rf"^{re.escape(wanted)}$", unit, re.M), wanted
    steps = walkthrough("With systemd")
    assert "install -m 0644 deploy/classguard.service /etc/systemd/system/classguard.service" in steps
    assert "systemd-analyze verify /etc/systemd/system/classguard.service" in steps
    assert "/opt/classguard/venv/bin/pip install --constraint constraints.txt ." in steps


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd): the unit file "
                    "is checked by the other deploy tests only")
    # The walk-through's verify step; the venv's classguard stands in for /opt/classguard/venv's
    # (verify checks that ExecStart's program exists).
    unit = (DEPLOY / "classguard.service").read_text().replace(
        "/opt/classguard/venv/bin/classguard", CLASSGUARD)
    path = tmp_path / "classguard.service"
    path.write_text(unit)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")
