"""Convolutional networks for CIFAR: a plain ConvNet and a pre-activation wide ResNet.

Both take regulariser factories (``rate -> nn.Module``) and follow the author's placement
(docs/method.md, "Where the mask goes"): the regulariser acts on a layer's *input*, before
its weights (regulariser -> weights -> normalisation -> activation). A site whose rate is 0
gets ``nn.Identity``. Every activation is an ``nn.ReLU`` module so that analysis hooks can
find the hidden activations.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError

from ..regularisers.sites import RegulariserFactory, site_module
from ..regularisers.sites import no_regulariser as _identity_factory

__all__ = ["ConvNet", "WideResNet", "WideBasicBlock"]


class ConvNet(nn.Module):
    """``[reg -> (conv -> (BN) -> ReLU) x convs_per_block -> maxpool] x len(channels)``, then a classifier.

    Sites: ``conv_rate`` at the input of every conv block after the first (none on raw
    pixels), ``classifier_rate`` on the last feature map before the classifier and on the
    input of every later classifier layer. The classifier is
    ``reg -> flatten -> [Linear -> ReLU -> reg] x len(hidden_sizes) -> Linear``.

    ``regulariser`` builds the sites that see feature maps ``[B, C, H, W]`` (conv blocks and
    the classifier input); ``dense_regulariser`` (default: ``regulariser``) builds the sites
    between classifier layers, which see ``[B, F]``. Keeping them apart lets channel masks
    (``locked_dims=(2, 3)``) act on feature maps while the dense sites mask per element.

    Module names: ``features.<i>.{reg,conv1,norm1,act1,...,pool}``, ``classifier.{reg,
    flatten,fc<j>,act<j>,reg<j>,out}``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_block: int = 1,
        hidden_sizes: Sequence[int] = (),
        image_size: int = 32,
        regulariser: RegulariserFactory = _identity_factory,
        dense_regulariser: Optional[RegulariserFactory] = None,
        conv_rate: float = 0.0,
        classifier_rate: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if not channels:
            raise ConfigError("channels must name at least one conv block")
        if convs_per_block < 1:
            raise ConfigError(f"convs_per_block must be >= 1, got {convs_per_block}")
        side = image_size // 2 ** len(channels)
        if side < 1:
            raise ConfigError(
                f"{len(channels)} conv blocks halve a {image_size}x{image_size} image to nothing; "
                "use fewer blocks or a larger image_size"
            )
        dense_regulariser = dense_regulariser or regulariser

        self.features = nn.Sequential()
        width = in_channels
        for i, out in enumerate(channels):
            block = nn.Sequential()
            block.add_module("reg", site_module(regulariser, conv_rate) if i > 0 else nn.Identity())
            for j in range(1, convs_per_block + 1):
                block.add_module(f"conv{j}", nn.Conv2d(width, out, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    block.add_module(f"norm{j}", nn.BatchNorm2d(out))
                block.add_module(f"act{j}", nn.ReLU())
                width = out
            block.add_module("pool", nn.MaxPool2d(2))
            self.features.add_module(str(i), block)

        self.classifier = nn.Sequential()
        self.classifier.add_module("reg", site_module(regulariser, classifier_rate))
        self.classifier.add_module("flatten", nn.Flatten())
        features = width * side * side
        for j, size in enumerate(hidden_sizes, start=1):
            self.classifier.add_module(f"fc{j}", nn.Linear(features, size))
            self.classifier.add_module(f"act{j}", nn.ReLU())
            self.classifier.add_module(f"reg{j}", site_module(dense_regulariser, classifier_rate))
            features = size
        self.classifier.add_module("out", nn.Linear(features, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class WideBasicBlock(nn.Module):
    """Pre-activation wide residual block (Zagoruyko and Komodakis 2016):
    ``BN -> ReLU -> conv3x3 -> BN -> ReLU -> reg -> conv3x3``, plus the shortcut.

    The regulariser sits between the two 3x3 convs, at the second conv's input. When the
    width or stride changes, the shortcut is a 1x1 conv of the pre-activated input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, reg: nn.Module) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_planes)
        self.act1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU()
        self.reg = reg
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act1(self.norm1(x))
        out = self.conv1(pre)
        out = self.conv2(self.reg(self.act2(self.norm2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: conv3x3(16) -> 3 groups of ``(depth - 4) / 6`` wide
    blocks (widths 16k, 32k, 64k; strides 1, 2, 2) -> BN -> ReLU -> global mean -> Linear.

    ``block_rate`` is the rate of the regulariser inside every block (between its two 3x3
    convs). WRN-28-10 has 36.5 M parameters. Module names: ``groups.<g>.<b>.{norm1,act1,
    conv1,norm2,act2,reg,conv2,shortcut}``, ``norm``, ``act``, ``fc``.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        regulariser: RegulariserFactory = _identity_factory,
        block_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth!r}")
        if widen_factor < 1:
            raise ConfigError(f"widen_factor must be >= 1, got {widen_factor!r}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.groups = nn.Sequential()
        in_planes = widths[0]
        for g, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            group = nn.Sequential()
            for b in range(n):
                group.add_module(
                    str(b), WideBasicBlock(in_planes, planes, stride if b == 0 else 1, site_module(regulariser, block_rate))
                )
                in_planes = planes
            self.groups.add_module(str(g), group)
        self.norm = nn.BatchNorm2d(in_planes)
        self.act = nn.ReLU()
        self.fc = nn.Linear(in_planes, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The WRN reference initialisation: He-normal convs (fan out), BN 1/0, zero fc bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm(self.groups(self.conv1(x))))
        # a plain mean (not AdaptiveAvgPool2d): its CUDA backward is deterministic
        return self.fc(torch.mean(x, dim=(2, 3)))
