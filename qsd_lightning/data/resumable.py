"""A training data loader that resumes mid-epoch exactly.

Lightning saves the state of a training loader that has ``state_dict`` / ``load_state_dict``
in every checkpoint and hands it back before the first batch of a resumed run. With it, a run
resumed from a checkpoint written in the middle of an epoch (``every_n_train_steps``) sees the
rest of that epoch's batches in the same order as an uninterrupted run, and then the same
later epochs.

:class:`ResumableRandomSampler` draws exactly what ``torch.utils.data.RandomSampler`` draws (one
seed from the global torch generator when an epoch starts, then a permutation from a private
generator), so runs are bit-identical to the plain shuffled loader; it also remembers the
epoch's seed so that the permutation can be rebuilt. :class:`ResumableDataLoader` records that
seed and how many batches of the epoch were trained (``progress``, given by the data module,
reads the Trainer's count: the loader itself cannot tell trained batches from prefetched ones).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["ResumableRandomSampler", "ResumableDataLoader", "trained_batches_mid_epoch"]


class ResumableRandomSampler(Sampler[int]):
    """``RandomSampler(dataset)`` (no replacement, own generator per epoch) that can restart an
    epoch from its seed, skipping the samples already trained on."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = int(num_samples)
        self.seed: Optional[int] = None
        self._resume: Optional[tuple[int, int]] = None

    def __len__(self) -> int:
        return self.num_samples

    def resume(self, seed: int, skip: int) -> None:
        """Make the next epoch the one drawn from ``seed``, without its first ``skip`` samples."""
        self._resume = (int(seed), int(skip))

    def __iter__(self) -> Iterator[int]:
        if self._resume is not None:
            seed, skip = self._resume
            self._resume = None
        else:  # what RandomSampler draws from the global generator
            seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        self.seed = seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(self.num_samples, generator=generator).tolist()[skip:]


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableRandomSampler` whose state (the epoch's seed
    and the number of batches trained, from ``progress()``) goes into checkpoints."""

    def __init__(self, *args: Any, progress: Optional[Callable[[], Optional[int]]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def _resumable_sampler(self) -> Optional[ResumableRandomSampler]:
        sampler = getattr(self.batch_sampler, "sampler", None) if self.batch_sampler is not None else self.sampler
        return sampler if isinstance(sampler, ResumableRandomSampler) else None

    def state_dict(self) -> dict[str, Any]:
        sampler = self._resumable_sampler()
        batches = self.progress() if self.progress is not None else None
        if sampler is None or sampler.seed is None or not batches:
            return {}
        return {"seed": sampler.seed, "batches": int(batches), "batch_size": int(self.batch_size or 1)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self._resumable_sampler()
        if sampler is not None and state.get("batches"):
            sampler.resume(state["seed"], state["batches"] * state["batch_size"])


def trained_batches_mid_epoch(trainer) -> int | None:
    """Batches trained so far in the current epoch when a fit stands in the middle of one
    (None at an epoch's end, in validation-only runs, or before training)."""
    from lightning.pytorch.trainer.states import TrainerFn

    if trainer is None or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
        return None
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    total = trainer.num_training_batches
    return done if 0 < done < total else None
