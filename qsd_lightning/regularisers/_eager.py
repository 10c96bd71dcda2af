"""The eager torch backend of the fast release path (any device, any dtype, any mask layout).

What runs where the compiled kernels do not (no C compiler, ``QSD_CKERNEL=0``, locked masks,
CUDA without Triton), with the same streams (:mod:`._stream`): on CPU a seed gives the same
masks and draws here as in :mod:`._ckernel`.

* :func:`sample_mask`: m_i = 1[K_i < T_j] (:func:`._layout.thresholds`), the 16 top bits of
  K_i drawn for every element, its 8 low bits only for the 2^-16 of elements whose top bits
  tie with T >> 8 (:func:`decide`).
* :func:`scale`: ``x * (mask * c).to(x.dtype)`` bit for bit, in as few passes as eager torch
  allows.
* :func:`release`: both, through :class:`._layout.Release`: backward draws the same mask
  again from the seeds (nothing per element is kept).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import _stream
from ._layout import Release, dense_inner, thresholds

__all__ = ["sample_mask", "decide", "scale", "release", "draw", "standard_gamma"]

standard_gamma = _stream.standard_gamma
draw = _stream.draw


def decide(thr: Tensor, mask_shape: Sequence[int], top: Tensor, low8_at: Callable[[Tensor], Tensor]) -> Tensor:
    """The mask 1[K < T] of ``mask_shape`` (T = ``thr``, int32, broadcastable) from the 16 top
    bits ``top`` of K (int32, ``mask_shape``) and ``low8_at(flat indices)``, the 8 low bits of K
    where the top bits tie with ``T >> 8``."""
    mask_shape = tuple(int(s) for s in mask_shape)
    thr = dense_inner(thr.to(top.device), mask_shape)
    hi = thr >> 8
    n = math.prod(mask_shape)
    ties = _find_ties(top, hi) if n else None
    mask = torch.lt(top, hi)
    if ties is not None and ties.numel():
        lo_at = thr.expand(mask_shape)[torch.unravel_index(ties, mask_shape)].bitwise_and(0xFF)
        mask.view(-1)[ties] = low8_at(ties).to(top.device) < lo_at
    return mask


def sample_mask(thr: Tensor, mask_shape: Sequence[int], seeds: Sequence[int], device: torch.device) -> Tensor:
    """Boolean release mask of ``mask_shape`` for the thresholds ``thr`` (T = ceil(p 2^24),
    :func:`._layout.thresholds`) from the streams of ``seeds`` = (seed, seed2): exactly the
    distribution of the reference ``torch.rand(mask_shape) < p``, and on CPU with an
    elementwise mask exactly the compiled kernel's mask for the same seeds."""
    mask_shape = tuple(int(s) for s in mask_shape)
    seed, seed2 = seeds
    top = _stream.top16(seed, math.prod(mask_shape), device).view(mask_shape)
    return decide(thr, mask_shape, top, lambda idx: _stream.low8(seed2, idx))


def _find_ties(a: Tensor, hi: Tensor) -> Tensor:
    """Flat indices where the random top bits equal the threshold's (probability 2^-16)."""
    n = a.numel()
    n8 = (n + 7) // 8 * 8
    tie_buf = torch.empty(n8, dtype=torch.bool, device=a.device)
    tie_buf[n:] = False
    torch.eq(a, hi, out=tie_buf[:n].view(a.shape))
    # scan 8 flags at a time as one int64 word, then look inside the few words with a tie
    words = torch.nonzero(tie_buf.view(torch.int64)).flatten()
    cand = (words.unsqueeze(1) * 8 + torch.arange(8, device=a.device)).flatten()
    return cand[tie_buf[cand]]


_NEG_ZERO: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _neg_zero(dtype: torch.dtype, device: torch.device) -> Tensor:
    key = (dtype, device)
    t = _NEG_ZERO.get(key)
    if t is None:
        t = _NEG_ZERO[key] = torch.tensor(-0.0, dtype=dtype, device=device)
    return t


def scale(x: Tensor, mask: Tensor, c: Tensor) -> Tensor:
    """``x * (mask * c).to(x.dtype)`` bit for bit, in as few passes as eager torch allows.

    ``c`` is in ``x.dtype``. The multiplier is built in one fresh buffer (1 * c = c and
    0 * c = 0 exactly, so converting the mask first and scaling after gives the reference's
    bits), which then becomes the output (multiplication commutes bit for bit). A 0-d ``c``
    uses one fused ``addcmul``: -0 + (c m) x, where adding -0 changes nothing, not even the
    sign of a zero. Fresh allocations are kept to one: on CPU each costs page faults.
    """
    m = mask.view(torch.uint8).to(x.dtype) if mask.dtype == torch.bool else mask.to(x.dtype)
    full = m.shape == x.shape
    if c.dim() == 0 and x.device.type == "cpu":
        if full:
            return torch.addcmul(_neg_zero(x.dtype, x.device), m, x, value=float(c), out=m)
        m.mul_(float(c))
    else:
        m.mul_(dense_inner(c, m.shape) if x.device.type == "cpu" else c)
    if full:
        return m.mul_(x)
    return x * m


def release(x: Tensor, draw, mask_shape: Sequence[int], seeds: Sequence[int], want_mask: bool = True):
    """``(y, mask or None)``: y = x * (m * c) with m drawn from ``seeds`` in ``mask_shape``
    (broadcast to x), autograd-aware; backward draws the same m again (:class:`._layout.Release`).
    """
    mask_shape = tuple(int(s) for s in mask_shape)
    seeds = tuple(seeds)
    device = x.device

    def apply(t: Tensor, c: Tensor, thr: Tensor, want: bool):
        mask = sample_mask(thr, mask_shape, seeds, device)
        out = scale(t, mask, c)
        return out, (mask if want else None)

    c = draw.c.to(device=device, dtype=x.dtype)
    thr = thresholds(draw.p.to(device))
    holder: list | None = [] if want_mask else None
    y = Release.apply(x, c, thr, apply, holder)
    return y, (holder[0] if holder else None)
