"""Picking each regulariser's tuned setting from a tuning grid, on validation only
(``python -m qsd_lightning.compare pick --out results/<tuning grid>``; issue 16's protocol).

A tuning grid is an ordinary grid (settings x tuning seeds, seeds that the final comparison does
not use). For each registry name (``dropout``, ``qsd``, ...) the setting with the best mean
validation metric over its finished seeds wins: ``best_val/acc`` (highest) when the runs log
accuracy, else ``best_val/ppl`` or ``best_val/loss`` (lowest). Test metrics are never read. The
final comparison then pits the winners against each other, and adds QSD at dropout's tuned rate
and dropout at the rate with the tuned QSD's multiplier variance
(:func:`..regularisers.variance.matched_dropout_rate`), which this prints as a ready
``--regulariser`` list.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["validation_metric", "pick", "final_regularisers", "main"]

#: validation columns in order of preference, and whether higher is better
VALIDATION_METRICS = (("best_val/acc", True), ("best_val/ppl", False), ("best_val/loss", False))


def validation_metric(frame) -> tuple[str, bool]:
    for column, higher in VALIDATION_METRICS:
        if column in frame.columns and frame[column].notna().any():
            return column, higher
    raise ValueError("no validation metric (best_val/acc, best_val/ppl or best_val/loss) in the grid's results")


def pick(frame) -> dict[str, dict]:
    """``{name: {"label", "args", "mean", "n", "metric"}}``: the best setting of each registry
    name by mean validation metric over its finished runs (ties: the first in the grid)."""
    ok = frame[frame["status"] == "ok"]
    column, higher = validation_metric(ok)
    means = ok.groupby(["name", "regulariser"], sort=False)[column].agg(["mean", "count"]).reset_index()
    chosen: dict[str, dict] = {}
    for name, group in means.groupby("name", sort=False):
        best = group.loc[group["mean"].idxmax() if higher else group["mean"].idxmin()]
        chosen[name] = {"label": best["regulariser"], "mean": float(best["mean"]), "n": int(best["count"]), "metric": column}
    return chosen


def _args(label: str) -> dict[str, str]:
    _, _, rest = label.partition(":")
    return dict(item.split("=", 1) for item in rest.split(",") if "=" in item)


def final_regularisers(chosen: dict[str, dict]) -> list[str]:
    """The final grid's ``--regulariser`` list: every winner, plus QSD at dropout's tuned rate
    and dropout at the tuned QSD's equal-variance rate (when both were tuned)."""
    from ..regularisers import build
    from ..regularisers.variance import matched_dropout_rate

    labels = [c["label"] for c in chosen.values()]
    if "qsd" in chosen and "dropout" in chosen:
        qsd_args = _args(chosen["qsd"]["label"])
        dropout_rate = float(_args(chosen["dropout"]["label"]).get("rate", build("dropout").rate))
        qsd = build("qsd", **{k: _value(v) for k, v in qsd_args.items()})
        at_dropout_rate = dict(qsd_args, rate=f"{dropout_rate:g}")
        labels.append("qsd:" + ",".join(f"{k}={v}" for k, v in at_dropout_rate.items()))
        matched = matched_dropout_rate(getattr(qsd, "mode", None), float(qsd.rate), getattr(qsd, "gamma", None))
        labels.append(f"dropout:rate={matched:.3g}")
    seen: list[str] = []
    for label in labels:  # a derived setting equal to a winner is listed once
        if label not in seen:
            seen.append(label)
    return seen


def _value(text: str):
    import yaml

    return yaml.safe_load(text)


def main(argv: Sequence[str] | None = None, prog: str = "python -m qsd_lightning.compare pick") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the tuning grid's output folder (its results.csv)")
    args = p.parse_args(argv)
    import pandas as pd

    path = Path(args.out) / "results.csv"
    if not path.is_file():
        print(f"error: {path}: no such file; run the tuning grid (or its --report-only) first", file=sys.stderr)
        return 1
    frame = pd.read_csv(path)
    try:
        chosen = pick(frame)
    except ValueError as err:
        print(f"error: {path}: {err}", file=sys.stderr)
        return 1
    for name, c in chosen.items():
        print(f"{name}: {c['label']}  (mean {c['metric']} {c['mean']:.4f} over {c['n']} tuning seed(s))")
    print("final grid: --regulariser " + " ".join(final_regularisers(chosen)))
    return 0
