#!/usr/bin/env python
"""How much does QSD cost compared with dropout? (GitHub issue 7)

Table 1, per device and activation shape: forward + backward time of every registered
regulariser (``build(name, rate=0.5)``, applied to the activation tensor; weight-site
regularisers map a tensor to a tensor too), of QSD without writing the mask in its forward
(``fast.quantal_release(..., need_mask=False)``: the module writes it for its statistics), of
QSD on the reference path and on the eager fast path (no C kernel), of torch's
``nn.Dropout`` (the baseline) and of the elementwise floor ``x * 2.0``; the median over
``--repeats`` timed runs after warm-up, measured round-robin (every candidate once per round,
so that load from other processes hits all alike); ratios to ``nn.Dropout`` and to the floor;
bytes kept for backward per element (distinct storages recorded by
``torch.autograd.graph.saved_tensors_hooks``, the input's own storage excluded).

Table 2 (CPU with the C kernel, issue 17): where QSD's time goes. The compiled forward kernel
(the backward is the same kernel: it draws the mask again) and variants of it compiled from
the same ``qsd_kernels.c`` with ``-DQSD_VARIANT``: 1 = no random bits (zeros instead, so no
ties either), 2 = no tie pass; the given-mask scale (``qsd_scale``: memory traffic of a one-byte mask), the
per-unit Gamma draws of one step, and the floor ``torch.mul(x, 2.0, out=y)``; all on
preallocated buffers, round-robin, median, as multiples of that floor.

Table 3: one training step (forward, backward, optimiser step; data loading excluded) of the
MLP classifier driven by a Lightning ``Trainer`` (logger, checkpointing and progress bar off;
timed by a callback from batch start to batch end) against a plain PyTorch loop over the same
MLP, sizes and batch, with ``nn.Dropout`` or QSD; and the same for the LSTM language model.

Table 4: memory of one training step (plain loop, Adam) of a CNN (``ConvNet``, 3 blocks of
64/128/256 channels, CIFAR-sized inputs, batch 128, rate 0.5 at every site) and of the LSTM
LM (as in table 3) with QSD, ``nn.Dropout`` and no regulariser: (a) bytes autograd keeps for
backward over the whole forward (distinct storages seen by ``saved_tensors_hooks``,
parameters excluded: exact, noise-free); (b) peak memory of the step above the memory before
it: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; on CPU,
where torch has no allocator statistics, each case runs in a fresh process where glibc mmaps
every block over 128 KiB and unmaps it when freed (``mallopt``, fixed thresholds), so the
resident set follows live memory: a warm-up step at batch 2 (optimiser state, kernel
loading), then the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``)
is read after the full step, minus the resident set before it (page granularity; small
blocks kept by the heap add a little noise).

The CPU allocator: glibc returns freed memory to the system (trim, munmap) depending on the
allocation history, so the same op pays thousands of page faults in one run and none in the
next; by default this script turns that off (``mallopt``: no trimming, no mmap for large
blocks, as ``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_`` would) so that the ratios
measure the kernels; ``--glibc-default-malloc`` keeps glibc's behaviour.

    python scripts/benchmark.py                  # CPU (and CUDA when present)
    python scripts/benchmark.py --quick          # fewer repeats and steps
    python scripts/benchmark.py --threads 1 2    # tables 1-2 at 1 and at 2 threads
    python scripts/benchmark.py --device cuda --repeats 200
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Callable

import logging

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qsd_lightning import regularisers as R  # noqa: E402
from qsd_lightning.regularisers import _ckernel, _triton, backend, fast  # noqa: E402

SHAPES = {
    "MLP [256, 1024]": (256, 1024),
    "MLP [512, 4096]": (512, 4096),
    "conv [64, 64, 32, 32]": (64, 64, 32, 32),
    "sequence [35, 20, 650]": (35, 20, 650),
}


# --------------------------------------------------------------------------- helpers
def keep_freed_memory() -> bool:
    """glibc: never trim the heap nor mmap large blocks (stable page-fault-free timings)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _kept_bytes(run: Callable[[], object], excluded: set[int]) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``run()`` computes,
    those whose data pointer is in ``excluded`` left out."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in excluded:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(storages.values())


def saved_bytes(fn: Callable[[Tensor], Tensor], x: Tensor) -> int:
    """Bytes autograd keeps for backward of ``fn(x)``: distinct storages, x's own excluded."""
    return _kept_bytes(lambda: fn(x), {x.untyped_storage().data_ptr()})


@contextlib.contextmanager
def switched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def with_switch(fn, module, name, value):
    def run(x):
        with switched(module, name, value):
            return fn(x)

    return run


def candidates(shape: tuple[int, ...], device: torch.device) -> dict[str, Callable[[Tensor], Tensor] | str]:
    """name -> activation function (or a string saying why it does not apply)."""
    out: dict[str, Callable | str] = {
        "nn.Dropout (baseline)": nn.Dropout(0.5).to(device).train(),
        "floor: x * 2.0": lambda x: x * 2.0,
    }
    probe = torch.zeros((2,) + tuple(shape[1:]), device=device)
    for name in R.available():
        module = R.build(name, rate=0.5).to(device).train()
        try:
            with torch.no_grad():
                module(probe)
        except Exception as err:  # e.g. spatial_dropout on a 2-d tensor
            out[name] = f"n/a ({str(err).splitlines()[0][:60]})"
            continue
        out[name] = module
    if len(shape) >= 3:
        out["qsd, units = last dim (unit_dims=(-1,))"] = R.QSD(rate=0.5, unit_dims=(-1,)).to(device).train()
    unit_shape = (1,) + tuple(shape[1:])
    out["qsd, mask not written (fast.quantal_release(need_mask=False))"] = (
        lambda x: fast.quantal_release(x, 0.5, 16.0, "coupled", unit_shape, tuple(x.shape), need_mask=False)[0])
    qsd = R.build("qsd", rate=0.5).to(device).train()
    out["qsd, reference path"] = with_switch(qsd, fast, "ENABLED", False)
    if device.type == "cpu" and _ckernel.available():
        out["qsd, eager fast path (no C kernel)"] = with_switch(qsd, _ckernel, "ENABLED", False)
    if device.type == "cuda" and _triton.available():
        out["qsd, eager fast path (no Triton)"] = with_switch(qsd, _triton, "ENABLED", False)
    return out


def time_forward_backward(fns: dict[str, Callable], x: Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per forward + backward of each function, round-robin over the functions."""
    g = torch.randn_like(x)
    device = x.device
    times: dict[str, list[float]] = {name: [] for name in fns}

    def once(fn) -> float:
        sync(device)
        t0 = time.perf_counter()
        y = fn(x)
        y.backward(g)
        sync(device)
        dt = time.perf_counter() - t0
        x.grad = None
        return dt

    for fn in fns.values():
        for _ in range(warmup):
            once(fn)
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(once(fn))
    return times


def regulariser_table(device: torch.device, repeats: int, warmup: int, shapes: dict[str, tuple[int, ...]]) -> str:
    rows = []
    for label, shape in shapes.items():
        torch.manual_seed(0)
        x = torch.randn(shape, device=device).requires_grad_()
        fns = candidates(shape, device)
        runnable = {k: v for k, v in fns.items() if callable(v)}
        times = time_forward_backward(runnable, x, repeats, warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        base, floor = med["nn.Dropout (baseline)"], med["floor: x * 2.0"]
        for name, fn in fns.items():
            if not callable(fn):
                rows.append(f"| {label} | {name} | {fn} | | | |")
                continue
            per_elem = saved_bytes(fn, x) / x.numel()
            x.grad = None
            rows.append(
                f"| {label} | {name} | {med[name] * 1e3:.3f} | {med[name] / base:.2f} | {med[name] / floor:.2f} | {per_elem:.3f} |"
            )
    head = [
        "| shape | regulariser (rate 0.5) | median fwd+bwd (ms) | x nn.Dropout | x floor | saved B/elem |",
        "|---|---|---:|---:|---:|---:|",
    ]
    return "\n".join(head + rows)


# --------------------------------------------------------------------------- where the time goes
VARIANTS = {0: "C kernel, fwd (= bwd: mask drawn again)", 1: "  without random bits (constant)",
            2: "  without the tie pass"}


def _variant_libraries(workdir: str) -> dict[int, ctypes.CDLL]:
    """qsd_kernels.c compiled with each -DQSD_VARIANT (the kernel's own flags)."""
    cc = _ckernel._find_compiler()
    libs = {}
    for v in VARIANTS:
        out = os.path.join(workdir, f"variant{v}.so")
        for extra in _ckernel._EXTRA:
            cmd = [cc, *_ckernel._FLAGS, f"-DQSD_VARIANT={v}", str(_ckernel.SOURCE_PATH), "-lm", "-o", out, *extra]
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                break
        else:
            raise RuntimeError("cannot compile the kernel variants")
        lib = ctypes.CDLL(out)
        i64, u64, ptr, cint = ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int
        lib.qsd_fwd_f32.argtypes = [ptr, ptr, ptr, i64, i64, ptr, i64, ptr, i64, u64, u64, cint]
        lib.qsd_fwd_f32.restype = ctypes.c_int
        lib.qsd_scale_f32.argtypes = [ptr, ptr, ptr, i64, i64, ptr, i64, cint]
        lib.qsd_scale_f32.restype = None
        libs[v] = lib
    return libs


def kernel_parts_table(repeats: int, shapes: dict[str, tuple[int, ...]]) -> str:
    """Table 2: the compiled kernel and its parts, float32, as multiples of ``torch.mul`` (out=)."""
    workdir = tempfile.mkdtemp(prefix="qsd_variants_")
    try:
        libs = _variant_libraries(workdir)
        rows = []
        for label, shape in shapes.items():
            n = 1
            for d in shape:
                n *= d
            units = n // shape[0]
            torch.manual_seed(0)
            x, y = torch.randn(n), torch.empty(n)
            mask = torch.rand(n) < 0.5
            thr = fast.thresholds(torch.rand(units) * 0.5 + 0.25)
            c = torch.rand(units) + 0.5
            threads = _ckernel._threads(n)
            fns: dict[str, Callable[[], object]] = {"floor: torch.mul(x, 2.0, out=y)": lambda: torch.mul(x, 2.0, out=y)}
            for v, lib in libs.items():
                fns[VARIANTS[v]] = (lambda lib=lib: lib.qsd_fwd_f32(
                    x.data_ptr(), y.data_ptr(), None, n, units, thr.data_ptr(), 1, c.data_ptr(), 1, 1, 2, threads))
            fns["  writing the mask too (forward for statistics)"] = lambda: libs[0].qsd_fwd_f32(
                x.data_ptr(), y.data_ptr(), mask.data_ptr(), n, units, thr.data_ptr(), 1, c.data_ptr(), 1, 1, 2, threads)
            fns["scale by a saved 1-byte mask (qsd_scale)"] = lambda: libs[0].qsd_scale_f32(
                x.data_ptr(), mask.data_ptr(), y.data_ptr(), n, units, c.data_ptr(), 1, threads)
            fns[f"Gamma draws of one step ({units} units, x2)"] = lambda: _ckernel.draw((units,), 0.5, 16.0, True, (1, 2))
            times: dict[str, list[float]] = {k: [] for k in fns}
            for f in fns.values():
                f()
            for _ in range(repeats):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            floor = med["floor: torch.mul(x, 2.0, out=y)"]
            rows += [f"| {label} | {k} | {m * 1e3:.3f} | {m / floor:.2f} |" for k, m in med.items()]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    head = ["| shape | part (float32, one pass over the tensor) | median (ms) | x floor |", "|---|---|---:|---:|"]
    return "\n".join(head + rows)


# --------------------------------------------------------------------------- memory of a step
MEMORY_MODELS = ("CNN", "LSTM LM")
MEMORY_REGULARISERS = ("QSD", "nn.Dropout", "none")


def _factory(reg: str):
    return {"QSD": lambda r: R.QSD(rate=r), "nn.Dropout": lambda r: nn.Dropout(r),
            "none": lambda r: nn.Identity()}[reg]


def _memory_case(model: str, reg: str, batch_scale: float, device: torch.device):
    """(net, step(batch) -> None, full batch, tiny batch) for table 4."""
    factory = _factory(reg)
    if model == "CNN":
        from qsd_lightning.models.cnn import ConvNet

        net = ConvNet(num_classes=10, channels=(64, 128, 256), hidden_sizes=(512,), regulariser=factory,
                      conv_rate=0.5, classifier_rate=0.5)

        def batch(b):
            return torch.randn(b, 3, 32, 32, device=device), torch.randint(0, 10, (b,), device=device)

        def loss(b):
            return nn.functional.cross_entropy(net(b[0]), b[1])

        full, tiny = 128, 2
    else:
        from qsd_lightning.models.language_model import LSTMLanguageModel

        vocab = 10_000
        net = LSTMLanguageModel(vocab, 650, 650, 2, embedding_regulariser=factory, embedding_rate=0.5,
                                hidden_regulariser=factory, hidden_rate=0.5, output_regulariser=factory, output_rate=0.5)

        def batch(b):
            t = torch.randint(0, vocab, (b, 35), device=device)
            return t, torch.roll(t, -1, dims=1)

        def loss(b):
            logits, _ = net(b[0])
            return nn.functional.cross_entropy(logits.flatten(0, 1), b[1].flatten())

        full, tiny = 20, 2
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters())

    def step(b):
        opt.zero_grad(set_to_none=True)
        loss(b).backward()
        opt.step()

    return net, step, loss, batch(int(full * batch_scale)), batch(tiny)


def _saved_for_backward(net: nn.Module, loss, b) -> int:
    return _kept_bytes(lambda: loss(b), {p.untyped_storage().data_ptr() for p in net.parameters()})


def _status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak resident set of this process) from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_probe(model: str, reg: str) -> dict:
    """One CPU case of table 4, in this (fresh) process: glibc mmaps every block over 128 KiB
    and unmaps it when freed (fixed thresholds, no dynamic raise), so the resident set follows
    live memory."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass
    torch.manual_seed(0)
    net, step, loss, full, tiny = _memory_case(model, reg, 1.0, torch.device("cpu"))
    step(tiny)  # optimiser state, gradients, kernel loading
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak (VmHWM) to the current RSS
        f.write("5")
    before = _status_bytes("VmRSS")
    step(full)
    peak = _status_bytes("VmHWM")
    return {"saved": _saved_for_backward(net, loss, full), "peak": peak - before}


def memory_table(device: torch.device, threads: int) -> str:
    rows = []
    for model in MEMORY_MODELS:
        for reg in MEMORY_REGULARISERS:
            if device.type == "cuda":
                torch.manual_seed(0)
                net, step, loss, full, tiny = _memory_case(model, reg, 1.0, device)
                step(tiny)
                saved = _saved_for_backward(net, loss, full)
                torch.cuda.synchronize(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                step(full)
                torch.cuda.synchronize(device)
                result = {"saved": saved, "peak": torch.cuda.max_memory_allocated(device) - before}
                del net, step, loss, full, tiny
            elif sys.platform.startswith("linux"):
                cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", model, reg, "--threads", str(threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                if proc.returncode:
                    rows.append(f"| {model} | {reg} | failed: {proc.stderr.strip().splitlines()[-1][:80]} | |")
                    continue
                result = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                rows.append(f"| {model} | {reg} | n/a (peak needs Linux /proc) | |")
                continue
            rows.append(f"| {model} | {reg} | {result['saved'] / 2**20:.1f} | {result['peak'] / 2**20:.1f} |")
    head = [f"| model (batch: CNN 128, LM 20x35) | regulariser (rate 0.5) | kept for backward (MiB) | peak of the step (MiB, {device.type}) |",
            "|---|---|---:|---:|"]
    return "\n".join(head + rows)


# --------------------------------------------------------------------------- training steps
class StepTimer:
    """Lightning callback: seconds from train batch start to batch end, after ``skip`` steps."""

    def __init__(self, skip: int) -> None:
        import lightning as L

        class _CB(L.Callback):
            def __init__(cb) -> None:
                cb.times: list[float] = []
                cb.t0 = 0.0

            def on_train_batch_start(cb, trainer, pl_module, batch, batch_idx) -> None:
                sync(pl_module.device)
                cb.t0 = time.perf_counter()

            def on_train_batch_end(cb, trainer, pl_module, outputs, batch, batch_idx) -> None:
                sync(pl_module.device)
                if batch_idx >= skip:
                    cb.times.append(time.perf_counter() - cb.t0)

        self.callback = _CB()

    @property
    def times(self) -> list[float]:
        return self.callback.times


def lightning_steps(module, loader, device: torch.device, steps: int, warmup: int) -> list[float]:
    import lightning as L

    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=steps + warmup,
        limit_train_batches=steps + warmup,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer.callback],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    return timer.times


def plain_steps(net: nn.Module, loader, device: torch.device, steps: int, warmup: int, loss_fn) -> list[float]:
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters())
    times = []
    it = iter(loader)
    for i in range(steps + warmup):
        batch = next(it)
        batch = [b.to(device) for b in batch]
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net, batch)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def mlp_rows(device: torch.device, steps: int, warmup: int) -> list[str]:
    from torch.utils.data import DataLoader, TensorDataset

    from qsd_lightning.models import MLP
    from qsd_lightning.tasks import MLPClassifier

    in_features, hidden, classes, batch = 784, [1024, 1024], 10, 256
    n = batch * (steps + warmup)
    data = TensorDataset(torch.randn(n, in_features), torch.randint(0, classes, (n,)))
    loader = DataLoader(data, batch_size=batch, shuffle=False)
    ce = nn.functional.cross_entropy
    label = f"MLP {in_features}-{hidden[0]}-{hidden[1]}-{classes}, batch {batch}"
    rows = []

    def plain(factory):
        torch.manual_seed(0)
        net = MLP(in_features, classes, hidden, regulariser=factory, hidden_rate=0.5, output_rate=0.5)
        return plain_steps(net, loader, device, steps, warmup, lambda m, b: ce(m(b[0]), b[1]))

    def lightning(reg):
        torch.manual_seed(0)
        module = MLPClassifier(in_features, classes, hidden, regulariser=reg)
        return lightning_steps(module, loader, device, steps, warmup)

    base = plain(lambda r: nn.Dropout(r))
    results = {
        "plain PyTorch loop, nn.Dropout (baseline)": base,
        "plain PyTorch loop, QSD": plain(lambda r: R.QSD(rate=r)),
        "Lightning MLPClassifier, dropout (registry)": lightning(R.Dropout(rate=0.5)),
        "Lightning MLPClassifier, QSD": lightning(R.QSD(rate=0.5)),
    }
    b = statistics.median(base)
    for name, ts in results.items():
        m = statistics.median(ts)
        rows.append(f"| {label} | {name} | {m * 1e3:.2f} | {m / b:.2f} | {len(ts)} |")
    return rows


def lm_rows(device: torch.device, steps: int, warmup: int) -> list[str]:
    try:
        from qsd_lightning.models.language_model import LSTMLanguageModel
        from qsd_lightning.tasks import LanguageModel
    except ImportError as err:
        return [f"| LSTM LM | not available ({err}) | | | |"]
    from torch.utils.data import DataLoader, TensorDataset

    vocab, size, layers, batch, bptt = 10_000, 650, 2, 20, 35
    n = batch * (steps + warmup)
    tokens = torch.randint(0, vocab, (n, bptt))
    data = TensorDataset(tokens, torch.roll(tokens, -1, dims=1))
    loader = DataLoader(data, batch_size=batch, shuffle=False)
    label = f"LSTM LM {layers}x{size}, vocab {vocab}, batch {batch}x{bptt}"

    def lm_loss(net, b):
        logits, _ = net(b[0])
        return nn.functional.cross_entropy(logits.flatten(0, 1), b[1].flatten())

    def plain(factory):
        torch.manual_seed(0)
        net = LSTMLanguageModel(vocab, size, size, layers, embedding_regulariser=factory, embedding_rate=0.5,
                                hidden_regulariser=factory, hidden_rate=0.5, output_regulariser=factory, output_rate=0.5)
        return plain_steps(net, loader, device, steps, warmup, lm_loss)

    def lightning(reg):
        torch.manual_seed(0)
        module = LanguageModel(vocab_size=vocab, embedding_size=size, hidden_size=size, num_layers=layers,
                               regulariser=reg, optimizer=torch.optim.Adam)
        return lightning_steps(module, loader, device, steps, warmup)

    base = plain(lambda r: nn.Dropout(r))
    results = {
        "plain PyTorch loop, nn.Dropout (baseline)": base,
        "plain PyTorch loop, QSD": plain(lambda r: R.QSD(rate=r)),
        "Lightning LanguageModel, QSD": lightning(R.QSD(rate=0.5)),
    }
    b = statistics.median(base)
    return [
        f"| {label} | {name} | {statistics.median(ts) * 1e3:.2f} | {statistics.median(ts) / b:.2f} | {len(ts)} |"
        for name, ts in results.items()
    ]


def training_table(device: torch.device, steps: int, warmup: int, lm_steps: int) -> str:
    head = [
        "| model | loop | median step (ms) | x baseline | steps timed |",
        "|---|---|---:|---:|---:|",
    ]
    rows = mlp_rows(device, steps, warmup)
    if lm_steps > 0:
        rows += lm_rows(device, lm_steps, 2)
    return "\n".join(head + rows)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "all"], default="auto",
                        help="auto: CPU, plus CUDA when present (default); all: same")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per candidate (default 50, quick 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="timed MLP training steps (default 50, quick 10)")
    parser.add_argument("--lm-steps", type=int, default=None, help="timed LSTM LM steps (default 10, quick 3; 0: skip)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch.set_num_threads; several (e.g. 1 2): tables 1-2 for each (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    parser.add_argument("--skip-training", action="store_true", help="skip the training-step table (3)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory table (4)")
    parser.add_argument("--glibc-default-malloc", action="store_true",
                        help="keep glibc's trimming of freed memory (page faults vary from run to run)")
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODEL", "REGULARISER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = args.threads or [torch.get_num_threads()]
    if args.memory_probe:  # one case of table 4 in a fresh process (glibc's default allocator)
        torch.set_num_threads(threads[0])
        warnings.filterwarnings("ignore")
        print(json.dumps(memory_probe(*args.memory_probe)))
        return
    malloc_note = "glibc default" if args.glibc_default_malloc else (
        "no trim / no mmap (mallopt)" if keep_freed_memory() else "default (mallopt unavailable)")

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    repeats = args.repeats or (10 if args.quick else 50)
    steps = args.steps or (10 if args.quick else 50)
    lm_steps = args.lm_steps if args.lm_steps is not None else (3 if args.quick else 10)
    torch.set_num_threads(threads[0])
    devices = [torch.device("cpu")]
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device")
        devices = [torch.device("cuda")]
    elif args.device in ("auto", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    print("# QSD vs dropout benchmark\n")
    print(f"- command: `python {' '.join(sys.argv)}`")
    print(f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, threads {threads}; load average at start {load}")
    print(f"- fast-path backends: {backend.describe()}")
    print(f"- fused CPU kernel: {'yes' if _ckernel.available() else 'no (eager fallback)'}; "
          f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
          + (f"; Triton kernels: {'yes' if _triton.available() else 'no'}" if torch.cuda.is_available() else ""))
    print(f"- repeats {repeats} (median), warm-up {args.warmup}, training steps {steps} (LM {lm_steps}); "
          f"CPU allocator: {malloc_note}\n")
    for device in devices:
        for n in threads if device.type == "cpu" else threads[:1]:
            torch.set_num_threads(n)
            note = f", {n} thread{'s' if n > 1 else ''}" if device.type == "cpu" else ""
            print(f"## 1. Regularisers, forward + backward, {device.type}{note}\n")
            print(regulariser_table(device, repeats, args.warmup, SHAPES))
            print()
            if device.type == "cpu" and _ckernel.available():
                print(f"## 2. Where the time goes: the C kernel's parts{note}\n")
                print(kernel_parts_table(max(repeats, 20), SHAPES))
                print()
        torch.set_num_threads(threads[0])
        if not args.skip_training:
            print(f"## 3. One training step, {device.type}\n")
            print(training_table(device, steps, args.warmup, lm_steps))
            print()
        if not args.skip_memory:
            print(f"## 4. Memory of one training step, {device.type}\n")
            print(memory_table(device, threads[0]))
            print()
    if hasattr(os, "getloadavg"):
        print(f"- load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
