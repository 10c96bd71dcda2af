"""The eager torch backend of the fast release path (any device, any dtype, any mask layout).

What runs where the compiled kernels do not (no C compiler, ``QSD_CKERNEL=0``, locked masks,
CUDA without Triton), with the same streams (:mod:`._stream`): on CPU a seed gives the same
masks and draws here as in :mod:`._ckernel`.

* :func:`sample_mask`: m_i = 1[K_i < T_j] (:func:`._layout.thresholds`), the top byte of K_i
  one random byte per element, its 16 low bits drawn only for the 1/256 of elements whose top
  byte ties with T's (:func:`decide`).
* :func:`scale`: ``x * (mask * c).to(x.dtype)`` bit for bit, in as few passes as eager torch
  allows.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import _stream
from ._layout import dense_inner, thresholds

__all__ = ["sample_mask", "decide", "scale", "draw", "standard_gamma"]

standard_gamma = _stream.standard_gamma
draw = _stream.draw


def decide(p: Tensor, mask_shape: Sequence[int], top: Tensor, low16_at: Callable[[Tensor], Tensor]) -> Tensor:
    """The mask 1[K < ceil(p 2^24)] of ``mask_shape`` from the top bytes ``top`` of K (uint8,
    ``mask_shape``, consumed: it becomes the mask) and ``low16_at(flat indices)``, the 16 low
    bits of K where the top byte ties with the threshold's."""
    mask_shape = tuple(int(s) for s in mask_shape)
    hi, lo = thresholds(dense_inner(p.to(top.device), mask_shape))
    n = math.prod(mask_shape)
    ties = _find_ties(top, hi) if n and bool((lo > 0).any()) else None
    mask = torch.lt(top, hi, out=top.view(torch.bool))  # in place: the random bytes become the mask
    if ties is not None and ties.numel():
        lo_at = lo.expand(mask_shape)[torch.unravel_index(ties, mask_shape)]
        mask.view(-1)[ties] = low16_at(ties).to(top.device) < lo_at
    return mask


def sample_mask(p: Tensor, mask_shape: Sequence[int], seeds: Sequence[int], device: torch.device) -> Tensor:
    """Boolean release mask of ``mask_shape`` from the streams of ``seeds`` = (seed, seed2):
    exactly the distribution of the reference ``torch.rand(mask_shape) < p``, and on CPU
    with an elementwise mask exactly the compiled kernel's mask for the same seeds."""
    mask_shape = tuple(int(s) for s in mask_shape)
    seed, seed2 = seeds
    top = _stream.mask_bytes(seed, math.prod(mask_shape), device).view(mask_shape)
    return decide(p, mask_shape, top, lambda idx: _stream.low16(seed2, idx))


def _find_ties(a: Tensor, hi: Tensor) -> Tensor:
    """Flat indices where the random top byte equals the threshold's (probability 1/256)."""
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
