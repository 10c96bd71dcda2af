"""The LightningCLI: every config parses, regularisers swap by flag, bad values stop early."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qsd_lightning.cli import cli_main
from qsd_lightning.regularisers import QSD, Dropout, Regulariser

from .conftest import CONFIGS, REPO

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
DIGITS = str(CONFIGS / "mlp_digits.yaml")


def regularisers_of(model):
    return [m for m in model.modules() if isinstance(m, Regulariser)]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_builds(config):
    cli = cli_main(["--config", str(config), "--trainer.logger=false"], run=False)
    assert cli.model is not None and cli.datamodule is not None


@pytest.mark.parametrize("preset", sorted((REPO / "callbacks").glob("*.yaml")), ids=lambda p: p.name)
def test_callback_presets_compose_with_a_config(preset):
    cli = cli_main(["--config", DIGITS, "--config", str(preset), "--trainer.logger=false"], run=False)
    names = {type(cb).__name__ for cb in cli.trainer.callbacks}
    assert "ModelCheckpoint" in names


def test_regulariser_swap_by_name_and_arguments():
    cli = cli_main(
        ["--config", DIGITS, "--model.regulariser", "qsd", "--model.regulariser.gamma", "8", "--model.regulariser.rate", "0.3"],
        run=False,
    )
    regs = regularisers_of(cli.model)
    assert regs and all(isinstance(r, QSD) for r in regs)
    assert {(r.rate, r.gamma, r.mode) for r in regs} == {(0.3, 8.0, "coupled")}


def test_regulariser_by_class_path_and_per_site_rates():
    cli = cli_main(
        [
            "--config", DIGITS,
            "--model.regulariser", "qsd_lightning.regularisers.QSD",
            "--model.regulariser.mode", "size",
            "--model.regulariser.rate", "0.5",
            "--model.hidden_rate", "0.2",
        ],
        run=False,
    )
    regs = regularisers_of(cli.model)
    assert sorted(r.rate for r in regs) == [0.2, 0.5] and all(r.mode == "size" for r in regs)


def test_default_config_uses_dropout():
    cli = cli_main(["--config", DIGITS], run=False)
    assert all(type(r).__mro__[0] is not QSD and isinstance(r, Dropout) for r in regularisers_of(cli.model))


BAD = [
    (["--model.regulariser.rate", "1.5"], "--model.regulariser.rate must be in [0, 1) (got 1.5)"),
    (["--model.regulariser", "qsd", "--model.regulariser.gamma", "0"], "--model.regulariser.gamma must be > 0"),
    (["--model.regulariser", "qsdd"], "unknown regulariser 'qsdd'; valid choices: dropout"),
    (["--model.regulariser", "qsd", "--model.regulariser.mode", "sizes"], "--model.regulariser.mode: invalid choice 'sizes'"),
    (["--model.hidden_rate", "2"], "--model.hidden_rate must be in [0, 1)"),
    (["--model.regulariserr", "qsd"], "--model.regulariserr: no such option"),
    (["--model", "NoSuchModel"], "'NoSuchModel' is not a known class name"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_stop_before_training_with_one_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", DIGITS, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and "Epoch" not in err
    assert len(err.strip().splitlines()) <= 2


def test_module_entry_point_bad_value_exit_code():
    proc = subprocess.run(
        [sys.executable, "-m", "qsd_lightning", "fit", "--config", DIGITS, "--model.regulariser.rate", "1.5"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 2
    assert "--model.regulariser.rate must be in [0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_print_config_shows_regulariser(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", DIGITS, "--model.regulariser", "qsd", "--print_config"])
    out = capsys.readouterr().out
    assert "gamma: 16.0" in out and "mode: coupled" in out


def test_fit_validate_test_predict_on_digits(run_cli, tmp_path):
    cli = run_cli("fit", "--config", DIGITS, "--trainer.max_epochs=2", "--trainer.logger=false", "--model.regulariser=qsd")
    assert cli.trainer.state.finished
    assert {"val/acc", "val/loss", "train/loss_epoch"} <= set(cli.trainer.callback_metrics)
    ckpt = cli.trainer.checkpoint_callback.best_model_path or cli.trainer.checkpoint_callback.last_model_path
    for sub in ("validate", "test"):
        out = run_cli(sub, "--config", DIGITS, "--trainer.logger=false", "--model.regulariser=qsd", f"--ckpt_path={ckpt}")
        key = "val/acc" if sub == "validate" else "test/acc"
        assert key in out.trainer.callback_metrics
    pred = run_cli("predict", "--config", DIGITS, "--trainer.logger=false", "--model.regulariser=qsd", f"--ckpt_path={ckpt}")
    assert pred.trainer.state.finished


@pytest.mark.parametrize("regulariser", ["dropout", "qsd"])
def test_main_job_reaches_95_percent_validation_accuracy(run_cli, regulariser):
    """The README's main job, as configured (30 epochs), with dropout and with QSD."""
    cli = run_cli("fit", "--config", DIGITS, f"--model.regulariser={regulariser}", "--trainer.logger=false")
    assert cli.trainer.current_epoch == 30
    assert cli.trainer.checkpoint_callback.best_model_score.item() >= 0.95
    assert cli.trainer.callback_metrics["val/acc"].item() >= 0.95
