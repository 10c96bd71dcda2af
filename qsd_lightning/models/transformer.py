"""Causal Transformer (GPT-style, pre-norm) language model with named regulariser sites."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..regularisers.sites import RegulariserFactory, site_module
from ..regularisers.sites import no_regulariser as _identity_factory
from ..regularisers.attention import attend

__all__ = ["CausalSelfAttention", "TransformerBlock", "TransformerLanguageModel"]



class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``attention_reg`` acts on the probabilities.

    ``x [B, T, D] -> q, k, v [B, H, T, D/H] -> softmax(q k^T / sqrt(D/H) + causal mask)
    [B, H, T, T] -> attention_reg -> @ v -> proj``, through
    :func:`qsd_lightning.regularisers.attention.attend`, the code ``replace_dropout`` uses for the
    attention sites of other libraries' models (fused SDPA when the regulariser is the identity).
    """

    def __init__(self, d_model: int, num_heads: int, attention_reg: nn.Module, bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.attention_reg = attention_reg

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        y = attend(q, k, v, is_causal=True, regulariser=self.attention_reg)  # [B, H, T, D/H]
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + res_reg(attn(ln(x)))``, then ``x + res_reg(fc2(mlp_reg(gelu(fc1(ln(x))))))``.

    Sites: ``attention.attention_reg`` (attention probabilities), ``attention_residual_reg`` and
    ``mlp_residual_reg`` (each branch's output before it joins the residual stream, GPT-2's
    resid_pdrop), ``mlp_reg`` (the MLP hidden layer, the input of ``fc2``).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        attention_reg: nn.Module,
        attention_residual_reg: nn.Module,
        mlp_reg: nn.Module,
        mlp_residual_reg: nn.Module,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, num_heads, attention_reg, bias)
        self.attention_residual_reg = attention_residual_reg
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.act = nn.GELU()
        self.mlp_reg = mlp_reg
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.mlp_residual_reg = mlp_residual_reg

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention_residual_reg(self.attention(self.ln1(x)))
        return x + self.mlp_residual_reg(self.fc2(self.mlp_reg(self.act(self.fc1(self.ln2(x))))))


class TransformerLanguageModel(nn.Module):
    """``tokens [B, T] -> token + position embedding -> reg -> blocks -> LayerNorm -> reg -> logits [B, T, V]``.

    Batch-first, causal (the logits at t depend on tokens <= t only), learned absolute positions
    up to ``context_length``. Sites, each with its own factory and rate (0: ``nn.Identity``):

    * ``embedding``: the summed token and position embeddings (``embedding_reg``),
    * ``attention``: the attention probabilities ``[B, H, T, T]`` of every block,
    * ``residual``: each attention and MLP branch output before the residual addition,
    * ``mlp``: the MLP hidden activations (after GELU, before the second linear layer),
    * ``output``: the final LayerNorm's output, the decoder's input (``output_reg``).

    ``tie_weights`` shares the embedding and decoder weight. Weights start N(0, 0.02), the
    residual projections N(0, 0.02 / sqrt(2 num_layers)) (GPT-2), biases 0.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 256,
        num_heads: int = 4,
        num_layers: int = 4,
        d_ff: int | None = None,
        context_length: int = 128,
        tie_weights: bool = True,
        embedding_regulariser: RegulariserFactory = _identity_factory,
        embedding_rate: float = 0.0,
        attention_regulariser: RegulariserFactory = _identity_factory,
        attention_rate: float = 0.0,
        residual_regulariser: RegulariserFactory = _identity_factory,
        residual_rate: float = 0.0,
        mlp_regulariser: RegulariserFactory = _identity_factory,
        mlp_rate: float = 0.0,
        output_regulariser: RegulariserFactory = _identity_factory,
        output_rate: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("num_heads", num_heads),
                            ("num_layers", num_layers), ("d_ff", d_ff), ("context_length", context_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if d_model % num_heads:
            raise ConfigError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads})")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.num_layers = num_layers
        self.context_length = context_length

        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(context_length, d_model)
        self.embedding_reg = site_module(embedding_regulariser, embedding_rate)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                d_model, num_heads, d_ff,
                attention_reg=site_module(attention_regulariser, attention_rate),
                attention_residual_reg=site_module(residual_regulariser, residual_rate),
                mlp_reg=site_module(mlp_regulariser, mlp_rate),
                mlp_residual_reg=site_module(residual_regulariser, residual_rate),
                bias=bias,
            )
            for _ in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.output_reg = site_module(output_regulariser, output_rate)
        self.decoder = nn.Linear(d_model, vocab_size, bias=bias)
        self.reset_parameters()
        if tie_weights:
            self.decoder.weight = self.token_embedding.weight

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.normal_(block.attention.proj.weight, 0.0, std / math.sqrt(2 * self.num_layers))
            nn.init.normal_(block.fc2.weight, 0.0, std / math.sqrt(2 * self.num_layers))

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``[B, T, V]`` for ``tokens [B, T]``, T <= ``context_length``."""
        T = tokens.shape[1]
        if T > self.context_length:
            raise ValueError(
                f"a sequence of {T} tokens is longer than the context length {self.context_length} "
                "(positions are learned up to it): use shorter windows or a larger context_length"
            )
        positions = torch.arange(T, device=tokens.device)
        x = self.embedding_reg(self.token_embedding(tokens) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return self.decoder(self.output_reg(self.ln_f(x)))
