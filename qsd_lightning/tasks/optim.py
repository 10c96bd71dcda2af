"""Optimiser and scheduler wiring shared by every task."""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable


def configure_optimizers(
    parameters: Iterable[torch.nn.Parameter],
    optimizer: OptimizerCallable,
    lr_scheduler: Optional[LRSchedulerCallable],
    monitor: str = "val/loss",
):
    """What ``LightningModule.configure_optimizers`` returns: the optimiser and, if configured,
    its scheduler stepped every epoch (``ReduceLROnPlateau`` watches ``monitor``)."""
    opt = optimizer(parameters)
    if lr_scheduler is None:
        return opt
    scheduler = lr_scheduler(opt)
    config = {"scheduler": scheduler, "interval": "epoch"}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = monitor
    return {"optimizer": opt, "lr_scheduler": config}
