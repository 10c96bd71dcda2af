"""The fast path's random streams, in torch ops, bit for bit those of ``qsd_kernels.c``.

Every random number derives from torch's global CPU generator (:class:`RandomBits`: a few
64-bit seeds per step), so ``torch.manual_seed`` / ``lightning.seed_everything`` keep runs
reproducible, independent of the number of threads, and the same seed gives the same masks
and draws with the compiled kernel (:mod:`._ckernel`) or without it (:mod:`._eager`):

* :func:`words`: the counter-based SplitMix64 stream ``mix64(seed + i * GOLDEN)`` (uint64
  arithmetic on int64 tensors: multiplication wraps, right shifts are masked to be logical).
* :func:`top16` / :func:`low8`: the 16 top bits of the release decisions' 24-bit uniforms, and
  their 8 low bits (drawn only on a tie of the top bits with the threshold's).
* :func:`standard_gamma`: the kernel's Marsaglia-Tsang Gamma sampler, the same candidates in
  the same order; the few candidates that need ``log`` (normal tails, squeeze failures, the
  boost for shapes < 1) are finished with Python's ``math`` (the C library's ``log``/``exp``,
  which the kernel calls too), the rest in exact float64 torch arithmetic.
"""

from __future__ import annotations

import math
import threading
from typing import Sequence

import torch
from torch import Tensor

try:  # numpy: the permutation of the ``independent`` mode (degrade to torch without it)
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

__all__ = ["RandomBits", "torch_words", "words", "top16", "low8", "standard_gamma", "STREAM"]

STREAM = "splitmix64-v2"  # names the streams below (recorded by backend.describe()); v1: top bytes, issue 14

M64 = (1 << 64) - 1


def _s64(v: int) -> int:
    """A uint64 value as the int64 with the same bits."""
    v &= M64
    return v - (1 << 64) if v >= 1 << 63 else v


GOLDEN = _s64(0x9E3779B97F4A7C15)
_C1 = _s64(0xBF58476D1CE4E5B9)
_C2 = _s64(0x94D049BB133111EB)
_ONE_BITS = _s64(0x3FF0000000000000)


def _xorshift_(z: Tensor, s: int, tmp: Tensor) -> Tensor:
    """z ^= z >> s (logical shift of the uint64 bits), in place (``tmp``: scratch like z)."""
    torch.bitwise_right_shift(z, s, out=tmp)
    return z.bitwise_xor_(tmp.bitwise_and_((1 << (64 - s)) - 1))


def mix64_(z: Tensor) -> Tensor:
    """SplitMix64's output function on int64 tensors (uint64 bits), in place."""
    tmp = torch.empty_like(z)
    _xorshift_(z, 30, tmp).mul_(_C1)
    _xorshift_(z, 27, tmp).mul_(_C2)
    return _xorshift_(z, 31, tmp)


def words(seed: int, start: int, n: int, device: torch.device | str | None = None) -> Tensor:
    """``mix64(seed + (start + k) GOLDEN)`` for k < n, as int64 (the kernel's uint64 bits),
    computed on ``device`` (CPU by default)."""
    z = torch.arange(start, start + n, dtype=torch.int64, device=device).mul_(GOLDEN).add_(_s64(seed))
    return mix64_(z)


def top16(seed: int, n: int, device: torch.device | str | None = None) -> Tensor:
    """The 16 top bits of K_0..K_{n-1} (int32 in [0, 2^16)): 16-bit word i mod 4 (memory
    order) of word i // 4."""
    return words(seed, 0, (n + 3) // 4, device).view(torch.int16)[:n].to(torch.int32).bitwise_and_(0xFFFF)


def low8(seed2: int, index: Tensor) -> Tensor:
    """The 8 low bits of K_i for the flat indices ``index``: mix64(seed2 + i GOLDEN) & 255 (int32)."""
    z = index.to(torch.int64).mul(GOLDEN).add_(_s64(seed2))
    return mix64_(z).bitwise_and_(0xFF).to(torch.int32)


def torch_words(n: int, device: torch.device | None = None) -> Tensor:
    """``n`` uniform int64 words from torch's generator (of ``device``; CPU by default)."""
    return torch.empty(n, dtype=torch.int64, device=device).random_(-(2**63), None)


# --------------------------------------------------------------------------- Gamma draws
_IA = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
       1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_IB = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
       6.680131188771972e+01, -1.328068155288572e+01)
_IC = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
       -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_ID = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
_P_LOW = 0.02425
_GBLOCK = 256


def _unit_double(bits52: Tensor, offset: float) -> Tensor:
    """(the double in [1, 2) with mantissa ``bits52``) - 1 + offset, exactly as the kernel."""
    return bits52.bitwise_or_(_ONE_BITS).view(torch.float64).sub_(1.0).add_(offset)


def _u32_top(w: Tensor) -> Tensor:  # u32(w): the top 32 bits
    return _unit_double(torch.bitwise_right_shift(w, 32).bitwise_and_(0xFFFFFFFF).bitwise_left_shift_(20), 1.1641532182693481e-10)


def _u32_low(w: Tensor) -> Tensor:  # u32(w << 32): the low 32 bits
    return _unit_double(w.bitwise_and(0xFFFFFFFF).bitwise_left_shift_(20), 1.1641532182693481e-10)


def _u53(w: Tensor) -> Tensor:  # uniform on (0, 1): 52 random bits and a half ulp
    return _unit_double(torch.bitwise_right_shift(w, 12).bitwise_and_((1 << 52) - 1), 1.1102230246251565e-16)


def _poly(c: Sequence[float], r: Tensor) -> Tensor:
    """Horner's rule left to right, one rounding per operation (as the kernel, no FMA)."""
    acc = r * c[0]
    for coef in c[1:-1]:
        acc = acc.add_(coef).mul_(r)
    return acc.add_(c[-1])


def _libm(fn, t: Tensor) -> Tensor:
    """``fn`` (``math.log``, ``math.exp``, ...: the C library's, as the kernel calls) elementwise
    on a small float64 tensor; torch's own vectorised versions may differ in the last bit."""
    return torch.tensor([fn(v) for v in t.tolist()], dtype=torch.float64)


def _norm_tail(p: Tensor) -> Tensor:
    """The kernel's ``norm_tail``: Acklam's tail approximation of the normal quantile."""
    lower = p < 0.5
    logs = torch.empty_like(p)
    logs[lower] = _libm(math.log, p[lower])
    logs[~lower] = _libm(math.log1p, -p[~lower])
    q = torch.sqrt(logs.mul_(-2.0))  # correctly rounded, as C's sqrt
    x = _poly(_IC, q).div_(_poly(_ID + (1.0,), q))
    return torch.where(lower, x, -x)  # -(num) / den = -(num / den) exactly


def _finish_rare(p: Tensor, x: Tensor, u: Tensor, d: float, cc: float) -> tuple[Tensor, Tensor]:
    """The candidates the vectorised squeeze did not accept, as the kernel's scalar code:
    (accepted, value in float32)."""
    tail = (p < _P_LOW) | (p > 1.0 - _P_LOW)
    if bool(tail.any()):
        x = x.clone()
        x[tail] = _norm_tail(p[tail])
    t = (x * cc).add_(1.0)
    valid = t > 0.0
    t3 = t * t * t
    xx = x * x
    accept = valid & (u < 1.0 - (xx * 0.0331) * xx)
    slow = torch.nonzero(valid & ~accept).flatten()
    if slow.numel():
        # log(u) < x^2 / 2 + d (1 - t^3 + log t^3): torch's logs decide all but near-ties, which
        # the C library's logs decide, as in the kernel (the two differ by an ulp at most)
        us, t3s, xs = u[slow], t3[slow], xx[slow]
        log_t3 = torch.log(t3s)
        lhs = torch.log(us)
        rhs = (xs * 0.5).add_((1.0 - t3s).add_(log_t3).mul_(d))
        near = (lhs - rhs).abs_() <= (lhs.abs() + rhs.abs() + log_t3.abs().mul_(d) + 1.0).mul_(1e-9)
        if bool(near.any()):
            lhs[near] = _libm(math.log, us[near])
            rhs[near] = (xs[near] * 0.5).add_((1.0 - t3s[near]).add_(_libm(math.log, t3s[near])).mul_(d))
        accept[slow] = lhs < rhs
    return accept, (t3 * d).to(torch.float32)


def standard_gamma(a: float, size: Sequence[int], seed: int) -> Tensor:
    """Gamma(a, 1) draws in float32: ``qsd_gamma`` of the kernel, bit for bit."""
    shape = tuple(int(s) for s in size)
    n = math.prod(shape)
    a = float(a)
    aa = a + 1.0 if a < 1.0 else a
    d = aa - 1.0 / 3.0
    cc = 1.0 / math.sqrt(9.0 * d)
    pieces: list[Tensor] = []
    got, ctr = 0, 0
    while got < n:
        m = -(-max(int((n - got) * 1.08) + 64, _GBLOCK) // _GBLOCK) * _GBLOCK
        w = words(seed, ctr, m)
        p, uu = _u32_top(w), _u32_low(w)
        q = p - 0.5
        r = q * q
        x = _poly(_IA, r).mul_(q).div_(_poly(_IB + (1.0,), r))
        t = (x * cc).add_(1.0)
        x2 = x * x
        v = t * t * t
        keep = (p >= _P_LOW) & (p <= 1.0 - _P_LOW) & (t > 0.0) & (uu < 1.0 - (x2 * 0.0331) * x2)
        value = (v * d).to(torch.float32)
        rare = torch.nonzero(~keep).flatten()
        if rare.numel():
            accept, rare_value = _finish_rare(p[rare], x[rare], uu[rare], d, cc)
            value[rare] = rare_value
            keep[rare] = accept
        accepted = value[keep][: n - got]
        pieces.append(accepted)
        got += accepted.numel()
        ctr += m
    out = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.float32)
    if a < 1.0 and n:  # boost: Gamma(a) = Gamma(a + 1) U^(1/a), U from a third stream
        u = _u53(words(~seed & M64, 0, n))
        out = (out.double() * _libm(math.exp, _libm(math.log, u).div_(a))).to(torch.float32)
    return out.reshape(shape).contiguous()


def draw(size: Sequence[int], rate: float, gamma: float, coupled: bool, seeds) -> tuple[Tensor, Tensor]:
    """``qsd_draw`` of the kernel, bit for bit: (p, y) or, ``coupled``, (p, c = y (gamma + r) / gamma)."""
    k = 1.0 - rate
    seed_x, seed_y = seeds
    shape = tuple(int(s) for s in size)
    x = standard_gamma(gamma * k / rate, shape, seed_x)
    y = standard_gamma(gamma, shape, seed_y)
    gk = torch.tensor(gamma * k, dtype=torch.float32).expand(shape)  # a float32 operand, as in C
    x = x.div_(gk)
    y = y.div_(gk)
    p = x / (x + y)
    factor = torch.tensor((gamma + rate) / gamma if coupled else 1.0, dtype=torch.float32)
    c = y.mul_(factor.expand(shape)) if coupled and float(factor) != 1.0 else y
    return p, c


# --------------------------------------------------------------------------- per step
_local = threading.local()


class RandomBits:
    """Random numbers for one forward pass, all derived from torch's global generator so
    that ``torch.manual_seed`` makes them reproducible.

    :meth:`seeds`: 64-bit seeds for the counter-based streams above (drawn from torch's CPU
    generator four at a time: one call serves a whole step). :meth:`permutation` (the
    ``independent`` mode's shuffle of c): a per-thread numpy SFC64 generator whose state is
    set, when first needed in this pass, from three words of torch's generator; torch's
    ``randperm`` off CPU or without numpy.
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
            words_ = torch_words(3).numpy().view(_np.uint64)
            gen.bit_generator.state = {
                "bit_generator": "SFC64",
                "state": {"state": _np.array([words_[0], words_[1], words_[2], 1], dtype=_np.uint64)},
                "has_uint32": 0,
                "uinteger": 0,
            }
            gen.bit_generator.random_raw(12)
            self._np = gen
        return self._np

    def seeds(self, n: int = 2) -> list[int]:
        """``n`` uniform 64-bit seeds (Python ints in [0, 2^64))."""
        if len(self._seeds) < n:
            self._seeds += [w & M64 for w in torch_words(max(4, n)).tolist()]
        out, self._seeds = self._seeds[:n], self._seeds[n:]
        return out

    def permutation(self, n: int) -> Tensor:
        gen = self.np
        if gen is not None:
            return torch.from_numpy(gen.permutation(n))
        return torch.randperm(n, device=self.device)
