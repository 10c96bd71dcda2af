"""How every task gets its network: :meth:`NetworkTask.build_network`, called from one place.

A task's constructor checks its arguments, keeps what the network needs and ends with
``self.configure_model()``, which sets ``self.net = self.build_network()``. When a size is
still unknown (``SentimentClassifier(vocab_size=None)`` takes it from the data at ``setup``),
``build_network`` returns None and the network is built when Lightning calls
``configure_model`` again: the Trainer calls it right after ``setup`` (before the optimisers
are configured), ``load_from_checkpoint`` right after the constructor (before the weights are
loaded). Once the network exists the hook does nothing, as Lightning requires.

Built in the constructor, the network is made wherever the caller makes modules (the CPU, or
the device of ``Trainer.init_module()``); built by the Trainer, it is made on the CPU in
float32, as in the constructor, and moved and converted by the strategy afterwards, so that a
seed gives the same initial weights either way (on the accelerator the weights would be
drawn from its own generator, in the precision's dtype).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import lightning as L
import torch
from torch import nn

from .._lightning_compat import attached_trainer

__all__ = ["NetworkTask"]


@contextlib.contextmanager
def _default_init() -> Iterator[None]:
    """Modules made on the CPU in float32 inside, whatever device and dtype are the defaults."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device("cpu"):
            yield
    finally:
        torch.set_default_dtype(dtype)


class NetworkTask(L.LightningModule):
    """A LightningModule whose network ``self.net`` is made by :meth:`build_network` only.

    Subclasses call ``super().__init__()`` first (``self.net`` is None from then on, registered
    in the place the network takes among the submodules), keep what :meth:`build_network`
    needs, and end their constructor with ``self.configure_model()``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_module("net", None)  # a place for the network: first among the submodules

    def build_network(self) -> Optional[nn.Module]:
        """The task's network, freshly initialised; None while a size it needs is unknown."""
        raise NotImplementedError(f"{type(self).__name__} must define build_network()")

    def configure_model(self) -> None:
        """Build the network unless it exists (idempotent: Lightning calls this hook for every
        stage); under a Trainer, on the CPU in float32 (see the module's docstring)."""
        if self.net is not None:
            return
        with _default_init() if attached_trainer(self) is not None else contextlib.nullcontext():
            net = self.build_network()
        if net is not None:
            self.net = net
