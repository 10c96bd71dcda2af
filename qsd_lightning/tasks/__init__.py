"""LightningModules: training logic around the plain networks of :mod:`qsd_lightning.models`."""

from .classification import ClassificationTask, MLPClassifier
from .language_model import LanguageModel
from .sentiment import SentimentClassifier
from .transformer_lm import TransformerLM
from .vision import CNNClassifier, WRNClassifier

__all__ = ["CNNClassifier", "ClassificationTask", "LanguageModel", "MLPClassifier", "SentimentClassifier", "TransformerLM", "WRNClassifier"]
