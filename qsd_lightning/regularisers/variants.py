"""More regularisers: Gaussian, spatial, locked, embedding (word-type) dropout and DropConnect.

Each is a registered :class:`Regulariser` with a ``rate`` in [0, 1), the identity in eval mode
and at rate 0, drawing its randomness in float32 and keeping the input's dtype. They reuse the
masking machinery of :mod:`.functional` / :mod:`.quantal` (most are :class:`Dropout` with fixed
locked dims), so QSD fits every one of these sites as well:

=====================  ======================================  =====================================
site                   dropout variant                          QSD analogue
=====================  ======================================  =====================================
conv channels          ``spatial_dropout``                      ``QSD(locked_dims=(2, 3))`` (2-d maps)
time steps [B, T, F]   ``locked_dropout`` (``time_dim=1``)      ``QSD(locked_dims=(1,), unit_dims=(-1,))``
embedding rows [V, E]  ``embedding_dropout`` + :func:`embedded`  ``embedded(emb, tokens, QSD(locked_dims=(1,)))``
recurrent weights      ``weight_drop`` + :func:`apply_weight_drop`  ``apply_weight_drop(lstm, QSD(rate=0.5))``
=====================  ======================================  =====================================

*QSD as DropConnect.* A parametrization only has to map a weight tensor to a tensor of the same
shape, which every regulariser does, so ``apply_weight_drop(lstm, QSD(rate=0.5, gamma=4))``
works as is. QSD reads the weight ``[out, in]`` like a batch: dim 0 (the postsynaptic rows) plays
the samples, dim 1 the units, so every *presynaptic* unit j (a column: one hidden unit feeding
the gates) draws its own release probability p_j and quantal size, shared by all rows, and each
synapse (element) is released independently with p_j. *QSD on embedding rows* (locked over the
embedding dims) has a single unit: one p and c per step shared by every word type.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .base import Regulariser, ReleaseStatistics
from .functional import unit_and_mask_shapes
from .quantal import Dropout, _MaskedRegulariser, draw_and_release
from .registry import register
from .types import Dim, Rate

__all__ = [
    "GaussianDropout",
    "SpatialDropout",
    "LockedDropout",
    "EmbeddingDropout",
    "WeightDrop",
    "embedded",
    "apply_weight_drop",
    "remove_weight_drop",
]


@register("gaussian_dropout")
class GaussianDropout(_MaskedRegulariser):
    """Multiplicative Gaussian noise: y = x * e, e ~ N(1, r / k), k = 1 - r (Srivastava et al.
    2014): the same mean and variance of the multiplier as dropout at rate r, without zeros.

    ``unit_dims`` / ``locked_dims`` work as in :class:`~.quantal.QSD`: ``locked_dims=(1,)``
    draws one noise vector per sequence of a ``[B, T, F]`` input (locked over time).
    """

    def __init__(
        self, rate: Rate = 0.5, unit_dims: Optional[Sequence[Dim]] = None, locked_dims: Sequence[Dim] = ()
    ) -> None:
        super().__init__(rate, unit_dims, locked_dims)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        _, noise_shape = unit_and_mask_shapes(x.shape, self.unit_dims, self.locked_dims)
        std = math.sqrt(self.rate / (1.0 - self.rate))
        noise = torch.randn(noise_shape, dtype=torch.float32, device=x.device).mul_(std).add_(1.0)
        if self.collect_statistics:
            one = torch.ones((), dtype=torch.float32)
            self.last_statistics = ReleaseStatistics(
                gamma=None, p=one, c=one, release_fraction=1.0,
                multiplier_mean=float(noise.mean()), multiplier_var=float(noise.var(unbiased=False)),
            )
        return x * noise.to(x.dtype)


class _ShapeLockedDropout(Dropout):
    """Dropout whose locked dims follow from the input's shape (:meth:`locked_for`)."""

    def __init__(self, rate: Rate = 0.5) -> None:
        super().__init__(rate)

    def config(self) -> dict[str, Any]:
        return {"rate": self.rate}

    def locked_for(self, x: Tensor) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        locked = self.locked_for(x)
        if not self.training or self.rate == 0.0:
            return x
        unit_shape, mask_shape = unit_and_mask_shapes(x.shape, None, locked)
        y, draw, mask = draw_and_release(x, self.rate, None, "release", unit_shape, mask_shape,
                                         need_mask=self.collect_statistics)
        self._record(draw, mask, None)
        return y


@register("spatial_dropout")
class SpatialDropout(_ShapeLockedDropout):
    """Channel dropout: one mask entry per sample and channel (dim 1), shared by every later
    dim (``[B, C, L]``, ``[B, C, H, W]``, ...); scaled 1/k. Like torch's ``Dropout1d/2d/3d``
    without their ndim restrictions. A ``[B, F]`` input has no spatial dims: each feature is
    its own channel, so the mask is elementwise (standard dropout)."""

    def __init__(self, rate: Rate = 0.5) -> None:
        super().__init__(rate)

    def locked_for(self, x: Tensor) -> tuple[int, ...]:
        if x.ndim < 2:
            raise ValueError(f"spatial_dropout needs an input [B, C, ...], got shape {tuple(x.shape)}")
        return tuple(range(2, x.ndim))


@register("locked_dropout")
class LockedDropout(Dropout):
    """Variational (locked) dropout (Gal and Ghahramani 2016): one mask per sequence, the same at
    every step of the time dim ``time_dim`` (1 for batch-first ``[B, T, F]``)."""

    def __init__(self, rate: Rate = 0.5, time_dim: int = 1) -> None:
        if isinstance(time_dim, bool) or not isinstance(time_dim, int) or time_dim == 0:
            raise ValueError(f"time_dim must be a non-batch dim (an int other than 0), got {time_dim!r}")
        super().__init__(rate, locked_dims=(time_dim,))
        self.time_dim = time_dim

    def config(self) -> dict[str, Any]:
        return {"rate": self.rate, "time_dim": self.time_dim}


@register("embedding_dropout")
class EmbeddingDropout(_ShapeLockedDropout):
    """Word-type dropout (Gal and Ghahramani 2016; awd-lstm's ``dropoute``): applied to an
    embedding weight ``[V, E]``, it drops whole rows (every occurrence of a word in the batch)
    and scales the kept rows by 1/k. On any tensor it drops whole slices along dim 0.
    Use :meth:`embed` (or :func:`embedded`) to look tokens up through the masked weight.
    """

    def __init__(self, rate: Rate = 0.5) -> None:
        super().__init__(rate)

    def locked_for(self, x: Tensor) -> tuple[int, ...]:
        return tuple(range(1, x.ndim))

    def embed(self, embedding: nn.Embedding, tokens: Tensor) -> Tensor:
        """``embedding(tokens)`` through the row-masked weight (plain lookup in eval)."""
        return embedded(embedding, tokens, self)


def embedded(embedding: nn.Embedding, tokens: Tensor, regulariser: nn.Module | None) -> Tensor:
    """Look ``tokens`` up in ``embedding`` through ``regulariser(embedding.weight)``.

    Gradients flow to the original weight; the embedding's ``padding_idx``, ``max_norm`` etc.
    are honoured. ``regulariser=None`` is the plain lookup.
    """
    if regulariser is None:
        return embedding(tokens)
    weight = regulariser(embedding.weight)
    return F.embedding(
        tokens, weight, embedding.padding_idx, embedding.max_norm, embedding.norm_type,
        embedding.scale_grad_by_freq, embedding.sparse,
    )


@register("weight_drop")
class WeightDrop(Dropout):
    """DropConnect (Wan et al. 2013; awd-lstm's ``WeightDrop``): elementwise dropout of a weight
    tensor, scaled 1/k. Register it on a module's weights with :func:`apply_weight_drop` (a
    ``torch.nn.utils.parametrize`` parametrization: the parameter itself is kept, under
    ``parametrizations.<name>.original``); called on a plain tensor it masks that tensor.
    """

    def __init__(self, rate: Rate = 0.5) -> None:
        super().__init__(rate)

    def config(self) -> dict[str, Any]:
        return {"rate": self.rate}


def apply_weight_drop(
    module: nn.Module, regulariser: nn.Module | float = 0.5, names: Iterable[str] | None = None
) -> list[str]:
    """Register ``regulariser`` (a module, or a rate for :class:`WeightDrop`) as a
    parametrization of ``module``'s weights ``names`` (default: the recurrent weights
    ``weight_hh_l*`` of an RNN/LSTM/GRU). Each weight gets its own copy. Returns the names.

    The mask is redrawn each time the weight is read; wrap a forward pass in
    ``torch.nn.utils.parametrize.cached()`` to draw it once per pass (torch's RNNs read their
    weights more than once per call). Undo with :func:`remove_weight_drop`.
    """
    if isinstance(regulariser, (int, float)):
        regulariser = WeightDrop(rate=regulariser)
    if names is None:
        names = [n for n, _ in module.named_parameters(recurse=False) if n.startswith("weight_hh")]
        if parametrize.is_parametrized(module):
            names += [n for n in module.parametrizations if n.startswith("weight_hh") and n not in names]
    names = list(names)
    if not names:
        raise ValueError(f"apply_weight_drop: {type(module).__name__} has no recurrent weights weight_hh_l*; pass names=")
    for name in names:
        if not isinstance(getattr(module, name, None), Tensor):
            raise ValueError(f"apply_weight_drop: {type(module).__name__} has no weight {name!r}")
        copy = regulariser.clone() if isinstance(regulariser, Regulariser) else regulariser
        steps = getattr(copy, "steps_taken", None)  # registration calls it once to check shapes
        parametrize.register_parametrization(module, name, copy)
        if steps is not None:  # ... which is not a training step of QSD's annealing
            copy.steps_taken = steps
    return names


def remove_weight_drop(module: nn.Module, names: Iterable[str] | None = None) -> None:
    """Remove the parametrizations of ``names`` (default: all), keeping the unmasked weights."""
    if not parametrize.is_parametrized(module):
        return
    for name in list(module.parametrizations if names is None else names):
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
