"""LightningModules: training logic around the plain networks of :mod:`qsd_lightning.models`."""

from .classification import ClassificationTask, MLPClassifier
from .language_model import LanguageModel
from .sentiment import SentimentClassifier  # noqa: F401
from .vision import CNNClassifier, WRNClassifier  # noqa: F401

__all__ = ["ClassificationTask", "LanguageModel", "MLPClassifier"]
