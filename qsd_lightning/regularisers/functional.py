"""Functional QSD: draw per-unit quanta, then release them per element.

Notation and equations follow ``docs/method.md``. With rate r, keep probability k = 1 - r and
precision gamma, every unit j draws, once per training step (shared by the whole minibatch):

* X_j ~ Gamma(shape = gamma k / r, rate = gamma k)                         (method.md, eq. 1)
* Y_j ~ Gamma(shape = gamma,       rate = gamma k)   mean 1/k, CV 1/sqrt(gamma)   (eq. 2)
* p_j = X_j / (X_j + Y_j) ~ Beta(gamma k / r, gamma), mean k                      (eq. 3)

and every element releases with m = 1[u < p], u ~ U(0, 1), giving y = x * m * c (eq. 4). The
scale c and which p enters the mask depend on the mode (method.md, table 1):

=============  ======  ==============================
mode           p       c
=============  ======  ==============================
dropout        k       1 / k           (gamma = None)
release        p_j     1 / k
size           k       Y_j
independent    p_j     Y_j shuffled across units
coupled        p_j     Y_j (gamma + r) / gamma
=============  ======  ==============================

All randomness is drawn in float32 whatever the input dtype; nothing here is differentiable
with respect to the draws. Randomness comes from torch's global generator (seed it with
``lightning.seed_everything``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "MODES",
    "QuantalDraw",
    "check_rate",
    "check_gamma",
    "check_mode",
    "annealed_gamma",
    "unit_and_mask_shapes",
    "draw_quanta",
    "release",
    "qsd",
]

MODES = ("release", "size", "independent", "coupled")


def check_rate(rate: float, name: str = "rate") -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
        raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    return float(rate)


def check_gamma(gamma: float | None, name: str = "gamma") -> float | None:
    if gamma is None:
        return None
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or math.isnan(gamma):
        raise ValueError(f"{name} must be a positive number or None (standard dropout), got {gamma!r}")
    if gamma <= 0:
        raise ValueError(f"{name} must be > 0 (or None for standard dropout), got {gamma!r}")
    return float(gamma)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown QSD mode {mode!r}; valid choices: {', '.join(MODES)}")
    return mode


def annealed_gamma(gamma: float | None, gamma_step: float, step: int) -> float | None:
    """gamma_t = gamma (1 + gamma_step t) (method.md, eq. 5); None stays None."""
    if gamma is None:
        return None
    return gamma * (1.0 + gamma_step * step)


def unit_and_mask_shapes(
    shape: Sequence[int], unit_dims: Sequence[int] | None, locked_dims: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Broadcastable shapes of the per-unit parameters and of the release mask.

    Dim 0 is the batch. ``locked_dims`` share one mask entry (whole channels, every time step);
    ``unit_dims`` index the units (default: every non-batch dim that is not locked).
    """
    ndim = len(shape)

    def norm(dims: Sequence[int], what: str) -> set[int]:
        out = set()
        for d in dims:
            dd = d + ndim if d < 0 else d
            if not 0 < dd < ndim:
                raise ValueError(
                    f"{what} {tuple(dims)} invalid for an input of shape {tuple(shape)}: "
                    "dims must name non-batch dimensions (dim 0 is the batch)"
                )
            out.add(dd)
        return out

    locked = norm(locked_dims, "locked_dims")
    units = set(range(1, ndim)) - locked if unit_dims is None else norm(unit_dims, "unit_dims")
    if units & locked:
        raise ValueError(f"unit_dims and locked_dims overlap: {sorted(units & locked)}")
    unit_shape = tuple(shape[d] if d in units else 1 for d in range(ndim))
    mask_shape = tuple(1 if d in locked else shape[d] for d in range(ndim))
    return unit_shape, mask_shape


@dataclass
class QuantalDraw:
    """Per-unit draws of one step: release probabilities ``p`` and scales ``c`` (float32).

    Either may be a 0-d tensor when it is the same for every unit (dropout, ``size``,
    ``release``).
    """

    p: Tensor
    c: Tensor


def draw_quanta(
    unit_shape: Sequence[int],
    rate: float,
    gamma: float | None,
    mode: str = "coupled",
    device: torch.device | str | None = None,
) -> QuantalDraw:
    """Draw p_j and c_j for every unit (method.md, eqs. 1-3 and table 1)."""
    k = 1.0 - rate
    f32 = dict(dtype=torch.float32, device=device)
    if gamma is None or rate == 0.0:
        return QuantalDraw(p=torch.tensor(k, **f32), c=torch.tensor(1.0 / k, **f32))
    shape_x = torch.full(tuple(unit_shape), gamma * k / rate, **f32)
    shape_y = torch.full(tuple(unit_shape), gamma, **f32)
    x = torch._standard_gamma(shape_x) / (gamma * k)
    y = torch._standard_gamma(shape_y) / (gamma * k)
    p = x / (x + y)
    if mode == "release":
        return QuantalDraw(p=p, c=torch.tensor(1.0 / k, **f32))
    if mode == "size":
        return QuantalDraw(p=torch.tensor(k, **f32), c=y)
    if mode == "independent":
        perm = torch.randperm(y.numel(), device=y.device)
        return QuantalDraw(p=p, c=y.flatten()[perm].view_as(y))
    if mode == "coupled":
        return QuantalDraw(p=p, c=y * ((gamma + rate) / gamma))
    raise ValueError(f"unknown QSD mode {mode!r}; valid choices: {', '.join(MODES)}")


def release(x: Tensor, draw: QuantalDraw, mask_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Release quanta: y = x * m * c with m = 1[u < p] drawn in ``mask_shape`` (eq. 4).

    Returns the output and the boolean mask (broadcastable to ``x``). This is the reference
    path: simple, autograd-traced, and what the fast paths are tested against.
    """
    u = torch.rand(tuple(mask_shape), dtype=torch.float32, device=x.device)
    mask = u < draw.p
    multiplier = (mask * draw.c).to(x.dtype)
    return x * multiplier, mask


def qsd(
    x: Tensor,
    rate: float = 0.5,
    gamma: float | None = 16.0,
    mode: str = "coupled",
    training: bool = True,
    unit_dims: Sequence[int] | None = None,
    locked_dims: Sequence[int] = (),
) -> Tensor:
    """Quantal synaptic dilution of ``x`` (identity when not training or at rate 0).

    ``gamma=None`` is standard (inverted) dropout. Dim 0 of ``x`` is the batch: every unit's
    p_j and c_j are shared by the batch, the mask is drawn per sample.
    """
    check_rate(rate)
    check_gamma(gamma)
    check_mode(mode)
    if not training or rate == 0.0:
        return x
    unit_shape, mask_shape = unit_and_mask_shapes(x.shape, unit_dims, locked_dims)
    draw = draw_quanta(unit_shape, rate, gamma, mode, device=x.device)
    return release(x, draw, mask_shape)[0]
