"""Fast release path: QSD at the cost of dropout (GitHub issue 7).

The reference path (:func:`.functional.draw_quanta` + :func:`.functional.release`) is simple
and autograd-traced: it draws a float32 uniform per element (slow on CPU) and autograd keeps
the float multiplier ``m * c`` (4 bytes per element) for backward. This module computes the
same thing faster and with less memory; the modules (:class:`.QSD`, :class:`.Dropout` on CPU)
use it by default.

* **Backward memory** (:func:`masked_scale`, ``_Release``): a custom autograd function saves
  the boolean mask (1 byte per mask element) and the scale ``c`` per *unit* (not per
  element), never a float per element; backward is ``grad * (m * c)`` rebuilt from them.
  Output and gradient are bit for bit the reference's, given the same draw and mask.
* **Exact cheap randomness**: torch's float32 ``rand`` on CPU is ``u = K / 2^24`` with K
  uniform on 24 bits, so the reference releases with probability exactly
  ``ceil(p 2^24) / 2^24`` (method.md, eq. 4, at float32 resolution; :func:`thresholds`).
  We draw the top 8 bits of K (one random *byte* per element) and compare them with the top
  8 bits of T = ceil(p 2^24); only on a tie (probability 1/256) are K's 16 low bits drawn,
  for those elements alone. The decision ``K < T``, hence the distribution, is exactly the
  reference's: no quantisation bias (8-bit uniforms alone would round p to 1/256).
* **Generators**: every random number derives from torch's global CPU generator (a few
  64-bit seeds per step), so ``torch.manual_seed`` / ``lightning.seed_everything`` keep runs
  reproducible, and results do not depend on the number of threads. With the compiled
  kernel the bits come from counter-based SplitMix64 streams and the Gamma draws (eqs. 1-2)
  from a Marsaglia-Tsang sampler (:mod:`._ckernel`); without it, from a numpy SFC64 generator
  seeded from torch's (numpy's float32 Gamma sampler), or from torch itself.
* **Fused kernels**: on CPU, :mod:`._ckernel` (C, compiled with the system compiler on first
  use, cached) samples and scales in one pass forward and scales in one pass backward, for
  float32/float64 and elementwise masks; other cases use the eager torch ops below
  (:func:`sample_mask`, :func:`masked_scale`). On CUDA, :mod:`._triton` fuses the same when
  Triton is installed (Philox uniforms, top 24 bits).

``QSD_FAST=0`` in the environment (or ``fast.ENABLED = False``) makes the modules use the
reference path; ``QSD_CKERNEL=0`` / ``QSD_TRITON=0`` disable the compiled kernels.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Optional, Sequence

import torch
from torch import Tensor

from .functional import QuantalDraw, draw_quanta

try:  # numpy is a dependency of the stack (scikit-learn, matplotlib); degrade gracefully
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

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

ENABLED = os.environ.get("QSD_FAST", "1").lower() not in ("0", "false", "no", "off")

_TWO24 = float(1 << 24)


# --------------------------------------------------------------------------- randomness
_local = threading.local()


def _torch_words(n: int, device: torch.device | None = None) -> Tensor:
    """``n`` uniform int64 words from torch's generator (of ``device``; CPU by default)."""
    return torch.empty(n, dtype=torch.int64, device=device).random_(-(2**63), None)


class RandomBits:
    """Random numbers for one forward pass, all derived from torch's global generator so
    that ``torch.manual_seed`` makes them reproducible.

    :meth:`seeds`: 64-bit seeds for the counter-based compiled kernels. :meth:`np` (CPU, for
    the eager path): a per-thread numpy SFC64 generator whose state is set, when first needed
    in this pass, from three 64-bit words drawn from torch's generator (then mixed by 12
    outputs, as numpy's own seeding does). Other devices, or without numpy: torch's generator.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._np = None
        self._seeds: list[int] = []

    @property
    def np(self):
        """The numpy Generator of this pass (None off CPU or without numpy)."""
        if self._np is None and self.device.type == "cpu" and _np is not None:
            gen = getattr(_local, "gen", None)
            if gen is None:
                gen = _local.gen = _np.random.Generator(_np.random.SFC64(0))
            words = _torch_words(3).numpy().view(_np.uint64)
            gen.bit_generator.state = {
                "bit_generator": "SFC64",
                "state": {"state": _np.array([words[0], words[1], words[2], 1], dtype=_np.uint64)},
                "has_uint32": 0,
                "uinteger": 0,
            }
            gen.bit_generator.random_raw(12)
            self._np = gen
        return self._np

    def seeds(self, n: int = 2) -> list[int]:
        """``n`` uniform 64-bit seeds (Python ints in [0, 2^64)) for counter-based kernels
        (drawn from torch's CPU generator four at a time: one call serves a whole step)."""
        if len(self._seeds) < n:
            self._seeds += [w & 0xFFFFFFFFFFFFFFFF for w in _torch_words(max(4, n)).tolist()]
        out, self._seeds = self._seeds[:n], self._seeds[n:]
        return out

    def words(self, n: int) -> Tensor:
        """``n`` uniform int64 words (64 random bits each), on this pass's device."""
        gen = self.np
        if gen is not None:
            return torch.from_numpy(gen.bit_generator.random_raw(n).view(_np.int64))
        return _torch_words(n, self.device)

    def bytes(self, n: int) -> Tensor:
        """``n`` uniform uint8 values (8 random bits each)."""
        return self.words((n + 7) // 8).view(torch.uint8)[:n]

    def low16(self, n: int) -> Tensor:
        """``n`` uniform values on [0, 2^16) as int32."""
        w = self.words((n + 3) // 4).view(torch.int16)[:n]
        return w.to(torch.int32).bitwise_and_(0xFFFF)

    def standard_gamma(self, shape: float, size: Sequence[int]) -> Tensor:
        """Gamma(shape, rate 1) draws in float32: the compiled Marsaglia-Tsang sampler where
        available (about 3x numpy's speed), else numpy's, else torch's."""
        from . import _ckernel

        if self.device.type == "cpu" and _ckernel.available():
            return _ckernel.standard_gamma(shape, size, self.seeds(1)[0])
        gen = self.np
        if gen is not None:
            out = gen.standard_gamma(shape, size=tuple(size), dtype=_np.float32)
            return torch.from_numpy(_np.ascontiguousarray(out))
        return torch._standard_gamma(torch.full(tuple(size), shape, dtype=torch.float32, device=self.device))

    def permutation(self, n: int) -> Tensor:
        gen = self.np
        if gen is not None:
            return torch.from_numpy(gen.permutation(n))
        return torch.randperm(n, device=self.device)


def draw_quanta_fast(
    unit_shape: Sequence[int],
    rate: float,
    gamma: float | None,
    mode: str = "coupled",
    device: torch.device | str | None = None,
    bits: RandomBits | None = None,
) -> QuantalDraw:
    """:func:`.functional.draw_quanta` with the draws taken from ``bits``: on CPU the
    compiled Gamma sampler (or numpy's), elsewhere the reference itself.

    Same equations and float32 arithmetic as the reference (method.md, eqs. 1-3, table 1);
    only the generator differs.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type != "cpu" or gamma is None or rate == 0.0:
        return draw_quanta(unit_shape, rate, gamma, mode, device=device)
    bits = bits or RandomBits(device)
    from . import _ckernel

    if _ckernel.available() and mode in ("release", "size", "independent", "coupled"):
        k = 1.0 - rate
        f32 = dict(dtype=torch.float32, device=device)
        p, c = _ckernel.draw(unit_shape, rate, gamma, mode == "coupled", bits.seeds(2))
        if mode == "release":
            c = torch.tensor(1.0 / k, **f32)
        elif mode == "size":
            p = torch.tensor(k, **f32)
        elif mode == "independent":
            c = c.flatten()[bits.permutation(c.numel())].view_as(c)
        return QuantalDraw(p=p, c=c)
    if _np is None:  # no numpy: the reference draws
        return draw_quanta(unit_shape, rate, gamma, mode, device=device)
    k = 1.0 - rate
    gk = gamma * k
    size = tuple(int(s) for s in unit_shape)
    # float32 numpy arithmetic (on the tensors' memory), the same operations as the
    # reference's float32 torch ones
    xt = bits.standard_gamma(gamma * k / rate, size)
    yt = bits.standard_gamma(gamma, size)
    x, y = xt.numpy(), yt.numpy()
    x /= gk
    y /= gk
    p = torch.from_numpy(x / (x + y))
    f32 = dict(dtype=torch.float32, device=device)
    if mode == "release":
        return QuantalDraw(p=p, c=torch.tensor(1.0 / k, **f32))
    if mode == "size":
        return QuantalDraw(p=torch.tensor(k, **f32), c=yt)
    if mode == "independent":
        c = y.reshape(-1)[bits.permutation(y.size).numpy()].reshape(y.shape)
        return QuantalDraw(p=p, c=torch.from_numpy(c))
    if mode == "coupled":
        return QuantalDraw(p=p, c=torch.from_numpy(y * ((gamma + rate) / gamma)))
    return draw_quanta(unit_shape, rate, gamma, mode, device=device)  # raises the usual error


# --------------------------------------------------------------------------- exact mask sampling
def thresholds(p: Tensor) -> tuple[Tensor, Tensor]:
    """Split T = ceil(p 2^24) into ``hi`` (uint8) and ``lo`` (int32): T = hi 2^16 + lo.

    The reference releases iff K < T for a uniform 24-bit K (``torch.rand`` in float32 is
    K / 2^24; p * 2^24 and its ceiling are exact in float32). ``hi`` is capped at 255 (p = 1
    gives hi = 255, lo = 2^16: every tie releases), so ``lo`` is in [0, 2^16]. NaN p (0/0 from
    underflowing Gamma draws) never releases, as ``u < nan`` is False in the reference.
    """
    t = torch.nan_to_num(p.float(), nan=0.0).clamp(0.0, 1.0).mul_(_TWO24).ceil_().to(torch.int32)
    hi = torch.clamp(t >> 16, max=255)
    lo = t - (hi << 16)
    return hi.to(torch.uint8), lo


def sample_mask(
    p: Tensor,
    mask_shape: Sequence[int],
    bits: RandomBits | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Boolean release mask of ``mask_shape``: m = 1[K < ceil(p 2^24)], K uniform on 24 bits.

    Exactly the distribution of the reference ``torch.rand(mask_shape) < p`` (see
    :func:`thresholds`), at the cost of one random byte per element plus 16 bits for the
    1/256 of elements whose top byte ties with the threshold's.
    """
    device = p.device if device is None else torch.device(device)
    bits = bits or RandomBits(device)
    mask_shape = tuple(int(s) for s in mask_shape)
    hi, lo = thresholds(dense_inner(p.to(device), mask_shape))
    n = math.prod(mask_shape)
    a = bits.bytes(n).to(device).view(mask_shape)
    ties = _find_ties(a, hi) if n and bool((lo > 0).any()) else None
    mask = torch.lt(a, hi, out=a.view(torch.bool))  # in place: the random bytes become the mask
    if ties is not None and ties.numel():
        lo_at = lo.expand(mask_shape)[torch.unravel_index(ties, mask_shape)]
        b = bits.low16(ties.numel()).to(device)
        mask.view(-1)[ties] = b < lo_at
    return mask


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


# --------------------------------------------------------------------------- per-unit layouts
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


# --------------------------------------------------------------------------- scaling with a saved mask
_NEG_ZERO: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _neg_zero(dtype: torch.dtype, device: torch.device) -> Tensor:
    key = (dtype, device)
    t = _NEG_ZERO.get(key)
    if t is None:
        t = _NEG_ZERO[key] = torch.tensor(-0.0, dtype=dtype, device=device)
    return t


def _scale(x: Tensor, mask: Tensor, c: Tensor) -> Tensor:
    """``x * (mask * c).to(x.dtype)`` bit for bit, in as few passes as eager torch allows.

    ``c`` is in ``x.dtype``. The multiplier is built in one fresh buffer (1 * c = c and
    0 * c = 0 exactly, so converting the mask first and scaling after gives the reference's
    bits), which then becomes the output (multiplication commutes bit for bit). A 0-d ``c``
    uses one fused ``addcmul``: -0 + (c m) x, where adding -0 changes nothing, not even the
    sign of a zero. Fresh allocations are kept to one: on CPU each costs page faults.
    """
    from . import _ckernel, _triton

    if x.is_cuda and _triton.usable_scale(x, mask):
        return _triton.scale(x, mask, c)
    if _ckernel.usable(x, mask, c):
        return _ckernel.scale(x, mask, c)
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


class _Release(torch.autograd.Function):
    """y = x * (m * c) where ``compute(x)`` returns ``(y, m)`` (drawing m, or given it).

    Saves only the boolean mask m (1 byte per mask element) and ``c`` in x's dtype (one value
    per unit), never a float per element; backward is ``scaler(grad, m, c)`` =
    ``grad * (m * c)``, exactly what the reference's autograd computes (``MulBackward``:
    grad times the multiplier). Twice differentiable: under ``create_graph`` the backward is
    itself a :func:`masked_scale` (``c`` viewed as ``c_shape`` to broadcast).
    """

    @staticmethod
    def forward(ctx, x: Tensor, c: Tensor, compute, scaler, c_shape):
        y, mask = compute(x.detach())
        ctx.mark_non_differentiable(mask)
        ctx.save_for_backward(mask, c)
        ctx.scaler, ctx.c_shape = scaler, c_shape
        return y, mask

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_mask: Optional[Tensor]):
        mask, c = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: keep the backward differentiable
            return masked_scale(grad, mask, c.view(ctx.c_shape)), None, None, None, None
        return ctx.scaler(grad, mask, c), None, None, None, None


def masked_scale(x: Tensor, mask: Tensor, c: Tensor) -> Tensor:
    """Autograd-aware ``x * (mask * c).to(x.dtype)``, bit for bit, keeping only the mask
    (1 byte per element) and the per-unit ``c`` for backward.

    ``mask`` is boolean, broadcastable to ``x``; ``c`` is a 0-d or per-unit scale.
    """
    c = c.to(device=x.device, dtype=x.dtype)
    return _Release.apply(x, c, lambda xd: (_scale(xd, mask, c), mask), _scale, tuple(c.shape))[0]


# --------------------------------------------------------------------------- public entry points
def fast_release(x: Tensor, draw: QuantalDraw, mask_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Drop-in for :func:`.functional.release` (same signature, same distribution, output
    and gradient): returns ``(y, mask)`` with ``y = x * m * c``, ``m`` drawn in ``mask_shape``.
    """
    y, mask = _release(x, draw, tuple(int(s) for s in mask_shape), RandomBits(x.device))
    return y, mask


def _release(x: Tensor, draw: QuantalDraw, mask_shape: tuple[int, ...], bits: RandomBits):
    from . import _ckernel, _triton

    if x.is_cuda and _triton.usable(x, draw, mask_shape):
        return _triton.release(x, draw, mask_shape, bits)
    if _ckernel.usable_release(x, draw, mask_shape):
        return _ckernel.release(x, draw, mask_shape, bits)
    mask = sample_mask(draw.p, mask_shape, bits, device=x.device)
    return masked_scale(x, mask, draw.c), mask


def quantal_release(
    x: Tensor,
    rate: float,
    gamma: float | None,
    mode: str,
    unit_shape: Sequence[int],
    mask_shape: Sequence[int],
) -> tuple[Tensor, QuantalDraw, Tensor]:
    """Draw the quanta (eqs. 1-3) and release them (eq. 4) in one go: ``(y, draw, mask)``.

    What the modules call; one generator (seeded once from torch's) serves the whole step.
    """
    bits = RandomBits(x.device)
    draw = draw_quanta_fast(unit_shape, rate, gamma, mode, device=x.device, bits=bits)
    y, mask = _release(x, draw, tuple(int(s) for s in mask_shape), bits)
    return y, draw, mask
