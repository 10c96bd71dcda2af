"""Shared test fixtures: CPU only, no network, W&B disabled, runs in tmp dirs."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """LightningCLI warns when both ``args`` and pytest's own sys.argv are present."""
    monkeypatch.setattr("sys.argv", ["qsd_lightning"])


@pytest.fixture
def run_cli(tmp_path):
    """Run the CLI in-process on CPU in ``tmp_path``; returns the LightningCLI object.

    ``run_cli("fit", "--config", path, "--trainer.fast_dev_run=true", ...)``. Logger,
    checkpoints and progress bar are off unless the arguments turn them on.
    """
    from qsd_lightning.cli import cli_main

    def run(subcommand: str, *args: str, quiet: bool = True):
        base = [
            subcommand,
            *args,
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            f"--trainer.default_root_dir={tmp_path}",
        ]
        if quiet:
            base += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
        return cli_main(base)

    return run


@pytest.fixture
def ptb_dir(tmp_path):
    """Tiny PTB-format text (``data_builders.write_ptb``) in ``tmp_path / "ptb"``."""
    from .data_builders import write_ptb

    return write_ptb(tmp_path / "ptb")
