"""Classification LightningModules: one shared step keyed by stage."""

from __future__ import annotations

from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..models import MLP
from ..regularisers import Dropout, Regulariser, materialise, site_factory
from ..regularisers.types import Rate
from .optim import configure_optimizers

__all__ = ["ClassificationTask", "MLPClassifier"]


class ClassificationTask(L.LightningModule):
    """Cross-entropy training of ``self.net`` with accuracy metrics.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
    Optimiser and scheduler are injected (``optimizer:`` / ``lr_scheduler:`` in the config).
    A non-finite training loss stops the run with the step at which it happened.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.metrics = nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro") for stage in ("train", "val", "test")}
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shared_step(self, batch, stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        if stage == "train" and not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}, "
                f"epoch {self.current_epoch}: stopping instead of training on. Lower the learning "
                "rate or check the data; earlier checkpoints are untouched."
            )
        accuracy = self.metrics[f"{stage}_acc"]
        accuracy(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(dim=-1)

    def configure_optimizers(self):
        return configure_optimizers(self.parameters(), self.optimizer_factory, self.lr_scheduler_factory)


class MLPClassifier(ClassificationTask):
    """ReLU MLP classifier (docs/method.md placement: regulariser before each weight layer).

    Args:
        in_features: flattened input size (64 for digits, 784 for MNIST).
        num_classes: number of classes.
        hidden_sizes: widths of the hidden layers.
        regulariser: the regulariser of every site, by registry name or class path; its rate
            applies to every site whose own rate below is left unset.
        input_rate: rate on the raw input (0: none, the author's choice).
        hidden_rate: rate on the input of the second and later hidden layers.
        output_rate: rate before the output layer.
        batch_norm: batch normalisation after each hidden linear layer.
    """

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 10,
        hidden_sizes: list[int] = [100, 100],
        regulariser: Regulariser = lazy_instance(Dropout, rate=0.5),
        input_rate: Rate = 0.0,
        hidden_rate: Optional[Rate] = None,
        output_rate: Optional[Rate] = None,
        batch_norm: bool = True,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        regulariser = materialise(regulariser)
        default_rate = regulariser.rate
        net = MLP(
            in_features,
            num_classes,
            hidden_sizes,
            regulariser=site_factory(regulariser),
            input_rate=input_rate,
            hidden_rate=default_rate if hidden_rate is None else hidden_rate,
            output_rate=default_rate if output_rate is None else output_rate,
            batch_norm=batch_norm,
        )
        super().__init__(net, num_classes, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
