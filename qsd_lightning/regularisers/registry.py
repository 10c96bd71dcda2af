"""Name -> factory registry of regularisers (timm-style), open to the user's own classes.

``register(name)`` is a class decorator; ``available()`` lists the names; ``build(name, **kw)``
returns a fresh module. Every registered class also gets a lowercase alias class (``qsd``,
``dropout``, ...) in :mod:`qsd_lightning.regularisers.names`, so that the LightningCLI accepts
the registry name wherever it accepts a class name (``--model.regulariser qsd``).

Regularisers from elsewhere (plugins) come in two ways:

* an installed distribution declares them in the entry-point group ``qsd_lightning.regularisers``
  (``my_noise = my_package.noise:MyNoise``). They are imported lazily: when their name is
  looked up (:func:`get`, :func:`build`, a name on the command line or in a config file) or
  when the list of every name is needed (:func:`available`, the unknown-name message, --help);
* the environment variable ``QSD_LIGHTNING_PLUGINS`` names local modules (``mymodule,other``,
  importable from ``sys.path``: the current directory under ``python -m``, else via
  ``PYTHONPATH``) that are imported the first time the registry is consulted; they register
  their classes with ``@register``. Being an environment variable, it reaches every process a
  run starts (the comparison runner's runs, DDP workers).

A plugin that fails to import, or that puts a second class under a taken name, is a
:class:`PluginError` (a :class:`~qsd_lightning.errors.UserError`: one line naming the entry
point or module and the error). Registering the same class again under its name (decorator and
entry point) is a no-op.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from torch import nn

from ..errors import ConfigError, UserError

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV",
    "PluginError",
    "register",
    "available",
    "build",
    "get",
    "name_of",
    "load_plugins",
    "load_for_command_line",
]

ENTRY_POINT_GROUP = "qsd_lightning.regularisers"
PLUGINS_ENV = "QSD_LIGHTNING_PLUGINS"

_REGISTRY: dict[str, type[nn.Module]] = {}
_ALIASES: dict[str, type[nn.Module]] = {}  # name -> its alias class in .names
_LOADED: set[tuple[str, str]] = set()  # entry points (name, value) loaded
_LOADING: set[tuple[str, str]] = set()  # ... being loaded (a plugin that looks names up on import)
_IMPORTED_LOCAL: set[str] = set()  # QSD_LIGHTNING_PLUGINS modules imported
T = TypeVar("T", bound=type[nn.Module])


class PluginError(UserError):
    """A regulariser plugin that cannot be loaded (import error, name taken, not a module)."""


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _unknown(name: str) -> ValueError:
    names = available()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown regulariser {name!r}; valid choices: {', '.join(names)}.{hint}")


def _add(name: str, cls: type) -> None:
    """Put ``cls`` in the registry under ``name`` (no-op when it is there already)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"regulariser name must be a Python identifier, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"register({name!r}) needs an nn.Module subclass, got {cls!r}")
    taken = _REGISTRY.get(name)
    if taken is not None:
        if cls is taken or cls is _ALIASES.get(name):
            return
        raise ConfigError(
            f"regulariser {name!r} is already registered to {taken.__module__}.{taken.__qualname__}; "
            f"cannot register {cls.__module__}.{cls.__qualname__} under the same name (choose another name)"
        )
    from . import names  # late import: names depends on the registry

    if not names.free(name, cls):
        raise ConfigError(f"regulariser name {name!r} is reserved (an attribute of {names.__name__}); choose another name")
    _REGISTRY[name] = cls
    cls.registry_name = name
    _ALIASES[name] = names.add_alias(name, cls)


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a regulariser class to the registry under ``name``.

    Registering the same class again under the same name is a no-op; another class under a
    taken name is a :class:`~qsd_lightning.errors.ConfigError` (a ``ValueError``).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"regulariser name must be a Python identifier, got {name!r}")

    def decorator(cls: T) -> T:
        _add(name, cls)
        return cls

    return decorator


# ----------------------------------------------------------------------------- plugins
def _entry_points() -> list[metadata.EntryPoint]:
    """The group's entry points, each (name, value) once (a distribution seen twice on the path)."""
    seen: dict[tuple[str, str], metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault((ep.name, ep.value), ep)
    return list(seen.values())


def _describe(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    source = f" of {dist.name} {dist.version}" if dist is not None and getattr(dist, "name", None) else ""
    return f"regulariser plugin '{ep.name} = {ep.value}' (entry point group {ENTRY_POINT_GROUP}{source})"


def _load_entry_point(ep: metadata.EntryPoint) -> None:
    key = (ep.name, ep.value)
    if key in _LOADED or key in _LOADING:
        return
    _LOADING.add(key)
    try:
        try:
            obj = ep.load()
        except Exception as err:  # noqa: BLE001 - whatever the plugin raises is the plugin's
            raise PluginError(f"{_describe(ep)} failed to import: {_one_line(err)}") from err
        try:
            _add(ep.name, obj)
        except ConfigError as err:
            raise PluginError(f"{_describe(ep)}: {err}") from err
        _LOADED.add(key)
    finally:
        _LOADING.discard(key)


def _import_local_plugins() -> None:
    """Import the modules named in ``QSD_LIGHTNING_PLUGINS`` (each once)."""
    for module in (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",")):
        if not module or module in _IMPORTED_LOCAL:
            continue
        _IMPORTED_LOCAL.add(module)  # first, so that a plugin looking names up does not recurse
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001
            _IMPORTED_LOCAL.discard(module)
            hint = " (is its directory on PYTHONPATH?)" if isinstance(err, ModuleNotFoundError) and err.name == module else ""
            raise PluginError(f"{PLUGINS_ENV}: module {module!r} failed to import: {_one_line(err)}{hint}") from err


def _load_named(name: str) -> None:
    """Import the local plugin modules and the entry points called ``name``."""
    _import_local_plugins()
    if name in _REGISTRY:
        return
    for ep in _entry_points():
        if ep.name == name:
            _load_entry_point(ep)


def load_plugins(names: Iterable[str] | None = None) -> None:
    """Import the local plugin modules and the entry points named ``names`` (all by default)."""
    _import_local_plugins()
    wanted = None if names is None else set(names)
    for ep in _entry_points():
        if wanted is None or (ep.name in wanted and ep.name not in _REGISTRY):
            _load_entry_point(ep)


_CONFIG_PATH = re.compile(r"[^\s'\"=:,\[\]{}]+\.(?:ya?ml|json)\b")


def _config_texts(argv: Sequence[str]) -> list[str]:
    """``argv`` and the text of the config files it names (and those they name), read as text."""
    texts = [str(a) for a in argv]
    queue = [(Path.cwd(), t) for t in texts]
    seen: set[Path] = set()
    while queue and len(seen) < 50:
        base, text = queue.pop()
        for match in _CONFIG_PATH.findall(text):
            for path in {Path(match), base / match}:
                try:
                    path = path.resolve()
                    if path in seen or not path.is_file():
                        continue
                    seen.add(path)
                    content = path.read_text(errors="replace")
                except OSError:
                    continue
                texts.append(content)
                queue.append((path.parent, content))
    return texts


def load_for_command_line(argv: Sequence[str] | dict | None) -> None:
    """Before the CLI parses ``argv``: import the local plugin modules and the entry points whose
    names occur in ``argv`` or in the config files it names (jsonargparse resolves a bare
    class name among the classes already imported); all of them for ``--help``."""
    _import_local_plugins()
    pending = [ep for ep in _entry_points() if ep.name not in _REGISTRY]
    if not pending:
        return
    argv = [str(argv)] if isinstance(argv, dict) else list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") or str(a).split("=", 1)[0].endswith(".help") for a in argv):
        return load_plugins()
    words = set(re.findall(r"[A-Za-z_]\w*", "\n".join(_config_texts(argv))))
    for ep in pending:
        if ep.name in words:
            _load_entry_point(ep)


# ----------------------------------------------------------------------------- look-ups
def available() -> list[str]:
    """Sorted names of every registered regulariser (plugins included: this loads them all)."""
    load_plugins()
    return sorted(_REGISTRY)


def find(name: str) -> type[nn.Module] | None:
    """The class registered under ``name`` (loading its plugin), or None."""
    if name not in _REGISTRY:
        _load_named(name)
    return _REGISTRY.get(name)


def get(name: str) -> type[nn.Module]:
    """The class registered under ``name``; ``ValueError`` listing the choices otherwise."""
    cls = find(name)
    if cls is None:
        raise _unknown(name)
    return cls


def build(name: str, **kwargs) -> nn.Module:
    """A fresh regulariser: ``build("qsd", rate=0.5, gamma=4.0, mode="coupled")``."""
    return get(name)(**kwargs)


def name_of(module: nn.Module) -> str | None:
    """Registry name of a regulariser instance (``None`` for unregistered modules)."""
    kind = type(module)
    for name, cls in _REGISTRY.items():
        if kind is cls or kind is _ALIASES.get(name):
            return name
    return None


def _unregister(name: str) -> None:
    """Remove ``name`` and its alias (for tests)."""
    from . import names

    _REGISTRY.pop(name, None)
    alias = _ALIASES.pop(name, None)
    if alias is not None and vars(names).get(name) is alias:
        delattr(names, name)
    _LOADED.difference_update({key for key in _LOADED if key[0] == name})
