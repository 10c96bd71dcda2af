"""Callbacks: regulariser schedules and analysis logging."""

from .checkpoint import ModelCheckpoint
from .prediction import PredictionWriter
from .progress import ProgressBar
from .seeding import RankNoiseSeed, RNGStateCheckpoint, rank_seed
from .quantal import QuantalStatistics, summarise_release
from .sparsity import ActivationSparsity, SparsityMetric, hoyer_sparsity
from .switch import RegulariserSwitch
from .weights import WeightDistributions

__all__ = [
    "ActivationSparsity",
    "ModelCheckpoint",
    "PredictionWriter",
    "ProgressBar",
    "QuantalStatistics",
    "RNGStateCheckpoint",
    "RankNoiseSeed",
    "RegulariserSwitch",
    "SparsityMetric",
    "WeightDistributions",
    "hoyer_sparsity",
    "rank_seed",
    "summarise_release",
]
