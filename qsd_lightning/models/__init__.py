"""Plain ``nn.Module`` networks; each takes regulariser factories for its dropout sites."""

from .language_model import LSTMLanguageModel
from .cnn import ConvNet, WideResNet  # noqa: F401
from .mlp import MLP, RegulariserFactory
from .sentiment import RecurrentClassifier  # noqa: F401

__all__ = ["LSTMLanguageModel", "MLP", "RegulariserFactory"]
