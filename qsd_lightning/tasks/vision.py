"""Vision classifiers: a small ConvNet and a wide ResNet with regulariser sites."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from jsonargparse import lazy_instance
from jsonargparse.typing import PositiveInt
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from ..errors import ConfigError
from ..models.cnn import ConvNet, WideResNet
from ..regularisers import Dropout, Regulariser
from ..regularisers.sites import Sites, resolve
from ..regularisers.types import Rate
from .checks import NumClasses, check_not_empty, check_sites
from .classification import ClassificationTask

__all__ = ["CNNClassifier", "WRNClassifier", "MaskKind", "conv_sites"]

#: ``element``: one mask entry per channel x position; ``channel``: one per channel (spatial)
MaskKind = Literal["element", "channel"]

CHANNEL_LOCKED_DIMS = (2, 3)
FEATURE_MAP_DIMS = ("batch", "channels", "height", "width")


def conv_sites(regulariser, mask: MaskKind) -> Sites:
    """The :class:`~qsd_lightning.regularisers.sites.Sites` of sites that see feature maps
    ``[B, C, H, W]``: ``mask="channel"`` gives each site ``locked_dims=(2, 3)`` (one mask entry,
    and for QSD one p_j and c_j, per channel); ``ConfigError`` if the regulariser cannot take
    ``locked_dims`` (``none`` is accepted: it masks nothing)."""
    _check_mask(mask)
    if mask == "element":
        return Sites(regulariser)
    return Sites(regulariser, locked_dims=CHANNEL_LOCKED_DIMS, lock_required="mask='channel'",
                 hint=". Use --model.mask element, or add a locked_dims argument to it.")


def _check_mask(mask: str) -> None:
    if mask not in ("element", "channel"):
        raise ConfigError(f"mask must be 'element' or 'channel', got {mask!r}")


def _check_images(x, in_channels: int, image_size: Optional[int]) -> None:
    """``ConfigError`` naming the option if a batch of images ``x`` [B, C, H, W] does not fit."""
    if not isinstance(x, Tensor):
        return
    if x.ndim != 4:
        raise ConfigError(
            f"the data's inputs have shape {list(x.shape[1:])} per example, not images [channels, height, width]: "
            "use an image data module (CIFARDataModule) with this model, or an MLPClassifier for flat features"
        )
    if x.shape[1] != in_channels:
        raise ConfigError(
            f"the data's images have {x.shape[1]} channels, the model expects {in_channels}: "
            f"set --model.in_channels {x.shape[1]}"
        )
    if image_size is not None and tuple(x.shape[2:]) != (image_size, image_size):
        raise ConfigError(
            f"the data's images are {x.shape[2]}x{x.shape[3]}, the model expects {image_size}x{image_size}: "
            f"set --model.image_size {x.shape[2]}"
        )


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
        num_classes: NumClasses = 10,
        in_channels: PositiveInt = 3,
        channels: list[PositiveInt] = [32, 64, 128],
        convs_per_block: PositiveInt = 1,
        hidden_sizes: list[PositiveInt] = [],
        image_size: PositiveInt = 32,
        batch_norm: bool = True,
        regulariser: Regulariser = lazy_instance(Dropout, rate=0.25),
        mask: MaskKind = "element",
        conv_rate: Optional[Rate] = None,
        classifier_rate: Optional[Rate] = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        _check_mask(mask)
        check_not_empty(channels, "--model.channels", "[32, 64, 128]")
        if image_size // 2 ** len(channels) < 1:
            raise ConfigError(
                f"--model.channels has {len(channels)} conv blocks, which halve a {image_size}x{image_size} image "
                f"(--model.image_size) to nothing: use at most {max(image_size.bit_length() - 1, 0)} blocks"
            )
        regulariser = resolve(regulariser)  # saved so in the hyper-parameters, as the CLI passes it
        conv_factory = conv_sites(regulariser, mask)
        dense_factory = Sites(regulariser)
        conv_rate, classifier_rate = conv_factory.rate_or_default(conv_rate), conv_factory.rate_or_default(classifier_rate)
        where = "the inputs of the ConvNet's regulariser sites"
        if len(channels) > 1:
            check_sites(conv_factory, conv_rate, FEATURE_MAP_DIMS, f"{where} (feature maps)")
        check_sites(conv_factory, classifier_rate, FEATURE_MAP_DIMS, f"{where} (feature maps)")
        if hidden_sizes:
            check_sites(dense_factory, classifier_rate, ("batch", "features"),
                        f"{where} between the hidden_sizes layers (flat features; --model.mask channel locks only the conv sites)")
        super().__init__(None, num_classes, optimizer, lr_scheduler)
        self._network_args = dict(
            num_classes=num_classes,
            in_channels=in_channels,
            channels=channels,
            convs_per_block=convs_per_block,
            hidden_sizes=hidden_sizes,
            image_size=image_size,
            regulariser=conv_factory,
            dense_regulariser=dense_factory,
            conv_rate=conv_rate,
            classifier_rate=classifier_rate,
            batch_norm=batch_norm,
        )
        self.in_channels, self.image_size = in_channels, image_size
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.configure_model()

    def build_network(self) -> ConvNet:
        return ConvNet(**self._network_args)

    def check_inputs(self, x) -> None:
        _check_images(x, self.in_channels, self.image_size)


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
        widen_factor: PositiveInt = 10,
        num_classes: NumClasses = 10,
        in_channels: PositiveInt = 3,
        regulariser: Regulariser = lazy_instance(Dropout, rate=0.3),
        mask: MaskKind = "element",
        block_rate: Optional[Rate] = None,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        _check_mask(mask)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(f"--model.depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth!r}")
        regulariser = resolve(regulariser)  # saved so in the hyper-parameters, as the CLI passes it
        factory = conv_sites(regulariser, mask)
        block_rate = factory.rate_or_default(block_rate)
        check_sites(factory, block_rate, FEATURE_MAP_DIMS, "the inputs of the WideResNet's regulariser sites (feature maps)")
        super().__init__(None, num_classes, optimizer, lr_scheduler)
        self._network_args = dict(
            depth=depth,
            widen_factor=widen_factor,
            num_classes=num_classes,
            in_channels=in_channels,
            regulariser=factory,
            block_rate=block_rate,
        )
        self.in_channels = in_channels
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.configure_model()

    def build_network(self) -> WideResNet:
        return WideResNet(**self._network_args)

    def check_inputs(self, x) -> None:
        _check_images(x, self.in_channels, None)
