"""Plain ``nn.Module`` networks; each takes regulariser factories for its dropout sites."""

from .mlp import MLP, RegulariserFactory

__all__ = ["MLP", "RegulariserFactory"]
