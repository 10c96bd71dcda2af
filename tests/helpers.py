"""Helpers shared by the test modules: running the CLI (in-process for bad input, or as a
subprocess), reading a run's metrics, the tiny model settings per architecture.

Test modules import shared code from here, from ``tests/data_builders.py`` (the data writers)
or from ``tests/conftest.py`` (fixtures), never from one another (``tests/test_layout.py``).
"""

from __future__ import annotations

import torch

import os
import signal
import subprocess
import sys

import lightning as L
import pytest

from qsd_lightning.cli import main
from qsd_lightning.compare import metrics_csv

from .conftest import CONFIGS, REPO
from .data_builders import PTB_VOCAB

__all__ = [
    "KillAtStep",
    "LM_CONFIG",
    "LM_TINY",
    "SENTIMENT_SMALL",
    "TRANSFORMER_CONFIG",
    "TRANSFORMER_TINY",
    "VOCAB",
    "architecture_args",
    "cli_subprocess",
    "final_val_loss",
    "run_main",
]

# ------------------------------------------------------------------- tiny settings per architecture
#: the vocabulary size of the tiny PTB-format text of ``data_builders.write_ptb``
VOCAB = PTB_VOCAB

LM_CONFIG = CONFIGS / "lstm_ptb.yaml"
#: a tiny LSTM language model for CLI tests on ``write_ptb``'s text
LM_TINY = ["--model.embedding_size=8", "--model.hidden_size=8", "--data.batch_size=2", "--data.bptt=5", f"--model.vocab_size={VOCAB}"]

TRANSFORMER_CONFIG = CONFIGS / "transformer_ptb.yaml"
#: a tiny Transformer for CLI tests on ``write_ptb``'s text
TRANSFORMER_TINY = [f"--model.vocab_size={VOCAB}", "--model.d_model=8", "--model.num_heads=2", "--model.num_layers=1",
                    "--model.d_ff=16", "--model.context_length=8", "--data.batch_size=2", "--data.bptt=5"]

#: a tiny recurrent sentiment classifier for CLI tests on ``write_tsv``'s reviews
SENTIMENT_SMALL = ["--model.embedding_dim=8", "--model.hidden_size=8", "--data.batch_size=8", "--data.min_freq=1"]


def architecture_args(arch: str, data) -> list[str]:
    """CLI arguments for a tiny ``arch`` on the data of ``data_builders.build_tiny_data(data)``."""
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


# ------------------------------------------------------------------- running the CLI
def run_main(args, capsys):
    """Run ``qsd_lightning.cli.main`` expecting it to exit; returns (exit code, stderr) and
    checks that no traceback was printed."""
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return info.value.code, err


def cli_subprocess(args, cwd, check=True):
    """``python -m qsd_lightning *args`` on CPU in ``cwd``; raises with stderr's tail unless it
    succeeds (or ``check`` is false). Returns the ``CompletedProcess``."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "qsd_lightning", *args, "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def final_val_loss(root) -> list[float]:
    """Every ``val/loss`` of the newest ``metrics.csv`` under ``root``."""
    return metrics_csv.values(metrics_csv.newest(root), "val/loss")


class KillAtStep(L.Callback):
    """Test helper (a callback, importable by class path ``tests.helpers.KillAtStep``): SIGKILL
    this process in the middle of training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def saved_bytes(fn, x):
    """(fn(x), {storage: (bytes, dtype, numel)}) of what autograd keeps, x's own storage excluded."""
    storages = {}
    own = x.untyped_storage().data_ptr()

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() != own:
            storages[s.data_ptr()] = (s.nbytes(), t.dtype, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    return y, storages


#: fast-path unit layouts the kernels are tested on (tests/test_fast_path*.py)
LAYOUTS = [  # (x shape, unit_dims, locked_dims)
    ((32, 100), None, ()),
    ((8, 6, 5, 5), None, ()),
    ((8, 6, 5, 5), None, (2, 3)),
    ((8, 6, 5, 5), (1,), ()),
    ((7, 9, 12), (-1,), (1,)),
    ((7, 9, 12), (-1,), ()),
    ((3, 1), None, ()),
    ((13,), None, ()),
]
