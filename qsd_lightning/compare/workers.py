"""Grid runs forked from one process that imported torch and Lightning once
(``--start-method forkserver``, the default on Linux).

Python's ``multiprocessing`` forkserver is the engine: its server process imports
:data:`PRELOAD` once, and every run is a fork of it, so a run starts in milliseconds instead
of paying the seconds of importing torch, Lightning and this package. Each fork runs exactly
what a fresh ``python -m qsd_lightning.compare _run`` process runs (:func:`.run.run_here`: the
same environment, thread count and code), from the same just-imported state, so its results
are bit-identical to a fresh process's (tests/test_compare_workers.py compares them). A fork
exists for one run: a run that crashes or hangs takes only its own fork with it, and the next
run is a new fork. Each fork starts its own session (its process group is what ``--timeout``
and a stopped runner kill) and watches the runner: if the runner dies, even by SIGKILL, the
fork kills its own process group (:func:`_die_with_runner`). The forkserver cannot be relied
on for that: every fork holds the forkserver's keep-alive pipe, so the forkserver outlives the
runner for as long as any fork does.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["PRELOAD", "ForkedRun", "start_forked"]

#: what the forkserver imports once: what a run imports before its first step (a module
#: missing here is imported by each run, as in a fresh process; one not installed is skipped)
PRELOAD = [
    "torch",
    "torchvision",
    "lightning.pytorch",
    "wandb",  # imported by every run whose config has a WandbLogger, even when W&B is disabled
    "sklearn.datasets",  # the digits data
    "qsd_lightning.cli",
    "qsd_lightning.tasks",
    "qsd_lightning.callbacks",
    "qsd_lightning.data",
    "qsd_lightning.compare.run",
]

_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def _die_with_runner(runner: int) -> None:
    """Kill this process group (the run and the DDP ranks it started) when ``runner`` exits:
    a thread waits on the runner's pidfd (Linux >= 5.3), else polls it every second. Exits
    at once if the runner is already gone."""
    try:
        fd = os.pidfd_open(runner)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd: poll
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])
        else:
            while True:
                try:
                    os.kill(runner, 0)
                except ProcessLookupError:
                    break
                time.sleep(1.0)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-runner", daemon=True).start()


def _forked_main(run_dir: str, cli_args: list[str], env: dict[str, str], log: str, threads: int | None, runner: int) -> None:
    """A fork of the forkserver: its own session, dies with the runner, then one run."""
    from .run import run_here

    os.setsid()
    _die_with_runner(runner)
    raise SystemExit(run_here(Path(run_dir), cli_args, env, Path(log), threads))


class ForkedRun:
    """One run in a fork of the forkserver, with ``subprocess.Popen``'s ``pid``, ``wait``,
    ``returncode`` and a ``kill_group``."""

    def __init__(self, process) -> None:
        self._process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("forked run", timeout)
        return self._process.exitcode

    def kill_group(self) -> None:
        """SIGKILL the run's process group (its session: the run and any DDP ranks it started),
        or the run alone if it has not yet started its session."""
        if self._process.exitcode is not None:
            return
        try:
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, signal.SIGKILL)
                return
        except (ProcessLookupError, PermissionError):
            pass
        self._process.kill()


def start_forked(run_dir: Path, cli_args: list[str], env: dict[str, str], log: Path, threads: int | None) -> ForkedRun:
    """Start one run as a fork of the forkserver (started, importing :data:`PRELOAD`, on first use)."""
    process = _context().Process(
        target=_forked_main, args=(str(run_dir), list(cli_args), dict(env), str(log), threads, os.getpid()),
        name=f"qsd-run {run_dir.name}",
    )
    process.start()
    return ForkedRun(process)
