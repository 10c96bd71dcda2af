"""Regularisers: QSD, standard dropout and friends behind one registry.

>>> from qsd_lightning import regularisers
>>> "qsd" in regularisers.available()
True
>>> regularisers.build("qsd", rate=0.5, gamma=4.0, mode="coupled")
QSD(rate=0.5, gamma=4.0, mode='coupled')

Your own regulariser: subclass :class:`Regulariser` and decorate it with ``@register("name")``
(in a module imported before use, or named in ``QSD_LIGHTNING_PLUGINS``), or declare it in an
installed package's entry-point group ``qsd_lightning.regularisers`` (see :mod:`.registry`).
"""

from . import names  # noqa: F401  (aliases used by the CLI)
from .base import Regulariser, ReleaseStatistics
from .functional import MODES, qsd
from .quantal import QSD, Dropout, NoRegulariser
from .registry import ENTRY_POINT_GROUP, PLUGINS_ENV, PluginError, available, build, get, load_plugins, name_of, register
from .replace import replace_dropout
from .sites import Sites, resolve
from .variants import EmbeddingDropout, GaussianDropout, LockedDropout, SpatialDropout, WeightDrop, apply_weight_drop, embedded, remove_weight_drop

__all__ = [
    "ENTRY_POINT_GROUP",
    "MODES",
    "PLUGINS_ENV",
    "PluginError",
    "QSD",
    "Dropout",
    "NoRegulariser",
    "Regulariser",
    "ReleaseStatistics",
    "Sites",
    "available",
    "build",
    "get",
    "load_plugins",
    "matched_dropout_rate",
    "multiplier_variance",
    "name_of",
    "qsd",
    "register",
    "replace_dropout",
    "resolve",
    "EmbeddingDropout",
    "GaussianDropout",
    "LockedDropout",
    "SpatialDropout",
    "WeightDrop",
    "apply_weight_drop",
    "embedded",
    "remove_weight_drop",
]


def __getattr__(name: str):
    # variance is also a command (python -m qsd_lightning.regularisers.variance): importing it
    # eagerly here would make runpy warn that the module ran after being imported.
    if name in ("matched_dropout_rate", "multiplier_variance"):
        from . import variance

        return getattr(variance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
