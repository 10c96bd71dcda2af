"""Classification LightningModules: one shared step keyed by stage."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from jsonargparse.typing import PositiveInt
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..callbacks.prediction import sample_indices
from ..errors import ConfigError
from ..models import MLP
from ..regularisers import Dropout, Regulariser
from ..regularisers.sites import Sites, resolve
from ..regularisers.types import Rate
from .checks import NumClasses, check_finite_loss, check_not_empty, check_num_classes, check_sites, datamodule_of
from .network import NetworkTask
from .optim import check_optimizer, configure_optimizers

__all__ = ["ClassificationTask", "MLPClassifier"]


class ClassificationTask(NetworkTask):
    """Cross-entropy training of ``self.net`` with accuracy metrics.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
    Optimiser and scheduler are injected (``optimizer:`` / ``lr_scheduler:`` in the config).
    A non-finite training loss stops the run with the step at which it happened. At setup the
    data module's ``num_classes`` (when it has one) must equal the model's, and the first batch
    of inputs must have the shape the network expects (:meth:`check_inputs`).

    Args:
        net: a ready network to train; None for a subclass, which builds its own in
            :meth:`~qsd_lightning.tasks.network.NetworkTask.build_network` (every task of
            this package does).
    """

    def __init__(
        self,
        net: Optional[nn.Module],
        num_classes: int,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__()
        check_optimizer(optimizer, lr_scheduler)
        if net is not None:
            self.net = net
        self.num_classes = num_classes
        self._inputs_checked = False
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.metrics = nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro") for stage in ("train", "val", "test")}
        )

    def build_network(self) -> nn.Module:
        raise NotImplementedError(
            f"{type(self).__name__}: give ClassificationTask a net, or define build_network() in the subclass"
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        check_num_classes(datamodule_of(self), self.num_classes)

    def check_inputs(self, x) -> None:
        """``ConfigError`` naming the option to change if a batch ``x`` does not fit the network
        (checked on the first batch; subclasses that know their input shape override it)."""

    def _shared_step(self, batch, stage: str) -> Tensor:
        x, y = batch
        if not self._inputs_checked:
            self.check_inputs(x)
            self._inputs_checked = True
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        if stage == "train":
            check_finite_loss(self, loss, "Lower the learning rate or check the data")
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

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """``{"index": LongTensor[B], "pred": LongTensor[B], "probs": FloatTensor[B, C]}``:
        each sample's index in the predict data set, the predicted class (argmax of probs)
        and the softmax probabilities (see :class:`~qsd_lightning.callbacks.PredictionWriter`)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self._predictions(self(x), batch_idx, dataloader_idx)

    def _predictions(self, logits: Tensor, batch_idx: int, dataloader_idx: int) -> dict[str, Tensor]:
        probs = logits.float().softmax(dim=-1)
        index = sample_indices(self, probs.shape[0], batch_idx, dataloader_idx)
        return {"index": index, "pred": probs.argmax(dim=-1), "probs": probs}

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
        in_features: PositiveInt = 64,
        num_classes: NumClasses = 10,
        hidden_sizes: list[PositiveInt] = [100, 100],
        regulariser: Regulariser = lazy_instance(Dropout, rate=0.5),
        input_rate: Rate = 0.0,
        hidden_rate: Optional[Rate] = None,
        output_rate: Optional[Rate] = None,
        batch_norm: bool = True,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        check_not_empty(hidden_sizes, "--model.hidden_sizes", "[100, 100]")
        regulariser = resolve(regulariser)  # saved so in the hyper-parameters, as the CLI passes it
        factory = Sites(regulariser)
        rates = (input_rate, factory.rate_or_default(hidden_rate), factory.rate_or_default(output_rate))
        for rate in rates:
            check_sites(factory, rate, ("batch", "features"), "the inputs of the MLP's regulariser sites")
        super().__init__(None, num_classes, optimizer, lr_scheduler)
        self._network_args = dict(
            in_features=in_features,
            num_classes=num_classes,
            hidden_sizes=hidden_sizes,
            regulariser=factory,
            input_rate=rates[0],
            hidden_rate=rates[1],
            output_rate=rates[2],
            batch_norm=batch_norm,
        )
        self.in_features = in_features
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.configure_model()

    def build_network(self) -> MLP:
        return MLP(**self._network_args)

    def setup(self, stage: str) -> None:
        data_features = getattr(datamodule_of(self), "num_features", None)
        if isinstance(data_features, int) and not isinstance(data_features, bool) and data_features > 0:
            self._check_features(data_features)
        super().setup(stage)

    def _check_features(self, data_features: int, shape: str = "") -> None:
        if data_features != self.in_features:
            raise ConfigError(
                f"the data has {data_features} features{shape}, the model expects {self.in_features}: "
                f"set --model.in_features {data_features}"
            )

    def check_inputs(self, x) -> None:
        if isinstance(x, Tensor) and x.ndim >= 2:
            self._check_features(int(x[0].numel()), f" (inputs of shape {list(x.shape[1:])})" if x.ndim > 2 else "")
