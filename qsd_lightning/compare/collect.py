"""Collecting the grid: the state of each run (finished with the log it finished with, or not)
and one pandas frame with a row per planned run, the source of ``results.csv``, the tables
in ``results.md`` and the plots."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import metrics_csv
from .locks import RUN_LOCK, lock_holder
from .plan import Run, plan
from .spec import GridArgs, GridError

__all__ = ["RunState", "inspect_run", "collect", "primary_metric", "validation_curves"]


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
        if metrics_csv.sha256(csv_path) != expected:
            return RunState("incomplete", f"{csv_path} is not the log the run finished with (truncated or overwritten)")
    elif result.get("epochs") is not None and have_csv:  # a result.json from before the checksum
        try:
            metrics = metrics_csv.summarise(csv_path)
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
        row["backend"] = backend_key(result.get("backend"))
        row["checkpoint"] = result.get("checkpoint")
        row["metrics_csv"] = csv_path
        metrics = metrics_csv.summarise(csv_path) if csv_path and Path(csv_path).is_file() else {}
        for k, v in result.get("test", {}).items():  # what trainer.test returned (same numbers as the CSV row)
            if k.startswith("test/"):
                metrics.setdefault(k, v)
        row.update(metrics)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "test/acc" in frame.columns:
        frame["test/error"] = 100.0 * (1.0 - frame["test/acc"])
    return frame


def backend_key(record: Optional[dict]) -> str:
    """What decides a run's random masks: the CPU and CUDA backends and the random stream
    (``qsd_lightning.regularisers.backend.describe()``, recorded in ``result.json``)."""
    if not record:
        return "unrecorded"
    return f"cpu={record.get('cpu')}, cuda={record.get('cuda')}, stream={record.get('stream')}"


def check_one_backend(frame) -> None:
    """Refuse to pool runs whose masks came from different backends: a seed would not mean the
    same masks across them (a :class:`GridError`, one line)."""
    if "backend" not in frame.columns:
        return
    ok = frame[frame["status"] == "ok"]
    kinds = ok.groupby("backend")
    if kinds.ngroups <= 1:
        return
    parts = [f"{key} ({', '.join(f'{r} seed {s}' for r, s in zip(g['regulariser'], g['seed']))})" for key, g in kinds]
    raise GridError(
        "runs of this grid used different fast-path backends, so a seed does not mean the same masks across "
        f"them: {'; '.join(parts)}. Re-run the odd ones on one machine setup (delete their run folders), "
        "or put each setup in its own --out"
    )


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
        curve = metrics_csv.validation_curve(path, column)
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
