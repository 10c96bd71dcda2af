"""ReLU multilayer perceptron with a regulariser at the input of every weight layer."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from ..regularisers.sites import RegulariserFactory, site_module
from ..regularisers.sites import no_regulariser as _identity_factory


class MLP(nn.Module):
    """``in -> [reg -> Linear -> (BatchNorm) -> ReLU] x len(hidden) -> reg -> Linear -> out``.

    The author's placement (docs/method.md, "Where the mask goes"): the regulariser acts on a
    layer's *input*, before its weights. Three sites with their own rates: ``input_rate`` on the
    raw input (0 by default: no mask on pixels), ``hidden_rate`` on the input of every later
    hidden layer, ``output_rate`` before the output layer. A site whose rate is 0 gets
    ``nn.Identity``. Hidden activations are ``nn.ReLU`` modules named ``hidden.<i>.act`` so
    that analysis hooks can find them.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = (100, 100),
        regulariser: RegulariserFactory = _identity_factory,
        input_rate: float = 0.0,
        hidden_rate: float = 0.0,
        output_rate: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ConfigError("hidden_sizes must name at least one hidden layer")

        def site(rate: float) -> nn.Module:
            return site_module(regulariser, rate)

        self.hidden = nn.ModuleList()
        width = in_features
        for i, size in enumerate(hidden_sizes):
            block = nn.Sequential()
            block.add_module("reg", site(input_rate if i == 0 else hidden_rate))
            block.add_module("linear", nn.Linear(width, size))
            if batch_norm:
                block.add_module("norm", nn.BatchNorm1d(size))
            block.add_module("act", nn.ReLU())
            self.hidden.append(block)
            width = size
        self.output_reg = site(output_rate)
        self.output = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for block in self.hidden:
            x = block(x)
        return self.output(self.output_reg(x))
