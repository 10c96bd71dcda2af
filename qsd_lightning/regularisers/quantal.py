"""QSD and standard dropout modules (thin wrappers over :mod:`.functional`)."""

from __future__ import annotations

import operator
from typing import Any, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import fast
from .base import Regulariser
from .functional import (
    annealed_gamma,
    check_gamma,
    check_mode,
    draw_quanta,
    release,
    unit_and_mask_shapes,
)
from ..errors import ConfigError
from .registry import register
from .types import Dim, NonNegative, Precision, Rate

__all__ = ["QSD", "Dropout", "NoRegulariser", "check_site_dims"]

Mode = Literal["release", "size", "independent", "coupled"]


def _dims(dims: Sequence[int] | None, name: str) -> tuple[int, ...] | None:
    """``dims`` as a tuple of ints; ``ConfigError`` for dim 0 (the batch) or a non-integer."""
    if dims is None:
        return None
    try:
        if isinstance(dims, str) or any(isinstance(d, bool) for d in dims):
            raise TypeError
        out = tuple(operator.index(d) for d in dims)
    except TypeError:
        raise ConfigError(f"{name} must be a list of dims (integers other than 0), e.g. [1] or [2, 3]; got {dims!r}") from None
    if 0 in out:
        raise ConfigError(
            f"{name} {list(out)} names dim 0, the batch: dims count from 1 (or from the end: -1 is the last)"
        )
    return out


def check_site_dims(module, dims_names: Sequence[str], where: str, option: str = "") -> None:
    """``ConfigError`` unless ``module``'s ``unit_dims`` / ``locked_dims`` fit the inputs it
    will see: ``dims_names`` names their dims (``("batch", "features")``), ``where`` says which
    inputs they are and ``option`` how the user set the regulariser (``--model.regulariser``),
    for the message. Modules without these attributes pass."""
    ndim = len(dims_names)
    given = {"unit_dims": getattr(module, "unit_dims", None), "locked_dims": getattr(module, "locked_dims", None) or ()}
    prefix = f"{option}." if option else ""
    shape = "[" + ", ".join(dims_names) + "]"
    valid = " or ".join(f"{d} ({dims_names[d]})" for d in range(1, ndim))
    normalised = {}
    for name, dims in given.items():
        if dims is None:
            continue
        out = set()
        for d in dims:
            dd = d + ndim if d < 0 else d
            if not 0 < dd < ndim:
                raise ConfigError(
                    f"{prefix}{name} {list(dims)} does not fit {where}: they are {shape}, so a dim can be only "
                    f"{valid} (negative dims count from the end; 0 is the batch)"
                )
            out.add(dd)
        normalised[name] = out
    both = normalised.get("unit_dims", set()) & normalised.get("locked_dims", set())
    if both:
        raise ConfigError(
            f"{prefix}unit_dims {list(given['unit_dims'])} and {prefix}locked_dims {list(given['locked_dims'])} both name "
            f"dim {min(both)} ({dims_names[min(both)]}) of {where} {shape}: a dim either indexes units or is locked, not both"
        )


def draw_and_release(x: Tensor, rate: float, gamma, mode: str, unit_shape, mask_shape, need_mask: bool = True):
    """Draw the per-unit quanta and release them: ``(y, draw, mask)``.

    The fast path (:mod:`.fast`: same distribution, output and gradient; nothing per element
    kept for backward, the mask is drawn again from its seeds) unless disabled (``QSD_FAST=0``)
    or under ``torch.compile``, where the reference path (docs/method.md, eqs. 1-4) is traced
    instead. ``need_mask=False``: the fast path does not write the mask (``mask`` is None).
    """
    if fast.ENABLED and not torch.compiler.is_compiling():
        return fast.quantal_release(x, rate, gamma, mode, unit_shape, mask_shape, need_mask=need_mask)
    draw = draw_quanta(unit_shape, rate, gamma, mode, device=x.device)
    y, mask = release(x, draw, mask_shape)
    return y, draw, mask


class _MaskedRegulariser(Regulariser):
    """Shared forward of QSD and dropout: draw per-unit quanta, release per element."""

    def __init__(
        self, rate: float, unit_dims: Sequence[int] | None = None, locked_dims: Sequence[int] = ()
    ) -> None:
        super().__init__(rate)
        self.unit_dims = _dims(unit_dims, "unit_dims")
        self.locked_dims = _dims(locked_dims, "locked_dims") or ()
        if self.unit_dims is not None and set(self.unit_dims) & set(self.locked_dims):
            raise ConfigError(
                f"unit_dims {list(self.unit_dims)} and locked_dims {list(self.locked_dims)} overlap: a dim either "
                "indexes units (own release probabilities) or shares one mask entry (locked), not both"
            )

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"rate": self.rate}  # unit_dims, locked_dims only when set
        if self.unit_dims is not None:
            cfg["unit_dims"] = self.unit_dims
        if self.locked_dims:
            cfg["locked_dims"] = self.locked_dims
        return cfg

    def current_gamma(self) -> float | None:
        return None

    def _mode(self) -> str:
        return "release"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        unit_shape, mask_shape = unit_and_mask_shapes(x.shape, self.unit_dims, self.locked_dims)
        gamma = self.current_gamma()
        y, draw, mask = draw_and_release(x, self.rate, gamma, self._mode(), unit_shape, mask_shape,
                                         need_mask=self.collect_statistics)
        self._record(draw, mask, gamma)
        self._after_step()
        return y

    def _after_step(self) -> None:
        pass


@register("qsd")
class QSD(_MaskedRegulariser):
    """Quantal synaptic dilution (docs/method.md).

    Every unit j draws a release probability p_j ~ Beta(gamma k / r, gamma) (mean k = 1 - r)
    and a quantal size Y_j ~ Gamma(gamma, gamma k) (mean 1/k) at each training step; each
    element is released with probability p_j and scaled according to ``mode`` so that the
    expected output equals the input. ``gamma=None`` is standard dropout; ``gamma_step``
    anneals gamma_t = gamma (1 + gamma_step t) towards dropout, t = training steps taken by
    this module (kept in the state dict). Identity in eval mode and at rate 0.

    Args:
        rate: dropout rate r in [0, 1).
        gamma: precision (> 0): large gamma means little heterogeneity across units. The
            default, 16, is the evidence-based choice of docs/results.md.
        mode: ``release``, ``size``, ``independent`` or ``coupled`` (method.md, table 1).
        gamma_step: annealing slope (>= 0) per training step.
        unit_dims: input dims that index units (default: all non-batch, non-locked dims).
        locked_dims: input dims sharing one mask entry (e.g. ``(2, 3)``: whole conv
            channels; ``(1,)``: one mask for every time step of a ``[B, T, F]`` sequence).
    """

    def __init__(
        self,
        rate: Rate = 0.5,
        gamma: Optional[Precision] = 16.0,
        mode: Mode = "coupled",
        gamma_step: NonNegative = 0.0,
        unit_dims: Optional[Sequence[Dim]] = None,
        locked_dims: Sequence[Dim] = (),
    ) -> None:
        super().__init__(rate, unit_dims, locked_dims)
        self.gamma = check_gamma(gamma)
        self.mode = check_mode(mode)
        if isinstance(gamma_step, bool) or not isinstance(gamma_step, (int, float)) or not gamma_step >= 0:
            raise ValueError(f"gamma_step must be a number >= 0, got {gamma_step!r}")
        self.gamma_step = float(gamma_step)
        self.steps_taken = 0

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(gamma=self.gamma, mode=self.mode)
        if self.gamma_step:
            cfg["gamma_step"] = self.gamma_step
        return {k: cfg[k] for k in ("rate", "gamma", "mode", "gamma_step", "unit_dims", "locked_dims") if k in cfg}

    def current_gamma(self) -> float | None:
        """gamma_t after ``steps_taken`` training steps (method.md, eq. 5)."""
        return annealed_gamma(self.gamma, self.gamma_step, self.steps_taken)

    def _mode(self) -> str:
        return self.mode

    def _after_step(self) -> None:
        self.steps_taken += 1

    # the annealing counter travels in the state dict, so checkpoints resume it
    def get_extra_state(self) -> dict[str, int]:
        return {"steps_taken": self.steps_taken}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps_taken = int(state["steps_taken"])


@register("dropout")
class Dropout(_MaskedRegulariser):
    """Standard inverted dropout: y = x * m / k, m ~ Bernoulli(k), k = 1 - rate.

    Elementwise masks use torch's fused ``F.dropout`` on accelerators; on CPU, where
    ``F.dropout`` draws a float per element and keeps a float mask for backward, the fast QSD
    path (:mod:`.fast`) is several times quicker with the same distribution. ``locked_dims``
    shares one mask entry along those dims (spatial / channel dropout of conv maps, locked
    dropout over time).
    """

    def __init__(
        self, rate: Rate = 0.5, unit_dims: Optional[Sequence[Dim]] = None, locked_dims: Sequence[Dim] = ()
    ) -> None:
        super().__init__(rate, unit_dims, locked_dims)

    def forward(self, x: Tensor) -> Tensor:
        if (
            self.training and self.rate > 0 and not self.locked_dims and not self.collect_statistics
            and not (fast.ENABLED and x.device.type == "cpu" and not torch.compiler.is_compiling())
        ):
            return F.dropout(x, self.rate, training=True)
        return super().forward(x)


@register("none")
class NoRegulariser(Regulariser):
    """The identity: no regularisation at this site (``rate`` is accepted and ignored)."""

    def __init__(self, rate: Rate = 0.0) -> None:
        super().__init__(rate)

    def forward(self, x: Tensor) -> Tensor:
        return x
