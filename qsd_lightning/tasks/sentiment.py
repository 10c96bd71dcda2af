"""Sentiment classification of variable-length texts with a recurrent network."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from jsonargparse import lazy_instance
from jsonargparse.typing import PositiveInt
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from ..errors import ConfigError
from ..models.sentiment import RecurrentClassifier
from ..regularisers import Dropout, Regulariser
from ..regularisers.sites import Sites, resolve
from ..regularisers.types import Rate
from .checks import NumClasses, check_sites
from .classification import ClassificationTask
from .language_model import VocabularyMismatchError
from .._lightning_compat import attached_trainer

__all__ = ["SentimentClassifier", "sequence_sites", "vector_sites"]


def sequence_sites(regulariser, locked: bool = False) -> Sites:
    """The :class:`~qsd_lightning.regularisers.sites.Sites` of a ``[B, T, F]`` site: units are
    the features (``unit_dims=(-1,)``: one release probability per feature, as in docs/QSD.md,
    unless the regulariser sets its own), and with ``locked`` also ``locked_dims=(1,)``: one
    mask per sequence and feature, the same at every time step (Gal and Ghahramani 2016).
    Regularisers without these arguments are used as they are; asking to lock one that cannot
    lock (and is not locked so already) is a ``ConfigError``."""
    return Sites(regulariser, unit_dims=(-1,), locked_dims=(1,) if locked else None, lock_required="--model.locked=true")


def vector_sites(regulariser) -> Sites:
    """The :class:`~qsd_lightning.regularisers.sites.Sites` of a ``[B, F]`` site (the pooled
    features): any locking is dropped, since there is no time axis. A regulariser that is locked
    by construction (``locked_dropout``) becomes standard dropout there, which is what it is on
    one time step."""
    return Sites(regulariser, locked_dims=())


class SentimentClassifier(ClassificationTask):
    """Embedding -> LSTM/GRU layers -> linear classifier over packed, padded texts.

    Batches are ``(tokens [B, T], lengths [B], labels [B])`` (see
    :class:`~qsd_lightning.data.SentimentDataModule`). Regulariser sites as in awd-lstm-lm:
    ``embedding`` (embedding output), ``hidden`` (between recurrent layers), ``output``
    (before the classifier).

    Args:
        vocab_size: embedding rows. ``null`` (the default): taken from the data module's
            vocabulary at setup (and then saved in the checkpoint's hyper-parameters); a number
            is checked against the data module at setup, and a mismatch stops the run.
        num_classes: number of classes (checked against the data at setup).
        embedding_dim: embedding width.
        hidden_size: recurrent state size per direction.
        num_layers: recurrent layers, one ``nn.LSTM``/``nn.GRU`` each.
        cell: ``lstm`` or ``gru``.
        bidirectional: run each layer both ways (outputs concatenated).
        pooling: ``last`` (final states), ``max`` or ``mean`` over the valid time steps.
        regulariser: the regulariser of every site, by registry name or class path; its rate
            applies to every site whose own rate below is left unset.
        embedding_rate / hidden_rate / output_rate: per-site rates (0: no regulariser there).
        locked: time-locked masks at the ``embedding`` and ``hidden`` sites (the same mask at
            every step of a sequence; the template must take ``locked_dims``).
    """

    def __init__(
        self,
        vocab_size: Optional[PositiveInt] = None,
        num_classes: NumClasses = 2,
        embedding_dim: PositiveInt = 128,
        hidden_size: PositiveInt = 128,
        num_layers: PositiveInt = 1,
        cell: Literal["lstm", "gru"] = "lstm",
        bidirectional: bool = False,
        pooling: Literal["last", "max", "mean"] = "last",
        regulariser: Regulariser = lazy_instance(Dropout, rate=0.5),
        embedding_rate: Optional[Rate] = None,
        hidden_rate: Optional[Rate] = None,
        output_rate: Optional[Rate] = None,
        locked: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        regulariser = resolve(regulariser)  # saved so in the hyper-parameters, as the CLI passes it
        sequence_site = sequence_sites(regulariser, locked)  # fails early on a bad combination
        vector_site = vector_sites(regulariser)
        default_rate = sequence_site.rate
        where = "the inputs of the {} sites ({})"
        for rate in (embedding_rate, hidden_rate):
            check_sites(sequence_site, default_rate if rate is None else rate, ("batch", "time", "features"),
                        where.format("embedding and hidden", "batch-first sequences"))
        check_sites(vector_site, default_rate if output_rate is None else output_rate, ("batch", "features"),
                    where.format("output", "pooled features"))
        super().__init__(None, num_classes, optimizer, lr_scheduler)
        self._network_args = dict(
            num_classes=num_classes,
            embedding_dim=embedding_dim,
            hidden_size=hidden_size,
            num_layers=num_layers,
            cell=cell,
            bidirectional=bidirectional,
            pooling=pooling,
            embedding_regulariser=sequence_site,
            hidden_regulariser=sequence_site,
            output_regulariser=vector_site,
            embedding_rate=default_rate if embedding_rate is None else embedding_rate,
            hidden_rate=default_rate if hidden_rate is None else hidden_rate,
            output_rate=default_rate if output_rate is None else output_rate,
        )
        self.vocab_size = vocab_size
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.configure_model()

    def build_network(self) -> Optional[RecurrentClassifier]:
        """The network; None while ``vocab_size`` is unknown (the Trainer builds it after
        :meth:`setup` has taken the size from the data)."""
        if self.vocab_size is None:
            return None
        return RecurrentClassifier(self.vocab_size, **self._network_args)

    def setup(self, stage: str) -> None:
        """Check the vocabulary size (and classes) against the data module; take
        ``vocab_size`` from it if it was left to the data (the network is then built by the
        ``configure_model`` hook the Trainer calls next)."""
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        data_vocab = getattr(datamodule, "vocab_size", None)
        name = type(datamodule).__name__
        if self.vocab_size is None:
            if data_vocab is None:
                raise ConfigError(
                    "SentimentClassifier: model.vocab_size is null and the data module "
                    f"({name if datamodule is not None else 'none given'}) reports no vocab_size after setup: "
                    "set --model.vocab_size or use a data module that builds a vocabulary (SentimentDataModule)"
                )
            self.vocab_size = int(data_vocab)
            self.hparams["vocab_size"] = self.vocab_size  # checkpoints rebuild the same net
        elif data_vocab is not None and int(data_vocab) != self.vocab_size:
            raise VocabularyMismatchError(
                f"SentimentClassifier: model.vocab_size is {self.vocab_size} but the data module's vocabulary "
                f"has {data_vocab} tokens ({name}, vocabulary {getattr(datamodule, 'vocab_path', None)}). "
                f"Set --model.vocab_size {data_vocab}, or null to take it from the data, or change "
                "--data.max_vocab / --data.min_freq back to the values the model was trained with."
            )
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and int(data_classes) > self.num_classes:
            raise ConfigError(
                f"the data has {data_classes} classes, the model has {self.num_classes} outputs: "
                f"set --model.num_classes {data_classes}"
            )

    def forward(self, tokens, lengths: Optional[Tensor] = None) -> Tensor:
        if isinstance(tokens, (tuple, list)):  # (tokens, lengths) from _shared_step
            tokens, lengths = tokens
        if self.net is None:
            raise RuntimeError(
                "SentimentClassifier has no network yet: vocab_size is taken from the data module at setup "
                "(then configure_model() builds the network), or give vocab_size"
            )
        return self.net(tokens, lengths)

    def _shared_step(self, batch, stage: str) -> Tensor:
        # (tokens, lengths, labels) -> the ((inputs), labels) pair ClassificationTask expects
        tokens, lengths, labels = batch
        return super()._shared_step(((tokens, lengths), labels), stage)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """``{"index", "pred", "probs"}`` as :meth:`ClassificationTask.predict_step`; batches are
        ``(tokens, lengths[, labels])``."""
        tokens, lengths = batch[0], batch[1]
        return self._predictions(self(tokens, lengths), batch_idx, dataloader_idx)
