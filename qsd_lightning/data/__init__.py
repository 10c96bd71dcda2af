"""LightningDataModules. Each owns its data: download/cache in ``prepare_data``, splits in ``setup``.

Shared by the modules: ``base`` (splits, argument checks, errors), ``network`` (the one probe
before any download), ``archive`` (streaming reads of tar archives), ``text`` (tokeniser and
the one ``Vocabulary``), ``idx`` (the bounded IDX reader). Writers of these formats, for
tests, live in ``tests/data_builders.py``.
"""

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
