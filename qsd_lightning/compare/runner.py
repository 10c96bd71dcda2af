"""Starting the grid's runs on this machine: each in its own process, session and process group.

A run is a fork of the forkserver (:mod:`.workers`, ``--start-method forkserver``) or a fresh
Python process (``fresh``); either way its whole process group is killed on ``--timeout`` and
when the runner stops (Ctrl-C, SIGTERM, see :func:`_stop_children`); a run folder whose lock a
live process holds is never deleted; a run counts as done only when
:func:`~.collect.inspect_run` finds its logs complete. On a machine with GPUs each run sees its
own ``--gpus-per-run`` of them (:class:`GpuSlots`), and ``--jobs`` is capped so that no GPU is
shared and the CPU threads are divided between the runs (:func:`.plan.run_env`).
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from .collect import inspect_run
from .plan import RUNNER_PID_ENV, Run, plan, run_cli_args, run_command, run_env
from .run import log_tail as _tail, prepare_run_dir
from .spec import GridArgs

__all__ = ["run_child", "execute", "run_grid", "GpuSlots", "visible_gpus", "local_jobs"]


_CHILDREN: set = set()  # the runs' processes alive now (Popen or workers.ForkedRun)
_CHILDREN_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set when the runner stops: no new run starts


class _NotStarted(Exception):
    """The runner is stopping: the run was not started."""


def _kill_group(proc) -> None:
    """SIGKILL the run's process group (the run and anything it started); only while it is
    not yet reaped, so its pid (= the group id) cannot have been reused."""
    if hasattr(proc, "kill_group"):  # a fork of the forkserver
        proc.kill_group()
        return
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
    return _supervise(lambda: subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, start_new_session=os.name == "posix"), timeout, cmd)


def _supervise(start, timeout: float | None, args) -> subprocess.CompletedProcess:
    """Start a run's process (``start()``, unless the runner is stopping), wait for it, kill
    its process group on ``timeout`` (``subprocess.TimeoutExpired``)."""
    with _CHILDREN_LOCK:
        if _STOPPING.is_set():
            raise _NotStarted
        proc = start()
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
    return subprocess.CompletedProcess(args, rc)


def visible_gpus() -> list[str]:
    """The CUDA devices this runner may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else every
    device torch counts (without initialising CUDA in the runner)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # pragma: no cover - a broken CUDA install: no GPUs
        return []


class GpuSlots:
    """Disjoint sets of ``per_run`` GPUs, one per run in progress: a run takes a set for its
    lifetime (``with slots.take() as ids``) and sees only those (``CUDA_VISIBLE_DEVICES``)."""

    def __init__(self, gpus: list[str], per_run: int) -> None:
        self.per_run = per_run
        self.count = len(gpus) // per_run if per_run else 0
        self._free: queue.Queue = queue.Queue()
        for i in range(self.count):
            self._free.put(gpus[i * per_run:(i + 1) * per_run])

    @contextmanager
    def take(self):
        ids = self._free.get()
        try:
            yield ids
        finally:
            self._free.put(ids)


def local_jobs(grid: GridArgs, gpus: list[str]) -> tuple[int, GpuSlots | None]:
    """Runs at a time and the GPU sets: with GPUs, at most one run per ``--gpus-per-run`` set."""
    per_run = grid.gpus_per_run if grid.gpus_per_run is not None else (1 if gpus else 0)
    if per_run == 0:
        return grid.jobs, None
    if per_run > len(gpus):
        raise UserError(
            f"--gpus-per-run {per_run}: this machine shows {len(gpus)} GPU(s) (CUDA_VISIBLE_DEVICES / torch); "
            "give fewer, or --gpus-per-run 0 for CPU runs"
        )
    slots = GpuSlots(gpus, per_run)
    return min(grid.jobs, slots.count), slots


def _launch(grid: GridArgs, run: Run, log: Path, env: dict[str, str], jobs: int):
    """The run's process: a fork of the forkserver, or a fresh ``python -m qsd_lightning.compare _run``."""
    if grid.start_method == "forkserver":
        from .workers import start_forked

        own_env = {k: v for k, v in env.items() if k != RUNNER_PID_ENV}  # a fork dies with the forkserver instead
        return _supervise(lambda: start_forked(run.dir, run_cli_args(grid, run), own_env, log, _threads(grid, jobs)),
                          grid.timeout, run.dir.name)
    with open(log, "w") as fh:
        return run_child(run_command(grid, run), stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=grid.timeout)


def _threads(grid: GridArgs, jobs: int) -> int | None:
    return grid.threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)


def execute(grid: GridArgs, run: Run, slots: GpuSlots | None = None, jobs: int | None = None) -> tuple[Run, bool, str]:
    """Run one grid point in its own process; (run, ok, message)."""
    if _STOPPING.is_set():
        return run, False, "not started: the runner was stopped"
    problem = prepare_run_dir(run.dir, shlex.join(run_command(grid, run)))
    if problem:
        return run, False, problem
    log = run.dir / "log.txt"
    log.touch()
    jobs = jobs or grid.jobs
    start = time.time()
    try:
        with (slots.take() if slots else _no_gpus(grid)) as gpu_ids:
            env = run_env(grid, threads=_threads(grid, jobs), gpus=gpu_ids)
            proc = _launch(grid, run, log, env, jobs)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        return run, False, f"timed out after {grid.timeout:g} s (its process group was killed); log {log}:\n{_tail(log)}"
    except _NotStarted:
        return run, False, "not started: the runner was stopped"
    if rc == 0 and run.result_file.is_file():
        state = inspect_run(run, check_lock=False)
        if state.status == "ok":
            return run, True, f"done in {time.time() - start:.1f} s"
        return run, False, f"finished, but {state.problem}; log {log}"
    return run, False, f"exit status {rc}; log {log}:\n{_tail(log)}"


@contextmanager
def _no_gpus(grid: GridArgs):
    """No GPU set: ``--gpus-per-run 0`` hides the GPUs from the run; otherwise none were found."""
    yield [] if grid.gpus_per_run == 0 else None


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
    jobs, slots = local_jobs(grid, visible_gpus())
    if slots is not None and jobs < grid.jobs:
        tqdm.write(f"--jobs {grid.jobs}: {jobs} at a time, one per set of {slots.per_run} GPU(s)")
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(execute, grid, r, slots, jobs) for r in pending]
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
