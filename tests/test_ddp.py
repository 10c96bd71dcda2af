"""Two-process DDP on CPU (gloo), launched the way users launch it: ``python -m qsd_lightning``."""

from __future__ import annotations

import csv

import pytest

from .conftest import CONFIGS
from .test_trust import cli_subprocess

DIGITS = str(CONFIGS / "mlp_digits.yaml")
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]


def last_csv_row(root, key):
    newest = max(root.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    return [r[key] for r in csv.DictReader(newest.open()) if r.get(key)][-1]


def test_ddp_validation_matches_single_process(run_cli, tmp_path):
    # val_fraction 0.1 -> 180 images, an even split over 2 ranks (no padded duplicates)
    args = ["--config", DIGITS, "--data.val_fraction=0.1", "--model.regulariser=qsd"]
    cli = run_cli("fit", *args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.logger=false")
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    single = run_cli("validate", *args, "--trainer.logger=false", f"--ckpt_path={ckpt}").trainer.callback_metrics
    cli_subprocess(["validate", *args, *DDP, f"--ckpt_path={ckpt}"], tmp_path)
    assert float(last_csv_row(tmp_path, "val/acc")) == pytest.approx(single["val/acc"].item(), abs=1e-6)
    assert float(last_csv_row(tmp_path, "val/loss")) == pytest.approx(single["val/loss"].item(), rel=1e-5)
    population = float(last_csv_row(tmp_path, "sparsity/hidden.0.act/population"))
    assert 0 < population < 1


def test_ddp_fit_mlp_two_epochs(tmp_path):
    cli_subprocess(["fit", "--config", DIGITS, *DDP, "--model.regulariser=qsd", "--trainer.max_epochs=2",
                    "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2"], tmp_path)
    assert float(last_csv_row(tmp_path, "val/acc")) > 0.1
    assert float(last_csv_row(tmp_path, "quantal/hidden.1.reg/release_fraction")) > 0


@pytest.mark.parametrize("arch", ["cnn", "lstm_lm", "sentiment"])
def test_ddp_fit_other_architectures(arch, tmp_path):
    from .test_matrix import architecture_args, build_tiny_data

    data = build_tiny_data(tmp_path / "data")
    cli_subprocess(["fit", *architecture_args(arch, data), *DDP, "--model.regulariser=qsd", "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"], tmp_path)
    loss = last_csv_row(tmp_path, "val/loss")
    assert float(loss) == float(loss)  # logged, finite
