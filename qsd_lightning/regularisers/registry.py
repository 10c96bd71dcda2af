"""Name -> factory registry of regularisers (timm-style).

``register(name)`` is a class decorator; ``available()`` lists the names; ``build(name, **kw)``
returns a fresh module. Every registered class also gets a lowercase alias class (``qsd``,
``dropout``, ...) in :mod:`qsd_lightning.regularisers.names`, so that the LightningCLI accepts
the registry name wherever it accepts a class name (``--model.regulariser qsd``).
"""

from __future__ import annotations

import difflib
from typing import Callable, TypeVar

from torch import nn

__all__ = ["register", "available", "build", "get", "name_of"]

_REGISTRY: dict[str, type[nn.Module]] = {}
T = TypeVar("T", bound=type[nn.Module])


def _unknown(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(
        f"unknown regulariser {name!r}; valid choices: {', '.join(available())}.{hint}"
    )


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a regulariser class to the registry under ``name``."""
    if not name.isidentifier():
        raise ValueError(f"regulariser name must be a Python identifier, got {name!r}")

    def decorator(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"regulariser {name!r} is already registered to {_REGISTRY[name]!r}")
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register({name!r}) needs an nn.Module subclass, got {cls!r}")
        _REGISTRY[name] = cls
        cls.registry_name = name
        from . import names  # late import: names depends on the registry

        names.add_alias(name, cls)
        return cls

    return decorator


def available() -> list[str]:
    """Sorted names of every registered regulariser."""
    return sorted(_REGISTRY)


def get(name: str) -> type[nn.Module]:
    """The class registered under ``name``; ``ValueError`` listing the choices otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise _unknown(name) from None


def build(name: str, **kwargs) -> nn.Module:
    """A fresh regulariser: ``build("qsd", rate=0.5, gamma=4.0, mode="coupled")``."""
    return get(name)(**kwargs)


def name_of(module: nn.Module) -> str | None:
    """Registry name of a regulariser instance (``None`` for unregistered modules)."""
    for name, cls in _REGISTRY.items():
        if type(module) is cls or type(module) is getattr(cls, "_alias", None):
            return name
    return None
