"""LightningDataModules. Each owns its data: download/cache in ``prepare_data``, splits in ``setup``."""

from .base import CorruptDataError, DataNotFoundError, TensorDataModule
from .cifar import CIFARDataModule  # noqa: F401
from .digits import DigitsDataModule
from .mnist import MNISTDataModule
from .sentiment import SentimentDataModule  # noqa: F401
from .ptb import PTBDataModule

__all__ = ["CorruptDataError", "DataNotFoundError", "DigitsDataModule", "MNISTDataModule", "PTBDataModule", "TensorDataModule"]
