"""Lowercase aliases of the registered regulariser classes, one per registry name.

jsonargparse (and so the LightningCLI) resolves a bare class name among the subclasses of an
argument's type. Registering ``QSD`` under ``"qsd"`` adds a subclass named ``qsd`` here, so
``--model.regulariser qsd`` and ``regulariser: qsd`` in YAML select it, and
``--model.regulariser.gamma 8`` then sets its arguments. The alias behaves exactly like its
parent class (same constructor, same repr).

A saved config names an alias by its path (``qsd_lightning.regularisers.names.my_noise``);
for a plugin's class that is not imported yet, looking the attribute up here loads the plugin
(module ``__getattr__``), so such configs and checkpoints load in a fresh process.
"""

from __future__ import annotations

from torch import nn


def free(name: str, cls: type[nn.Module]) -> bool:
    """Whether ``name`` can name an alias here (it must not shadow this module's own names)."""
    if cls.__name__ == name:
        return True
    taken = globals().get(name)
    return taken is None or getattr(taken, "_is_alias", False) and taken.__mro__[1] is cls


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


def __getattr__(name: str):
    if not name.startswith("__"):
        from . import registry

        cls = registry.find(name)
        if cls is not None:
            return globals().get(name, cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
