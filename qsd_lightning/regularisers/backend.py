"""Which fast-path backend is active, for the record of every run.

>>> from qsd_lightning.regularisers import backend
>>> sorted(backend.describe())  # doctest: +NORMALIZE_WHITESPACE
['compiler', 'cpu', 'cpu_fallback', 'cuda', 'flags', 'lightning', 'stream', 'torch', 'triton']

:func:`describe` is written into the W&B run config (:mod:`qsd_lightning.tracking`) and into
every checkpoint (``checkpoint["qsd_backend"]``, :class:`~qsd_lightning.callbacks.RNGStateCheckpoint`).
On CPU the compiled kernel and the eager torch backend draw the same streams (``stream``),
so their runs are comparable bit for bit; the reference path (``QSD_FAST=0``) and the CUDA
backends draw other numbers.
"""

from __future__ import annotations

from importlib import metadata

import torch

from . import _ckernel, _env, _triton, fast
from ._env import Flags, flags, read_flags
from ._stream import STREAM

__all__ = ["Flags", "flags", "reload_flags", "describe"]


def reload_flags() -> Flags:
    """Reads ``QSD_FAST`` / ``QSD_CKERNEL`` / ``QSD_TRITON`` again and applies them (tests)."""
    new = read_flags()
    _env.set_flags(new)
    fast.ENABLED, _ckernel.ENABLED, _triton.ENABLED = new.fast, new.ckernel, new.triton
    return new


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _current() -> Flags:
    """The switches in effect (the module attributes, which tests and scripts may set)."""
    return Flags(fast=bool(fast.ENABLED), ckernel=bool(_ckernel.ENABLED), triton=bool(_triton.ENABLED))


def describe() -> dict[str, str | None]:
    """The active backends and library versions: plain strings (or None), for run records.

    ``cpu``: ``"c-kernel"``, ``"torch"`` (eager backend) or ``"reference"`` (``QSD_FAST=0``);
    ``cuda``: ``"triton"``, ``"torch"``, ``"reference"``, or None without a CUDA device;
    ``cpu_fallback``: why the C kernel is not used when it was enabled (None otherwise);
    ``compiler``: the C compiler of the kernel and its version (None when not in use).
    Loads the kernel if it was not yet (compiling it on first use).
    """
    now = _current()
    if not now.fast:
        cpu = "reference"
    else:
        cpu = "c-kernel" if _ckernel.available() else "torch"
    cuda = None
    if torch.cuda.is_available():
        cuda = "reference" if not now.fast else ("triton" if _triton.available() else "torch")
    if cpu == "torch" and now.ckernel:
        cpu_fallback = _ckernel.failure()
    elif cpu == "torch":
        cpu_fallback = "QSD_CKERNEL=0"
    else:
        cpu_fallback = None
    return {
        "cpu": cpu,
        "cuda": cuda,
        "stream": STREAM if now.fast else "torch",
        "cpu_fallback": cpu_fallback,
        "compiler": _ckernel.compiler() if cpu == "c-kernel" else None,
        "flags": now.env(),
        "torch": str(torch.__version__),
        "lightning": _version("lightning"),
        "triton": _version("triton"),
    }
