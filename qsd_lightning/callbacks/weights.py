"""Weight and bias distributions at the end of each validation."""

from __future__ import annotations

import lightning as L
import torch

from .naming import layer_name
from .wandb_media import log_histograms

__all__ = ["WeightDistributions"]


class WeightDistributions(L.Callback):
    """Log ``weights/<parameter>/mean`` and ``/std`` of every weight and bias (W&B: histograms).

    A parameter counts when its name starts with ``weight`` or ``bias``, so the recurrent
    matrices of ``nn.LSTM``/``nn.GRU`` (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ...)
    are included beside ``nn.Linear``/``nn.Conv2d`` weights.

    Parameters are identical on every rank under DDP, so nothing needs reducing. Normalisation
    layers are included; pass ``include_norm=False`` to keep only weight layers.
    """

    def __init__(self, histograms: bool = True, include_norm: bool = True) -> None:
        self.histograms = histograms
        self.include_norm = include_norm

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        tensors = {}
        for module_name, module in pl_module.named_modules():
            if not self.include_norm and isinstance(module, torch.nn.modules.batchnorm._NormBase):
                continue
            for pname, param in module.named_parameters(recurse=False):
                if not pname.startswith(("weight", "bias")):
                    continue
                key = f"weights/{layer_name(module_name)}.{pname}"
                values = param.detach().double()
                pl_module.log(f"{key}/mean", values.mean().float(), on_step=False, on_epoch=True, rank_zero_only=True)
                pl_module.log(f"{key}/std", values.std(unbiased=False).float(), on_step=False, on_epoch=True, rank_zero_only=True)
                tensors[key] = values
        if self.histograms and tensors:
            log_histograms(trainer, tensors)
