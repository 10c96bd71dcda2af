"""Plain ``nn.Module`` networks; each takes regulariser factories for its dropout sites."""

from .cnn import ConvNet, WideResNet
from .language_model import LSTMLanguageModel
from .mlp import MLP, RegulariserFactory
from .sentiment import RecurrentClassifier
from .transformer import TransformerLanguageModel

__all__ = ["ConvNet", "LSTMLanguageModel", "MLP", "RecurrentClassifier", "RegulariserFactory", "TransformerLanguageModel", "WideResNet"]
