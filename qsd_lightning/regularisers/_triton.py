"""Fused CUDA kernels (Triton) for the fast release path; import-safe without Triton or CUDA.

Triton is imported lazily, only when a CUDA tensor reaches :func:`usable` (importing it
costs seconds); set ``QSD_TRITON=0`` to use the eager torch backend instead. Where Triton is
enabled but cannot be imported, one :class:`._env.BackendWarning` says so. The forward draws a Philox uniform per
element (``tl.randint``, keyed by a seed drawn from torch's CPU generator, so no device sync),
keeps its top 24 bits K and releases iff K < ceil(p 2^24) (the CPU reference's resolution,
see :func:`._layout.thresholds`), writing y = x * (m ? c : 0) (and the mask byte when asked)
in one pass. Philox is counter-based, so backward is the same kernel on the gradient with the
same seed, the mask drawn again: nothing per element is kept (:class:`._layout.Release`; the
per-unit p and c are). :func:`scale` multiplies by a mask the caller gives.

The products are computed in float32 (float64 for float64 inputs) and rounded once to the
input dtype: for fp16/bf16 operands the float32 product is exact, so this equals torch's
native ``x * (m * c).to(dtype)`` bit for bit.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from ._env import flags, warn_fallback
from ._layout import Release, unit_arrays

__all__ = ["available", "usable", "release", "scale", "failure"]

ENABLED = flags().triton
_failure: str | None = None
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_BLOCK = 1024
_kernels = None
_tried = False


def _build():
    """Import Triton and define the kernels (once); None when Triton is unusable."""
    global _kernels, _tried, _failure
    if _tried:
        return _kernels
    _tried = True
    try:  # an optional dependency: imported on first use only
        triton = importlib.import_module("triton")
        tl = importlib.import_module("triton.language")
    except Exception as err:  # not installed, or broken: eager path
        _failure = f"cannot import triton: {err}"
        if torch.cuda.is_available():
            warn_fallback("Triton CUDA kernels", _failure, "the eager torch backend")
        return None

    @triton.jit
    def fwd_kernel(x_ptr, y_ptr, m_ptr, p_ptr, c_ptr, n, units, seed,
                   PS: tl.constexpr, CS: tl.constexpr, F64: tl.constexpr, STORE: tl.constexpr,
                   BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n
        j = offs % units
        if PS:
            p = tl.load(p_ptr + j, mask=valid, other=0.0)
        else:
            p = tl.load(p_ptr)
        if CS:
            c = tl.load(c_ptr + j, mask=valid, other=0.0)
        else:
            c = tl.load(c_ptr)
        # T = ceil(p 2^24), NaN and p <= 0 -> 0, p >= 1 -> 2^24 (as _layout.thresholds)
        p = tl.where(p > 0.0, p, 0.0)
        p = tl.minimum(p, 1.0)
        f = p * 16777216.0
        t = f.to(tl.int32)
        t = tl.where(t.to(tl.float32) < f, t + 1, t)
        r = tl.randint(seed, offs.to(tl.uint32))
        k = (r.to(tl.uint32, bitcast=True) >> 8).to(tl.int32)
        keep = k < t
        x = tl.load(x_ptr + offs, mask=valid, other=0.0)
        if F64:
            y = x * tl.where(keep, c.to(tl.float64), 0.0)
        else:
            y = x.to(tl.float32) * tl.where(keep, c.to(tl.float32), 0.0)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)
        if STORE:
            tl.store(m_ptr + offs, keep.to(tl.uint8), mask=valid)

    @triton.jit
    def scale_kernel(g_ptr, m_ptr, o_ptr, c_ptr, n, units,
                     CS: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n
        if CS:
            c = tl.load(c_ptr + offs % units, mask=valid, other=0.0)
        else:
            c = tl.load(c_ptr)
        keep = tl.load(m_ptr + offs, mask=valid, other=0) != 0
        g = tl.load(g_ptr + offs, mask=valid, other=0.0)
        if F64:
            o = g * tl.where(keep, c.to(tl.float64), 0.0)
        else:
            o = g.to(tl.float32) * tl.where(keep, c.to(tl.float32), 0.0)
        tl.store(o_ptr + offs, o.to(o_ptr.dtype.element_ty), mask=valid)

    _kernels = (triton, fwd_kernel, scale_kernel)
    return _kernels


def available() -> bool:
    return ENABLED and torch.cuda.is_available() and _build() is not None


def failure() -> str | None:
    """Why the kernels are unavailable (None if they loaded, or were never tried)."""
    return _failure


def _supported(x: Tensor) -> bool:
    return x.dtype in _DTYPES and x.numel() > 0 and x.numel() < 2**31


def usable(x: Tensor, draw, mask_shape) -> bool:
    return (
        ENABLED and x.is_cuda and _supported(x) and tuple(mask_shape) == tuple(x.shape)
        and _build() is not None
    )


def usable_scale(x: Tensor, mask: Tensor) -> bool:
    return ENABLED and x.is_cuda and _supported(x) and mask.shape == x.shape and _build() is not None


def _grid(n: int):
    return ((n + _BLOCK - 1) // _BLOCK,)


def _scaler(units: int):
    """``(g, mask, cf) -> g * (mask ? cf[i mod units] : 0)`` (cf flat per unit, or 0-d)."""
    _, _, scale_kernel = _build()

    def scale(g: Tensor, mask: Tensor, cf: Tensor) -> Tensor:
        g = g.contiguous()
        out = torch.empty_like(g, memory_format=torch.contiguous_format)
        n = g.numel()
        per_unit = cf.dim() > 0
        scale_kernel[_grid(n)](
            g, mask.view(torch.uint8), out, cf, n, units if per_unit else 1,
            CS=per_unit, F64=g.dtype == torch.float64, BLOCK=_BLOCK,
        )
        return out

    return scale


def scale(x: Tensor, mask: Tensor, c: Tensor) -> Tensor:
    """``x * (mask * c).to(x.dtype)`` in one pass (``c`` already in x's dtype)."""
    arrays = unit_arrays(tuple(x.shape), c)
    if arrays is None:
        raise ValueError("scale: c does not broadcast to x as a per-unit value")
    (cf,), units = arrays
    return _scaler(units)(x, mask.contiguous(), cf)


def release(x: Tensor, draw, mask_shape, bits, want_mask: bool = True) -> tuple[Tensor, Tensor | None] | None:
    """Fused sample-and-scale forward of :func:`.fast.fast_release` (same contract; the mask
    only if ``want_mask``); None (nothing drawn) for a layout it does not handle. Backward
    runs the same kernel on the gradient (same seed: the same mask, drawn again)."""
    shape = tuple(x.shape)
    c = draw.c.to(device=x.device, dtype=x.dtype)
    arrays = unit_arrays(shape, draw.p.to(x.device), c)
    if arrays is None:  # exotic broadcast: the dispatcher uses the eager backend
        return None
    (pf, cf), units = arrays
    pf = pf.float().contiguous()
    (seed,) = bits.seeds(1)
    seed &= 0x7FFFFFFFFFFFFFFF
    _, fwd_kernel, _ = _build()

    def apply(t: Tensor, cf: Tensor, pf: Tensor, want: bool) -> tuple[Tensor, Tensor | None]:
        t = t.contiguous()
        n = t.numel()
        out = torch.empty_like(t, memory_format=torch.contiguous_format)
        mask = torch.empty(shape, dtype=torch.bool, device=t.device) if want else None
        fwd_kernel[_grid(n)](
            t, out, mask.view(torch.uint8) if want else out, pf, cf, n, units or 1, seed,
            PS=pf.dim() > 0, CS=cf.dim() > 0, F64=t.dtype == torch.float64, STORE=want, BLOCK=_BLOCK,
        )
        return out, mask

    holder: list | None = [] if want_mask else None
    y = Release.apply(x, cf, pf, apply, holder)
    return y, (holder[0] if holder else None)
