"""LightningModules: training logic around the plain networks of :mod:`qsd_lightning.models`."""

from .classification import ClassificationTask, MLPClassifier

__all__ = ["ClassificationTask", "MLPClassifier"]
