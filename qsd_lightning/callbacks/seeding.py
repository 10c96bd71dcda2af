"""Random streams: independent regulariser noise per DDP rank, exact resumption."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

from ..data.resumable import trained_batches_mid_epoch
from ..regularisers.backend import describe as describe_backend

__all__ = ["RankNoiseSeed", "RNGStateCheckpoint", "rank_seed"]


def rank_seed(base_seed: int, rank: int) -> int:
    """A seed for ``rank`` derived from ``base_seed``: rank 0 keeps the base seed, other ranks
    get distinct, well-mixed seeds (SplitMix64 of the pair)."""
    if rank == 0:
        return base_seed
    z = (base_seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class RankNoiseSeed(L.Callback):
    """Give every DDP rank its own torch random stream once the processes are set up.

    ``seed_everything`` seeds every rank alike, so without this each rank would draw the same
    dropout/QSD masks for its shard of the batch. Model weights are drawn before this (and DDP
    broadcasts rank 0's anyway); the data samplers have their own seeds. Single-process runs
    are untouched.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            torch.manual_seed(rank_seed(torch.initial_seed(), trainer.global_rank))


def _collect() -> dict:
    # plain types and tensors only, so checkpoints stay loadable with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RNGStateCheckpoint(L.Callback):
    """Save each rank's random generator states in checkpoints and restore them when training
    resumes, so that a resumed run draws the same masks and batch orders as an uninterrupted one.

    Lightning creates the first training iterator of a resumed run before any epoch hook, so
    states are restored when the checkpoint is loaded and again after the sanity-check
    validation (whose data loader also draws random numbers). A checkpoint written in the
    middle of an epoch is restored once more when training starts, after the resumed data
    loader has been created (creating it draws a worker seed that the uninterrupted run did not
    draw at that point); the data loader itself resumes the epoch's batch order
    (:class:`qsd_lightning.data.resumable.ResumableDataLoader`). The test suite checks
    kill-and-resume runs from epoch-end and mid-epoch checkpoints against uninterrupted ones.
    """

    def __init__(self) -> None:
        self._pending: dict | None = None
        self._mid_epoch = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint.setdefault("rng_states", {})[trainer.global_rank] = _collect()
        checkpoint["rng_mid_epoch"] = trained_batches_mid_epoch(trainer) is not None
        checkpoint["qsd_backend"] = describe_backend()  # which fast-path backend drew the masks

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._pending = checkpoint.get("rng_states", {}).get(trainer.global_rank)
        self._mid_epoch = bool(checkpoint.get("rng_mid_epoch", False))
        if self._pending is not None:
            _restore(self._pending)

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        if self._pending is not None:
            _restore(self._pending)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is not None and self._mid_epoch:
            _restore(self._pending)
        self._pending = None
