"""Lightning's private API that this project relies on (issue 14, section 5): each name is checked
here so that an upgrade that removes or renames one fails loudly in one place, not as a subtle
change of behaviour. Where a public hook exists the code uses it instead."""

from __future__ import annotations

import inspect
from datetime import timedelta

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy

from qsd_lightning.callbacks.checkpoint import LIGHTNING_INTERNALS


@pytest.mark.parametrize(
    "owner, name, used_by",
    [
        (LightningCLI, "_instantiate_trainer", "cli.QSDLightningCLI adds the always-on callbacks and plugins"),
        (LightningCLI, "_parse_ckpt_path", "cli.QSDLightningCLI: safe loading and --ckpt_path last"),
        *[(ModelCheckpoint, name, "callbacks.checkpoint.ModelCheckpoint") for name in LIGHTNING_INTERNALS],
    ],
)
def test_private_methods_exist(owner, name, used_by):
    assert callable(getattr(owner, name, None)), f"Lightning removed {owner.__name__}.{name} ({used_by})"


def test_instantiate_trainer_takes_config_and_callbacks():
    params = list(inspect.signature(LightningCLI._instantiate_trainer).parameters)
    assert params[:3] == ["self", "config", "callbacks"], params


def test_parse_ckpt_path_is_called_after_parsing():
    """LightningCLI.__init__ calls it right after parsing: our override reads the checkpoint there."""
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__)


def test_ddp_strategy_reads_its_timeout_attribute():
    """--ddp_timeout sets ``strategy._timeout``, read when the process group starts."""
    strategy = DDPStrategy(timeout=timedelta(seconds=5))
    assert strategy._timeout == timedelta(seconds=5)
    assert "self._timeout" in inspect.getsource(DDPStrategy.setup_distributed)


def test_wandb_logger_private_state(tmp_path):
    """tracking.WandbLogger and cli read ``_experiment`` (started or not), ``_wandb_init`` and set ``_id``."""
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, mode="disabled", group="g")
    assert logger._experiment is None
    assert logger._wandb_init["group"] == "g"
    assert hasattr(logger, "_id")
