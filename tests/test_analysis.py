"""Analysis callbacks: sparsity metrics, quantal statistics, W&B and CSV logs."""

from __future__ import annotations

import math

import pytest
import torch

from qsd_lightning.callbacks import SparsityMetric, hoyer_sparsity, summarise_release
from qsd_lightning.compare import metrics_csv
from qsd_lightning.regularisers import ReleaseStatistics
from qsd_lightning.tracking import wandb_mode
from .wandb_file import find_run_files, read_history

from .conftest import CONFIGS

ACTS = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 1.0]])


def hoyer_by_hand(row):
    n = len(row)
    l1 = sum(abs(v) for v in row)
    l2 = math.sqrt(sum(v * v for v in row))
    return 1.0 if l2 == 0 else (math.sqrt(n) - l1 / l2) / (math.sqrt(n) - 1)


def test_hoyer_extremes_and_known_values():
    assert hoyer_sparsity(torch.tensor([[0.0, 0.0, 5.0, 0.0]])).item() == pytest.approx(1.0)
    assert hoyer_sparsity(torch.tensor([[2.0, 2.0, 2.0, 2.0]])).item() == pytest.approx(0.0)
    got = hoyer_sparsity(ACTS)
    assert got.tolist() == pytest.approx([hoyer_by_hand(r) for r in ACTS.tolist()])


def test_sparsity_metric_against_hand_values():
    metric = SparsityMetric(4)
    metric.update(ACTS[:2])
    metric.update(ACTS[2:])  # batches accumulate like one
    out = {k: v.item() for k, v in metric.compute().items()}
    assert out["population"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert out["lifetime"] == pytest.approx((2 / 3 + 2 / 3 + 3 / 3 + 1 / 3) / 4)
    assert out["dead_units"] == pytest.approx(0.25)
    assert out["hoyer"] == pytest.approx(sum(hoyer_by_hand(r) for r in ACTS.tolist()) / 3)


def test_sparsity_metric_conv_activations_flatten_units():
    metric = SparsityMetric(2 * 3 * 3)
    metric.update(torch.relu(torch.randn(5, 2, 3, 3)))
    assert 0 < metric.compute()["population"].item() < 1


def test_summarise_release_known_p_and_c():
    p = torch.tensor([0.2, 0.4, 0.6])
    c = torch.tensor([1.0, 2.0, 3.0])
    stats = ReleaseStatistics(gamma=2.0, p=p, c=c, release_fraction=0.5, multiplier_mean=1.0, multiplier_var=0.7)
    out = summarise_release(stats)
    std_p = math.sqrt((0.2**2 + 0 + 0.2**2) / 3)
    assert out["gamma"] == 2.0 and out["release_fraction"] == 0.5 and out["multiplier_var"] == 0.7
    assert out["p_mean"] == pytest.approx(0.4) and out["p_std"] == pytest.approx(std_p)
    assert out["p_cv"] == pytest.approx(std_p / 0.4) and out["c_mean"] == pytest.approx(2.0)
    assert out["corr_pc"] == pytest.approx(1.0)
    dropout = ReleaseStatistics(gamma=None, p=torch.tensor([0.5]), c=torch.tensor([2.0]), release_fraction=0.5, multiplier_mean=1.0, multiplier_var=1.0)
    assert set(summarise_release(dropout)) == {"release_fraction", "multiplier_mean", "multiplier_var"}


def test_wandb_mode_respects_env_and_goes_offline_without_key(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == ("disabled", None)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    mode, reason = wandb_mode()
    assert mode == "offline" and "API key" in reason


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_digits_run_leaves_wandb_and_csv_series(run_cli, offline_wandb):
    cli = run_cli(
        "fit", "--config", str(CONFIGS / "mlp_digits.yaml"), "--model.regulariser=qsd",
        "--trainer.max_epochs=2", "--trainer.limit_train_batches=6",
    )
    assert cli.trainer.state.finished
    # CSV log
    csv_files = list(offline_wandb.rglob("metrics.csv"))
    assert len(csv_files) == 1
    header = list(metrics_csv.read(csv_files[0]).columns)
    assert "quantal/hidden.1.reg/p_mean" in header and "quantal/output_reg/corr_pc" in header
    assert "sparsity/hidden.0.act/hoyer" in header and "sparsity/hidden.1.act/dead_units" in header
    assert "weights/output.weight/std" in header
    # W&B run file, read back
    run_files = find_run_files(offline_wandb)
    assert len(run_files) == 1
    rows = read_history(run_files[0])
    keys = set().union(*rows)
    assert "quantal/hidden.1.reg/gamma" in keys and "sparsity/hidden.0.act/population" in keys
    assert any(k.startswith("quantal/hidden.1.reg/p/") for k in keys), "p_j histogram missing"
    gammas = [r["quantal/hidden.1.reg/gamma"] for r in rows if "quantal/hidden.1.reg/gamma" in r]
    assert gammas and all(g == 16.0 for g in gammas)
    populations = [r["sparsity/hidden.0.act/population"] for r in rows if "sparsity/hidden.0.act/population" in r]
    assert populations and all(0 <= v <= 1 for v in populations)
    # one sparsity row per validation epoch in the CSV log
    assert len(metrics_csv.values(csv_files[0], "sparsity/hidden.0.act/population")) == 2


def test_resume_continues_the_same_wandb_run(run_cli, offline_wandb):
    args = ["--config", str(CONFIGS / "mlp_digits.yaml"), "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2"]
    run_cli("fit", *args, "--trainer.max_epochs=1")
    run_cli("fit", *args, "--trainer.max_epochs=2", "--ckpt_path=last")
    ids = {p.name for p in find_run_files(offline_wandb)}
    assert len(ids) == 1, ids  # the same run-<id>.wandb name in both run directories


def test_weight_distributions_include_recurrent_matrices(tmp_path):
    import lightning as L
    from torch import nn

    from qsd_lightning.callbacks import WeightDistributions

    class TinyRecurrent(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(3, 4, batch_first=True)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.rnn(x)[0][:, -1])

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.log("val/loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 5, 3, generator=g), torch.randint(0, 2, (8,), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    model = TinyRecurrent()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[WeightDistributions(histograms=False)],
    )
    trainer.fit(model, loader, loader)
    metrics = trainer.callback_metrics
    for name in ("rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "out.weight", "out.bias"):
        param = model.get_parameter(name).detach().double()
        assert metrics[f"weights/{name}/mean"].item() == pytest.approx(param.mean().item(), rel=1e-5, abs=1e-7)
        assert metrics[f"weights/{name}/std"].item() == pytest.approx(param.std(unbiased=False).item(), rel=1e-5)
