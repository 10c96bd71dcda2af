"""Lowercase aliases of the registered regulariser classes, one per registry name.

jsonargparse (and so the LightningCLI) resolves a bare class name among the subclasses of an
argument's type. Registering ``QSD`` under ``"qsd"`` adds a subclass named ``qsd`` here, so
``--model.regulariser qsd`` and ``regulariser: qsd`` in YAML select it, and
``--model.regulariser.gamma 8`` then sets its arguments. The alias behaves exactly like its
parent class (same constructor, same repr).
"""

from __future__ import annotations

from torch import nn


def add_alias(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    if cls.__name__ == name:
        cls._alias = cls
        return cls
    alias = type(
        name,
        (cls,),
        {"__module__": __name__, "__qualname__": name, "__doc__": cls.__doc__, "_is_alias": True},
    )
    globals()[name] = alias
    cls._alias = alias
    return alias
