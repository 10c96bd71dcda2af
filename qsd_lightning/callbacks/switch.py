"""Turn every regulariser off for the last epochs of training (the author's MNIST recipe)."""

from __future__ import annotations

import lightning as L

from ..regularisers import Regulariser

__all__ = ["RegulariserSwitch"]


class RegulariserSwitch(L.Callback):
    """From epoch ``off_from_epoch`` on, regularisers stay in eval mode (identity) during training.

    Only :class:`~qsd_lightning.regularisers.Regulariser` modules are affected; batch norm and
    everything else train as usual. Each epoch start re-applies it, so resuming works.
    """

    def __init__(self, off_from_epoch: int) -> None:
        if off_from_epoch < 0:
            raise ValueError(f"off_from_epoch must be >= 0, got {off_from_epoch}")
        self.off_from_epoch = off_from_epoch

    def _apply(self, pl_module: L.LightningModule, epoch: int) -> None:
        if epoch >= self.off_from_epoch:
            for module in pl_module.modules():
                if isinstance(module, Regulariser):
                    module.eval()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module, trainer.current_epoch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning puts the model back in train mode after validation; keep them off
        if trainer.training:
            self._apply(pl_module, trainer.current_epoch)
