"""Where the workers of `serve --workers N` other than 0 leave their counters for worker 0's
/metrics: one file each under state_dir. Apart from classguard.metrics so that `serve` can clear
them at start without loading the HTTP server and the Prometheus client."""

from __future__ import annotations

from pathlib import Path

SHARE_FOLDER = "metrics"  # under state_dir: the counters of workers other than 0


def share_path(state_dir: Path, worker: int) -> Path:
    return Path(state_dir) / SHARE_FOLDER / f"worker-{worker}.json"


def clear_shares(state_dir: Path) -> None:
    """At `serve`, before any worker starts: the counters a previous run's workers left, gone,
    so that a restart within classguard.metrics.SHARE_STALE does not add them to the new run's
    totals."""
    folder = Path(state_dir) / SHARE_FOLDER
    for path in folder.glob("*worker-*.json*"):  # worker-N.json and its .tmp
        path.unlink(missing_ok=True)
