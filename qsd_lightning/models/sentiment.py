"""Recurrent text classifier (embedding -> LSTM/GRU stack -> linear) over packed sequences."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import ConfigError

from ..regularisers.sites import RegulariserFactory, site_module
from ..regularisers.sites import no_regulariser as _identity_factory
from .recurrent import run_recurrent

__all__ = ["RecurrentClassifier", "SITES"]

#: regulariser sites, named as in awd-lstm-lm (dropouti / dropouth / dropout)
SITES = ("embedding", "hidden", "output")


class RecurrentClassifier(nn.Module):
    """``tokens -> Embedding -> reg[embedding] -> RNN_1 -> reg[hidden] -> ... -> RNN_L -> pool
    -> reg[output] -> Linear -> logits``.

    Regularisers sit on the non-recurrent connections only (Zaremba et al. 2014; docs/QSD.md,
    "Where the mask goes"): ``embedding`` on the embedding output, ``hidden`` on the input of
    every recurrent layer after the first (one ``nn.LSTM``/``nn.GRU`` per layer, so the site
    can sit between them), ``output`` on the pooled features before the classifier. Each site
    has its own factory (``rate -> module``) and rate; a site whose rate is 0 is ``nn.Identity``.
    The ``embedding`` and ``hidden`` sites see ``[B, T, F]`` tensors (batch first; with
    time-locked masks the factory should give a module masking ``locked_dims=(1,)``), the
    ``output`` site sees ``[B, F]``.

    Sequences are packed (``enforce_sorted=False``), so padding never reaches the recurrent
    layers: in eval mode a text gives the same logits whatever padding follows it.
    ``pooling``: ``last`` = final hidden state of the last layer (both directions when
    bidirectional), ``max`` / ``mean`` = over the valid time steps of its outputs.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        cell: Literal["lstm", "gru"] = "lstm",
        bidirectional: bool = False,
        pooling: Literal["last", "max", "mean"] = "last",
        padding_idx: int = 0,
        embedding_regulariser: RegulariserFactory = _identity_factory,
        hidden_regulariser: RegulariserFactory = _identity_factory,
        output_regulariser: RegulariserFactory = _identity_factory,
        embedding_rate: float = 0.0,
        hidden_rate: float = 0.0,
        output_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ConfigError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        if pooling not in ("last", "max", "mean"):
            raise ConfigError(f"pooling must be 'last', 'max' or 'mean', got {pooling!r}")
        if vocab_size < 2 or num_layers < 1 or embedding_dim < 1 or hidden_size < 1:
            raise ConfigError("vocab_size must be >= 2 and num_layers, embedding_dim, hidden_size >= 1")
        self.cell, self.pooling, self.padding_idx = cell, pooling, padding_idx
        directions = 2 if bidirectional else 1
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU

        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.embedding_reg = site_module(embedding_regulariser, embedding_rate)
        self.rnns = nn.ModuleList()
        self.hidden_regs = nn.ModuleList()  # hidden_regs[i] acts on the input of rnns[i + 1]
        width = embedding_dim
        for i in range(num_layers):
            if i > 0:
                self.hidden_regs.append(site_module(hidden_regulariser, hidden_rate))
            self.rnns.append(rnn_cls(width, hidden_size, batch_first=True, bidirectional=bidirectional))
            width = hidden_size * directions
        self.output_reg = site_module(output_regulariser, output_rate)
        self.output = nn.Linear(width, num_classes)

    def forward(self, tokens: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``tokens`` [B, T] padded after each text; ``lengths`` [B] (default: non-pad count)."""
        if lengths is None:
            lengths = (tokens != self.padding_idx).sum(dim=1)
        lengths = lengths.to(device="cpu", dtype=torch.int64)  # pack_padded_sequence wants them on the CPU
        if bool((lengths < 1).any()):
            raise ValueError("every sequence needs at least one token (length >= 1)")
        steps = int(lengths.max())
        x = self.embedding_reg(self.embedding(tokens[:, :steps]))
        final = None
        for i, rnn in enumerate(self.rnns):
            if i > 0:
                x = self.hidden_regs[i - 1](x)
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, final = run_recurrent(rnn, packed)
            x, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
        features = self._pool(x, final, lengths)
        return self.output(self.output_reg(features))

    def _pool(self, x: Tensor, final, lengths: Tensor) -> Tensor:
        if self.pooling == "last":
            h = final[0] if isinstance(final, tuple) else final  # LSTM: (h_n, c_n); [directions, B, H]
            return h.transpose(0, 1).reshape(h.shape[1], -1)
        valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]).unsqueeze(-1)
        if self.pooling == "max":
            return x.masked_fill(~valid, float("-inf")).amax(dim=1)
        return (x * valid).sum(dim=1) / lengths.to(x.device, x.dtype)[:, None]
