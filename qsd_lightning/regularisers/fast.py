"""Fast release path: QSD at the cost of dropout (GitHub issue 7). This module dispatches.

The reference path (:func:`.functional.draw_quanta` + :func:`.functional.release`) is simple
and autograd-traced: it draws a float32 uniform per element (slow on CPU) and autograd keeps
the float multiplier ``m * c`` (4 bytes per element) for backward. The fast path computes the
same thing faster and keeps no mask at all (issue 17): for backward only the per-unit scale c
and threshold T (two values per unit) and the step's two 64-bit seeds; backward draws the same
mask again from the counter-based streams. The modules (:class:`.QSD`, :class:`.Dropout` on
CPU) use it by default. Layout, one direction only:

* :mod:`._env`: the switches ``QSD_FAST`` / ``QSD_CKERNEL`` / ``QSD_TRITON``, read once.
* :mod:`._layout`: the release rule (K < ceil(p 2^24), :func:`thresholds`), per-unit layouts,
  the autograd functions (:class:`._layout.Release`: the mask drawn again in backward;
  :class:`._layout.MaskedScale`: a given mask, kept).
* :mod:`._stream`: the random streams (counter-based SplitMix64, Marsaglia-Tsang Gammas),
  seeded from torch's generator, in torch ops.
* backends: :mod:`._eager` (torch ops, any device and layout), :mod:`._ckernel` (C, CPU,
  ``qsd_kernels.c`` compiled on first use), :mod:`._triton` (CUDA).
* this module: picks the backend per call; :mod:`.backend` says which are active.

**Exact cheap randomness**: torch's float32 ``rand`` on CPU is ``u = K / 2^24`` with K uniform
on 24 bits, so the reference releases with probability exactly ``ceil(p 2^24) / 2^24``. The
backends draw the top 16 bits of K (two random bytes per element) and only on a tie with
``T >> 8`` (probability 2^-16) its 8 low bits: the decision ``K < T``, hence the distribution,
is exactly the reference's, with no quantisation bias.

**One stream on CPU**: the compiled kernel and the eager backend draw the same bits from the
same seeds, so a seed gives the same masks and Gamma draws with or without a C compiler.

``QSD_FAST=0`` in the environment (or ``fast.ENABLED = False``) makes the modules use the
reference path; ``QSD_CKERNEL=0`` / ``QSD_TRITON=0`` disable the compiled kernels.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import _ckernel, _eager, _triton
from ._env import flags
from ._layout import MaskedScale, dense_inner, thresholds, unit_arrays
from ._stream import RandomBits
from .functional import MODES, QuantalDraw, draw_quanta

__all__ = [
    "ENABLED",
    "masked_scale",
    "thresholds",
    "sample_mask",
    "dense_inner",
    "unit_arrays",
    "draw_quanta_fast",
    "fast_release",
    "quantal_release",
    "RandomBits",
]

ENABLED = flags().fast


def draw_quanta_fast(
    unit_shape: Sequence[int],
    rate: float,
    gamma: float | None,
    mode: str = "coupled",
    device: torch.device | str | None = None,
    bits: RandomBits | None = None,
) -> QuantalDraw:
    """:func:`.functional.draw_quanta` with the draws taken from ``bits``: on CPU the Gamma
    sampler of the streams (compiled, or the same in torch ops), elsewhere the reference.

    Same equations and float32 arithmetic as the reference (method.md, eqs. 1-3, table 1);
    only the generator differs.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type != "cpu" or gamma is None or rate == 0.0 or mode not in MODES:
        return draw_quanta(unit_shape, rate, gamma, mode, device=device)  # (raises on a bad mode)
    bits = bits or RandomBits(device)
    backend = _ckernel if _ckernel.available() else _eager
    k = 1.0 - rate
    f32 = dict(dtype=torch.float32, device=device)
    p, c = backend.draw(unit_shape, rate, gamma, mode == "coupled", bits.seeds(2))
    if mode == "release":
        c = torch.tensor(1.0 / k, **f32)
    elif mode == "size":
        p = torch.tensor(k, **f32)
    elif mode == "independent":
        c = c.flatten()[bits.permutation(c.numel())].view_as(c)
    return QuantalDraw(p=p, c=c)


def sample_mask(
    p: Tensor,
    mask_shape: Sequence[int],
    bits: RandomBits | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Boolean release mask of ``mask_shape``: m = 1[K < ceil(p 2^24)], K uniform on 24 bits.

    Exactly the distribution of the reference ``torch.rand(mask_shape) < p`` (see
    :func:`thresholds`), at the cost of two random bytes per element plus 8 bits for the
    2^-16 of elements whose top 16 bits tie with the threshold's.
    """
    device = p.device if device is None else torch.device(device)
    bits = bits or RandomBits(device)
    return _eager.sample_mask(thresholds(p), mask_shape, bits.seeds(2), device)


def _scale(x: Tensor, mask: Tensor, c: Tensor) -> Tensor:
    """``x * (mask * c).to(x.dtype)`` bit for bit (``c`` in x's dtype), by the fastest backend."""
    if x.is_cuda and _triton.usable_scale(x, mask):
        return _triton.scale(x, mask, c)
    if _ckernel.usable(x, mask, c):
        return _ckernel.scale(x, mask, c)
    return _eager.scale(x, mask, c)


def masked_scale(x: Tensor, mask: Tensor, c: Tensor) -> Tensor:
    """Autograd-aware ``x * (mask * c).to(x.dtype)``, bit for bit, for a given mask, keeping
    only that mask (1 byte per element) and the per-unit ``c`` for backward.

    ``mask`` is boolean, broadcastable to ``x``; ``c`` is a 0-d or per-unit scale.
    """
    c = c.to(device=x.device, dtype=x.dtype)
    return MaskedScale.apply(x, c, mask, _scale, tuple(c.shape))


def fast_release(x: Tensor, draw: QuantalDraw, mask_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Drop-in for :func:`.functional.release` (same signature, same distribution, output
    and gradient): returns ``(y, mask)`` with ``y = x * m * c``, ``m`` drawn in ``mask_shape``.
    Backward draws ``m`` again; the mask returned is not kept by autograd.
    """
    return _release(x, draw, tuple(int(s) for s in mask_shape), RandomBits(x.device), True)


def _release(x: Tensor, draw: QuantalDraw, mask_shape: tuple[int, ...], bits: RandomBits, want_mask: bool):
    out = None
    if x.is_cuda and _triton.usable(x, draw, mask_shape):
        out = _triton.release(x, draw, mask_shape, bits, want_mask)
    elif _ckernel.usable_release(x, draw, mask_shape):
        out = _ckernel.release(x, draw, mask_shape, bits, want_mask)
    if out is not None:
        return out
    return _eager.release(x, draw, mask_shape, bits.seeds(2), want_mask)


def quantal_release(
    x: Tensor,
    rate: float,
    gamma: float | None,
    mode: str,
    unit_shape: Sequence[int],
    mask_shape: Sequence[int],
    need_mask: bool = True,
) -> tuple[Tensor, QuantalDraw, Tensor | None]:
    """Draw the quanta (eqs. 1-3) and release them (eq. 4) in one go: ``(y, draw, mask)``.

    What the modules call; one generator (seeded once from torch's) serves the whole step.
    ``need_mask=False`` skips writing the mask (None is returned; a module needs it only to
    collect statistics): one byte per element less to write in the forward.
    """
    bits = RandomBits(x.device)
    draw = draw_quanta_fast(unit_shape, rate, gamma, mode, device=x.device, bits=bits)
    y, mask = _release(x, draw, tuple(int(s) for s in mask_shape), bits, need_mask)
    return y, draw, mask
