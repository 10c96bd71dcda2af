"""Reproducibility, exact resumption after a kill, per-rank noise, bad input handling."""

from __future__ import annotations

import signal

import pytest
import torch

from qsd_lightning.callbacks import RankNoiseSeed, rank_seed
from qsd_lightning.regularisers import QSD

from .conftest import CONFIGS
from .data_builders import write_ptb, write_tiny_mnist
from .helpers import TRANSFORMER_CONFIG, TRANSFORMER_TINY, cli_subprocess, final_val_loss, run_main

DIGITS = str(CONFIGS / "mlp_digits.yaml")
SMALL = ["--trainer.limit_train_batches=6", "--trainer.limit_val_batches=3", "--model.regulariser=qsd"]


def test_same_seed_same_metrics(run_cli, tmp_path):
    results = []
    for i in range(2):
        cli = run_cli("fit", "--config", DIGITS, *SMALL, "--trainer.max_epochs=2", "--trainer.logger=false",
                      f"--trainer.default_root_dir={tmp_path / str(i)}")
        results.append({k: v.item() for k, v in cli.trainer.callback_metrics.items()})
    assert results[0] == results[1]
    assert "val/loss" in results[0]


def test_seed_is_in_the_saved_config(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli("fit", "--config", DIGITS, *SMALL, "--trainer.max_epochs=1", "--seed_everything=123")
    text = next(tmp_path.rglob("config.yaml")).read_text()
    assert "seed_everything: 123" in text


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    common = ["fit", "--config", DIGITS, *SMALL, "--trainer.max_epochs=3"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    cli_subprocess(common, straight)
    killed = cli_subprocess([*common, "--trainer.callbacks+=tests.helpers.KillAtStep", "--trainer.callbacks.step=15"], broken, check=False)
    assert killed.returncode == -signal.SIGKILL
    for ckpt in broken.rglob("*.ckpt"):  # every checkpoint left behind is complete
        assert "state_dict" in torch.load(ckpt, map_location="cpu", weights_only=False)
    cli_subprocess([*common, "--ckpt_path=last"], broken)
    assert final_val_loss(straight)[-1] == final_val_loss(broken)[-1]


def test_rank_seeds_differ_and_rank_zero_keeps_base():
    assert rank_seed(7, 0) == 7
    seeds = {rank_seed(7, r) for r in range(64)}
    assert len(seeds) == 64 and rank_seed(7, 1) != rank_seed(8, 1)


def test_rank_noise_seed_gives_ranks_different_masks():
    class FakeTrainer:
        world_size = 2

        def __init__(self, rank):
            self.global_rank = rank

    draws = []
    for rank in (0, 1):
        torch.manual_seed(0)
        RankNoiseSeed().setup(FakeTrainer(rank), None, "fit")
        draws.append(QSD(rate=0.5)(torch.ones(4, 100)))
    assert not torch.equal(draws[0], draws[1])


# ------------------------------------------------------------------- bad input: one line, exit != 0
def test_missing_data_dir(capsys, tmp_path):
    code, err = run_main(["fit", "--config", str(CONFIGS / "mlp_mnist.yaml"), f"--data.data_dir={tmp_path / 'nope'}",
                          "--data.download=false", "--trainer.logger=false", "--trainer.accelerator=cpu"], capsys)
    assert code == 1 and "MNIST not found in" in err and "nope" in err


def test_corrupt_data_file(capsys, tmp_path):
    write_tiny_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    code, err = run_main(["fit", "--config", str(CONFIGS / "mlp_mnist.yaml"), f"--data.data_dir={tmp_path}",
                          "--data.download=false", "--trainer.logger=false", "--trainer.accelerator=cpu"], capsys)
    assert code == 1 and "train-labels-idx1-ubyte.gz" in err


def test_checkpoint_from_another_architecture(capsys, run_cli, tmp_path):
    cli = run_cli("fit", "--config", DIGITS, *SMALL, "--trainer.max_epochs=1", "--trainer.logger=false")
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    before = open(ckpt, "rb").read()
    code, err = run_main(["fit", "--config", str(CONFIGS / "cnn_cifar10.yaml"), f"--ckpt_path={ckpt}",
                          "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 1 and "holds a MLPClassifier but the config builds a CNNClassifier" in err
    assert open(ckpt, "rb").read() == before


def test_resume_rebuilds_the_checkpoint_model(run_cli, tmp_path):
    """Model arguments (regulariser included) come from the checkpoint when resuming."""
    cli = run_cli("fit", "--config", DIGITS, *SMALL, "--model.regulariser.gamma=2", "--trainer.max_epochs=1", "--trainer.logger=false")
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    resumed = run_cli("fit", "--config", DIGITS, "--trainer.max_epochs=2", "--trainer.limit_train_batches=2",
                      "--trainer.limit_val_batches=1", "--trainer.logger=false", f"--ckpt_path={ckpt}")
    regs = [m for m in resumed.model.modules() if isinstance(m, QSD)]
    assert regs and all(r.gamma == 2.0 for r in regs)


def test_missing_checkpoint(capsys, tmp_path):
    code, err = run_main(["fit", "--config", DIGITS, f"--ckpt_path={tmp_path / 'x.ckpt'}", "--trainer.logger=false"], capsys)
    assert code == 1 and "does not exist" in err


def test_nan_loss_stops_with_the_step(capsys, tmp_path):
    code, err = run_main(["fit", "--config", DIGITS, "--trainer.logger=false", "--trainer.accelerator=cpu",
                          f"--trainer.default_root_dir={tmp_path}", "--model.optimizer=torch.optim.SGD",
                          "--model.optimizer.lr=1e30", "--model.batch_norm=false", "--trainer.max_epochs=3"], capsys)
    assert code == 1 and "non-finite training loss" in err and "global step" in err


# ------------------------------------------------------------------- the Transformer language model
def transformer_args(tmp_path) -> list[str]:
    data = write_ptb(tmp_path / "ptb")
    return ["--config", str(TRANSFORMER_CONFIG), f"--data.data_dir={data}", *TRANSFORMER_TINY, "--model.regulariser=qsd",
            "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=3"]


def test_transformer_same_seed_same_metrics(run_cli, tmp_path):
    args = transformer_args(tmp_path)
    results = []
    for i in range(2):
        cli = run_cli("fit", *args, "--trainer.max_epochs=2", "--trainer.logger=false",
                      f"--trainer.default_root_dir={tmp_path / str(i)}")
        results.append({k: v.item() for k, v in cli.trainer.callback_metrics.items()})
    assert results[0] == results[1]
    assert "val/ppl" in results[0]


@pytest.mark.slow
def test_transformer_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """The per-step warmup/cosine schedule and the QSD counters resume exactly from last.ckpt."""
    common = ["fit", *transformer_args(tmp_path), "--trainer.max_epochs=3", "--model.warmup_steps=4", "--model.cosine_steps=10"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    cli_subprocess(common, straight)
    killed = cli_subprocess([*common, "--trainer.callbacks+=tests.helpers.KillAtStep", "--trainer.callbacks.step=15"], broken, check=False)
    assert killed.returncode == -signal.SIGKILL
    cli_subprocess([*common, "--ckpt_path=last"], broken)
    assert final_val_loss(straight)[-1] == final_val_loss(broken)[-1]
