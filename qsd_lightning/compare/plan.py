"""The grid's runs: one per regulariser x seed, each in ``<out>/runs/<slug>/seed<N>/``, and the
command line, LightningCLI arguments and environment each one is started with."""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .spec import GridArgs, RegulariserSpec

__all__ = ["RESULT_FILE", "RUNNER_PID_ENV", "Run", "plan", "run_cli_args", "run_command", "run_env"]

RESULT_FILE = "result.json"
RUNNER_PID_ENV = "QSD_COMPARE_RUNNER_PID"  # the runner's pid, for its run subprocesses


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


def composed_config(path: Path) -> dict:
    """A config file as the CLI composes it, in plain YAML values: the file its ``config:`` key
    names first (a path relative to the file, itself composed the same way), then the file's own
    keys, where a dotted key (``trainer.max_epochs``) sets one value and a nested section replaces
    that section (jsonargparse's rule; configs/defaults, callbacks/README.md). Checked against
    ``--print_config`` for every config in tests/test_config_compose.py."""
    path = Path(path)
    own = yaml.safe_load(path.read_text()) or {}
    include = own.pop("config", None)
    config = composed_config(path.parent / include) if include else {}
    for key, value in own.items():
        *parents, leaf = str(key).split(".")
        target = config
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return config


def run_cli_args(grid: GridArgs, run: Run) -> list[str]:
    """The LightningCLI arguments of one run (as for ``python -m qsd_lightning fit``).

    The config's loggers are kept with their ``save_dir`` moved into the run folder (W&B runs
    named after the run and grouped by regulariser), a CSVLogger writing
    ``<run>/csv/version_0/metrics.csv`` comes first (so checkpoints land beside it), and the
    sparsity and weight callbacks are added when the config lacks them.
    """
    config = composed_config(grid.config)
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


def run_env(grid: GridArgs, threads: int | None = None, gpus: list[str] | None = None) -> dict[str, str]:
    """A run's environment: this one, W&B disabled unless ``--wandb``, ``threads`` torch/OMP
    threads (default ``--threads``), and only the GPUs ``gpus`` visible when given."""
    env = dict(os.environ)
    if not grid.wandb:
        env["WANDB_MODE"] = "disabled"
    env.setdefault("WANDB_SILENT", "true")
    env[RUNNER_PID_ENV] = str(os.getpid())  # the run dies with this process (see _die_with_runner)
    threads = threads or grid.threads
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env
