"""`classguard serve --workers N`: N processes sharing the DNS port (SO_REUSEPORT), one supervisor.

Each worker is a whole resolver with its own snapshot and cache; they stay in step through the
store (every worker follows its version) and through the compiled lists under state_dir, which
worker 0 refreshes and the others load when the file changes. The supervisor only starts the
workers, forwards SIGTERM/SIGINT to them, and starts again a worker that died.

SIGHUP is ignored by the supervisor and the workers: a terminal that goes away must not stop
DNS, and changes reach a running server through the store (`policy import`, the dashboard),
never through a signal. A worker dies with its supervisor (PR_SET_PDEATHSIG), so that a
supervisor killed with SIGKILL leaves no worker holding the ports.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time

log = logging.getLogger("classguard.workers")

RESTART_DELAY = 1.0  # seconds before a worker that died is started again
RESTART_LIMIT = 5  # deaths within RESTART_WINDOW after which the supervisor gives up
RESTART_WINDOW = 60.0
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when `parent` dies (Linux); at once if it is already gone."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM is all there is
        return
    if os.getppid() != parent:  # it died between the fork and the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(config, workers: int, run_worker) -> int:
    """Fork `workers` processes running `run_worker(config, index, workers)`; exit status."""
    children: dict[int, int] = {}  # pid -> worker index
    deaths: list[float] = []
    stopping = False

    supervisor = os.getpid()

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            die_with_parent(supervisor)
            code = 1
            try:
                code = run_worker(config, index, workers) or 0
            except KeyboardInterrupt:
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index
        log.info("worker %d started (pid %d)", index, pid)

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the workers
    for index in range(workers):
        start(index)
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            continue
        now = time.monotonic()
        deaths[:] = [moment for moment in deaths if now - moment < RESTART_WINDOW] + [now]
        if len(deaths) > RESTART_LIMIT:
            log.error("workers keep dying (last: worker %d, exit %d); stopping", index, code)
            status = 1
            stop(signal.SIGTERM, None)
            continue
        log.error("worker %d exited (%d); starting it again", index, code)
        time.sleep(RESTART_DELAY)
        if stopping:  # a SIGTERM during the delay: the others are stopping, start none
            continue
        start(index)
    sys.stdout.flush()
    return status
