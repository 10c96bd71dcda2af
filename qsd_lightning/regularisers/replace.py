"""Swap the dropout modules of any existing network for a registered regulariser."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .registry import build, get

__all__ = ["replace_dropout", "DROPOUT_TYPES"]

#: torch's dropout modules; each keeps its own ``p`` as the rate unless one is given.
DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

# channel dropouts mask whole feature maps: dims after the channel dim are locked
_LOCKED_DIMS = {nn.Dropout1d: (2,), nn.Dropout2d: (2, 3), nn.Dropout3d: (2, 3, 4)}


def replace_dropout(model: nn.Module, name: str = "qsd", **kwargs: Any) -> int:
    """Replace every torch dropout module inside ``model`` by ``build(name, rate=p, **kwargs)``.

    Works on any ``nn.Module`` (torchvision, timm, Hugging Face models): the paper's point that
    QSD applies wherever dropout does. Each replacement keeps the replaced module's rate
    unless ``rate`` is given, and the channel dropouts (``Dropout1d/2d/3d``) keep masking
    whole channels. Modules whose rate is 0 are replaced too (they stay the identity).
    Returns the number of modules replaced.
    """
    cls = get(name)  # fail early on an unknown name, before touching the model
    accepts_locked = "locked_dims" in inspect.signature(cls).parameters
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, DROPOUT_TYPES):
                continue
            args = {"rate": child.p, **kwargs}
            locked = _LOCKED_DIMS.get(type(child))
            if locked and accepts_locked and "locked_dims" not in kwargs:
                args["locked_dims"] = locked
            new = build(name, **args)
            new.train(child.training)
            setattr(parent, child_name, new)
            replaced += 1
    return replaced
