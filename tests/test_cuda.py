"""Mixed precision and QSD on CUDA: run where a GPU is present, skipped elsewhere."""

from __future__ import annotations

import math

import pytest
import torch

from qsd_lightning.regularisers import QSD, available, build

from .data_builders import build_tiny_data
from .helpers import architecture_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", available())
def test_regulariser_under_cuda_autocast(name, dtype):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64).cuda()
    reg = build(name, rate=0.3).cuda().train()
    with torch.autocast("cuda", dtype=dtype):
        y = reg(lin(torch.randn(128, 64, device="cuda")))
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().sum().backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_qsd_statistics_on_cuda():
    torch.manual_seed(0)
    s = QSD(rate=0.5, gamma=4.0, mode="coupled")(torch.ones(1, 400_000, device="cuda", dtype=torch.float64)).flatten()
    var = s.var().item()
    assert abs(s.mean().item() - 1) < 5 * math.sqrt(var / s.numel())
    assert abs((s != 0).double().mean().item() - 0.5) < 0.005


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("arch", ["mlp", "cnn", "lstm_lm", "transformer_lm", "sentiment"])
def test_fit_on_gpu_mixed_precision(arch, precision, tmp_path, monkeypatch):
    from qsd_lightning.cli import cli_main

    data = build_tiny_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", *architecture_args(arch, data), "--model.regulariser=qsd", "--trainer.fast_dev_run=true",
                    "--trainer.accelerator=gpu", "--trainer.devices=1", f"--trainer.precision={precision}",
                    "--trainer.logger=false", "--trainer.deterministic=false"])
    losses = {k: v.item() for k, v in cli.trainer.callback_metrics.items() if "loss" in k}
    assert losses and all(math.isfinite(v) for v in losses.values())


def test_qsd_on_cuda_keeps_no_mask_for_backward():
    """Issue 17: the Triton kernel draws the mask again in backward (Philox is counter-based);
    autograd keeps only per-unit tensors, and the gradient is the saved-mask one."""
    from qsd_lightning.regularisers import fast
    from qsd_lightning.regularisers.functional import draw_quanta

    torch.manual_seed(0)
    x = torch.randn(256, 1024, device="cuda", requires_grad=True)
    kept = []

    def pack(t):
        kept.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = QSD(rate=0.5)(x)
    assert kept and max(kept) <= 1024
    draw = draw_quanta((1, 1024), 0.5, 4.0, device="cuda")
    y, mask = fast.fast_release(x, draw, (256, 1024))
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g * (mask * draw.c).to(g.dtype))
