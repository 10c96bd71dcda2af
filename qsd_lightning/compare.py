"""Compare regularisers over seeds: run a grid, collect the logs, test, plot.

::

    python -m qsd_lightning.compare --config configs/mlp_digits.yaml \\
        --regulariser dropout --regulariser qsd:gamma=4,mode=coupled --regulariser none \\
        --seeds 0 1 2 3 4 --override trainer.max_epochs=10 --out results/digits

``--regulariser NAME[:ARG=VALUE,ARG=VALUE...]`` names a registered regulariser and its
arguments (``qsd:gamma=4,mode=release,rate=0.5``); give it as often as you like, several QSD
settings included. Arguments not given keep the config's values (its ``rate``, for one).
``--override KEY=VALUE`` is any CLI option without its dashes (``trainer.max_epochs=10``,
``data.data_dir=../shared/data/mnist``).

Every run is one subprocess (``python -m qsd_lightning.compare _run``) that builds the
LightningCLI exactly as ``python -m qsd_lightning fit`` does, fits, then tests the best
checkpoint. Runs live in ``<out>/runs/<regulariser>/seed<N>/`` with their own CSV log
(``csv/version_0/metrics.csv``), checkpoints, ``command.txt`` and ``log.txt``; a run is
finished when its ``result.json`` exists, and finished runs are skipped, so the grid resumes
where it stopped. A failed run is reported (with the tail of its log) and the grid goes on.

Outputs in ``<out>``: ``results.csv`` (one row per run: test metrics, final validation
sparsity per layer, weight statistics), ``results.md`` (mean +- sd per regulariser, paired
t-test and exact sign-flip test of each regulariser against the baseline on the same seeds,
the validation metric per epoch) and ``test_error.png`` (or ``test_ppl.png``),
``validation.png`` (validation curves, mean +- sd over seeds), ``sparsity.png``, ``weights.png``.
W&B is disabled in the runs unless ``--wandb`` (then ``WANDB_MODE`` decides as usual).

One runner per output folder: the runner holds ``<out>/.grid.lock`` while it runs and reports
(``--report-only`` too), and a second runner on the same ``--out`` stops at once naming the
process that holds it (``--wait`` waits for it instead). Each run's subprocess holds
``<run>/.run.lock`` for its lifetime and dies with the runner (Linux: ``PR_SET_PDEATHSIG``; on
Ctrl-C, SIGTERM or ``--timeout`` the runner kills the run's whole process group), and a run
folder whose lock is still held is never deleted. A run counts as finished only if its
``metrics.csv`` is the one it finished with (``result.json`` records its SHA-256): a truncated
or overwritten log is reported and the run is run again. Checkpoints read for the report are
loaded without running code (``weights_only``); a file that needs code is skipped and named.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from .errors import CheckpointError, UserError

try:  # POSIX advisory locks; without them (Windows) the folder locks are not taken
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "GridError",
    "OutputFolderError",
    "FolderInUse",
    "FolderLock",
    "lock_holder",
    "inspect_run",
    "RegulariserSpec",
    "parse_regulariser",
    "parse_override",
    "parse_args",
    "paired_t_test",
    "sign_flip_test",
    "student_t_sf",
    "read_metrics_csv",
    "collect",
    "main",
]

RESULT_FILE = "result.json"
GRID_LOCK = ".grid.lock"  # in <out>: held by the runner (and --report-only) while it works
RUN_LOCK = ".run.lock"  # in each run folder: held by the run's subprocess for its lifetime
RUNNER_PID_ENV = "QSD_COMPARE_RUNNER_PID"  # the runner's pid, for its run subprocesses


class GridError(ValueError):
    """A bad grid specification (config, regulariser, override): reported in one line."""


class OutputFolderError(UserError):
    """``--out`` cannot be used (a file, not writable): reported in one line."""


class FolderInUse(OutputFolderError):
    """Another live process holds the folder's lock: reported in one line naming it."""


# --------------------------------------------------------------------------- locks


def _read_holder(path: Path) -> str:
    """What the lock file says about its holder (``pid N on HOST since ...``), one line."""
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "another process (pid not recorded yet)"


class FolderLock:
    """An exclusive ``flock`` on ``path``, released by the kernel when its holder dies (even by
    SIGKILL), so it is never stale. The holder writes ``pid N on HOST since TIME`` into the file,
    and whoever finds the lock taken reads it from there.
    """

    def __init__(self, path: Path, what: str, hint: str = ""):
        self.path, self.what, self.hint = Path(path), what, hint
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0, on_wait=None) -> "FolderLock":
        """Take the lock, waiting up to ``wait`` seconds (``math.inf``: until it is free);
        raise :class:`FolderInUse` if another process still holds it. ``on_wait(holder)`` is
        called once when it has to wait."""
        if fcntl is None:  # pragma: no cover
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline, told = time.monotonic() + wait, False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise FolderInUse(f"{self.what} is in use by {_read_holder(self.path)}" + (f"; {self.hint}" if self.hint else "")) from None
                    if on_wait is not None and not told:
                        on_wait(_read_holder(self.path))
                        told = True
                    time.sleep(min(0.25, left))
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(path: Path) -> str | None:
    """Who holds the lock at ``path`` (``pid N on HOST ...``), or None when it is free or absent."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- specification


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets: ``locked_dims=[1,2],gamma=4`` -> 2 items."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


@dataclass(frozen=True)
class RegulariserSpec:
    """One regulariser setting of the grid: registry name and arguments (as CLI strings)."""

    name: str
    args: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """``qsd:gamma=4,mode=coupled`` (the form it was given in, normalised)."""
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.args) if self.args else "")

    @property
    def slug(self) -> str:
        """A directory name: ``qsd_gamma-4_mode-coupled``."""
        text = "_".join([self.name, *(f"{k}-{v}" for k, v in self.args)])
        return re.sub(r"[^A-Za-z0-9._-]+", "", text.replace(" ", ""))

    def cli_args(self) -> list[str]:
        return ["--model.regulariser", self.name, *(f"--model.regulariser.{k}={v}" for k, v in self.args)]


def parse_regulariser(text: str) -> RegulariserSpec:
    """``"qsd:gamma=4,mode=coupled"`` -> :class:`RegulariserSpec`, checked against the registry.

    Raises :class:`GridError` for an unknown name, an argument the class does not take, or a
    value it refuses (``rate=1.5``), so a bad grid stops before any run starts.
    """
    from . import regularisers as R

    name, _, rest = text.strip().partition(":")
    name = name.strip()
    try:
        cls = R.get(name)
    except ValueError as err:
        raise GridError(f"--regulariser {text!r}: {err}") from None
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    args: list[tuple[str, str]] = []
    for item in _split_top_level(rest):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise GridError(f"--regulariser {text!r}: expected ARG=VALUE, got {item!r}")
        if key not in accepted:
            raise GridError(
                f"--regulariser {text!r}: {name} takes no argument {key!r}; valid: {', '.join(accepted) or 'none'}"
            )
        if key in dict(args):
            raise GridError(f"--regulariser {text!r}: {key!r} given twice")
        args.append((key, value))
    try:
        R.build(name, **{k: yaml.safe_load(v) for k, v in args})
    except Exception as err:  # the class's own validation (rate in [0, 1), mode, gamma > 0)
        raise GridError(f"--regulariser {text!r}: {err}") from None
    return RegulariserSpec(name, tuple(args))


def parse_override(text: str) -> str:
    """``"trainer.max_epochs=10"`` -> ``"--trainer.max_epochs=10"``."""
    key, eq, value = text.lstrip("-").partition("=")
    if not eq or not key.strip():
        raise GridError(f"--override {text!r}: expected KEY=VALUE, e.g. trainer.max_epochs=10")
    return f"--{key.strip()}={value}"


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line (no usage block): ``prog: error: <message> (see --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="python -m qsd_lightning.compare",
        description="Run a grid of regularisers x seeds on one config; write results.csv, results.md and plots.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  python -m qsd_lightning.compare --config configs/mlp_digits.yaml --regulariser dropout "
        "--regulariser qsd:gamma=4,mode=coupled --regulariser none --seeds 0 1 2 3 4 "
        "--override trainer.max_epochs=10 --out results/digits",
    )
    p.add_argument("--config", required=True, help="the experiment's YAML config")
    p.add_argument(
        "--regulariser", "-r", dest="regularisers", action="extend", nargs="+", required=True, metavar="NAME[:ARG=V,...]",
        help="a registered regulariser and its arguments, e.g. dropout, none, qsd:gamma=4,mode=coupled (repeatable)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seed_everything values (default: 0)")
    p.add_argument("--override", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="CLI options without dashes, e.g. trainer.max_epochs=10 (repeatable)")
    p.add_argument("--out", required=True, help="output folder (runs, results.csv, results.md, PNGs)")
    p.add_argument("--baseline", nargs="+", default=None,
                   help="regulariser(s) the others are tested against (labels or unique names; default dropout); "
                        "the first is also the baseline of the sparsity and weight tables")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch/OMP threads per run (default: cores / jobs)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run before it is killed and reported")
    p.add_argument("--wandb", action="store_true", help="keep W&B logging (WANDB_MODE decides); default: disabled")
    p.add_argument("--dry-run", action="store_true", help="print each run's command and stop")
    p.add_argument("--report-only", action="store_true", help="run nothing: collect finished runs and write the report")
    p.add_argument("--wait", action="store_true",
                   help="if another runner is using --out, wait for it to finish (default: stop at once)")
    return p


@dataclass
class GridArgs:
    config: Path
    regularisers: list[RegulariserSpec]
    seeds: list[int]
    overrides: list[str]
    out: Path
    baselines: list[str]
    jobs: int = 1
    threads: int | None = None
    timeout: float | None = None
    wandb: bool = False
    dry_run: bool = False
    report_only: bool = False
    wait: bool = False
    argv: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> str:
        """The main baseline: the first ``--baseline``."""
        return self.baselines[0]

    @property
    def command(self) -> str:
        """The command line that writes this grid's report (``--report-only`` left out)."""
        return "python -m qsd_lightning.compare " + shlex.join(self.argv)


def parse_args(argv: Sequence[str] | None = None) -> GridArgs:
    """Parse and validate the grid's arguments; argparse errors (exit 2) name the bad one."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    config = Path(ns.config)
    if not config.is_file():
        parser.error(f"--config: no such file: {config}")
    try:
        loaded = yaml.safe_load(config.read_text())
    except yaml.YAMLError as err:
        parser.error(f"--config {config}: not valid YAML ({err})")
    if not isinstance(loaded, dict):
        parser.error(f"--config {config}: not a config mapping")
    try:
        specs = [parse_regulariser(r) for r in ns.regularisers]
        overrides = [parse_override(o) for o in ns.overrides]
    except GridError as err:
        parser.error(str(err))
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        parser.error(f"--regulariser given twice: {', '.join(dupes)}")
    if len({s.slug for s in specs}) != len(specs):
        parser.error("--regulariser: two settings map to the same run folder; write them differently")
    if len(set(ns.seeds)) != len(ns.seeds):
        parser.error("--seeds: a seed is given twice")
    if ns.jobs < 1:
        parser.error("--jobs must be >= 1")
    baselines = []
    for baseline in ns.baseline or ["dropout"]:
        if baseline not in labels:  # a bare name picks the one setting of that regulariser
            names = [s for s in specs if s.name == baseline]
            baseline = names[0].label if len(names) == 1 else baseline
        if ns.baseline and baseline not in labels:  # the default may be absent: then no paired table
            parser.error(f"--baseline {baseline}: not one of this grid's regularisers ({', '.join(labels)})")
        if baseline in baselines:
            parser.error(f"--baseline given twice: {baseline}")
        baselines.append(baseline)
    return GridArgs(
        config=config, regularisers=specs, seeds=list(ns.seeds), overrides=overrides, out=Path(ns.out),
        baselines=baselines, jobs=ns.jobs, threads=ns.threads, timeout=ns.timeout, wandb=ns.wandb,
        dry_run=ns.dry_run, report_only=ns.report_only, wait=ns.wait,
        argv=[a for a in argv if a not in ("--report-only", "--wait")],
    )


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    spec: RegulariserSpec
    seed: int
    dir: Path

    @property
    def result_file(self) -> Path:
        return self.dir / RESULT_FILE


def plan(grid: GridArgs) -> list[Run]:
    return [Run(s, seed, grid.out / "runs" / s.slug / f"seed{seed}") for s in grid.regularisers for seed in grid.seeds]


def _as_list(value: Any) -> list:
    if value is None or value is True or value is False:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _class_path(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return str(entry.get("class_path", ""))
    return ""


def run_cli_args(grid: GridArgs, run: Run) -> list[str]:
    """The LightningCLI arguments of one run (as for ``python -m qsd_lightning fit``).

    The config's loggers are kept with their ``save_dir`` moved into the run folder (W&B runs
    named after the run and grouped by regulariser), a CSVLogger writing
    ``<run>/csv/version_0/metrics.csv`` comes first (so checkpoints land beside it), and the
    sparsity and weight callbacks are added when the config lacks them.
    """
    config = yaml.safe_load(grid.config.read_text()) or {}
    trainer = config.get("trainer") or {}
    run_dir = str(run.dir.resolve())
    loggers: list[dict] = [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": run_dir, "name": "csv", "version": 0}}
    ]
    for entry in _as_list(trainer.get("logger")):
        if not isinstance(entry, dict) or not entry.get("class_path") or _class_path(entry).endswith("CSVLogger"):
            continue
        entry = copy.deepcopy(entry)
        init = entry.setdefault("init_args", {}) or {}
        entry["init_args"] = init
        init["save_dir"] = run_dir
        if _class_path(entry).endswith("WandbLogger"):
            init["name"] = f"{grid.config.stem}/{run.spec.label}/seed{run.seed}"
            init["group"] = f"{grid.config.stem}/{run.spec.label}"
        loggers.append(entry)
    callbacks = [_class_path(c) for c in _as_list(trainer.get("callbacks"))]
    extra_callbacks = [
        f"--trainer.callbacks+=qsd_lightning.callbacks.{name}"
        for name in ("ActivationSparsity", "WeightDistributions")
        if not any(c.endswith(name) for c in callbacks)
    ]
    return [
        "--config", str(grid.config),
        *run.spec.cli_args(),
        f"--seed_everything={run.seed}",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger={json.dumps(loggers)}",
        "--trainer.enable_progress_bar=false",
        *extra_callbacks,
        *grid.overrides,
    ]


def run_command(grid: GridArgs, run: Run) -> list[str]:
    return [sys.executable, "-m", "qsd_lightning.compare", "_run", str(run.dir), "--", *run_cli_args(grid, run)]


def run_env(grid: GridArgs) -> dict[str, str]:
    env = dict(os.environ)
    if not grid.wandb:
        env["WANDB_MODE"] = "disabled"
    env.setdefault("WANDB_SILENT", "true")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env[RUNNER_PID_ENV] = str(os.getpid())  # the run dies with this process (see _die_with_runner)
    threads = grid.threads or (max(1, (os.cpu_count() or 1) // grid.jobs) if grid.jobs > 1 else None)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


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


# --------------------------------------------------------------------------- one run (subprocess)


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


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_one(run_dir: Path, cli_args: list[str]) -> dict:
    """Fit with the LightningCLI, test the best checkpoint, write ``result.json`` last.

    ``result.json`` records the SHA-256 of the run's ``metrics.csv`` as it is when the run
    ends, so a log truncated or overwritten later is not taken for this run's.
    """
    from .cli import cli_main, finish_wandb_runs
    from lightning.pytorch.loggers import CSVLogger

    start = time.time()
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
        "metrics_sha256": _sha256(metrics_csv) if metrics_csv and metrics_csv.is_file() else None,
        "epochs": trainer.current_epoch,
        "seconds": time.time() - start,
        "cli_args": cli_args,
    }
    if trainer.is_global_zero:  # one writer (DDP ranks > 0 return the same result)
        tmp = run_dir / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(run_dir / RESULT_FILE)
    return result


# --------------------------------------------------------------------------- statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """Two-sided p-value P(|T| >= |t|) of Student's t with ``df`` degrees of freedom."""
    if math.isnan(t) or df <= 0:
        return float("nan")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


@dataclass
class PairedTest:
    n: int
    mean_diff: float
    sd_diff: float
    t: float
    df: int
    p: float
    p_sign_flip: float


def sign_flip_test(diffs: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation p-value of the mean paired difference (n <= 20)."""
    d = [float(x) for x in diffs]
    n = len(d)
    if n == 0:
        return float("nan")
    if n > 20:
        raise ValueError("exact sign-flip test enumerates 2^n sign patterns; n must be <= 20")
    observed = abs(sum(d)) - 1e-12 * (1 + sum(abs(x) for x in d))
    hits = sum(abs(sum(s * x for s, x in zip(signs, d))) >= observed for signs in itertools.product((1, -1), repeat=n))
    return hits / 2**n


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test of ``a - b`` (same seeds, same order): mean difference, t, two-sided p."""
    if len(a) != len(b):
        raise ValueError("paired test needs equally long samples")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n if n else float("nan")
    if n < 2:
        return PairedTest(n, mean, float("nan"), float("nan"), max(n - 1, 0), float("nan"), sign_flip_test(d) if n else float("nan"))
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    if sd == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    p = 1.0 if t == 0 else student_t_sf(t, n - 1)
    return PairedTest(n, mean, sd, t, n - 1, p, sign_flip_test(d))


# --------------------------------------------------------------------------- collection


def read_metrics_csv(path: str | Path) -> dict[str, float]:
    """Summarise one run's CSVLogger ``metrics.csv``.

    - ``test/*``: the last test row; the sparsity measured there becomes ``test_sparsity/*``.
    - ``val/*``, ``sparsity/*``, ``weights/*``: the last value logged during fit (the final
      validation), and ``best_val/<metric>`` the best over epochs (max of acc, min otherwise).
    """
    import pandas as pd

    df = pd.read_csv(path)
    out: dict[str, float] = {}
    test_cols = [c for c in df.columns if c.startswith("test/")]
    is_test = df[test_cols].notna().any(axis=1) if test_cols else pd.Series(False, index=df.index)
    test_rows, fit_rows = df[is_test], df[~is_test]
    if len(test_rows):
        last = test_rows.iloc[-1]
        for c in df.columns:
            if pd.isna(last[c]):
                continue
            if c.startswith("test/"):
                out[c] = float(last[c])
            elif c.startswith("sparsity/"):
                out["test_" + c] = float(last[c])
    for c in fit_rows.columns:
        if c.startswith(("val/", "sparsity/", "weights/")):
            values = fit_rows[c].dropna()
            if len(values):
                out[c] = float(values.iloc[-1])
                if c.startswith("val/"):
                    best = values.max() if c.endswith("acc") else values.min()
                    out["best_" + c] = float(best)
    if "epoch" in fit_rows and fit_rows["epoch"].notna().any():
        out["epochs"] = float(fit_rows["epoch"].max() + 1)
    return out


def read_validation_curve(path: str | Path, column: str):
    """``column`` at each validation during fit, indexed by epoch (the last value per epoch)."""
    import pandas as pd

    df = pd.read_csv(path)
    if column not in df.columns or "epoch" not in df.columns:
        return pd.Series(dtype=float)
    values = df[["epoch", column]].dropna()
    return values.groupby(values["epoch"].astype(int))[column].last()


def validation_curves(frame) -> tuple[str, dict]:
    """(description, {regulariser: DataFrame epoch x seed}) of the validation metric that matches the
    primary test metric: perplexity for language models, error (%) otherwise."""
    import pandas as pd

    metric, _, _ = primary_metric(frame)
    column, desc = ("val/ppl", "validation perplexity") if metric == "test/ppl" else ("val/acc", "validation error (%)")
    curves: dict[str, pd.DataFrame] = {}
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    for _, row in ok.iterrows():
        path = row.get("metrics_csv")
        if not isinstance(path, str) or not Path(path).is_file():
            continue
        curve = read_validation_curve(path, column)
        if column == "val/acc":
            curve = 100.0 * (1.0 - curve)
        if len(curve):
            curves.setdefault(row["regulariser"], {})[int(row["seed"])] = curve
    return desc, {label: pd.DataFrame(by_seed) for label, by_seed in curves.items()}


def primary_metric(frame) -> tuple[str, str, bool]:
    """(column, description, lower_is_better): test perplexity if logged, else test error in %."""
    if "test/ppl" in frame.columns and frame["test/ppl"].notna().any():
        return "test/ppl", "test perplexity", True
    return "test/error", "test error (%)", True


@dataclass
class RunState:
    """What :func:`inspect_run` found: ``ok`` (finished, logs complete), ``incomplete`` (a
    ``result.json`` whose logs are not the run's), ``running`` (its lock is held), ``failed``
    (started, no ``result.json``) or ``missing``; ``problem`` says why it is not ok."""

    status: str
    problem: str = ""
    result: dict = field(default_factory=dict)
    metrics_csv: str | None = None


def inspect_run(run: Run, check_lock: bool = True) -> RunState:
    """Whether ``run`` finished with complete logs.

    ``result.json`` is written last, so without it the run did not finish. With it, the run's
    ``metrics.csv`` must be the file the run finished with: its SHA-256 as recorded in
    ``result.json``; for a ``result.json`` written before that was recorded, the CSV must hold
    a test row and at least as many epochs as ``result.json`` says. ``check_lock``: a run folder whose
    lock a live process holds is ``running``, whatever it holds.
    """
    if check_lock and run.dir.is_dir():
        holder = lock_holder(run.dir / RUN_LOCK)
        if holder:
            return RunState("running", f"in use by {holder}")
    if not run.result_file.is_file():
        started = (run.dir / "log.txt").is_file()
        return RunState("failed" if started else "missing", "no result.json" if started else "not run")
    try:
        result = json.loads(run.result_file.read_text())
        if not isinstance(result, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        return RunState("incomplete", f"result.json unreadable ({err})")
    csv_path = result.get("metrics_csv")
    if not (csv_path and Path(csv_path).is_file()):  # results/ moved or copied: the run's own log
        local = run.dir / "csv" / "version_0" / "metrics.csv"
        csv_path = str(local) if local.is_file() else csv_path
    have_csv = bool(csv_path) and Path(csv_path).is_file()
    expected = result.get("metrics_sha256")
    if expected:
        if not have_csv:
            return RunState("incomplete", "its metrics.csv is missing")
        if _sha256(csv_path) != expected:
            return RunState("incomplete", f"{csv_path} is not the log the run finished with (truncated or overwritten)")
    elif result.get("epochs") is not None and have_csv:  # a result.json from before the checksum
        try:
            metrics = read_metrics_csv(csv_path)
        except Exception as err:  # a truncated line, an empty file
            return RunState("incomplete", f"{csv_path} unreadable ({type(err).__name__})")
        if not any(k.startswith("test/") for k in metrics):
            return RunState("incomplete", f"{csv_path} has no test row")
        if metrics.get("epochs", 0) < result["epochs"]:  # more is fine: max_steps may stop mid-epoch
            return RunState("incomplete", f"{csv_path} has {metrics.get('epochs', 0):g} epoch(s), result.json {result['epochs']}")
    return RunState("ok", "", result, csv_path)


def collect(grid: GridArgs):
    """One row per planned run: finished runs with their metrics, others marked missing, failed,
    running or incomplete (``problem`` says why)."""
    import pandas as pd

    rows = []
    for run in plan(grid):
        row: dict[str, Any] = {"regulariser": run.spec.label, "name": run.spec.name, "seed": run.seed, "run_dir": str(run.dir)}
        state = inspect_run(run)
        row["status"] = state.status
        if state.status != "ok":
            row["problem"] = state.problem
            rows.append(row)
            continue
        result, csv_path = state.result, state.metrics_csv
        row["seconds"] = result.get("seconds")
        row["checkpoint"] = result.get("checkpoint")
        row["metrics_csv"] = csv_path
        metrics = read_metrics_csv(csv_path) if csv_path and Path(csv_path).is_file() else {}
        for k, v in result.get("test", {}).items():  # what trainer.test returned (same numbers as the CSV row)
            if k.startswith("test/"):
                metrics.setdefault(k, v)
        row.update(metrics)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "test/acc" in frame.columns:
        frame["test/error"] = 100.0 * (1.0 - frame["test/acc"])
    return frame


# --------------------------------------------------------------------------- report


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}" if (abs(x) < 1e-3 and x != 0) or abs(x) >= 1e5 else f"{x:.{digits}f}"


def _mean_sd(values, digits: int = 3) -> str:
    v = [float(x) for x in values if x == x]
    if not v:
        return "–"
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if len(v) > 1 else f"{mean:.{digits}f}"


def _table_head(first: str, columns: Iterable[str]) -> list[str]:
    """A markdown table's header and rule: ``first`` then one code-formatted column each."""
    columns = list(columns)
    return ["| " + first + " | " + " | ".join(f"`{c}`" for c in columns) + " |", "|---|" + "---|" * len(columns)]


def _layers(frame, prefix: str) -> tuple[list[str], list[str]]:
    layers, measures = [], []
    for c in frame.columns:
        if c.startswith(prefix):
            layer, _, measure = c[len(prefix):].rpartition("/")
            if layer not in layers:
                layers.append(layer)
            if measure not in measures:
                measures.append(measure)
    return layers, measures


def paired_table(frame, grid: GridArgs, metric: str, baseline: str | None = None) -> list[dict]:
    """Each regulariser against ``baseline`` (default: the grid's first) on the seeds both finished."""
    baseline = grid.baseline if baseline is None else baseline
    ok = frame[frame["status"] == "ok"]
    if metric not in ok.columns:
        return []
    base = ok[ok["regulariser"] == baseline].set_index("seed")[metric].dropna()
    out = []
    for spec in grid.regularisers:
        if spec.label == baseline:
            continue
        other = ok[ok["regulariser"] == spec.label].set_index("seed")[metric].dropna()
        seeds = [s for s in grid.seeds if s in base.index and s in other.index]
        test = paired_t_test([other[s] for s in seeds], [base[s] for s in seeds])
        out.append({"regulariser": spec.label, "seeds": seeds, "test": test})
    return out


def write_report(frame, grid: GridArgs, failures: Iterable[tuple[Run, str]] = (), curves: tuple[str, dict] | None = None,
                 notes: Sequence[str] = ()) -> Path:
    """``results.csv`` and ``results.md`` in ``grid.out``; returns the markdown path. ``notes``:
    what the plots skipped (checkpoints refused), listed at the end."""
    out = grid.out
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "results.csv", index=False)
    metric, metric_desc, _ = primary_metric(frame)
    ok = frame[frame["status"] == "ok"]
    labels = [s.label for s in grid.regularisers]
    command = grid.command
    lines = [
        f"# {grid.config.stem}: regulariser comparison",
        "",
        "Made by:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Config `{grid.config}`, seeds {' '.join(map(str, grid.seeds))}, overrides "
        f"{' '.join('`' + o[2:] + '`' for o in grid.overrides) or 'none'}. Test metrics are from the best "
        "checkpoint (the config's ModelCheckpoint); sparsity and weight statistics from the final validation "
        "(regularisers off). mean ± sd over seeds (sd with n - 1).",
        "",
        f"## {metric_desc}",
        "",
    ]
    has_loss = "test/loss" in ok.columns
    head = f"| regulariser | n | {metric_desc} |" + (" test loss |" if has_loss else "") + (" best val acc |" if "best_val/acc" in ok.columns else "") + " s / run |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for label in labels:
        g = ok[ok["regulariser"] == label]
        n_all = int((frame["regulariser"] == label).sum())
        cells = [f"`{label}`", f"{len(g)}/{n_all}", _mean_sd(g[metric]) if metric in g else "–"]
        if has_loss:
            cells.append(_mean_sd(g["test/loss"], 4))
        if "best_val/acc" in ok.columns:
            cells.append(_mean_sd(g["best_val/acc"], 4))
        cells.append(_fmt(float(g["seconds"].mean()), 0) if "seconds" in g and len(g) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    for baseline in grid.baselines:
        pairs = paired_table(frame, grid, metric, baseline)
        lines += ["", f"## Paired against `{baseline}` (same seeds)", ""]
        if not pairs or all(p["test"].n == 0 for p in pairs):
            lines.append(f"No paired comparison: `{baseline}` has no finished runs in this grid.")
            continue
        lines += [
            f"Difference = regulariser − `{baseline}` in {metric_desc} (negative: lower than the baseline). "
            "t: paired t-test, two-sided; sign-flip: exact two-sided permutation test of the mean difference "
            f"(with n pairs its smallest possible p is 2 / 2^n, here {_fmt(2 / 2 ** max(p['test'].n for p in pairs))}).",
            "",
            "| regulariser | n pairs | mean diff | sd diff | t | df | p (t) | p (sign-flip) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in pairs:
            t = p["test"]
            lines.append(
                f"| `{p['regulariser']}` | {t.n} | {_fmt(t.mean_diff)} | {_fmt(t.sd_diff)} | {_fmt(t.t, 2)} | {t.df} | {_fmt(t.p)} | {_fmt(t.p_sign_flip)} |"
            )
    layers, measures = _layers(ok, "sparsity/")
    if layers:
        lines += ["", "## Sparsity of the hidden codes (final validation, mean ± sd)", ""]
        lines += [
            "population: mean fraction of exact zeros per sample (equal to lifetime sparsity, the mean over units "
            "of the fraction of samples where the unit is zero, so lifetime is not repeated); hoyer: Hoyer sparsity "
            "per sample; dead_units: fraction of units zero on every sample.",
            "",
        ]
        for measure in [m for m in ("population", "hoyer", "dead_units") if m in measures]:
            lines += [f"**{measure}**", "", *_table_head("regulariser", layers)]
            for label in labels:
                g = ok[ok["regulariser"] == label]
                lines.append(f"| `{label}` | " + " | ".join(_mean_sd(g.get(f"sparsity/{x}/{measure}", [])) for x in layers) + " |")
            lines.append("")
    params, stats = _layers(ok, "weights/")
    if params:
        if lines[-1]:
            lines.append("")
        lines += [
            "## Weights and biases (final validation)",
            "",
            "Each cell: mean over seeds of the parameter's mean / of its standard deviation.",
            "",
            *_table_head("parameter", labels),
        ]
        for x in params:
            cells = []
            for label in labels:
                g = ok[ok["regulariser"] == label]
                m, s = g.get(f"weights/{x}/mean"), g.get(f"weights/{x}/std")
                cells.append(f"{_fmt(float(m.mean()), 4) if m is not None else '–'} / {_fmt(float(s.mean()), 4) if s is not None else '–'}")
            lines.append(f"| `{x}` | " + " | ".join(cells) + " |")
        lines.append("")
    secondary = [f"sparsity/{x}/{m}" for m in ("population", "hoyer") for x in layers if f"sparsity/{x}/{m}" in ok.columns]
    secondary += [
        f"weights/{x}/std" for x in params if x.rpartition(".")[2].startswith("weight") and f"weights/{x}/std" in ok.columns
    ]
    rows = [(col, paired_table(frame, grid, col)) for col in secondary]
    if rows and any(t["test"].n > 1 for _, pairs_ in rows for t in pairs_):
        others = [p["regulariser"] for p in rows[0][1]]
        lines += [
            f"## Sparsity and weight spread paired against `{grid.baseline}`",
            "",
            f"Each cell: mean difference regulariser − `{grid.baseline}` over the same seeds (paired t-test p). "
            "Positive sparsity: sparser code; positive weight std: wider weights.",
            "",
            *_table_head("measure", others),
        ]
        for col, pairs_ in rows:
            cells = [f"{q['test'].mean_diff:+.4f} (p {q['test'].p:.2g})" for q in pairs_]
            lines.append(f"| `{col}` | " + " | ".join(cells) + " |")
        lines.append("")
    curve_desc, curves = validation_curves(frame) if curves is None else curves
    curve_labels = [label for label in labels if label in curves]
    if curve_labels:
        epochs = sorted(set().union(*(curves[label].index for label in curve_labels)))
        if lines[-1]:
            lines.append("")
        lines += [
            f"## {curve_desc.capitalize()} per epoch",
            "",
            f"Mean over seeds of the {curve_desc} at the end of each epoch (regularisers off). Each run's "
            "test metric above is from the epoch its config's ModelCheckpoint kept. `(n=k)`: only k seeds "
            "reached that epoch (early stopping).",
            "",
            *_table_head("epoch", curve_labels),
        ]
        for epoch in epochs:
            cells = []
            for label in curve_labels:
                c = curves[label]
                if epoch not in c.index:
                    cells.append("–")
                    continue
                values = c.loc[epoch].dropna()
                cells.append(_fmt(float(values.mean()), 3) + ("" if len(values) == c.shape[1] else f" (n={len(values)})"))
            lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
        lines.append("")
    figures = [f for f in (f"{_metric_slug(metric)}.png", "validation.png", "sparsity.png", "weights.png") if (out / f).is_file()]
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    bad = frame[frame["status"] != "ok"]
    if len(bad):
        lines += ["## Runs not finished", ""]
        messages = {(r.spec.label, r.seed): m.splitlines()[0] for r, m in failures}
        for _, r in bad.iterrows():
            problem = r.get("problem")
            why = messages.get((r["regulariser"], r["seed"]), r["status"] + (f": {problem}" if isinstance(problem, str) and problem else ""))
            lines.append(f"- `{r['regulariser']}` seed {r['seed']}: {why} (see `{Path(r['run_dir']) / 'log.txt'}`)")
        lines.append("")
    if notes:
        lines += ["## Checkpoints not read", "", *[f"- {note}" for note in notes], ""]
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _metric_slug(metric: str) -> str:
    return metric.replace("/", "_")


# --------------------------------------------------------------------------- plots


def plot(frame, grid: GridArgs, curves: tuple[str, dict] | None = None, notes: list[str] | None = None) -> list[Path]:
    """Test metric per regulariser (seeds as points), validation curves, sparsity per layer, weight histograms.

    The histograms read each run's tested checkpoint without running code in it
    (:func:`~qsd_lightning.checkpointing.load_checkpoint`); one it refuses is left out, named
    in one line on stderr and appended to ``notes``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = grid.out
    ok = frame[frame["status"] == "ok"]
    labels = [s.label for s in grid.regularisers if (ok["regulariser"] == s.label).any()]
    written: list[Path] = []
    if not labels:
        return written
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    rng = np.random.default_rng(0)

    metric, metric_desc, _ = primary_metric(frame)
    if metric in ok.columns:
        fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 1.3 * len(labels)), 4.2))
        for i, label in enumerate(labels):
            v = ok[ok["regulariser"] == label][metric].dropna().to_numpy()
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, color=colors[label], alpha=0.8, zorder=3)
            if len(v):
                ax.errorbar(i + 0.28, v.mean(), yerr=v.std(ddof=1) if len(v) > 1 else 0, fmt="_", color="k", capsize=4, ms=14)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(metric_desc)
        ax.set_title(f"{grid.config.stem}: {metric_desc}\nseeds as points, bar = mean ± sd", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        written.append(out / f"{_metric_slug(metric)}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    curve_desc, curves = validation_curves(frame) if curves is None else curves
    if any(label in curves for label in labels):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for label in labels:
            if label not in curves:
                continue
            c = curves[label].sort_index()
            mean, sd = c.mean(axis=1), c.std(axis=1, ddof=1).fillna(0.0)  # 0 where one seed reached the epoch
            ax.plot(c.index, mean, marker="o", ms=3, color=colors[label], label=f"{label} (n={c.shape[1]})")
            ax.fill_between(c.index, mean - sd, mean + sd, color=colors[label], alpha=0.15, lw=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(curve_desc)
        if curve_desc.endswith("perplexity"):
            ax.set_yscale("log")
        ax.set_title(f"{grid.config.stem}: {curve_desc} per epoch (mean ± sd over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "validation.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    layers, measures = _layers(ok, "sparsity/")
    measures = [m for m in ("population", "hoyer", "dead_units") if m in measures]
    if layers and measures:
        fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.8), squeeze=False)
        width = 0.8 / len(labels)
        for ax, measure in zip(axes[0], measures):
            for j, label in enumerate(labels):
                g = ok[ok["regulariser"] == label]
                for i, layer in enumerate(layers):
                    v = g.get(f"sparsity/{layer}/{measure}")
                    v = v.dropna().to_numpy() if v is not None else np.array([])
                    x = i - 0.4 + width * (j + 0.5)
                    if len(v):
                        ax.bar(x, v.mean(), width * 0.9, color=colors[label], alpha=0.45, label=label if i == 0 else None)
                        ax.scatter(x + rng.uniform(-width / 5, width / 5, len(v)), v, color=colors[label], s=10, zorder=3)
            ax.set_xticks(range(len(layers)), layers, fontsize=8)
            ax.set_title(measure)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel("final validation sparsity")
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{grid.config.stem}: sparsity of hidden codes per layer (bars: mean, points: seeds)", fontsize=9)
        fig.tight_layout()
        written.append(out / "sparsity.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    tensors: dict[str, dict[str, list]] = {}
    import torch

    from .checkpointing import load_checkpoint

    for _, row in ok.iterrows():
        ckpt = row.get("checkpoint")
        if not isinstance(ckpt, str) or not Path(ckpt).is_file():
            continue
        try:
            state = load_checkpoint(ckpt).get("state_dict")
        except CheckpointError as err:
            note = f"`{row['regulariser']}` seed {row['seed']}: left out of weights.png: {err}"
            print(f"warning: {row['regulariser']} seed {row['seed']}: left out of weights.png: {err}", file=sys.stderr)
            if notes is not None:
                notes.append(note)
            continue
        for key, value in (state if isinstance(state, dict) else {}).items():
            if key.endswith((".weight", ".bias")) and torch.is_tensor(value) and value.is_floating_point() and value.numel() > 1:
                tensors.setdefault(key, {}).setdefault(row["regulariser"], []).append(value.flatten().double().numpy())
    if tensors:
        keys = list(tensors)
        cols = min(4, len(keys))
        rows_n = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 2.8 * rows_n), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            pooled = np.concatenate([np.concatenate(v) for v in tensors[key].values()])
            lo, hi = np.percentile(pooled, [0.5, 99.5])
            bins = np.linspace(lo, hi, 60) if hi > lo else 30
            for label in labels:
                if label in tensors[key]:
                    ax.hist(np.concatenate(tensors[key][label]), bins=bins, histtype="step", density=True, color=colors[label], label=label)
            ax.set_title(key.removeprefix("net."), fontsize=8)
            ax.tick_params(labelsize=7)
        spare = list(axes.flat)[len(keys):]
        for ax in spare:
            ax.axis("off")
        handles, names = axes.flat[0].get_legend_handles_labels()
        if spare:
            spare[-1].legend(handles, names, fontsize=8, loc="center", frameon=False)
        else:
            fig.legend(handles, names, fontsize=7, loc="lower center", ncol=min(4, len(names)))
        fig.suptitle(f"{grid.config.stem}: weights and biases of the tested checkpoints (all seeds pooled, central 99%)", fontsize=9)
        fig.tight_layout()
        written.append(out / "weights.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


# --------------------------------------------------------------------------- entry point


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


def _main_run(argv: list[str]) -> int:
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
        failures = [] if grid.report_only else run_grid(grid)
        frame = collect(grid)
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
    2: bad arguments; 130: interrupted), or ``_run``, one grid point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_run"]:  # one grid point, in its own process
        return _main_run(argv)
    grid = parse_args(argv)
    if grid.dry_run:
        for run in plan(grid):
            print(shlex.join(run_command(grid, run)))
        return 0
    try:
        return _main_grid(grid)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the runs in progress were stopped; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
