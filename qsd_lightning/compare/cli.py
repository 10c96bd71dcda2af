"""``python -m qsd_lightning.compare``: the entry point.

``python -m qsd_lightning.compare --config ... -r ... --out ...`` runs the grid under the grid
lock (on this machine, :mod:`.runner`, or as SLURM jobs, :mod:`.slurm`) and writes the report; ``... _run RUN_DIR -- ARGS`` is one grid point (the runner starts
it); ``... pick --out TUNING_GRID`` prints each regulariser's setting tuned on validation
(:mod:`.pick`); ``... update-doc [--check]`` refreshes docs/results.md from the grids' reports
(:mod:`.results_doc`).
"""

from __future__ import annotations

import json
import math
import shlex
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from . import results_doc
from .collect import check_one_backend, collect, validation_curves
from .locks import GRID_LOCK, FolderLock, OutputFolderError, fcntl
from .plan import plan, run_command
from .plots import plot
from .report import write_report
from .run import main_run
from .runner import run_grid
from .spec import GridArgs, GridError, parse_args

__all__ = ["main"]


def _prepare_out(out: Path) -> None:
    """Create ``--out`` and check that it is a writable folder (one-line errors)."""
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out}: exists and is not a folder; give a folder for the runs and the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise OutputFolderError(f"--out {out}: cannot write there ({err.strerror or err})") from None


@contextmanager
def _stop_on_sigterm():
    """SIGTERM stops the runner as Ctrl-C does: the runs in progress are killed, locks released."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_runs(grid: GridArgs):
    """The unfinished runs, on the executor the grid names; the failures."""
    if grid.executor == "local":
        return run_grid(grid)
    from .slurm import run_grid_submitit

    return run_grid_submitit(grid, "slurm" if grid.executor == "slurm" else "local")


def _main_grid(grid: GridArgs) -> int:
    _prepare_out(grid.out)
    if fcntl is None:  # pragma: no cover
        print(f"warning: no file locks on this platform: run one runner at a time on {grid.out}", file=sys.stderr)
    lock = FolderLock(
        grid.out / GRID_LOCK, f"{grid.out}",
        hint="wait for it to finish, or pass --wait to wait for it",
    )

    def waiting(holder: str) -> None:
        print(f"{grid.out} is in use by {holder}; waiting for it to finish (Ctrl-C to stop)", file=sys.stderr)

    with lock.acquire(wait=math.inf if grid.wait else 0.0, on_wait=waiting), _stop_on_sigterm():
        if not grid.report_only:  # grid.json records the last grid that ran runs, not a report's view of it
            (grid.out / "grid.json").write_text(json.dumps({"argv": grid.argv, "command": grid.command}, indent=1))
        failures = [] if grid.report_only else _run_runs(grid)
        if grid.detach and not grid.report_only:
            return 1 if failures else 0
        frame = collect(grid)
        check_one_backend(frame)
        curves = validation_curves(frame)  # every run's metrics.csv read once, for the plot and the table
        notes: list[str] = []
        plot(frame, grid, curves, notes)
        report = write_report(frame, grid, failures, curves, notes)
    n_ok = int((frame["status"] == "ok").sum())
    print(f"{n_ok}/{len(frame)} runs finished; {grid.out / 'results.csv'}, {report}")
    if failures:
        print(f"{len(failures)} run(s) failed:", file=sys.stderr)
        for run, message in failures:
            print(f"  {run.spec.label} seed {run.seed}: {message.splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The runner (exit 0: every run finished; 1: a run failed or the user's error, in one line;
    2: bad arguments; 130: interrupted); ``_run``, one grid point; or ``update-doc``, which
    refreshes (``--check``: compares) docs/results.md from the grids' reports."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_run"]:  # one grid point, in its own process
        return main_run(argv)
    if argv[:1] == ["pick"]:  # each regulariser's tuned setting from a tuning grid, on validation only
        from . import pick

        return pick.main(argv[1:])
    if argv[:1] == ["update-doc"]:  # docs/results.md from the grids' reports
        return results_doc.main(argv[1:], prog="python -m qsd_lightning.compare update-doc")
    grid = parse_args(argv)
    if grid.dry_run:
        for run in plan(grid):
            print(shlex.join(run_command(grid, run)))
        return 0
    try:
        return _main_grid(grid)
    except (UserError, GridError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if grid.executor == "slurm":
            print("interrupted: stopped waiting; the SLURM jobs go on; run the same command again to wait for them "
                  "and write the report", file=sys.stderr)
        else:
            print("interrupted: the runs in progress were stopped; run the same command again to resume", file=sys.stderr)
        return 130
