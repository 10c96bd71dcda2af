"""``compare pick``: each regulariser's setting tuned on validation only, and the final grid's
list with QSD at dropout's tuned rate and dropout at QSD's equal-variance rate."""

from __future__ import annotations

import pandas as pd
import pytest

import qsd_lightning.compare as C
from qsd_lightning.compare.pick import final_regularisers, pick
from qsd_lightning.regularisers.variance import matched_dropout_rate


def _frame(rows):
    return pd.DataFrame(rows, columns=["regulariser", "name", "seed", "status", "best_val/acc", "test/acc"])


ROWS = [
    # label, name, seed, status, best val acc, test acc (a trap: the test metric favours other settings)
    ("dropout:rate=0.3", "dropout", 100, "ok", 0.95, 0.99), ("dropout:rate=0.3", "dropout", 101, "ok", 0.95, 0.99),
    ("dropout:rate=0.5", "dropout", 100, "ok", 0.96, 0.90), ("dropout:rate=0.5", "dropout", 101, "ok", 0.97, 0.90),
    ("qsd:rate=0.3,gamma=4,mode=coupled", "qsd", 100, "ok", 0.97, 0.80),
    ("qsd:rate=0.3,gamma=4,mode=coupled", "qsd", 101, "failed", None, None),
    ("qsd:rate=0.5,gamma=8,mode=size", "qsd", 100, "ok", 0.96, 0.99), ("qsd:rate=0.5,gamma=8,mode=size", "qsd", 101, "ok", 0.96, 0.99),
    ("none", "none", 100, "ok", 0.90, 0.90),
]


def test_pick_uses_validation_only_and_finished_runs():
    chosen = pick(_frame(ROWS))
    assert chosen["dropout"]["label"] == "dropout:rate=0.5" and chosen["dropout"]["n"] == 2
    assert chosen["qsd"]["label"] == "qsd:rate=0.3,gamma=4,mode=coupled" and chosen["qsd"]["n"] == 1
    assert chosen["none"]["label"] == "none"


def test_final_list_adds_the_cross_settings():
    labels = final_regularisers(pick(_frame(ROWS)))
    rate = matched_dropout_rate("coupled", 0.3, 4.0)
    assert labels == ["dropout:rate=0.5", "qsd:rate=0.3,gamma=4,mode=coupled", "none",
                      "qsd:rate=0.5,gamma=4,mode=coupled", f"dropout:rate={rate:.3g}"]
    for label in labels:  # each is a valid grid setting
        C.parse_regulariser(label)


def test_pick_command(tmp_path, capsys):
    _frame(ROWS).to_csv(tmp_path / "results.csv", index=False)
    assert C.main(["pick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dropout: dropout:rate=0.5" in out and out.strip().splitlines()[-1].startswith("final grid: --regulariser dropout:rate=0.5 ")
    assert C.main(["pick", "--out", str(tmp_path / "missing")]) == 1
    assert "no such file" in capsys.readouterr().err
