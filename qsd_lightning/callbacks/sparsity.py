"""Test-time sparsity of hidden ReLU codes (masks off), as DDP-correct torchmetrics."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from .naming import layer_name

__all__ = ["ActivationSparsity", "SparsityMetric", "hoyer_sparsity"]


def hoyer_sparsity(x: Tensor) -> Tensor:
    """Hoyer sparsity per row: (sqrt(n) - L1/L2) / (sqrt(n) - 1); 1 for an all-zero row."""
    n = x.shape[-1]
    if n < 2:
        raise ValueError("Hoyer sparsity needs at least 2 units")
    l1 = x.abs().sum(-1)
    l2 = x.norm(dim=-1)
    ratio = torch.where(l2 > 0, l1 / l2.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(l1))
    return torch.where(l2 > 0, (math.sqrt(n) - ratio) / (math.sqrt(n) - 1), torch.ones_like(l1))


class SparsityMetric(Metric):
    """Sparsity of a layer's activations [samples, units...] accumulated over batches.

    States are sums (correct under DDP): per-sample fraction of exact zeros (population
    sparsity), per-unit count of zeros (lifetime sparsity; dead = zero for every sample), and
    per-sample Hoyer sparsity.
    """

    full_state_update = False

    def __init__(self, num_units: int) -> None:
        super().__init__()
        self.num_units = num_units
        self.add_state("samples", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("population_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hoyer_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("unit_zeros", torch.zeros(num_units, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, activations: Tensor) -> None:
        a = activations.detach().flatten(1).double()
        if a.shape[1] != self.num_units:
            raise ValueError(f"expected {self.num_units} units, got {a.shape[1]}")
        zeros = a == 0
        self.samples += a.shape[0]
        self.population_sum += zeros.double().mean(1).sum()
        self.hoyer_sum += hoyer_sparsity(a).sum()
        self.unit_zeros += zeros.double().sum(0)

    def compute(self) -> dict[str, Tensor]:
        lifetime = self.unit_zeros / self.samples
        return {
            "population": self.population_sum / self.samples,
            "lifetime": lifetime.mean(),
            "dead_units": (self.unit_zeros == self.samples).double().mean(),
            "hoyer": self.hoyer_sum / self.samples,
        }


class ActivationSparsity(L.Callback):
    """During validation and test, log ``sparsity/<layer>/<measure>`` for every ``nn.ReLU``.

    Measures: ``population`` (mean fraction of exact zeros per sample), ``lifetime`` (mean
    over units of the fraction of samples where the unit is zero), ``dead_units`` (fraction
    of units zero for every sample) and ``hoyer``. Regularisers are identity there (eval mode),
    so this is the test-time code the paper calls sparse.
    """

    def __init__(self, module_types: tuple[type[nn.Module], ...] = (nn.ReLU,)) -> None:
        self.module_types = tuple(module_types)
        self._hooks: list = []
        self._metrics: dict[str, SparsityMetric] = {}

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()
        for name, module in pl_module.named_modules():
            if isinstance(module, self.module_types):
                self._hooks.append(module.register_forward_hook(self._hook(layer_name(name), pl_module.device)))

    def _hook(self, name: str, device: torch.device):
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            if name not in self._metrics:
                self._metrics[name] = SparsityMetric(output[0].numel()).to(device)
            self._metrics[name].update(output)

        return hook

    def _stop(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _finish(self, pl_module: L.LightningModule) -> None:
        self._stop()
        for name, metric in sorted(self._metrics.items()):
            for measure, value in metric.compute().items():  # all-reduce on every rank
                # already reduced over ranks by compute(): log once
                pl_module.log(f"sparsity/{name}/{measure}", value.float(), on_step=False, on_epoch=True, rank_zero_only=True)
            metric.reset()
        self._metrics = {}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._finish(pl_module)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(pl_module)
