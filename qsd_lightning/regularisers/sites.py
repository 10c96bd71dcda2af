"""A configured regulariser becomes one fresh module per site: the one place that does it.

Every task (MLP, CNN, WRN, LSTM and Transformer LMs, sentiment), every network it builds and
:func:`~qsd_lightning.regularisers.replace_dropout` get their per-site modules here:

>>> from qsd_lightning.regularisers.sites import Sites
>>> sites = Sites("qsd", locked_dims=(2, 3))   # registry name, instance, class path or lazy instance
>>> sites(0.3).locked_dims                       # one fresh module for a site at rate 0.3
(2, 3)

:func:`resolve` turns what a user configured (a registry name, a class path, a
``{"class_path", "init_args"}`` mapping, a class, an instance or a jsonargparse
``lazy_instance`` default) into a plain instance, the *template*. :class:`Sites` holds one
template and a site layout (``unit_dims`` / ``locked_dims`` to give each clone) and is the
``rate -> nn.Module`` factory the networks take. What the regulariser's constructor accepts is
read here once (:func:`accepts`); a layout it cannot take fails when the :class:`Sites` is made.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from torch import nn

from ..errors import ConfigError
from .registry import build, find, name_of

__all__ = ["RegulariserFactory", "RegulariserSpec", "Sites", "accepts", "is_lazy", "no_regulariser", "resolve", "site_module"]

#: what a task or ``replace_dropout`` accepts as "the regulariser"
RegulariserSpec = Union[str, Mapping[str, Any], type, nn.Module]
#: what the networks take for their sites: ``rate -> module`` (a :class:`Sites` is one)
RegulariserFactory = Callable[[float], nn.Module]


def no_regulariser(rate: float) -> nn.Module:
    """The networks' default factory: no regulariser at any site."""
    return nn.Identity()


def site_module(factory: RegulariserFactory, rate: float) -> nn.Module:
    """The module of one site: ``factory(rate)``, or ``nn.Identity`` at rate 0."""
    return factory(rate) if rate > 0 else nn.Identity()


def is_lazy(obj: Any) -> bool:
    """Whether ``obj`` is a jsonargparse ``lazy_instance`` (recognised by its public
    ``lazy_get_init_data`` method, the serialisation API jsonargparse documents for them)."""
    return callable(getattr(type(obj), "lazy_get_init_data", None))


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"regulariser {class_path!r}: no such class ({err})") from err


def resolve(spec: RegulariserSpec, **kwargs: Any) -> nn.Module:
    """A plain module for ``spec``: a registry name (``"qsd"``), a class path
    (``"qsd_lightning.regularisers.QSD"``), a ``{"class_path": ..., "init_args": {...}}``
    mapping or a class are built with ``kwargs``; a jsonargparse lazy instance is built from the
    arguments it stands for; any other ``nn.Module`` is returned as it is (``kwargs`` must be
    empty then). Unknown names raise the registry's ``ValueError`` listing the choices."""
    if isinstance(spec, str):
        if find(spec) is None and "." in spec:
            return _import(spec)(**kwargs)
        return build(spec, **kwargs)  # unknown: the registry's error, with suggestions
    if isinstance(spec, Mapping):
        init_args = dict(spec.get("init_args") or {})
        return resolve(spec["class_path"], **{**init_args, **kwargs})
    if isinstance(spec, type):
        return spec(**kwargs)
    if is_lazy(spec):
        data = spec.lazy_get_init_data()  # Namespace(class_path=..., init_args=...)
        init_args = data.get("init_args")
        init_args = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
        return resolve(data["class_path"], **{**init_args, **kwargs})
    if isinstance(spec, nn.Module):
        if kwargs:
            raise TypeError(f"resolve: an instance takes no arguments, got {sorted(kwargs)}")
        return spec
    raise ConfigError(
        f"a regulariser must be a registry name, a class path or a module, got {type(spec).__name__} {spec!r}"
    )


def accepts(template: nn.Module, argument: str) -> bool:
    """Whether the constructor of ``template``'s class has a parameter ``argument``."""
    return argument in inspect.signature(type(template)).parameters


def _locked(module: nn.Module) -> tuple:
    return tuple(getattr(module, "locked_dims", None) or ())


def _lockers() -> str:
    from .registry import available, get

    return ", ".join(n for n in available() if "locked_dims" in inspect.signature(get(n)).parameters)


class Sites:
    """``rate -> nn.Module``: a fresh copy of one configured regulariser for each site.

    Args:
        regulariser: anything :func:`resolve` takes; resolved once into ``template``.
        init_args: constructor arguments for a ``regulariser`` given by name or class.
        unit_dims: the dims that index a site's units (``(-1,)``: the features), given to each
            clone whose regulariser takes ``unit_dims`` and does not set its own.
        locked_dims: the dims the mask is shared along (``(2, 3)``: one entry per channel of a
            feature map; ``(1,)``: one per sequence over time). ``()`` unlocks a locked
            template (a regulariser locked by construction becomes :class:`Dropout` there).
        lock_required: a regulariser that cannot take ``locked_dims`` (and is not already locked
            along them, nor :class:`NoRegulariser`) is a ``ConfigError`` naming this setting
            (e.g. ``"--model.locked=true"``); ``None``: such regularisers are used unlocked.
        hint: appended to that error (what to change instead).

    ``rate`` is the template's own rate, the default of sites whose rate is left unset
    (:meth:`rate_or_default`).
    """

    def __init__(
        self,
        regulariser: RegulariserSpec,
        *,
        init_args: Optional[Mapping[str, Any]] = None,
        unit_dims: Optional[Sequence[int]] = None,
        locked_dims: Optional[Sequence[int]] = None,
        lock_required: Optional[str] = None,
        hint: str = "",
    ) -> None:
        from .quantal import NoRegulariser

        self.template = template = resolve(regulariser, **dict(init_args or {}))
        self._spec = (regulariser, dict(init_args or {}))
        self.rate = float(getattr(template, "rate", 0.0))
        self.overrides: dict[str, Any] = {}
        self._unlock_to_dropout = False
        if unit_dims is not None and accepts(template, "unit_dims") and getattr(template, "unit_dims", None) is None:
            self.overrides["unit_dims"] = tuple(unit_dims)
        if locked_dims is None:
            return
        locked_dims = tuple(locked_dims)
        if not locked_dims:  # unlock: no such axis at this site
            if _locked(template):
                if accepts(template, "locked_dims"):
                    self.overrides["locked_dims"] = ()
                else:
                    self._unlock_to_dropout = True
        elif accepts(template, "locked_dims"):
            self.overrides["locked_dims"] = locked_dims
        elif isinstance(template, NoRegulariser) or _locked(template) == locked_dims or lock_required is None:
            pass  # masks nothing / locked that way by construction / best effort
        else:
            name = name_of(template) or type(template).__name__
            raise ConfigError(
                f"{lock_required} needs a regulariser that takes locked_dims ({_lockers()}); {name!r} does not{hint}"
            )

    def rate_or_default(self, rate: Optional[float]) -> float:
        """``rate``, or the template's own rate when it is None."""
        return self.rate if rate is None else rate

    def __call__(self, rate: float, **overrides: Any) -> nn.Module:
        """A fresh module for a site of rate ``rate`` (``overrides`` replace constructor arguments)."""
        if self._unlock_to_dropout:
            from .quantal import Dropout

            return Dropout(rate=rate)
        args = {**self.overrides, **overrides}
        clone = getattr(self.template, "clone", None)
        if clone is not None:
            return clone(rate=rate, **args)
        spec, init_args = self._spec  # a plain module taking ``rate``: build it again
        if isinstance(spec, nn.Module) and not is_lazy(spec):
            spec = type(spec)
        return resolve(spec, **{**init_args, "rate": rate, **args})

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.overrides.items())
        return f"Sites({self.template!r}{extra})"
