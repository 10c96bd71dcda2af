"""Every architecture x every registered regulariser: one fit step through the CLI in bf16-mixed.

The paper's point 4 (QSD applies wherever dropout does), and issue 5's mixed-precision check:
bf16 autocast on CPU with every regulariser, no NaN or inf.
"""

from __future__ import annotations

import math

import pytest

from qsd_lightning.regularisers import available

from .conftest import CONFIGS
from .test_cnn import _arrays
from .test_lm import TINY as LM_TINY
from .test_lm import write_ptb
from .test_sentiment import SMALL as SENTIMENT_SMALL
from .test_sentiment import write_tsv
from .test_transformer import TINY as TRANSFORMER_TINY
from .data_builders import write_cifar_pickles  # noqa: E402


def build_tiny_data(root):
    """Tiny CIFAR-10 pickles, PTB text and SST-2 tsv files under ``root``."""
    write_cifar_pickles(root / "cifar10", "cifar10", _arrays(24, 10, 0), _arrays(8, 10, 1))
    write_ptb(root / "ptb")
    write_tsv(root / "sst2")
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("matrix"))


def architecture_args(arch: str, data) -> list[str]:
    if arch == "mlp":
        return ["--config", str(CONFIGS / "mlp_digits.yaml")]
    if arch == "cnn":
        return ["--config", str(CONFIGS / "cnn_cifar10.yaml"), f"--data.data_dir={data / 'cifar10'}",
                "--data.val_size=8", "--data.batch_size=8", "--data.download=false"]
    if arch == "lstm_lm":
        return ["--config", str(CONFIGS / "lstm_ptb.yaml"), f"--data.data_dir={data / 'ptb'}", *LM_TINY]
    if arch == "transformer_lm":
        return ["--config", str(CONFIGS / "transformer_ptb.yaml"), f"--data.data_dir={data / 'ptb'}", *TRANSFORMER_TINY]
    if arch == "sentiment":
        return ["--config", str(CONFIGS / "rnn_sst2.yaml"), f"--data.data_dir={data / 'sst2'}", *SENTIMENT_SMALL]
    raise ValueError(arch)


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
