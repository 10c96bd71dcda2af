"""Histograms to Weights & Biases, on rank zero, when a WandbLogger is attached."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


@rank_zero_only
def log_histograms(trainer: L.Trainer, tensors: dict[str, torch.Tensor]) -> None:
    """Log each tensor as a ``wandb.Histogram`` at the trainer's global step."""
    loggers = wandb_loggers(trainer)
    if not loggers:
        return
    import wandb

    payload = {k: wandb.Histogram(v.detach().float().cpu().numpy()) for k, v in tensors.items()}
    payload["trainer/global_step"] = trainer.global_step
    for lg in loggers:
        lg.experiment.log(payload)
