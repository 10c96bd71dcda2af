"""Shared helpers of the fast release path: thresholds, per-unit layouts, the release rule.

Every backend (:mod:`._eager`, :mod:`._ckernel`, :mod:`._triton`) uses these; they import
nothing else of the fast path.

* **Release rule** (method.md, eq. 4 at float32 resolution): element i of unit j releases iff
  K_i < T_j, K_i a uniform 24-bit integer and T_j = ceil(p_j 2^24) (:func:`thresholds`);
  torch's CPU float32 ``rand`` is K / 2^24, so this is exactly the reference's ``u < p``.
  Backends draw the 16 top bits of K first (``top16 < T >> 8`` decides) and its 8 low bits
  only on a tie (``top16 == T >> 8``, probability 2^-16): then ``low8 < T & 255``.
* **Scaling**: y = x * (m ? c_j : 0), bit for bit the reference's ``x * (m * c).to(x.dtype)``.
  :class:`Release` keeps no mask for backward: only the per-unit c and T (and, in the
  closure, the step's two 64-bit seeds), and draws the same mask again in backward (the
  streams are counter-based: a pure function of seed and element index). :class:`MaskedScale`
  (a mask given by the caller) keeps that mask.
* **Layouts**: the kernels index unit j = i mod U of a contiguous tensor (:func:`unit_arrays`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["thresholds", "dense_inner", "unit_arrays", "reference_scale", "Release", "MaskedScale"]

TWO24 = float(1 << 24)


def thresholds(p: Tensor) -> Tensor:
    """T = ceil(p 2^24) as int32 in [0, 2^24], the shape of ``p``.

    The reference releases iff K < T for a uniform 24-bit K (``torch.rand`` in float32 is
    K / 2^24; p * 2^24 and its ceiling are exact in float32). The backends compare the top 16
    bits of K with ``T >> 8`` (2^16 for p = 1: always below) and, on a tie, its 8 low bits with
    ``T & 255``. NaN p (0/0 from underflowing Gamma draws) never releases, as ``u < nan`` is
    False in the reference.
    """
    return torch.nan_to_num(p.float(), nan=0.0).clamp(0.0, 1.0).mul_(TWO24).ceil_().to(torch.int32)


def dense_inner(t: Tensor, shape: Sequence[int]) -> Tensor:
    """``t`` (broadcastable to ``shape``) expanded along its trailing size-1 dims, contiguous.

    Torch's CPU comparison and in-place kernels are vectorised only when the broadcast
    operand is dense along the innermost dims; this costs at most numel(shape) / shape[0].
    """
    shape = tuple(shape)
    if t.dim() < len(shape):
        t = t.view((1,) * (len(shape) - t.dim()) + tuple(t.shape))
    target = list(t.shape)
    for d in range(len(shape) - 1, 0, -1):
        if target[d] == shape[d]:
            break
        target[d] = shape[d]
    if target == list(t.shape):
        return t
    return t.expand(target).contiguous()


def _per_unit(t: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, int] | None:
    """(flat contiguous values, U) such that element i of a contiguous tensor of ``shape``
    uses value i mod U; (0-d value, 0) for a scalar; None if ``t`` is not per-unit there."""
    if t.numel() == 1:
        return t.reshape(()), 0
    if t.dim() == len(shape) and t.shape[0] == 1 and t.shape[1:] == shape[1:] and t.is_contiguous():
        return t.view(-1), t.numel()  # the default layout: one unit per non-batch element
    if t.dim() > len(shape):
        return None
    t = t.view((1,) * (len(shape) - t.dim()) + tuple(t.shape))
    if any(s not in (1, d) for s, d in zip(t.shape, shape)):
        return None
    first = next(d for d, s in enumerate(t.shape) if s != 1)
    if first == 0:
        return None  # varies over the batch: not a per-unit value
    flat = t.expand((1,) * first + tuple(shape[first:])).contiguous().view(-1)
    return flat, flat.numel()


def unit_arrays(shape: tuple[int, ...], *tensors: Tensor) -> tuple[list[Tensor], int] | None:
    """Flat per-unit arrays of ``tensors`` (p, c, ...) sharing one U (0: all scalars), for
    the fused kernels' ``unit = i mod U`` indexing; None for unsupported layouts."""
    found = [_per_unit(t, shape) for t in tensors]
    if any(r is None for r in found):
        return None
    units = {u for _, u in found if u}
    if len(units) > 1:  # different per-unit layouts: spread each over all non-batch dims
        full = (1,) + tuple(shape[1:])
        found = [_per_unit(t.expand(full) if t.numel() > 1 else t, shape) for t in tensors]
        units = {u for _, u in found if u}
        if len(units) > 1:
            return None
    return [flat for flat, _ in found], (units.pop() if units else 0)


def reference_scale(x: Tensor, mask: Tensor, c: Tensor) -> Tensor:
    """The reference's product ``x * (mask * c).to(x.dtype)`` (autograd-traced)."""
    return x * (mask * c).to(x.dtype)


class Release(torch.autograd.Function):
    """y = x * (m * c), the mask m drawn by ``apply`` from fixed seeds, kept nowhere.

    ``apply(t, c, thr, want_mask) -> (t * (m * c), m or None)`` computes the product with the
    mask of this step (a pure function of the seeds it closes over, ``thr`` = T per unit and
    the element index: nothing global is read or advanced, so it gives the same mask on any
    thread and any number of times, under ``torch.utils.checkpoint`` or a second backward).
    Saved for backward: ``c`` (in x's dtype) and ``thr`` (int32), one value per unit, through
    ``save_for_backward`` (so ``saved_tensors_hooks`` see all of it); no byte per element.
    Backward is ``apply(grad)``: grad times the same multiplier, exactly what the reference's
    autograd computes (``MulBackward``). The op is linear with a fixed multiplier, so under
    ``create_graph`` backward is this function again (twice differentiable, and so on).
    ``holder``: a list that receives the mask of the forward (None: the mask is not written).
    """

    @staticmethod
    def forward(ctx, x: Tensor, c: Tensor, thr: Tensor, apply, holder):
        y, mask = apply(x.detach(), c, thr, holder is not None)
        if holder is not None:
            holder.append(mask)
        ctx.save_for_backward(c, thr)
        ctx.apply_ = apply
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        c, thr = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: keep the backward differentiable
            return Release.apply(grad, c, thr, ctx.apply_, None), None, None, None, None
        return ctx.apply_(grad, c, thr, False)[0], None, None, None, None


class MaskedScale(torch.autograd.Function):
    """y = x * (m * c) for a mask ``m`` the caller gives (:func:`.fast.masked_scale`).

    Saves the boolean mask (1 byte per mask element) and ``c`` in x's dtype (one value per
    unit); backward is ``scaler(grad, m, c)`` = ``grad * (m * c)``. Twice differentiable:
    under ``create_graph`` the backward is the reference product itself (``c`` viewed as
    ``c_shape`` to broadcast).
    """

    @staticmethod
    def forward(ctx, x: Tensor, c: Tensor, mask: Tensor, scaler, c_shape):
        ctx.save_for_backward(mask, c)
        ctx.scaler, ctx.c_shape = scaler, c_shape
        return scaler(x.detach(), mask, c)

    @staticmethod
    def backward(ctx, grad: Tensor):
        mask, c = ctx.saved_tensors
        if torch.is_grad_enabled():
            return reference_scale(grad, mask, c.view(ctx.c_shape)), None, None, None, None
        return ctx.scaler(grad, mask, c), None, None, None, None
