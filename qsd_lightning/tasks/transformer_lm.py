"""Word-level causal Transformer language modelling (GPT-style, pre-norm) on PTB-style windows."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from ..callbacks.prediction import sequence_indices
from ..errors import ConfigError
from ..models.transformer import TransformerLanguageModel
from ..regularisers import Dropout, Regulariser
from ..regularisers.sites import Sites, resolve
from ..regularisers.types import Rate
from .checks import check_finite_loss, check_sites, datamodule_of
from .language_model import LanguageModel, sequence_sites
from .network import NetworkTask
from .optim import check_optimizer, configure_optimizers

__all__ = ["TransformerLM", "SITES"]

#: the regulariser sites, in the order of the forward pass
SITES = ("embedding", "attention", "residual", "mlp", "output")
SEQUENCE = ("batch", "time", "features")
ATTENTION = ("batch", "heads", "queries", "keys")


def warmup_cosine(warmup_steps: int, cosine_steps: Optional[int], min_lr_ratio: float):
    """``step -> lr factor``: linear warmup over ``warmup_steps`` (from 1/warmup_steps to 1),
    then cosine decay to ``min_lr_ratio`` over ``cosine_steps`` (None: constant), then flat."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if cosine_steps is None:
            return 1.0
        t = min(1.0, (step - warmup_steps) / cosine_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


class TransformerLM(NetworkTask):
    """Causal Transformer language model (pre-norm GPT) with a regulariser at every site.

    Each ``(input, target)`` window ``[B, T]`` of the data module (e.g. ``PTBDataModule``, T =
    ``--data.bptt`` <= ``context_length``) is modelled on its own: no state is carried between
    windows, so the first token of a window is predicted without context. Metrics are those of
    :class:`~qsd_lightning.tasks.LanguageModel`: ``train/loss``, ``val/loss``, ``val/ppl``,
    ``test/loss``, ``test/ppl``, the token-weighted mean cross-entropy over the whole split
    (torchmetrics, correct under DDP) and ppl = exp(loss).

    Sites (docs/method.md, "Transformer sites"): ``embedding`` (token + position embeddings),
    ``attention`` (the attention probabilities ``[B, heads, queries, keys]`` of every block,
    through the attention code ``replace_dropout`` uses), ``residual`` (each attention and MLP
    branch output before it joins the residual stream), ``mlp`` (the MLP hidden layer),
    ``output`` (the decoder's input).

    Args:
        vocab_size: vocabulary size; must equal the data's (``PTBDataModule.vocab_size``).
        d_model: width of the residual stream (= embedding size).
        num_heads: attention heads (``d_model`` must be a multiple).
        num_layers: Transformer blocks.
        d_ff: MLP hidden width (default 4 ``d_model``).
        context_length: longest window (learned positions); ``--data.bptt`` may not exceed it.
        tie_weights: share the token embedding and decoder weights.
        regulariser: the regulariser of every site (registry name or class path); its rate
            applies to every site whose own rate is left unset.
        <site>_regulariser: a different regulariser for that site (its own rate applies unless
            ``<site>_rate`` is set).
        <site>_rate: the rate at that site (embedding, attention, residual, mlp, output).
        locked: one mask per sequence at the sequence sites (embedding, residual, mlp, output:
            ``locked_dims=(1,)``, units = features), as the LSTM's ``--model.locked``; the
            attention site is never locked.
        warmup_steps: linear learning-rate warmup over this many optimiser steps (0: none).
        cosine_steps: cosine decay of the learning rate over this many steps after the warmup,
            down to ``min_lr_ratio`` times the peak, then flat (null: constant after warmup).
        min_lr_ratio: the floor of the cosine decay, as a fraction of the peak rate.
        optimizer / lr_scheduler: injected (default AdamW; weight decay, if any, applies to
            matrices and embeddings only, not to biases and LayerNorm). ``lr_scheduler`` is
            stepped per epoch and excludes ``warmup_steps`` / ``cosine_steps``.
    """

    def __init__(
        self,
        vocab_size: PositiveInt = 10000,
        d_model: PositiveInt = 256,
        num_heads: PositiveInt = 4,
        num_layers: PositiveInt = 4,
        d_ff: Optional[PositiveInt] = None,
        context_length: PositiveInt = 128,
        tie_weights: bool = True,
        regulariser: Regulariser = lazy_instance(Dropout, rate=0.1),
        embedding_regulariser: Optional[Regulariser] = None,
        embedding_rate: Optional[Rate] = None,
        attention_regulariser: Optional[Regulariser] = None,
        attention_rate: Optional[Rate] = None,
        residual_regulariser: Optional[Regulariser] = None,
        residual_rate: Optional[Rate] = None,
        mlp_regulariser: Optional[Regulariser] = None,
        mlp_rate: Optional[Rate] = None,
        output_regulariser: Optional[Regulariser] = None,
        output_rate: Optional[Rate] = None,
        locked: bool = False,
        warmup_steps: NonNegativeInt = 0,
        cosine_steps: Optional[PositiveInt] = None,
        min_lr_ratio: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__()
        check_optimizer(optimizer, lr_scheduler)
        if d_model % num_heads:
            raise ConfigError(
                f"--model.d_model {d_model} is not a multiple of --model.num_heads {num_heads}: each head "
                f"gets d_model / num_heads features; e.g. --model.num_heads {max(h for h in range(1, num_heads) if d_model % h == 0)}"
            )
        if lr_scheduler is not None and (warmup_steps or cosine_steps is not None):
            raise ConfigError(
                "--model.lr_scheduler and --model.warmup_steps / --model.cosine_steps both set the learning rate: "
                "give one (--model.lr_scheduler null, or --model.warmup_steps 0 --model.cosine_steps null)"
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError(f"--model.min_lr_ratio must be in [0, 1] (a fraction of the peak rate), got {min_lr_ratio}")

        regulariser = resolve(regulariser)
        given = {
            "embedding": (embedding_regulariser, embedding_rate),
            "attention": (attention_regulariser, attention_rate),
            "residual": (residual_regulariser, residual_rate),
            "mlp": (mlp_regulariser, mlp_rate),
            "output": (output_regulariser, output_rate),
        }
        sites = {}
        for name, (own, rate) in given.items():
            template = own if own is not None else regulariser
            if name == "attention":  # never locked
                factory, dims, where = Sites(template), ATTENTION, "the attention probabilities"
            else:
                factory, dims, where = sequence_sites(template, locked), SEQUENCE, f"the {name} site's inputs (batch-first sequences)"
            chosen = factory.rate_or_default(rate)
            option = f"--model.{name}_regulariser" if own is not None else "--model.regulariser"
            check_sites(factory, chosen, dims, where, option)
            sites[name] = (factory, chosen)

        self._network_args = dict(
            vocab_size=vocab_size,
            d_model=d_model,
            num_heads=num_heads,
            num_layers=num_layers,
            d_ff=d_ff,
            context_length=context_length,
            tie_weights=tie_weights,
            **{f"{name}_regulariser": factory for name, (factory, _) in sites.items()},
            **{f"{name}_rate": rate for name, (_, rate) in sites.items()},
        )
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.site_rates = {name: rate for name, (_, rate) in sites.items()}
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.schedule = (warmup_steps, cosine_steps, min_lr_ratio)
        self.eval_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.configure_model()

    def build_network(self) -> TransformerLanguageModel:
        return TransformerLanguageModel(**self._network_args)

    # -- data checks

    def setup(self, stage: str) -> None:
        LanguageModel.setup(self, stage)  # the vocabulary check
        bptt = getattr(datamodule_of(self), "bptt", None)
        if isinstance(bptt, int) and bptt > self.context_length:
            raise ConfigError(
                f"--data.bptt {bptt} is longer than --model.context_length {self.context_length} (positions are "
                f"learned up to it): set --data.bptt {self.context_length} or --model.context_length {bptt}"
            )

    # -- steps

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(tokens)

    def token_nll(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Cross-entropy (nats, float32) of every target token, ``[B, T]``."""
        tokens, targets = batch
        logits = self(tokens)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self.token_nll(batch).mean()
        check_finite_loss(self, loss, "Lower the learning rate or the gradient clipping value")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch[1].numel())
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        loss = self.token_nll(batch).mean()
        self.eval_loss[stage].update(loss.detach(), batch[1].numel())

    _eval_epoch_end = LanguageModel._eval_epoch_end  # token-weighted loss and ppl = exp(loss), as the LSTM

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Scores of each row of a window: ``{"index": LongTensor[B], "nll": FloatTensor[B],
        "tokens": LongTensor[B], "ppl": FloatTensor[B]}``, the format of
        :meth:`LanguageModel.predict_step <qsd_lightning.tasks.LanguageModel.predict_step>`.

        A sequence is one row of one ``[B, T]`` window, scored within that window only (no
        state is carried): ``nll`` is the summed cross-entropy (nats) of its ``tokens`` = T
        targets, ``ppl = exp(nll / tokens)``; the token-weighted mean of ``nll`` over the file
        is the ``test`` loss when predict serves the test split. ``index`` numbers the
        sequences in text order (:meth:`BPTTWindows.sequence_indices`; other loaders: the rows
        counted in the order they come).
        """
        nll = self.token_nll(batch).sum(dim=1)
        rows, length = batch[1].shape
        count = torch.full_like(nll, length, dtype=torch.long)
        index = sequence_indices(self, rows, batch_idx, dataloader_idx)
        return {"index": index, "nll": nll, "tokens": count, "ppl": torch.exp(nll / count)}

    # -- optimisation

    def configure_optimizers(self):
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        config = configure_optimizers(groups, self.optimizer_factory, self.lr_scheduler_factory)
        warmup_steps, cosine_steps, min_lr_ratio = self.schedule
        if self.lr_scheduler_factory is not None or (not warmup_steps and cosine_steps is None):
            return config
        scheduler = torch.optim.lr_scheduler.LambdaLR(config, warmup_cosine(warmup_steps, cosine_steps, min_lr_ratio))
        return {"optimizer": config, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
