"""The fast path's switches, read from the environment in one place.

``QSD_FAST=0`` makes the modules use the reference path (:mod:`.functional`); ``QSD_CKERNEL=0``
turns off the compiled CPU kernel (:mod:`._ckernel`), ``QSD_TRITON=0`` the CUDA kernels
(:mod:`._triton`). Values ``0``, ``false``, ``no`` and ``off`` (any case) mean off. They are
read once, at import; :func:`.backend.reload_flags` reads them again (for tests).

This is the bottom layer of the fast path: ``_env`` -> ``_layout`` / ``_stream`` (shared
helpers) -> ``_eager`` / ``_ckernel`` / ``_triton`` (backends) -> ``fast`` (dispatch) ->
``backend`` (what is active, for the run record). Imports only go down.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

__all__ = ["Flags", "BackendWarning", "read_flags", "flags", "set_flags", "warn_fallback"]

_OFF = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Flags:
    """Which parts of the fast path are enabled (all by default)."""

    fast: bool = True
    ckernel: bool = True
    triton: bool = True

    def env(self) -> str:
        """The flags as environment settings, e.g. ``QSD_FAST=1 QSD_CKERNEL=0 QSD_TRITON=1``."""
        return " ".join(f"{name}={int(on)}" for name, on in
                        (("QSD_FAST", self.fast), ("QSD_CKERNEL", self.ckernel), ("QSD_TRITON", self.triton)))


def _on(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in _OFF


def read_flags() -> Flags:
    """The flags as the environment sets them now."""
    return Flags(fast=_on("QSD_FAST"), ckernel=_on("QSD_CKERNEL"), triton=_on("QSD_TRITON"))


_flags = read_flags()


def flags() -> Flags:
    """The flags read at import (or by the last :func:`set_flags`)."""
    return _flags


def set_flags(new: Flags) -> None:
    global _flags
    _flags = new


class BackendWarning(UserWarning):
    """A fast-path backend is unavailable and a slower one is used instead."""


_warned: set[str] = set()


def warn_fallback(backend: str, reason: str, instead: str) -> None:
    """One warning per process and backend: ``backend`` is unavailable (``reason``)."""
    if backend in _warned:
        return
    _warned.add(backend)
    warnings.warn(f"qsd_lightning: {backend} unavailable ({reason}); using {instead}", BackendWarning, stacklevel=4)
