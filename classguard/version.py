"""What is running: classguard's version, the commit it was built from when known, the Python and
event loop under it, and which hot path answers (`classguard --version`, the startup line and
the `classguard_build_info` metric)."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent
# The Docker image has no .git: its build passes the commit (`--build-arg COMMIT=...`), kept here.
COMMIT_VARIABLE = "CLASSGUARD_COMMIT"
# A later issue adds a compiled hot path; until then every answer comes from Python code.
HOT_PATH = "pure Python hot path"


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    commit: str | None
    python: str
    uvloop: str | None  # its version; None: the standard asyncio loop
    hot_path: str

    def line(self) -> str:
        commit = f" (commit {self.commit})" if self.commit else ""
        loop = f"uvloop {self.uvloop}" if self.uvloop else "asyncio loop (no uvloop)"
        return (f"classguard {self.version}{commit}, Python {self.python} "
                f"({platform.python_implementation()}), {loop}, {self.hot_path}")

    def labels(self) -> dict[str, str]:
        return {"version": self.version, "commit": self.commit or "unknown",
                "python": self.python, "uvloop": self.uvloop or "no", "hot_path": self.hot_path}


@functools.cache
def build_info() -> BuildInfo:
    return BuildInfo(version=_version(), commit=_commit(), python=platform.python_version(),
                     uvloop=_uvloop(), hot_path=HOT_PATH)


def _version() -> str:
    try:
        return importlib.metadata.version("classguard")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare tree
        return "unknown"


def _commit() -> str | None:
    given = os.environ.get(COMMIT_VARIABLE, "").strip()
    if given:
        return given[:12]
    if not (SOURCE_ROOT / ".git").exists():  # an installed wheel: no checkout to ask
        return None
    try:
        result = subprocess.run(["git", "-C", str(SOURCE_ROOT), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _uvloop() -> str | None:
    if importlib.util.find_spec("uvloop") is None:
        return None
    try:
        return importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"
