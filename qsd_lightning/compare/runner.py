"""Starting the grid's runs: each in its own subprocess, session and process group.

A run's whole process group is killed on ``--timeout`` and when the runner stops (Ctrl-C,
SIGTERM, see :func:`_stop_children`); a run folder whose lock a live process holds is never
deleted; a run counts as done only when :func:`~.collect.inspect_run` finds its logs complete.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .collect import inspect_run
from .locks import RUN_LOCK, lock_holder
from .plan import Run, plan, run_command, run_env
from .spec import GridArgs

__all__ = ["run_child", "execute", "run_grid"]


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


_CHILDREN: set[subprocess.Popen] = set()  # the runs' subprocesses alive now
_CHILDREN_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set when the runner stops: no new run starts


class _NotStarted(Exception):
    """The runner is stopping: the run was not started."""


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group (the run and anything it started); only while it is
    not yet reaped, so its pid (= the group id) cannot have been reused."""
    if proc.returncode is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except OSError:
            pass


def _stop_children() -> None:
    """Start no more runs and kill the process group of every run in progress."""
    with _CHILDREN_LOCK:
        _STOPPING.set()
        for proc in list(_CHILDREN):
            _kill_group(proc)


def run_child(cmd: list[str], stdout=None, stderr=None, env=None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run one grid point's subprocess (as ``subprocess.run``) in its own session and process group.

    On ``timeout`` the whole group is killed, not only the direct child; when the runner stops
    (Ctrl-C, SIGTERM) :func:`_stop_children` kills the groups of the runs in progress; and if
    the runner is killed outright, the run kills itself (``_die_with_runner``).
    """
    with _CHILDREN_LOCK:
        if _STOPPING.is_set():
            raise _NotStarted
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, start_new_session=os.name == "posix")
        _CHILDREN.add(proc)
    try:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            raise
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(proc)
    return subprocess.CompletedProcess(cmd, rc)


def execute(grid: GridArgs, run: Run) -> tuple[Run, bool, str]:
    """Run one grid point in a subprocess; (run, ok, message)."""
    if _STOPPING.is_set():
        return run, False, "not started: the runner was stopped"
    if run.dir.exists():  # a run that stopped half-way: start it clean, unless a process still uses it
        holder = lock_holder(run.dir / RUN_LOCK)
        if holder:
            return run, False, (
                f"run folder {run.dir} is in use by {holder} (a run left over from another runner?); "
                "not deleted: stop that process, then run again"
            )
        shutil.rmtree(run.dir)
    run.dir.mkdir(parents=True)
    cmd = run_command(grid, run)
    (run.dir / "command.txt").write_text(shlex.join(cmd) + "\n")
    log = run.dir / "log.txt"
    start = time.time()
    try:
        with open(log, "w") as fh:
            proc = run_child(cmd, stdout=fh, stderr=subprocess.STDOUT, env=run_env(grid), timeout=grid.timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        return run, False, f"timed out after {grid.timeout:g} s (its process group was killed); log {log}:\n{_tail(log)}"
    except _NotStarted:
        return run, False, "not started: the runner was stopped"
    if rc == 0 and run.result_file.is_file():
        state = inspect_run(run, check_lock=False)
        if state.status == "ok":
            return run, True, f"done in {time.time() - start:.0f} s"
        return run, False, f"finished, but {state.problem}; log {log}"
    return run, False, f"exit status {rc}; log {log}:\n{_tail(log)}"


def run_grid(grid: GridArgs) -> list[tuple[Run, str]]:
    """Run every unfinished run (progress bar over the whole grid); the failures.

    A run is unfinished unless :func:`inspect_run` finds it complete: no ``result.json``, or a
    ``metrics.csv`` that is not the one the run finished with, and such a run is run again.
    On Ctrl-C or SIGTERM the runs in progress are killed (process groups) before it returns.
    """
    from tqdm.auto import tqdm

    _STOPPING.clear()
    runs = plan(grid)
    states = {r: inspect_run(r) for r in runs}
    pending = [r for r in runs if states[r].status != "ok"]
    skipped = len(runs) - len(pending)
    failures: list[tuple[Run, str]] = []
    bar = tqdm(total=len(runs), initial=skipped, desc="grid", unit="run", dynamic_ncols=True)
    if skipped:
        tqdm.write(f"{skipped} finished run(s) skipped (complete result.json and metrics.csv)")
    for r in pending:
        if states[r].status == "incomplete":
            tqdm.write(f"{r.spec.label} seed {r.seed}: {states[r].problem}; running it again", file=sys.stderr)
    pool = ThreadPoolExecutor(max_workers=grid.jobs)
    try:
        futures = [pool.submit(execute, grid, r) for r in pending]
        for fut in as_completed(futures):
            run, ok, message = fut.result()
            bar.update(1)
            bar.set_postfix(failed=len(failures) + (not ok))
            name = f"{run.spec.label} seed {run.seed}"
            if ok:
                tqdm.write(f"{name}: {message}")
            else:
                failures.append((run, message))
                tqdm.write(f"FAILED {name}: {message}", file=sys.stderr)
    except BaseException:  # Ctrl-C, SIGTERM (see _stop_on_sigterm) or a bug: no run outlives the runner
        _stop_children()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    return failures
