"""Weights & Biases tracking that never prompts and never hangs.

:class:`WandbLogger` is Lightning's logger with one addition: before the run starts it decides
whether W&B can be reached. ``WANDB_MODE`` (online/offline/disabled) always wins; otherwise,
with no API key or no route to the server, the run goes offline and says in one line how to
sync it later. :class:`LoggerSaveConfigCallback` writes the resolved CLI config and parameter
counts into the run config, and keeps the W&B run id in every checkpoint so that
``--ckpt_path`` resumes the same run.
"""

from __future__ import annotations

import netrc
import os
import socket
import sys
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["WandbLogger", "LoggerSaveConfigCallback", "wandb_mode", "CHECKPOINT_KEY"]

CHECKPOINT_KEY = "wandb_run_id"


def _has_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(offline: bool = False) -> tuple[str, str | None]:
    """(mode, reason): the W&B mode to use and, when forced offline, why."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return env, None
    if offline:
        return "offline", None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if not _has_credentials(host):
        return "offline", "no W&B API key found (run `wandb login` to log online)"
    if not _reachable(host):
        return "offline", f"cannot reach {host}"
    return "online", None


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that goes offline by itself when W&B is out of reach.

    Args:
        project: W&B project.
        save_dir: where the run directory (``wandb/``) goes.
        offline: force offline mode.
        kwargs: everything else Lightning's WandbLogger and ``wandb.init`` take.
    """

    def __init__(self, project: str = "qsd-lightning", save_dir: Optional[str] = None, offline: bool = False, **kwargs: Any) -> None:
        mode, reason = wandb_mode(offline)
        save_dir = str(Path(save_dir if save_dir is not None else os.getcwd()).resolve())  # None: the CLI fills in trainer.default_root_dir; wandb caches its first working directory
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        if reason:
            _say(
                f"W&B: {reason}; logging offline to {Path(save_dir) / 'wandb'}. "
                f"Sync later with: wandb sync {Path(save_dir) / 'wandb'}/offline-run-*"
            )
        super().__init__(project=project, save_dir=save_dir, offline=mode == "offline", mode=mode, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # deprecated in wandb; avoid its warning
            self._wandb_init.pop("anonymous", None)

    def continue_run(self, run_id: str) -> None:
        """Resume W&B run ``run_id`` (call before the run starts)."""
        if self._experiment is not None:
            return
        self._id = run_id
        self._wandb_init.update(id=run_id, resume="allow")


@rank_zero_only
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Saves config.yaml in the log dir (Lightning's behaviour) and, on rank zero, sends the
    resolved config, the seed and parameter counts to every W&B logger's run config."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, _LightningWandbLogger)]
        if not wandb_loggers:
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True))
        params = {
            "params/total": sum(p.numel() for p in pl_module.parameters()),
            "params/trainable": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
        }
        for lg in wandb_loggers:
            lg.log_hyperparams({**config, **params})

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        for lg in trainer.loggers:
            if isinstance(lg, _LightningWandbLogger) and lg.version:
                checkpoint[CHECKPOINT_KEY] = lg.version


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` whose ``save_dir`` defaults to the Trainer's
    ``default_root_dir`` (filled in by the CLI), so ``--trainer.default_root_dir`` moves it."""

    def __init__(self, save_dir: Optional[str] = None, name: str = "csv", **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir if save_dir is not None else os.getcwd(), name=name, **kwargs)
