"""Issue 17: the fast path keeps no mask for backward; it draws the mask again from the seeds.

Autograd keeps only the per-unit scale c and threshold T (plus two 64-bit seeds in a closure),
so the bytes kept per element are (size of c + 4) / batch; on every shape of
scripts/benchmark.py that is <= 0.25. The gradient computed from the redrawn mask is exactly
the one the saved mask gives (the reference product with the forward's mask), on the compiled
kernel and on the eager backend; redrawing reads and advances no global generator, so a second
backward, a backward on another thread and a recomputation under ``torch.utils.checkpoint``
give the same gradient.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from qsd_lightning.regularisers import QSD, _ckernel, build, fast
from qsd_lightning.regularisers.functional import draw_quanta, unit_and_mask_shapes
from tests.helpers import LAYOUTS, saved_bytes

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# the activation shapes of scripts/benchmark.py (SHAPES)
BENCHMARK_SHAPES = [(256, 1024), (512, 4096), (64, 64, 32, 32), (35, 20, 650)]


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    view = INT_VIEW[a.element_size()]
    assert torch.equal(a.detach().contiguous().view(view), b.detach().contiguous().view(view)), "not bit for bit"


def reference_multiply(x, mask, c):
    """What functional.release computes from its mask: x * (mask * c).to(x.dtype)."""
    return x * (mask * c).to(x.dtype)


@pytest.fixture(params=["ckernel", "eager"])
def backend(request, monkeypatch):
    if request.param == "ckernel":
        if not _ckernel.available():
            pytest.skip("no C compiler: the fused CPU kernel is unavailable")
    else:
        monkeypatch.setattr(_ckernel, "ENABLED", False)
    return request.param


@pytest.mark.parametrize("name,kwargs", [("qsd", {}), ("qsd", dict(mode="size")), ("dropout", {}),
                                         ("qsd", dict(locked_dims=(2, 3)))])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 512), (16, 8, 6, 6)])
def test_nothing_per_element_is_kept_for_backward(name, kwargs, dtype, shape, backend):
    if len(shape) == 2 and "locked_dims" in kwargs:
        pytest.skip("locked dims of a conv map")
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype).requires_grad_()
    m = build(name, rate=0.5, **kwargs).train()
    y, storages = saved_bytes(m, x)
    numel = x.numel()
    units = numel // shape[0]
    assert all(n < numel for _, _, n in storages.values()), storages  # no mask, no multiplier
    # c (x's dtype) and T (int32), at most one each per unit
    assert sum(b for b, _, _ in storages.values()) <= units * (x.element_size() + 4)
    y.sum().backward()


@pytest.mark.parametrize("name", ["qsd", "dropout"])
@pytest.mark.parametrize("shape", BENCHMARK_SHAPES, ids=str)
def test_benchmark_shapes_keep_at_most_a_quarter_byte_per_element(name, shape, backend):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    _, storages = saved_bytes(build(name, rate=0.5).train(), x)
    assert sum(b for b, _, _ in storages.values()) / x.numel() <= 0.25


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_redrawn_mask_gives_the_saved_mask_gradient(dtype, layout, backend):
    """The gradient from the redrawn mask = grad * (mask * c) with the forward's mask (what
    the implementation that kept the mask computed, and the reference's autograd), bit for bit."""
    shape, unit_dims, locked = layout
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        unit_shape, mask_shape = unit_and_mask_shapes(shape, unit_dims, locked)
        draw = draw_quanta(unit_shape, 0.4, 4.0, "coupled")
        x = torch.randn(shape).to(dtype).requires_grad_()
        y, mask = fast.fast_release(x, draw, mask_shape)
        g = torch.randn(shape).to(dtype)
        y.backward(g)
        assert_same_bits(x.grad, reference_multiply(g, mask, draw.c))


def test_same_masks_and_gradients_with_or_without_writing_the_mask(backend):
    shape = (32, 300)
    draw = draw_quanta((1, 300), 0.3, 4.0, "coupled")
    out = []
    for need in (True, False):
        torch.manual_seed(3)
        x = torch.randn(shape, requires_grad=True)
        y, d, mask = fast.quantal_release(x, 0.3, 4.0, "coupled", (1, 300), shape, need_mask=need)
        assert (mask is None) is not need
        y.backward(torch.ones(shape))
        out.append((y.detach(), x.grad, d.p, d.c))
    for a, b in zip(*out):
        assert_same_bits(a, b)
    del draw


def test_backward_is_deterministic_and_draws_nothing_from_torch(backend):
    """A second backward (retain_graph) and a backward on another thread give the same
    gradient, and no backward reads or advances torch's generator."""
    torch.manual_seed(4)
    x = torch.randn(64, 3000, requires_grad=True)  # large enough for the kernel to go parallel
    y = QSD(rate=0.5, gamma=2.0)(x)
    g = torch.randn_like(y)
    state = torch.get_rng_state()
    (first,) = torch.autograd.grad(y, x, g, retain_graph=True)
    assert torch.equal(torch.get_rng_state(), state)
    (second,) = torch.autograd.grad(y, x, g, retain_graph=True)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("g", torch.autograd.grad(y, x, g)[0]))
    thread.start()
    thread.join()
    assert torch.equal(torch.get_rng_state(), state)
    assert_same_bits(first, second)
    assert_same_bits(first, result["g"])
    assert torch.equal(first != 0, y.detach() != 0)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_gives_the_same_gradients(reentrant, backend):
    lin = torch.nn.Linear(50, 50)
    reg = QSD(rate=0.5, gamma=4.0).train()

    def block(t):
        return reg(torch.relu(lin(t)))

    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(5)
        x = torch.randn(40, 50, requires_grad=True)
        y = checkpoint(block, x, use_reentrant=reentrant) if use_checkpoint else block(x)
        lin.zero_grad()
        y.square().sum().backward()
        grads.append((y.detach(), x.grad, lin.weight.grad.clone()))
    for a, b in zip(*grads):
        assert_same_bits(a, b)


def test_double_backward_through_the_redrawn_mask(backend):
    torch.manual_seed(6)
    draw = draw_quanta((1, 4, 3), 0.5, 2.0, "coupled")
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)

    def f(t):
        torch.manual_seed(0)
        return fast.fast_release(t, draw, (5, 4, 3))[0] ** 3

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
