"""Vision classifiers: a small ConvNet and a wide ResNet with regulariser sites."""

from __future__ import annotations

import inspect
from typing import Literal, Optional

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from ..models.cnn import ConvNet, WideResNet
from ..models.mlp import RegulariserFactory
from ..regularisers import Dropout, NoRegulariser, Regulariser, site_factory
from ..regularisers.registry import name_of
from ..regularisers.types import Rate
from .classification import ClassificationTask

__all__ = ["CNNClassifier", "WRNClassifier", "MaskKind", "conv_site_factory"]

#: ``element``: one mask entry per channel x position; ``channel``: one per channel (spatial)
MaskKind = Literal["element", "channel"]

CHANNEL_LOCKED_DIMS = (2, 3)


def conv_site_factory(template: Regulariser, mask: MaskKind) -> RegulariserFactory:
    """Factory ``rate -> module`` for sites that see feature maps ``[B, C, H, W]``.

    ``mask="channel"`` builds each site as ``template.clone(rate=rate, locked_dims=(2, 3))``:
    one mask entry (and, for QSD, one p_j and c_j) per channel. ``ValueError`` if the
    regulariser's constructor has no ``locked_dims`` (``none`` is accepted: it masks nothing).
    """
    if mask == "element":
        return site_factory(template)
    if mask != "channel":
        raise ValueError(f"mask must be 'element' or 'channel', got {mask!r}")
    if isinstance(template, NoRegulariser):
        return site_factory(template)
    if "locked_dims" not in inspect.signature(type(template)).parameters:
        name = name_of(template) or type(template).__name__
        raise ValueError(
            f"mask='channel' needs a regulariser that accepts locked_dims (qsd, dropout); "
            f"{name!r} does not. Use --model.mask element, or add a locked_dims argument to it."
        )

    def build(rate: float) -> nn.Module:
        return template.clone(rate=rate, locked_dims=CHANNEL_LOCKED_DIMS)

    return build


def _check_mask(mask: str) -> None:
    if mask not in ("element", "channel"):
        raise ValueError(f"mask must be 'element' or 'channel', got {mask!r}")


class CNNClassifier(ClassificationTask):
    """Small ConvNet classifier (:class:`~qsd_lightning.models.cnn.ConvNet`).

    Args:
        num_classes: number of classes (10 for CIFAR-10, 100 for CIFAR-100).
        in_channels: image channels.
        channels: output channels of each conv-ReLU-pool block (each block halves the size).
        convs_per_block: 3x3 convs per block (the regulariser is at the block's input only).
        hidden_sizes: hidden fully connected layers of the classifier (may be empty).
        image_size: input height = width (to size the classifier).
        batch_norm: batch normalisation after each conv (regulariser -> conv -> BN -> ReLU).
        regulariser: the regulariser of every site, by registry name or class path; its rate
            applies to every site whose own rate below is left unset.
        mask: ``element`` (one mask entry per channel x position) or ``channel`` (one per
            channel: the regulariser is built with ``locked_dims=(2, 3)``). Dense classifier
            sites always mask per element.
        conv_rate: rate at the input of the second and later conv blocks.
        classifier_rate: rate on the last feature map and before each later classifier layer.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        channels: list[int] = [32, 64, 128],
        convs_per_block: int = 1,
        hidden_sizes: list[int] = [],
        image_size: int = 32,
        batch_norm: bool = True,
        regulariser: Regulariser = lazy_instance(Dropout, rate=0.25),
        mask: MaskKind = "element",
        conv_rate: Optional[Rate] = None,
        classifier_rate: Optional[Rate] = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        _check_mask(mask)
        default_rate = regulariser.rate
        net = ConvNet(
            num_classes=num_classes,
            in_channels=in_channels,
            channels=channels,
            convs_per_block=convs_per_block,
            hidden_sizes=hidden_sizes,
            image_size=image_size,
            regulariser=conv_site_factory(regulariser, mask),
            dense_regulariser=site_factory(regulariser),
            conv_rate=default_rate if conv_rate is None else conv_rate,
            classifier_rate=default_rate if classifier_rate is None else classifier_rate,
            batch_norm=batch_norm,
        )
        super().__init__(net, num_classes, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])


class WRNClassifier(ClassificationTask):
    """Wide ResNet classifier (:class:`~qsd_lightning.models.cnn.WideResNet`), WRN-depth-k.

    Weight decay belongs in the optimiser config (``optimizer.init_args.weight_decay``).

    Args:
        depth: total depth, 6n + 4 (28 for WRN-28-10).
        widen_factor: width multiplier k.
        num_classes: number of classes.
        in_channels: image channels.
        regulariser: the regulariser between the two 3x3 convs of every block, by registry
            name or class path; its rate applies unless ``block_rate`` is set.
        mask: ``element`` or ``channel`` (one mask entry per channel, ``locked_dims=(2, 3)``).
        block_rate: rate inside the blocks (overrides the regulariser's own rate).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        regulariser: Regulariser = lazy_instance(Dropout, rate=0.3),
        mask: MaskKind = "element",
        block_rate: Optional[Rate] = None,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        _check_mask(mask)
        net = WideResNet(
            depth=depth,
            widen_factor=widen_factor,
            num_classes=num_classes,
            in_channels=in_channels,
            regulariser=conv_site_factory(regulariser, mask),
            block_rate=regulariser.rate if block_rate is None else block_rate,
        )
        super().__init__(net, num_classes, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
