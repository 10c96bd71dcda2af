"""The fast release path (regularisers/fast.py, GitHub issue 7) against the reference path.

Given the same draw and mask, the fast path's output and gradient are the reference's bit for
bit; its masks have exactly the reference's distribution (K < ceil(p 2^24) with a uniform
24-bit K); it keeps no mask for backward (issue 17: c and T per unit, the mask drawn again
from the seeds; tests/test_fast_path_memory.py). On CPU the
compiled kernel and the eager torch backend draw the same streams: a seed gives the same
masks, draws, outputs and gradients with or without a C compiler (issue 14). The modules
import one way (layout helpers -> backends -> dispatch). Timings live in
scripts/benchmark.py, not here.
"""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from qsd_lightning.regularisers import QSD, Dropout, _ckernel, _eager, _env, _stream, backend as backends, build, fast
from qsd_lightning.regularisers.functional import QuantalDraw, draw_quanta, release, unit_and_mask_shapes
from tests.helpers import LAYOUTS, saved_bytes

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    return t.view(INT_VIEW[t.element_size()])


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b)), "not bit for bit identical"


@pytest.fixture(params=["ckernel", "eager"])
def backend(request, monkeypatch):
    """Run a test with the compiled CPU kernel (skipped where it cannot be built) and with
    the eager torch fallback."""
    if request.param == "ckernel":
        if not _ckernel.available():
            pytest.skip("no C compiler: the fused CPU kernel is unavailable")
    else:
        monkeypatch.setattr(_ckernel, "ENABLED", False)
    return request.param


def reference_multiply(x, mask, c):
    """What functional.release computes from its mask: x * (mask * c).to(x.dtype)."""
    return x * (mask * c).to(x.dtype)


# --------------------------------------------------------------------------- thresholds
def test_torch_rand_is_24_bit_on_cpu():
    """The premise of the exact sampler: CPU float32 rand is K / 2^24, K integer."""
    u = torch.rand(100_000) * 2**24
    assert torch.equal(u, u.floor())


SPECIAL_P = [0.0, -0.0, 1.0, 0.5, 0.3, 0.7, 1e-30, 2.0**-24, 2.0**-25, 1 - 2.0**-24, 0.999999, float("nan"), 1e-7]


def test_thresholds_are_ceil_p_2_24():
    p = torch.cat([torch.tensor(SPECIAL_P), torch.rand(10_000), torch.rand(1000) ** 8]).float()
    t = fast.thresholds(p)
    expect = torch.ceil(torch.nan_to_num(p.double(), nan=0.0).clamp(0, 1) * 2**24).long()
    assert t.dtype == torch.int32 and torch.equal(t.long(), expect)
    if _ckernel.available():
        assert torch.equal(_ckernel.thresholds(p), t)


def test_eager_sampler_decides_exactly_k_lt_t():
    """Every top16 value near each threshold's T >> 8, ties resolved by the 8 low bits: the mask
    is exactly 1[K < T], K = a 2^8 + b (a 24-bit uniform when a and b are uniform)."""
    p = torch.tensor([[0.0, 0.3, 0.5, 2.0**-24, 0.999999, 1.0, 0.123456789, float("nan")]]).float()
    units = p.shape[1]
    thr = fast.thresholds(p)
    hi = thr >> 8
    rows = 3 * 7
    # top bits around the threshold's (hi - 3 .. hi + 3, clipped), three times each
    a = (hi + (torch.arange(rows) % 7 - 3).unsqueeze(1)).clamp(0, 65535).to(torch.int32).contiguous()
    tie = a == hi
    lo_full = (thr & 255).expand(rows, units)
    offsets = torch.tensor([-1, 0, 1]).repeat(rows * units)[: int(tie.sum())]
    low = (lo_full[tie].long() + offsets).clamp(0, 255).to(torch.int32)
    expect_ties = torch.nonzero(tie.flatten()).flatten()

    def low8_at(idx):
        assert torch.equal(idx, expect_ties)
        return low.clone()

    mask = _eager.decide(thr, (rows, units), a.clone(), low8_at)
    b = torch.zeros(rows, units, dtype=torch.long)
    b[tie] = low.long()
    k = a.long() * 256 + b
    assert torch.equal(mask, k < thr.long())
    assert mask[:, 5].all() and not mask[:, 0].any() and not mask[:, 7].any()


@pytest.mark.parametrize("p_shape", ["per_unit", "scalar"])
@pytest.mark.parametrize("shape", [(300, 77), (7, 3001)])  # (7, 3001): walked in tiles of units
def test_kernel_decides_exactly_k_lt_t(p_shape, shape):
    if not _ckernel.available():
        pytest.skip("no C compiler")

    class Seeds(fast.RandomBits):
        def seeds(self, n=2):
            return [0x0123456789ABCDEF, 0xFEDCBA9876543210][:n]

    torch.manual_seed(0)
    p = torch.rand(1, shape[1]) if p_shape == "per_unit" else torch.tensor(0.3)
    draw = QuantalDraw(p=p, c=torch.tensor(2.0))
    _, mask = _ckernel.release(torch.ones(shape), draw, shape, Seeds())
    k = _ckernel.uniform24(0x0123456789ABCDEF, 0xFEDCBA9876543210, 0, math.prod(shape)).view(shape)
    assert torch.equal(mask, k.long() < fast.thresholds(p).long())


def test_ties_are_resolved_by_the_low_bits(backend):
    """Thresholds equal to the drawn top bits (every element a tie): the 8 low bits decide,
    in the kernel as in the eager backend (the tie path is rare with random p)."""
    seeds = [0x0123456789ABCDEF, 0xFEDCBA9876543210]

    class Seeds(fast.RandomBits):
        def seeds(self, n=2):
            return seeds[:n]

    shape = (40, 256)
    n = math.prod(shape)
    top = _stream.top16(seeds[0], n).view(shape)
    low = _stream.low8(seeds[1], torch.arange(n)).view(shape)
    k = top.long() * 256 + low.long()
    # per element is not per unit: use one unit per element (batch 1) and T = (top << 8) + lo
    lo = (torch.arange(n) % 257).view(shape).to(torch.int32)
    thr = (top << 8) + lo
    p = (thr.double() / 2**24).float()
    assert torch.equal(fast.thresholds(p), thr)  # exact: T / 2^24 is a float32
    x = torch.ones(1, n, requires_grad=True)
    draw = QuantalDraw(p=p.view(1, n), c=torch.tensor(1.0))
    y, mask = fast._release(x, draw, (1, n), Seeds(), True)
    assert torch.equal(mask.view(shape), k < thr.long())
    y.sum().backward()
    assert torch.equal(x.grad.view(shape) != 0, k < thr.long())


@pytest.mark.parametrize("keep", [77.5 / 256, 179.5 / 256, 31.5 / 256])
def test_no_quantisation_bias(keep, backend):
    """Release fractions match p itself, not p rounded to a multiple of 1/256, which is half a
    step away: an 8-bit sampler's bias would be over 15 standard errors here. (A 16-bit one's
    would be too small to see; exactness at 24 bits is tested directly: K < T.)"""
    torch.manual_seed(0)
    n = 1 << 24
    draw = QuantalDraw(p=torch.tensor(keep), c=torch.tensor(1.0))
    _, mask = fast.fast_release(torch.ones(n // 1024, 1024), draw, (n // 1024, 1024))
    frac = mask.double().mean().item()
    se = math.sqrt(keep * (1 - keep) / n)
    assert abs(frac - keep) < 5 * se
    for quantised in (math.floor(keep * 256) / 256, math.ceil(keep * 256) / 256):
        assert abs(frac - quantised) > 10 * se


# --------------------------------------------------------------------------- bit for bit


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,gamma", [("coupled", 4.0), ("independent", 1.0), ("size", 2.0), ("release", 8.0), ("coupled", None)])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda v: str(v))
def test_fast_release_matches_reference_bit_for_bit(dtype, mode, gamma, layout, backend):
    shape, unit_dims, locked = layout
    torch.manual_seed(1)
    unit_shape, mask_shape = unit_and_mask_shapes(shape, unit_dims, locked)
    draw = draw_quanta(unit_shape, 0.4, gamma, mode)
    x = (torch.randn(shape) * 3).to(dtype)
    x[..., 0] = -x[..., 0].abs()  # negative zeros where dropped
    xf = x.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    y, mask = fast.fast_release(xf, draw, mask_shape)
    assert mask.dtype == torch.bool and tuple(mask.shape) == tuple(mask_shape)
    ref = reference_multiply(xr, mask, draw.c)
    assert_same_bits(y, ref)
    g = torch.randn(shape).to(dtype)
    y.backward(g)
    ref.backward(g)
    assert_same_bits(xf.grad, xr.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_scale_special_values(dtype, backend):
    """NaN, inf and -0 behave as in the reference (x * 0 keeps NaN and the sign of zero)."""
    x = torch.tensor([[1.0, -2.0, float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 3.0]] * 4).to(dtype)
    mask = torch.tensor([[True, False] * 4, [False, True] * 4, [True] * 8, [False] * 8])
    for c in (torch.tensor(2.0), torch.rand(1, 8) + 0.5, torch.tensor(1 / 0.7)):
        assert_same_bits(fast.masked_scale(x, mask, c), reference_multiply(x, mask, c))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_contiguous_inputs_and_expanded_grads(dtype, backend):
    torch.manual_seed(2)
    x = torch.randn(40, 30, dtype=dtype).t().requires_grad_()  # [30, 40], transposed
    draw = draw_quanta((1, 40), 0.5, 4.0, "coupled")
    y, mask = fast.fast_release(x, draw, (30, 40))
    xr = x.detach().clone().requires_grad_()
    ref = reference_multiply(xr, mask, draw.c)
    assert_same_bits(y, ref)
    y.sum().backward()  # expanded (stride 0) gradient
    ref.sum().backward()
    assert_same_bits(x.grad, xr.grad)
    xc = torch.randn(4, 6, 5, 5, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()
    draw = draw_quanta((1, 6, 5, 5), 0.5, 4.0, "coupled")
    y, mask = fast.fast_release(xc, draw, (4, 6, 5, 5))
    assert_same_bits(y, reference_multiply(xc, mask, draw.c))


def test_double_backward():
    torch.manual_seed(3)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(6, 5) < 0.6
    c = torch.rand(1, 5, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda t: fast.masked_scale(t, mask, c), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fast.masked_scale(t, mask, c) ** 2, (x,))


@pytest.mark.parametrize("mode", ["coupled", "release"])
def test_double_backward_through_sampled_release(mode, backend):
    """create_graph through the fused forward (c flat per unit, viewed back to broadcast)."""
    torch.manual_seed(4)
    shape = (5, 3, 4)
    draw = draw_quanta((1, 3, 4), 0.5, 2.0, mode)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def f(t):
        torch.manual_seed(0)  # the same mask at every call
        return fast.fast_release(t, draw, shape)[0] ** 2

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("shape", [(256, 1024), (64, 4100)])  # (64, 4100): in tiles of units
def test_seeded_runs_repeat_and_thread_count_does_not_matter(backend, shape):
    # large enough for the kernel to go parallel
    x = torch.randn(shape)
    outs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            torch.manual_seed(5)
            outs.append(QSD(rate=0.5, gamma=2.0)(x))
    finally:
        torch.set_num_threads(threads)
    assert_same_bits(outs[0], outs[1])
    torch.manual_seed(6)
    assert not torch.equal(QSD(rate=0.5, gamma=2.0)(x), outs[0])


# --------------------------------------------------------------------------- memory for backward
def test_reference_path_keeps_a_float_per_element():
    """What the fast path saves us: the reference keeps the float multiplier."""
    x = torch.randn(64, 512, requires_grad=True)
    draw = draw_quanta((1, 512), 0.5, 4.0)
    _, storages = saved_bytes(lambda t: release(t, draw, (64, 512))[0], x)
    assert sum(b for b, _, _ in storages.values()) >= 4 * x.numel()


# --------------------------------------------------------------------------- modules
def test_modules_use_the_fast_path_and_can_switch_back(monkeypatch):
    x = torch.randn(32, 64, requires_grad=True)
    y = QSD(rate=0.5)(x)
    assert type(y.grad_fn).__name__.startswith("Release")
    y = Dropout(rate=0.5)(x)
    assert type(y.grad_fn).__name__.startswith("Release")  # on CPU, instead of F.dropout
    monkeypatch.setattr(fast, "ENABLED", False)
    y = QSD(rate=0.5)(x)
    assert type(y.grad_fn).__name__ == "MulBackward0"
    torch.manual_seed(0)
    a = QSD(rate=0.5)(x)
    torch.manual_seed(0)
    unit_shape, mask_shape = unit_and_mask_shapes(x.shape, None, ())
    draw = draw_quanta(unit_shape, 0.5, 16.0, "coupled")  # the default gamma
    assert torch.equal(a, release(x, draw, mask_shape)[0])


@pytest.mark.parametrize("mode", ["coupled", "size", "release", "independent"])
def test_statistics_still_collected(mode, backend):
    torch.manual_seed(0)
    m = QSD(rate=0.5, gamma=4.0, mode=mode).train()
    m.collect_statistics = True
    y = m(torch.ones(50, 400))
    st = m.last_statistics
    assert st.p.dtype == torch.float32 and st.c.dtype == torch.float32
    assert abs(st.release_fraction - 0.5) < 0.02
    assert abs(st.multiplier_mean - 1) < 0.06
    assert st.release_fraction == pytest.approx((y != 0).float().mean().item())
    d = Dropout(rate=0.3).train()
    d.collect_statistics = True
    d(torch.ones(50, 400))
    assert d.last_statistics.gamma is None and abs(d.last_statistics.release_fraction - 0.7) < 0.02


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_reduced_precision_modules(dtype, backend):
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 16)
    reg = QSD(rate=0.5, gamma=4.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(torch.randn(32, 16))
        y = reg(h)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    x = torch.randn(8, 32).to(dtype).requires_grad_()
    y = QSD(rate=0.5)(x)
    y.sum().backward()
    assert x.grad.dtype == dtype


def test_fast_draws_follow_the_reference_equations():
    """draw_quanta_fast: same shapes, dtypes and support; p Beta with mean k, c mean 1/k."""
    torch.manual_seed(0)
    for mode in ("release", "size", "independent", "coupled"):
        ref = draw_quanta((1, 5), 0.3, 4.0, mode)
        d = fast.draw_quanta_fast((1, 5), 0.3, 4.0, mode)
        assert d.p.shape == ref.p.shape and d.c.shape == ref.c.shape
        assert d.p.dtype == d.c.dtype == torch.float32
    d = fast.draw_quanta_fast((200_000,), 0.3, 4.0, "release")
    assert abs(d.p.mean().item() - 0.7) < 0.002
    var_p = 0.7 * 0.3**2 / (4.0 + 0.3)
    assert abs(d.p.var().item() - var_p) < 0.05 * var_p
    d = fast.draw_quanta_fast((200_000,), 0.3, 4.0, "size")
    assert abs(d.c.mean().item() - 1 / 0.7) < 0.01


@pytest.mark.parametrize("shape", [0.3, 1.0, 4.0, 16.0, 1e4])
def test_compiled_gamma_sampler_matches_the_gamma_distribution(shape):
    stats = pytest.importorskip("scipy.stats")
    if not _ckernel.available():
        pytest.skip("no C compiler")
    x = _ckernel.standard_gamma(shape, (200_000,), 12345).double().numpy()
    assert stats.kstest(x, stats.gamma(shape).cdf).pvalue > 1e-3
    assert abs(x.mean() / shape - 1) < 5 * (1 / (shape * 200_000)) ** 0.5


def test_compiled_draws_follow_eqs_1_to_3():
    if not _ckernel.available():
        pytest.skip("no C compiler")
    r, g, n = 0.3, 4.0, 400_000
    k = 1 - r
    p, c = _ckernel.draw((n,), r, g, True, [1, 2])
    assert p.dtype == c.dtype == torch.float32 and bool(((p > 0) & (p < 1)).all())
    var_p = k * r**2 / (g + r)
    assert abs(p.double().mean().item() - k) < 5 * (var_p / n) ** 0.5
    assert abs(p.double().var().item() / var_p - 1) < 0.02
    mean_c = (1 / k) * (g + r) / g  # E[Y] (g + r) / g
    assert abs(c.double().mean().item() / mean_c - 1) < 0.01
    # coupled: E[p c] = k (g / (g + r)) (1/k) (g + r) / g = 1, the unbiasedness of method.md
    assert abs((p.double() * c.double()).mean().item() - 1) < 0.01
    assert torch.corrcoef(torch.stack([p, c]))[0, 1] < -0.3


# --------------------------------------------------------------------------- accelerators
def test_triton_kernel_in_interpreter():
    """The CUDA kernels' logic, run by Triton's CPU interpreter (subprocess: the interpreter
    is chosen when the kernels are defined). bf16 is left out: the interpreter truncates
    float32 -> bf16 where GPUs round to nearest even."""
    pytest.importorskip("triton")
    code = textwrap.dedent(
        """
        import torch
        from qsd_lightning.regularisers import _triton, fast
        from qsd_lightning.regularisers.functional import draw_quanta
        assert _triton._build() is not None
        torch.manual_seed(0)
        for dtype in (torch.float32, torch.float64, torch.float16):
            for gamma, mode in ((4.0, "coupled"), (None, "coupled"), (2.0, "size")):
                x = torch.randn(16, 96).to(dtype).requires_grad_()
                d = draw_quanta((1, 96), 0.3, gamma, mode)
                torch.manual_seed(1)
                y, m = _triton.release(x, d, (16, 96), fast.RandomBits("cpu"))
                ref = x * (m * d.c).to(dtype)
                assert torch.equal(y, ref), dtype
                g = torch.randn(16, 96).to(dtype)
                assert torch.equal(_triton.scale(g, m, d.c.to(dtype)), g * (m * d.c).to(dtype))
                y.backward(g)  # the mask drawn again in backward, none kept
                assert torch.equal(x.grad, g * (m * d.c).to(dtype)), dtype
                torch.manual_seed(1)
                y2, none = _triton.release(x, d, (16, 96), fast.RandomBits("cpu"), want_mask=False)
                assert none is None and torch.equal(y2, y)
        x = torch.ones(512, 256)
        d = draw_quanta((1, 256), 0.3, None)
        _, m = _triton.release(x, d, tuple(x.shape), fast.RandomBits("cpu"))
        frac = m.double().mean().item()
        assert abs(frac - 0.7) < 5 * (0.21 / m.numel()) ** 0.5, frac
        print("ok")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS[:5], ids=lambda v: str(v))
def test_cuda_fast_release_matches_reference(dtype, layout):
    shape, unit_dims, locked = layout
    torch.manual_seed(0)
    unit_shape, mask_shape = unit_and_mask_shapes(shape, unit_dims, locked)
    draw = draw_quanta(unit_shape, 0.4, 4.0, "coupled", device="cuda")
    x = torch.randn(shape, device="cuda").to(dtype).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y, mask = fast.fast_release(x, draw, mask_shape)
    ref = reference_multiply(xr, mask, draw.c)
    assert_same_bits(y, ref)
    g = torch.randn(shape, device="cuda").to(dtype)
    y.backward(g)
    ref.backward(g)
    assert_same_bits(x.grad, xr.grad)
    _, storages = saved_bytes(QSD(rate=0.5).cuda(), x)
    assert sum(b for b, _, n in storages.values() if n >= x.numel()) <= x.numel()


@cuda
def test_cuda_release_fraction():
    torch.manual_seed(0)
    y = QSD(rate=0.3, gamma=None)(torch.ones(4096, 1024, device="cuda"))
    frac = (y != 0).double().mean().item()
    assert abs(frac - 0.7) < 5 * math.sqrt(0.21 / y.numel())


# --------------------------------------------------------------------------- one stream, any backend
def test_torch_streams_are_the_kernels():
    """SplitMix64 in torch ops (wrapping int64 arithmetic, masked shifts) = the C kernel's."""
    if not _ckernel.available():
        pytest.skip("no C compiler")
    seed, seed2 = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    n = 10_007
    k = _ckernel.uniform24(seed, seed2, 0, n).long()
    assert torch.equal(_stream.top16(seed, n).long(), k >> 8)
    assert torch.equal(_stream.low8(seed2, torch.arange(n)).long(), k & 0xFF)
    assert int(k.min()) >= 0 and int(k.max()) < 2**24 and int((k >> 8).max()) > 2**15


@pytest.mark.parametrize("shape", [0.05, 0.3, 1.0, 2.5, 16.0, 1e4])
def test_torch_gamma_sampler_is_the_kernels(shape):
    if not _ckernel.available():
        pytest.skip("no C compiler")
    for seed in (1, 12345, 2**64 - 7):
        assert_same_bits(_stream.standard_gamma(shape, (3000,), seed), _ckernel.standard_gamma(shape, (3000,), seed))


def run_backend(use_ckernel: bool, monkeypatch, fn):
    with monkeypatch.context() as m:
        m.setattr(_ckernel, "ENABLED", use_ckernel)
        return fn()


@pytest.mark.parametrize("name,kwargs", [
    ("qsd", dict(mode="coupled", gamma=4.0)), ("qsd", dict(mode="release", gamma=16.0)),
    ("qsd", dict(mode="size", gamma=0.5)), ("qsd", dict(mode="independent", gamma=2.0)),
    ("dropout", {}), ("qsd", dict(mode="coupled", gamma=4.0, locked_dims=(2,))),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 6, 40), (3, 2, 1501)])  # 3002 units: walked in tiles
def test_same_seed_same_masks_with_or_without_compiler(name, kwargs, dtype, shape, monkeypatch):
    """Issue 14: the C kernel and the eager fallback (QSD_CKERNEL=0) give identical draws,
    masks, outputs and gradients for the same seed, QSD and dropout, over several steps."""
    if not _ckernel.available():
        pytest.skip("no C compiler")

    def steps():
        torch.manual_seed(7)
        m = build(name, rate=0.3, **kwargs).train()
        m.collect_statistics = True
        out = []
        for _ in range(3):
            x = torch.randn(shape).to(dtype).requires_grad_()
            y = m(x)
            g = torch.randn(shape).to(dtype)
            y.backward(g)
            st = m.last_statistics
            out.append((y.detach(), x.grad, st.p, st.c))
        return out

    with_c = run_backend(True, monkeypatch, steps)
    without = run_backend(False, monkeypatch, steps)
    for a, b in zip(with_c, without):
        for ta, tb in zip(a, b):
            assert_same_bits(ta, tb)


# --------------------------------------------------------------------------- layout and record
FAST_PATH = ["_env", "_layout", "_stream", "_eager", "_ckernel", "_triton", "fast", "backend"]


def package_imports(module: str) -> tuple[set[str], list[str]]:
    """(fast-path modules imported at top level, imports made inside functions)."""
    path = os.path.join(os.path.dirname(fast.__file__), module + ".py")
    tree = ast.parse(open(path).read())
    in_functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    top, nested = set(), []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if id(node) in in_functions:
            nested += [node.module or "."] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            top.update([node.module] if node.module else [a.name for a in node.names])
    return top & set(FAST_PATH), nested


def test_fast_path_imports_go_one_way():
    """env -> layout/stream -> backends -> dispatch -> record; no imports inside functions."""
    for i, module in enumerate(FAST_PATH):
        top, nested = package_imports(module)
        assert not nested, f"{module} imports inside a function: {nested}"
        assert top <= set(FAST_PATH[:i]), f"{module} imports upward: {top - set(FAST_PATH[:i])}"
    assert package_imports("_ckernel")[0] <= {"_env", "_layout"}
    assert package_imports("_triton")[0] <= {"_env", "_layout"}


def test_flags_are_parsed_once_and_reloadable(monkeypatch):
    saved = (_env.flags(), fast.ENABLED, _ckernel.ENABLED, fast._triton.ENABLED)
    try:
        for env in (dict(QSD_FAST="off", QSD_CKERNEL="0", QSD_TRITON="No"), dict(QSD_FAST="1", QSD_CKERNEL="yes", QSD_TRITON="1")):
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            new = backends.reload_flags()
            on = env["QSD_FAST"] == "1"
            assert new == _env.Flags(fast=on, ckernel=on, triton=on) == _env.flags()
            assert fast.ENABLED is on and _ckernel.ENABLED is on and fast._triton.ENABLED is on
            assert backends.describe()["cpu"] == ("reference" if not on else ("c-kernel" if _ckernel.available() else "torch"))
            assert backends.describe()["flags"] == f"QSD_FAST={int(on)} QSD_CKERNEL={int(on)} QSD_TRITON={int(on)}"
    finally:
        _env.set_flags(saved[0])
        fast.ENABLED, _ckernel.ENABLED, fast._triton.ENABLED = saved[1:]
    with pytest.raises(Exception):
        _env.flags().fast = False  # frozen


def test_describe_is_a_plain_record(tmp_path):
    record = backends.describe()
    assert set(record) >= {"cpu", "cuda", "torch", "lightning", "compiler", "stream", "flags"}
    assert all(v is None or isinstance(v, str) for v in record.values())
    assert record["torch"] == torch.__version__
    assert record["cpu"] in ("c-kernel", "torch", "reference")
    assert (record["compiler"] is not None) == (record["cpu"] == "c-kernel")
    torch.save({"qsd_backend": record}, tmp_path / "ckpt")
    assert torch.load(tmp_path / "ckpt", weights_only=True)["qsd_backend"] == record


def test_checkpoints_record_the_backend(tmp_path):
    from types import SimpleNamespace

    from qsd_lightning.callbacks import RNGStateCheckpoint

    checkpoint: dict = {}
    trainer = SimpleNamespace(global_rank=0, state=SimpleNamespace(fn=None), sanity_checking=False)
    RNGStateCheckpoint().on_save_checkpoint(trainer, None, checkpoint)
    assert checkpoint["qsd_backend"] == backends.describe()


@cuda
def test_cuda_streams_and_eager_backend(monkeypatch):
    """The streams computed on the GPU are the CPU's (int64 wrap-around there too), and the
    eager backend (Triton off) releases on CUDA with the reference's product."""
    assert torch.equal(_stream.top16(11, 4099, "cuda").cpu(), _stream.top16(11, 4099))
    idx = torch.arange(5000)
    assert torch.equal(_stream.low8(12, idx.cuda()).cpu(), _stream.low8(12, idx))
    monkeypatch.setattr(fast._triton, "ENABLED", False)
    x = torch.randn(64, 96, device="cuda", requires_grad=True)
    draw = draw_quanta((1, 96), 0.3, 4.0, "coupled", device="cuda")
    y, mask = fast.fast_release(x, draw, (64, 96))
    assert_same_bits(y, reference_multiply(x.detach(), mask, draw.c))
