"""Quantal release statistics of every regulariser, logged every N training steps."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from ..regularisers import Regulariser, ReleaseStatistics
from .naming import layer_name
from .wandb_media import log_histograms

__all__ = ["QuantalStatistics", "summarise_release"]


def _moments(values: torch.Tensor, prefix: str) -> dict[str, float]:
    values = values.double()
    mean = values.mean().item()
    std = values.std(unbiased=False).item() if values.numel() > 1 else 0.0
    return {f"{prefix}_mean": mean, f"{prefix}_std": std, f"{prefix}_cv": std / mean if mean else math.nan}


def summarise_release(stats: ReleaseStatistics) -> dict[str, float]:
    """Scalars of one step's release (docs/method.md, "Quantities worth logging").

    Always: release fraction, multiplier mean and variance. For QSD layers (``gamma`` set)
    also gamma_t; mean, std and CV of p_j and of c_j; and their realised correlation.
    """
    out = {
        "release_fraction": stats.release_fraction,
        "multiplier_mean": stats.multiplier_mean,
        "multiplier_var": stats.multiplier_var,
    }
    if stats.gamma is None:
        return out
    out["gamma"] = stats.gamma
    out.update(_moments(stats.p, "p"))
    out.update(_moments(stats.c, "c"))
    if stats.p.numel() > 1 and stats.c.numel() == stats.p.numel():
        pair = torch.stack([stats.p.double(), stats.c.double()])
        out["corr_pc"] = torch.corrcoef(pair)[0, 1].item()
    return out


class QuantalStatistics(L.Callback):
    """Every ``every_n_steps`` training steps, log ``quantal/<layer>/<stat>`` for each regulariser.

    Statistics come from the regularisers' own ``last_statistics`` (they record only on the
    steps this callback asks for). Scalars are averaged over ranks under DDP and go to every
    logger of the trainer (CSV included) at exactly those steps; W&B also receives histograms
    of p_j and c_j.
    """

    def __init__(self, every_n_steps: int = 50, histograms: bool = True) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.histograms = histograms

    @staticmethod
    def _regularisers(pl_module: L.LightningModule) -> dict[str, Regulariser]:
        return {layer_name(n): m for n, m in pl_module.named_modules() if isinstance(m, Regulariser)}

    def _due(self, trainer: L.Trainer) -> bool:
        return trainer.global_step % self.every_n_steps == 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        due = self._due(trainer)
        for module in self._regularisers(pl_module).values():
            module.collect_statistics = due
            module.last_statistics = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        scalars, histograms = {}, {}
        for name, module in self._regularisers(pl_module).items():
            stats, module.collect_statistics = module.last_statistics, False
            if stats is None:
                continue
            for key, value in summarise_release(stats).items():
                scalars[f"quantal/{name}/{key}"] = value
            if self.histograms and stats.gamma is not None:
                histograms[f"quantal/{name}/p"] = stats.p
                histograms[f"quantal/{name}/c"] = stats.c
        if not scalars:
            return
        # average over ranks (a collective: every rank takes part), then log on rank zero
        keys = sorted(scalars)
        values = torch.tensor([scalars[k] for k in keys], dtype=torch.float64, device=pl_module.device)
        values = trainer.strategy.reduce(values, reduce_op="mean")
        _log_scalars(trainer, dict(zip(keys, values.tolist())))
        if histograms:
            log_histograms(trainer, histograms)


@rank_zero_only
def _log_scalars(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
