"""Every architecture x every registered regulariser: one fit step through the CLI in bf16-mixed.

The paper's point 4 (QSD applies wherever dropout does), and issue 5's mixed-precision check:
bf16 autocast on CPU with every regulariser, no NaN or inf.
"""

from __future__ import annotations

import math

import pytest

from qsd_lightning.regularisers import available

from .data_builders import build_tiny_data
from .helpers import architecture_args


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("matrix"))


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("arch", ["mlp", "cnn", "lstm_lm", "transformer_lm", "sentiment"])
def test_architecture_with_regulariser_bf16(arch, name, tiny_data, run_cli):
    cli = run_cli(
        "fit", *architecture_args(arch, tiny_data), f"--model.regulariser={name}", "--model.regulariser.rate=0.3",
        "--trainer.fast_dev_run=true", "--trainer.precision=bf16-mixed", "--trainer.logger=false",
    )
    assert cli.trainer.state.finished
    losses = {k: v.item() for k, v in cli.trainer.callback_metrics.items() if "loss" in k}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
