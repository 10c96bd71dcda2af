"""The grid's specification: ``--regulariser NAME[:ARG=V,...]``, ``--override KEY=VALUE``, and
the runner's arguments (:class:`GridArgs`), checked before any run starts."""

from __future__ import annotations

import argparse
import inspect
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

__all__ = ["GridError", "RegulariserSpec", "parse_regulariser", "parse_override", "build_parser", "GridArgs", "parse_args"]


class GridError(ValueError):
    """A bad grid specification (config, regulariser, override): reported in one line."""


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
    from .. import regularisers as R

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
    p.add_argument("--gpus-per-run", type=int, default=None, metavar="N",
                   help="GPUs each run sees (local: runs placed on this machine's GPUs, N each, by setting "
                        "CUDA_VISIBLE_DEVICES; default 1 when CUDA GPUs are visible, else 0; slurm: GPUs per job, default 0)")
    ex = p.add_argument_group("where the runs execute")
    ex.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                    help="local: a process pool on this machine (default); slurm: one SLURM job per run through "
                         "submitit (a job array); submitit-local: the slurm path through submitit's local executor, "
                         "on this machine (to try a grid's submission without a cluster)")
    ex.add_argument("--start-method", choices=("forkserver", "fresh"), default=None,
                    help="local executor: forkserver (default on Linux) forks each run from one process that "
                         "imported torch and Lightning once; fresh starts a new Python per run")
    ex.add_argument("--slurm-partition", default=None, help="slurm: partition")
    ex.add_argument("--slurm-time", type=int, default=None, metavar="MINUTES", help="slurm: time limit per run (default 60)")
    ex.add_argument("--slurm-cpus", type=int, default=None, metavar="N", help="slurm: CPUs per run (default 2)")
    ex.add_argument("--slurm-mem-gb", type=float, default=None, metavar="GB", help="slurm: memory per run")
    ex.add_argument("--slurm-parallelism", type=int, default=None, metavar="N",
                    help="slurm: runs of the job array at a time (default: all)")
    ex.add_argument("--slurm-option", dest="slurm_options", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                    help="slurm: an extra sbatch option, e.g. account=myproj or qos=short (repeatable)")
    ex.add_argument("--slurm-config", default=None, metavar="YAML",
                    help="slurm: a YAML mapping of these settings (partition, time, cpus, mem_gb, parallelism, "
                         "options: {account: ...}); command-line values win")
    ex.add_argument("--detach", action="store_true",
                    help="slurm: submit and exit; run the same command again (or with --report-only) for the report")
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
    gpus_per_run: int | None = None
    executor: str = "local"
    start_method: str = "fresh"
    slurm: dict = field(default_factory=dict)
    detach: bool = False
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
    if ns.gpus_per_run is not None and ns.gpus_per_run < 0:
        parser.error("--gpus-per-run must be >= 0")
    start_method = ns.start_method or ("forkserver" if _can_forkserver() else "fresh")
    if start_method == "forkserver" and not _can_forkserver():
        parser.error("--start-method forkserver: not available on this platform; use --start-method fresh")
    slurm = _slurm_settings(ns, parser)
    if ns.executor == "local" and (slurm or ns.detach):
        parser.error("--slurm-* and --detach are for --executor slurm (or submitit-local)")
    return GridArgs(
        config=config, regularisers=specs, seeds=list(ns.seeds), overrides=overrides, out=Path(ns.out),
        baselines=baselines, jobs=ns.jobs, threads=ns.threads, timeout=ns.timeout, wandb=ns.wandb,
        dry_run=ns.dry_run, report_only=ns.report_only, wait=ns.wait, gpus_per_run=ns.gpus_per_run,
        executor=ns.executor, start_method=start_method, slurm=slurm, detach=ns.detach,
        argv=[a for a in argv if a not in ("--report-only", "--wait", "--detach")],
    )


def _can_forkserver() -> bool:
    import multiprocessing

    return "forkserver" in multiprocessing.get_all_start_methods()


#: --slurm-config keys and the command-line options they stand for
SLURM_KEYS = {"partition": str, "time": int, "cpus": int, "mem_gb": float, "parallelism": int, "options": dict}


def _slurm_settings(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """The SLURM settings: ``--slurm-config`` (a YAML mapping), then the ``--slurm-*`` options."""
    settings: dict = {}
    if ns.slurm_config:
        path = Path(ns.slurm_config)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as err:
            parser.error(f"--slurm-config {path}: cannot read it ({err.strerror or err})")
        except yaml.YAMLError as err:
            parser.error(f"--slurm-config {path}: not valid YAML ({' '.join(str(err).split())})")
        if not isinstance(loaded, dict):
            parser.error(f"--slurm-config {path}: expected a mapping of {', '.join(SLURM_KEYS)}")
        for key, value in loaded.items():
            kind = SLURM_KEYS.get(str(key))
            if kind is None:
                parser.error(f"--slurm-config {path}: unknown key {key!r}; valid: {', '.join(SLURM_KEYS)}")
            if not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
                parser.error(f"--slurm-config {path}: {key} must be a {kind.__name__}, got {value!r}")
            settings[str(key)] = value
    for key in ("partition", "time", "cpus", "mem_gb", "parallelism"):
        value = getattr(ns, "slurm_" + key)
        if value is not None:
            settings[key] = value
    for key in ("time", "cpus", "parallelism"):
        if key in settings and settings[key] < 1:
            parser.error(f"--slurm-{key.replace('_', '-')} must be >= 1")
    options = {str(k): v for k, v in (settings.get("options") or {}).items()}
    for item in ns.slurm_options:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            parser.error(f"--slurm-option {item!r}: expected KEY=VALUE, e.g. account=myproj")
        options[key.strip().lstrip("-").replace("-", "_")] = value
    if options:
        settings["options"] = options
    return settings
