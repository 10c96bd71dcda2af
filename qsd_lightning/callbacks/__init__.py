"""Callbacks: regulariser schedules and analysis logging."""

from .analysis_off import AnalysisOff
from .checkpoint import ModelCheckpoint
from .early_stopping import EarlyStopping
from .prediction import PredictionWriter
from .progress import ProgressBar
from .seeding import RankNoiseSeed, RNGStateCheckpoint, rank_seed
from .quantal import QuantalStatistics, summarise_release
from .sparsity import ActivationSparsity, SparsityMetric, hoyer_sparsity
from .switch import RegulariserSwitch
from .weights import WeightDistributions

__all__ = [
    "ActivationSparsity",
    "AnalysisOff",
    "EarlyStopping",
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
