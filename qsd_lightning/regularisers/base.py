"""Common interface of every registered regulariser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .functional import QuantalDraw, check_rate

__all__ = ["Regulariser", "ReleaseStatistics", "materialise", "site_factory"]


@dataclass
class ReleaseStatistics:
    """What one training step of a regulariser released (read by the analysis callbacks).

    ``p`` and ``c`` are the per-unit release probabilities and scales (float32, flattened;
    one element when shared by all units); ``gamma`` is the precision used (None: dropout).
    """

    gamma: float | None
    p: Tensor
    c: Tensor
    release_fraction: float
    multiplier_mean: float
    multiplier_var: float

    @classmethod
    def from_draw(cls, draw: QuantalDraw, mask: Tensor, gamma: float | None) -> "ReleaseStatistics":
        multiplier = (mask * draw.c).float()
        return cls(
            gamma=gamma,
            p=draw.p.detach().flatten().float(),
            c=draw.c.detach().flatten().float(),
            release_fraction=float(mask.float().mean()),
            multiplier_mean=float(multiplier.mean()),
            multiplier_var=float(multiplier.var(unbiased=False)),
        )


class Regulariser(nn.Module):
    """Base class: a ``rate`` in [0, 1), identity in eval mode, nothing trainable.

    Subclasses implement :meth:`config` (their constructor arguments) so that a configured
    instance can serve as a template: ``template.clone(rate=0.3)`` builds a fresh module for
    another site. Setting ``collect_statistics = True`` makes the next training forward store
    a :class:`ReleaseStatistics` in ``last_statistics`` (off by default: it costs a reduction).
    """

    registry_name: str = ""

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        self.rate = check_rate(rate)
        self.collect_statistics = False
        self.last_statistics: ReleaseStatistics | None = None

    def config(self) -> dict[str, Any]:
        return {"rate": self.rate}

    # read like torch dropout by library code (timm / Hugging Face pass ``.p`` to fused attention)
    @property
    def p(self) -> float:
        """The rate, under torch dropout's name (read-only)."""
        return self.rate

    @property
    def inplace(self) -> bool:
        """Always False: regularisers return a new tensor (read-only, as on torch dropout)."""
        return False

    def clone(self, **overrides: Any) -> "Regulariser":
        """A fresh, untrained module with the same settings except ``overrides``."""
        return type(self)(**{**self.config(), **overrides})

    def _get_name(self) -> str:  # show the public class, not a registry alias
        return type(self).__mro__[1].__name__ if getattr(type(self), "_is_alias", False) else type(self).__name__

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def _record(self, draw: QuantalDraw, mask: Tensor, gamma: float | None) -> None:
        if self.collect_statistics:
            self.last_statistics = ReleaseStatistics.from_draw(draw, mask, gamma)


def materialise(template: nn.Module) -> nn.Module:
    """A plain instance for a jsonargparse ``lazy_instance`` default (used as a constructor
    default in the tasks; its attributes exist only once initialised); other modules unchanged."""
    mro = type(template).__mro__
    lazy = [i for i, cls in enumerate(mro) if cls.__name__ == "_LazyInitBaseClass"]
    if not lazy:
        return template
    return mro[lazy[0] + 1](**template.config())


def site_factory(template: Regulariser):
    """Factory ``rate -> module`` building a fresh copy of ``template`` for one site.

    Networks take such factories so that one configured regulariser (from YAML or the
    command line) can serve every site, each at its own rate.
    """

    template = materialise(template)

    def build(rate: float) -> nn.Module:
        return template.clone(rate=rate)

    return build
