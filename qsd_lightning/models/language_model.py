"""LSTM word-level language model with awd-lstm-lm's regulariser sites."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..regularisers.sites import RegulariserFactory, site_module
from ..regularisers.sites import no_regulariser as _identity_factory
from ..regularisers.variants import EmbeddingDropout, apply_weight_drop, embedded
from .recurrent import run_recurrent

__all__ = ["LSTMLanguageModel", "LSTMState"]

#: one ``(h, c)`` pair per layer, each ``[1, B, H]``
LSTMState = list[tuple[Tensor, Tensor]]


class LSTMLanguageModel(nn.Module):
    """``tokens [B, T] -> embedding -> reg -> (LSTM -> reg) x L -> Linear -> logits [B, T, V]``.

    Batch-first throughout. One ``nn.LSTM`` per layer so that regularisers sit between layers.
    Sites (awd-lstm-lm names), each with its own factory and rate (0: ``nn.Identity``):

    * ``embedding``: on the embedding output (``embedding_reg``),
    * ``hidden``: between consecutive LSTM layers (``hidden_regs[i]``),
    * ``output``: on the last LSTM output, before the decoder (``output_reg``).

    Optional extras: ``weight_drop_rate`` > 0 puts ``weight_drop`` (a factory's module, default
    DropConnect) as a parametrization on every recurrent weight ``weight_hh_l0``, with one mask
    per forward pass; ``word_dropout_rate`` > 0 drops whole word types from the embedding
    weight (:class:`EmbeddingDropout`). ``tie_weights`` shares the embedding and decoder weight
    (the last LSTM layer's width must then equal ``embedding_size``). All weights start
    uniform in [-init_range, init_range] (Zaremba et al. 2014); decoder bias 0.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int = 650,
        hidden_size: int = 650,
        num_layers: int = 2,
        tie_weights: bool = False,
        embedding_regulariser: RegulariserFactory = _identity_factory,
        embedding_rate: float = 0.0,
        hidden_regulariser: RegulariserFactory = _identity_factory,
        hidden_rate: float = 0.0,
        output_regulariser: RegulariserFactory = _identity_factory,
        output_rate: float = 0.0,
        weight_drop: Optional[RegulariserFactory] = None,
        weight_drop_rate: float = 0.0,
        word_dropout_rate: float = 0.0,
        init_range: Optional[float] = 0.05,
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("embedding_size", embedding_size),
                            ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if tie_weights and hidden_size != embedding_size:
            raise ConfigError(
                f"tie_weights needs hidden_size == embedding_size (the decoder reuses the "
                f"embedding weight), got hidden_size={hidden_size}, embedding_size={embedding_size}"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers

        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.word_dropout = EmbeddingDropout(word_dropout_rate) if word_dropout_rate > 0 else None
        self.embedding_reg = site_module(embedding_regulariser, embedding_rate)
        self.lstms = nn.ModuleList(
            nn.LSTM(embedding_size if i == 0 else hidden_size, hidden_size, batch_first=True) for i in range(num_layers)
        )
        self.hidden_regs = nn.ModuleList(site_module(hidden_regulariser, hidden_rate) for _ in range(num_layers - 1))
        self.output_reg = site_module(output_regulariser, output_rate)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        if init_range is not None:
            self.reset_parameters(init_range)
        if weight_drop_rate > 0:
            factory = weight_drop if weight_drop is not None else (lambda rate: rate)  # rate -> WeightDrop
            for lstm in self.lstms:
                apply_weight_drop(lstm, factory(weight_drop_rate))

    @torch.no_grad()
    def reset_parameters(self, init_range: float) -> None:
        for p in self.parameters():
            p.uniform_(-init_range, init_range)
        self.decoder.bias.zero_()

    def init_state(self, batch_size: int, device: torch.device | None = None) -> LSTMState:
        """Zero hidden and cell states for a batch."""
        weight = self.decoder.weight
        zeros = lambda: weight.new_zeros(1, batch_size, self.hidden_size, device=device)  # noqa: E731
        return [(zeros(), zeros()) for _ in range(self.num_layers)]

    def forward(self, tokens: Tensor, state: Optional[LSTMState] = None) -> tuple[Tensor, LSTMState]:
        """Logits ``[B, T, V]`` and the new state (not detached: the caller truncates BPTT)."""
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        # draw each weight-drop mask once per pass (torch's LSTM reads its weights twice)
        with parametrize.cached():
            x = embedded(self.embedding, tokens, self.word_dropout)
            x = self.embedding_reg(x)
            new_state: LSTMState = []
            for i, lstm in enumerate(self.lstms):
                x, (h, c) = run_recurrent(lstm, x, state[i])
                new_state.append((h, c))
                if i < self.num_layers - 1:
                    x = self.hidden_regs[i](x)
            x = self.output_reg(x)
            return self.decoder(x), new_state
