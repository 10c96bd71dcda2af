"""Running torch's recurrent modules under mixed precision."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence


def _float32(value):
    if isinstance(value, PackedSequence) or (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return value.float()
    if isinstance(value, tuple):
        return tuple(_float32(v) for v in value)
    return value


def run_recurrent(rnn: nn.Module, *args):
    """``rnn(*args)``, in float32 when CPU autocast is on.

    oneDNN has no bf16/fp16 LSTM or GRU on most CPUs ("could not create a primitive
    descriptor"), so under CPU autocast the recurrent layer runs in float32; the layers around
    it keep their mixed precision. On CUDA cuDNN runs them in low precision and nothing changes.
    """
    if torch.is_autocast_enabled("cpu") and not any(
        isinstance(a, torch.Tensor) and a.is_cuda for a in args
    ):
        with torch.autocast("cpu", enabled=False):
            return rnn(*(_float32(a) for a in args))
    return rnn(*args)
