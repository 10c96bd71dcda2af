"""One grid point, in its own process (``python -m qsd_lightning.compare _run RUN_DIR -- ARGS``).

It holds ``<run>/.run.lock`` for its lifetime, dies with the runner that started it (Linux:
``PR_SET_PDEATHSIG``), fits and tests with the LightningCLI exactly as ``python -m
qsd_lightning fit`` does, and writes ``result.json`` last, with the SHA-256 of its
``metrics.csv``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

from ..errors import UserError
from .locks import RUN_LOCK, FolderLock, lock_holder
from .metrics_csv import sha256 as metrics_csv_sha256
from .plan import RESULT_FILE, RUNNER_PID_ENV

__all__ = ["run_one", "main_run", "prepare_run_dir", "run_here", "log_tail"]


def _set_pdeathsig() -> None:
    """Linux: this process gets SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover
            pass


def _is_launched_rank() -> bool:
    """A process that Lightning's DDP launcher started for a rank other than 0 (it re-runs
    this command line with ``LOCAL_RANK``/``NODE_RANK`` set)."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def _die_with_runner() -> None:
    """In a run's subprocess: die with the runner that started it, even if it is SIGKILLed.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``. The runner may have died before that call (the
    interpreter starts first), so the parent pid is checked afterwards: if this process has
    been re-parented, the runner is gone and the run does not start.
    """
    runner = os.environ.pop(RUNNER_PID_ENV, None)  # popped: the ranks rank 0 launches are not the runner's
    if not runner:  # started by hand (or in-process by the tests)
        return
    _set_pdeathsig()
    if str(os.getppid()) != runner:
        raise UserError(f"the comparison runner (pid {runner}) that started this run has exited; not running")


def run_one(run_dir: Path, cli_args: list[str]) -> dict:
    """Fit with the LightningCLI, test the best checkpoint, write ``result.json`` last.

    ``result.json`` records the SHA-256 of the run's ``metrics.csv`` as it is when the run
    ends, so a log truncated or overwritten later is not taken for this run's.
    """
    from ..cli import cli_main, finish_wandb_runs
    from ..regularisers.backend import describe
    from lightning.pytorch.loggers import CSVLogger

    start = time.time()
    # this process's own argv (``_run RUN_DIR -- ...``) is not the CLI's: Lightning's warning about
    # both (one line holding the whole command twice) says nothing here. Other warnings stay
    # visible in log.txt (a failed kernel compile among them).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
        cli = cli_main(cli_args, run=False)
    trainer = cli.trainer
    trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt_cb = trainer.checkpoint_callback
    ckpt = None
    if ckpt_cb is not None:
        ckpt = ckpt_cb.best_model_path or ckpt_cb.last_model_path or None
    tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, verbose=False)
    finish_wandb_runs(trainer)
    csv_dirs = [lg.log_dir for lg in trainer.loggers if isinstance(lg, CSVLogger)]
    metrics_csv = Path(csv_dirs[0]) / "metrics.csv" if csv_dirs else None
    result = {
        "test": {k: float(v) for k, v in (tested[0] if tested else {}).items()},
        "checkpoint": str(Path(ckpt).resolve()) if ckpt else None,
        "last_checkpoint": str(Path(ckpt_cb.last_model_path).resolve()) if ckpt_cb is not None and ckpt_cb.last_model_path else None,
        "metrics_csv": str(metrics_csv) if metrics_csv else None,
        "metrics_sha256": metrics_csv_sha256(metrics_csv) if metrics_csv and metrics_csv.is_file() else None,
        "epochs": trainer.current_epoch,
        "seconds": time.time() - start,
        "cli_args": cli_args,
        "backend": describe(),  # fast-path backends and library versions this run used
    }
    if trainer.is_global_zero:  # one writer (DDP ranks > 0 return the same result)
        tmp = run_dir / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(run_dir / RESULT_FILE)
    return result


def log_tail(path: Path, lines: int = 6) -> str:
    """The last ``lines`` of a run's log, indented, for a failure report."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:])


def prepare_run_dir(run_dir: Path, command: str) -> str | None:
    """Start ``run_dir`` clean (a run that stopped half-way leaves a partial folder) and record
    the command; the reason not to, if a live process holds the folder's lock."""
    if run_dir.exists():
        holder = lock_holder(run_dir / RUN_LOCK)
        if holder:
            return (
                f"run folder {run_dir} is in use by {holder} (a run left over from another runner?); "
                "not deleted: stop that process, then run again"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "command.txt").write_text(command + "\n")
    return None


def run_here(run_dir: Path, cli_args: list[str], env: dict[str, str], log: Path, threads: int | None) -> int:
    """One grid point in this process, as ``python -m qsd_lightning.compare _run`` would run it in
    a fresh one: exactly ``env`` as the environment, stdout and stderr appended to ``log``,
    ``threads`` torch threads (as ``OMP_NUM_THREADS`` gives a fresh process), and a command
    line that Lightning's DDP launcher can start the other ranks with. For a process that
    exists for this one run (a fork of the forkserver, a SLURM job); returns the exit status."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    if threads:
        import torch

        torch.set_num_threads(threads)
    argv = ["_run", str(run_dir), "--", *cli_args]
    main = sys.modules.get("__main__")
    if main is not None:  # the DDP launcher re-runs ``python -m <__main__.__spec__.name> sys.argv[1:]``
        main.__spec__ = importlib.util.find_spec("qsd_lightning.compare.__main__")
    sys.argv = ["qsd_lightning.compare", *argv]
    try:
        return main_run(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def main_run(argv: list[str]) -> int:
    """``_run RUN_DIR -- CLI_ARGS``: one grid point, in its own process, holding its run lock."""
    if len(argv) < 3 or argv[2] != "--":
        raise SystemExit("usage: python -m qsd_lightning.compare _run RUN_DIR -- CLI_ARGS...")
    run_dir = Path(argv[1])
    try:
        if _is_launched_rank():  # a DDP rank > 0 of this run: dies with rank 0, which holds the lock
            _set_pdeathsig()
            run_one(run_dir, argv[3:])
            return 0
        _die_with_runner()
        run_dir.mkdir(parents=True, exist_ok=True)
        with FolderLock(run_dir / RUN_LOCK, f"run folder {run_dir}").acquire(wait=10.0):
            run_one(run_dir, argv[3:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
