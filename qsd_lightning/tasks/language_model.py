"""Word-level LSTM language modelling with truncated BPTT (Zaremba et al. 2014)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from jsonargparse.typing import PositiveInt
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from ..callbacks.prediction import sequence_indices
from ..models.language_model import LSTMLanguageModel, LSTMState
from ..regularisers import Dropout, Regulariser
from ..regularisers.sites import Sites, resolve
from ..regularisers.types import Rate
from ..regularisers.variants import WeightDrop
from ..errors import ConfigError
from .checks import check_finite_loss, check_sites
from .network import NetworkTask
from .optim import check_optimizer, configure_optimizers
from .._lightning_compat import attached_trainer

__all__ = ["LanguageModel", "VocabularyMismatchError", "sequence_sites"]

STAGES = ("train", "val", "test", "predict")


class VocabularyMismatchError(ConfigError):
    """The model's ``vocab_size`` differs from the data's vocabulary."""


def sequence_sites(regulariser, locked: bool) -> Sites:
    """The :class:`~qsd_lightning.regularisers.sites.Sites` of batch-first ``[B, T, F]`` sites;
    with ``locked``, one mask per sequence over time (``locked_dims=(1,)``, units = features:
    ``unit_dims=(-1,)``); ``locked_dropout`` with ``time_dim=1`` is locked so already."""
    if not locked:
        return Sites(regulariser)
    return Sites(regulariser, locked_dims=(1,), unit_dims=(-1,), lock_required="--model.locked=true",
                 hint=" (a locked_dropout must have time_dim=1: batch-first)")


class LanguageModel(NetworkTask):
    """LSTM language model trained with truncated BPTT over contiguous batches.

    The data module (e.g. ``PTBDataModule``) yields ``(input, target)`` windows ``[B, T]`` of
    ``B`` contiguous streams in order; the hidden state is carried from one batch to the next
    (detached: gradients stop at the window) and reset to zeros at the start of each epoch of
    each stage; training and evaluation keep separate states. Gradient clipping comes from
    the trainer (``trainer.gradient_clip_val``). Metrics: ``train/loss`` (per step and epoch),
    ``val/loss``, ``val/ppl``, ``test/loss``, ``test/ppl``: the loss is the token-weighted mean
    cross-entropy (nats) over the whole split, accumulated with torchmetrics (correct under
    DDP) and ppl = exp(loss).

    Args:
        vocab_size: vocabulary size; must equal the data's (``PTBDataModule.vocab_size``).
        embedding_size: embedding width.
        hidden_size: width of every LSTM layer.
        num_layers: number of LSTM layers (one ``nn.LSTM`` each).
        tie_weights: share the embedding and decoder weights (needs equal sizes).
        regulariser: the regulariser of every site (by registry name or class path); its rate
            applies to every site whose own rate is left unset.
        embedding_regulariser / hidden_regulariser / output_regulariser: a different
            regulariser for that site (its own ``rate`` applies unless ``<site>_rate`` is set).
        embedding_rate / hidden_rate / output_rate: the rate at the embedding output, between
            LSTM layers, before the decoder (awd-lstm-lm's dropouti, dropouth, dropout).
        locked: one mask per sequence, the same at every time step (variational dropout, Gal
            and Ghahramani 2016; QSD: one p_j per feature): sites get ``locked_dims=(1,)``.
        weight_drop_rate: DropConnect on the recurrent weights (awd-lstm-lm's wdrop; 0: off).
        weight_drop_regulariser: the regulariser used as that parametrization (default
            ``weight_drop``; ``qsd`` gives per-presynaptic-unit release probabilities).
        word_dropout_rate: word-type dropout on the embedding weight rows (awd's dropoute).
        init_range: uniform init range of every weight (null: PyTorch defaults).
        loss_sum_over_time: train on the loss summed over the window's time steps and
            averaged over the batch (Zaremba et al.'s code and TensorFlow's PTB tutorial; their
            lr 1 and clip 5 refer to this scale, = lr 35 and clip 5/35 on the token mean).
            Off: the token-mean loss. Logged losses are token means either way.
        optimizer / lr_scheduler: injected (Zaremba: SGD lr 1, /1.2 per epoch after epoch 6).
    """

    def __init__(
        self,
        vocab_size: PositiveInt = 10000,
        embedding_size: PositiveInt = 650,
        hidden_size: PositiveInt = 650,
        num_layers: PositiveInt = 2,
        tie_weights: bool = False,
        regulariser: Regulariser = lazy_instance(Dropout, rate=0.5),
        embedding_regulariser: Optional[Regulariser] = None,
        embedding_rate: Optional[Rate] = None,
        hidden_regulariser: Optional[Regulariser] = None,
        hidden_rate: Optional[Rate] = None,
        output_regulariser: Optional[Regulariser] = None,
        output_rate: Optional[Rate] = None,
        locked: bool = False,
        weight_drop_rate: Rate = 0.0,
        weight_drop_regulariser: Optional[Regulariser] = None,
        word_dropout_rate: Rate = 0.0,
        init_range: Optional[float] = 0.05,
        loss_sum_over_time: bool = False,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__()
        check_optimizer(optimizer, lr_scheduler)
        if tie_weights and hidden_size != embedding_size:
            raise ConfigError(
                f"--model.tie_weights true needs --model.hidden_size equal to --model.embedding_size (the decoder "
                f"reuses the embedding weight), got {hidden_size} and {embedding_size}: make them equal or set "
                "--model.tie_weights false"
            )

        regulariser = resolve(regulariser)

        def site(own: Optional[Regulariser], rate: Optional[float]):
            factory = sequence_sites(own if own is not None else regulariser, locked)
            return factory, factory.rate_or_default(rate)

        embedding_factory, embedding_rate_ = site(embedding_regulariser, embedding_rate)
        hidden_factory, hidden_rate_ = site(hidden_regulariser, hidden_rate)
        output_factory, output_rate_ = site(output_regulariser, output_rate)
        weight_drop = Sites(weight_drop_regulariser if weight_drop_regulariser is not None else WeightDrop(0.0))
        sequence = ("batch", "time", "features")
        for name, factory, rate in (("embedding", embedding_factory, embedding_rate_), ("hidden", hidden_factory, hidden_rate_),
                                    ("output", output_factory, output_rate_)):
            own = {"embedding": embedding_regulariser, "hidden": hidden_regulariser, "output": output_regulariser}[name]
            option = f"--model.{name}_regulariser" if own is not None else "--model.regulariser"
            check_sites(factory, rate, sequence, f"the {name} site's inputs (batch-first sequences)", option)
        check_sites(weight_drop, weight_drop_rate, ("output rows", "input columns"),
                    "the recurrent weights it drops (weight_hh [4 hidden, hidden])", "--model.weight_drop_regulariser")
        self._network_args = dict(
            vocab_size=vocab_size,
            embedding_size=embedding_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            tie_weights=tie_weights,
            embedding_regulariser=embedding_factory,
            embedding_rate=embedding_rate_,
            hidden_regulariser=hidden_factory,
            hidden_rate=hidden_rate_,
            output_regulariser=output_factory,
            output_rate=output_rate_,
            weight_drop=weight_drop,
            weight_drop_rate=weight_drop_rate,
            word_dropout_rate=word_dropout_rate,
            init_range=init_range,
        )
        self.vocab_size = vocab_size
        self.loss_sum_over_time = loss_sum_over_time
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        # token-weighted mean loss per evaluation stage (synced across ranks by torchmetrics)
        self.eval_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self._states: dict[str, Optional[LSTMState]] = {stage: None for stage in STAGES}
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.configure_model()

    def build_network(self) -> LSTMLanguageModel:
        return LSTMLanguageModel(**self._network_args)

    # -- data checks and state handling

    def setup(self, stage: str) -> None:
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        data_vocab = getattr(datamodule, "vocab_size", None)
        if data_vocab is not None and data_vocab != self.vocab_size:
            raise VocabularyMismatchError(
                f"model.vocab_size is {self.vocab_size} but the data's vocabulary has {data_vocab} words "
                f"(built from the training split of {getattr(datamodule, 'data_dir', 'the data')}): set "
                f"--model.vocab_size {data_vocab}, or check --data.data_dir"
            )

    def reset_state(self, stage: Optional[str] = None) -> None:
        """Forget the carried hidden state of ``stage`` (all stages if None)."""
        for s in STAGES if stage is None else (stage,):
            self._states[s] = None

    def on_train_epoch_start(self) -> None:
        self.reset_state("train")

    def on_validation_epoch_start(self) -> None:
        self.reset_state("val")

    def on_test_epoch_start(self) -> None:
        self.reset_state("test")

    def on_predict_epoch_start(self) -> None:
        self.reset_state("predict")

    def on_fit_start(self) -> None:
        self.reset_state()

    def forward(self, tokens: Tensor, state: Optional[LSTMState] = None) -> tuple[Tensor, LSTMState]:
        return self.net(tokens, state)

    def loss_and_carry(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        """Mean token cross-entropy of one window, continuing the state carried in ``stage``
        (reset when the batch size changes); stores the new state detached."""
        tokens, targets = batch
        state = self._states[stage]
        if state is not None and state[0][0].shape[1] != tokens.shape[0]:
            state = None
        logits, new_state = self(tokens, state)
        self._states[stage] = [(h.detach(), c.detach()) for h, c in new_state]
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    # -- steps

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self.loss_and_carry(batch, "train")
        check_finite_loss(self, loss, "Lower the learning rate or the gradient clipping value")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch[1].numel())
        return loss * batch[1].shape[1] if self.loss_sum_over_time else loss

    def _eval_step(self, batch, stage: str) -> None:
        loss = self.loss_and_carry(batch, stage)
        self.eval_loss[stage].update(loss.detach(), batch[1].numel())

    def _eval_epoch_end(self, stage: str) -> None:
        metric = self.eval_loss[stage]
        if metric.update_count == 0:
            return
        loss = metric.compute()
        metric.reset()
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/ppl", torch.exp(loss), prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Next-token scores of each row of a window, the state carried as in ``test``:
        ``{"index": LongTensor[B], "nll": FloatTensor[B], "tokens": LongTensor[B], "ppl": FloatTensor[B]}``.

        A sequence is one row of one ``[B, T]`` window: ``T`` consecutive target tokens,
        scored after all the text before them in that row. ``nll`` is their summed
        cross-entropy (nats), ``ppl = exp(nll / tokens)``; the token-weighted mean of ``nll``
        over the file is the ``test`` loss when predict serves the test split. ``index``
        numbers the sequences in text order (see :meth:`BPTTWindows.sequence_indices`).
        """
        tokens, targets = batch[0], batch[1]
        state = self._states["predict"]
        if state is not None and state[0][0].shape[1] != tokens.shape[0]:
            state = None
        logits, new_state = self(tokens, state)
        self._states["predict"] = [(h.detach(), c.detach()) for h, c in new_state]
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape).sum(dim=1)
        count = torch.full_like(nll, targets.shape[1], dtype=torch.long)
        index = sequence_indices(self, targets.shape[0], batch_idx, dataloader_idx)
        return {"index": index, "nll": nll, "tokens": count, "ppl": torch.exp(nll / count)}

    def configure_optimizers(self):
        return configure_optimizers(self.parameters(), self.optimizer_factory, self.lr_scheduler_factory)
