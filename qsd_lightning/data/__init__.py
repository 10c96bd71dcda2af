"""LightningDataModules. Each owns its data: download/cache in ``prepare_data``, splits in ``setup``."""

from .base import CorruptDataError, DataNotFoundError, TensorDataModule
from .cifar import CIFARDataModule
from .digits import DigitsDataModule
from .mnist import MNISTDataModule
from .ptb import PTBDataModule
from .sentiment import SentimentDataModule

__all__ = [
    "CIFARDataModule",
    "CorruptDataError",
    "DataNotFoundError",
    "DigitsDataModule",
    "MNISTDataModule",
    "PTBDataModule",
    "SentimentDataModule",
    "TensorDataModule",
]
