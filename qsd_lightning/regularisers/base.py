"""Common interface of every registered regulariser."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .functional import QuantalDraw, check_rate

__all__ = ["Regulariser", "ReleaseStatistics"]

#: instance attribute holding the arguments the constructor was called with (by name)
_ARGUMENTS = "_init_arguments"


@functools.lru_cache(maxsize=None)
def _signature(init: Callable) -> inspect.Signature:
    """The constructor's signature without ``self``."""
    sig = inspect.signature(init)  # follows __wrapped__ to the original
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def _recording(init: Callable) -> Callable:
    """``init`` wrapped so that the outermost constructor call of an instance records its
    arguments (bound to parameter names) before the ``super().__init__`` chain runs."""

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        outermost = _ARGUMENTS not in self.__dict__
        if outermost:  # claim it first: the inner super().__init__ calls must not record
            self.__dict__[_ARGUMENTS] = None
        init(self, *args, **kwargs)
        if outermost:
            self.__dict__[_ARGUMENTS] = dict(_signature(init).bind(*args, **kwargs).arguments)

    __init__._qsd_records_arguments = True
    return __init__


def _concrete(cls: type) -> type:
    """``cls`` itself, or for a jsonargparse lazy instance's class the class it stands for."""
    mro = cls.__mro__  # the lazy base class defines jsonargparse's public lazy_get_init_data
    lazy = [i for i, c in enumerate(mro) if "lazy_get_init_data" in vars(c)]
    return mro[lazy[0] + 1] if lazy else cls


@dataclass
class ReleaseStatistics:
    """What one training step of a regulariser released (read by the analysis callbacks).

    ``p`` and ``c`` are the per-unit release probabilities and scales (float32, flattened;
    one element when shared by all units); ``gamma`` is the precision used (None: dropout).
    """

    gamma: float | None
    p: Tensor
    c: Tensor
    release_fraction: float
    multiplier_mean: float
    multiplier_var: float

    @classmethod
    def from_draw(cls, draw: QuantalDraw, mask: Tensor, gamma: float | None) -> "ReleaseStatistics":
        multiplier = (mask * draw.c).float()
        return cls(
            gamma=gamma,
            p=draw.p.detach().flatten().float(),
            c=draw.c.detach().flatten().float(),
            release_fraction=float(mask.float().mean()),
            multiplier_mean=float(multiplier.mean()),
            multiplier_var=float(multiplier.var(unbiased=False)),
        )


class Regulariser(nn.Module):
    """Base class: a ``rate`` in [0, 1), identity in eval mode, nothing trainable.

    A configured instance serves as a template: ``template.clone(rate=0.3)`` builds a fresh
    module for another site from the arguments its constructor was actually called with
    (:meth:`init_arguments`, recorded for every subclass without any code of its own), so no
    argument is lost. :meth:`config` is what the repr shows (by default: ``rate`` and every
    other argument given); subclasses may override it to show normalised values. Setting ``collect_statistics = True`` makes the next training forward store
    a :class:`ReleaseStatistics` in ``last_statistics`` (off by default: it costs a reduction).
    """

    registry_name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_qsd_records_arguments", False):
            cls.__init__ = _recording(init)

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        self.rate = check_rate(rate)
        self.collect_statistics = False
        self.last_statistics: ReleaseStatistics | None = None

    def init_arguments(self) -> dict[str, Any]:
        """The arguments the constructor was called with, by parameter name (defaults not
        given are left out; ``*args`` / ``**kwargs`` under their own names). ``{}`` for an
        instance that was never constructed (unpickled from an old version)."""
        return dict(self.__dict__.get(_ARGUMENTS) or {})

    def config(self) -> dict[str, Any]:
        """The settings shown by ``repr``: ``rate`` and every other constructor argument given."""
        cfg: dict[str, Any] = {"rate": self.rate}
        sig = _signature(_concrete(type(self)).__init__)
        for name, value in self.init_arguments().items():
            kind = sig.parameters[name].kind if name in sig.parameters else None
            if kind is inspect.Parameter.VAR_KEYWORD:
                cfg.update({k: v for k, v in value.items() if k not in cfg})
            elif kind is not inspect.Parameter.VAR_POSITIONAL and name not in cfg:
                cfg[name] = value
        return cfg

    # read like torch dropout by library code (timm / Hugging Face pass ``.p`` to fused attention)
    @property
    def p(self) -> float:
        """The rate, under torch dropout's name (read-only)."""
        return self.rate

    @property
    def inplace(self) -> bool:
        """Always False: regularisers return a new tensor (read-only, as on torch dropout)."""
        return False

    def clone(self, **overrides: Any) -> "Regulariser":
        """A fresh, untrained module of the same class, built from the arguments this one's
        constructor was given (:meth:`init_arguments`) with ``overrides`` replacing some."""
        cls = _concrete(type(self))
        if self.__dict__.get(_ARGUMENTS) is None:  # never constructed here: best effort
            return cls(**{**self.config(), **overrides})
        sig = _signature(cls.__init__)
        bound = inspect.BoundArguments(sig, dict(self.__dict__[_ARGUMENTS]))
        var_keyword = next((p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD), None)
        unknown: dict[str, Any] = {}
        for name, value in overrides.items():
            param = sig.parameters.get(name)
            if param is not None and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                bound.arguments[name] = value
            elif var_keyword is not None:
                bound.arguments[var_keyword] = {**bound.arguments.get(var_keyword, {}), name: value}
            else:  # let the constructor refuse it with its own TypeError
                unknown[name] = value
        return cls(*bound.args, **bound.kwargs, **unknown)

    def _get_name(self) -> str:  # show the public class, not a registry alias
        return type(self).__mro__[1].__name__ if getattr(type(self), "_is_alias", False) else type(self).__name__

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def _record(self, draw: QuantalDraw, mask: Tensor, gamma: float | None) -> None:
        if self.collect_statistics:
            self.last_statistics = ReleaseStatistics.from_draw(draw, mask, gamma)


# a subclass without its own __init__ runs this one, which must record as well
Regulariser.__init__ = _recording(Regulariser.__init__)  # type: ignore[method-assign]

