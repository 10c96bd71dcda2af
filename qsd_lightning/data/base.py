"""Shared DataModule plumbing for in-memory tensor data sets."""

from __future__ import annotations

import numbers
from pathlib import Path

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveInt, restricted_number_type
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import ConfigError, CorruptDataError, DataNotFoundError  # re-exported
from .resumable import ResumableDataLoader, ResumableRandomSampler, trained_batches_mid_epoch

__all__ = [
    "SplitDataModule",
    "TensorDataModule",
    "DataNotFoundError",
    "CorruptDataError",
    "ConfigError",
    "seeded_split",
    "PositiveInt",
    "NonNegativeInt",
    "OpenUnitInterval",
    "HalfFraction",
    "require",
    "check_positive",
    "check_non_negative",
    "check_val_size",
    "check_data_dir",
]

#: a fraction in (0, 0.5): a validation share that leaves most of the data for training
HalfFraction = restricted_number_type("HalfFraction", float, [(">", 0), ("<", 0.5)], join="and", docstring="a fraction in (0, 0.5)")


def require(ok: bool, arg: str, requirement: str, value) -> None:
    """``ConfigError("--data.<arg> <requirement> (got <value>)")`` unless ``ok``.

    The CLI already refuses most of these while parsing (the annotations are jsonargparse's
    constrained types); this repeats the check for Python callers, in the same words.
    """
    if not ok:
        raise ConfigError(f"--data.{arg} {requirement} (got {value!r})")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive(arg: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    require(_is_int(value) and value > 0, arg, "must be >= 1" + (" or null" if optional else ""), value)


def check_non_negative(arg: str, value) -> None:
    require(_is_int(value) and value >= 0, arg, "must be >= 0", value)


def check_val_size(val_size: int, n_train: int, where) -> None:
    """A validation split of ``val_size`` images must leave some of the ``n_train`` for training."""
    if not val_size < n_train:
        raise ConfigError(
            f"--data.val_size must be less than the {n_train} training examples in {where} (got {val_size}): "
            "lower --data.val_size"
        )


def check_data_dir(data_dir: Path) -> None:
    """``ConfigError`` if ``data_dir`` is a file (an archive, an IDX file ...), not a folder."""
    if Path(data_dir).is_file():
        raise ConfigError(
            f"--data.data_dir {data_dir} is a file, not a directory: set it to the folder that holds "
            f"the file ({Path(data_dir).resolve().parent})"
        )


def seeded_split(n: int, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Deterministic random split of ``range(n)`` into parts of the given fractions (rest last)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [int(round(f * n)) for f in fractions]
    parts, start = [], 0
    for size in sizes:
        parts.append(perm[start : start + size])
        start += size
    parts.append(perm[start:])
    return parts


class SplitDataModule(L.LightningDataModule):
    """The four data loaders, from one ``_loader(split, shuffle)`` that subclasses implement;
    only the training split is shuffled and ``predict`` serves the test split."""

    def _loader(self, split: str, shuffle: bool) -> DataLoader:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class TensorDataModule(SplitDataModule):
    """Loads tensors in ``load()`` (every rank, deterministic) and serves them in batches.

    Subclasses implement ``load() -> dict(train=(x, y), val=(x, y), test=(x, y))`` and set
    ``num_features`` / ``num_classes``.
    """

    num_classes: int = 0

    def __init__(
        self, data_dir: str | Path = "data", batch_size: PositiveInt = 64, num_workers: NonNegativeInt = 0, seed: int = 0
    ) -> None:
        super().__init__()
        check_positive("batch_size", batch_size)
        check_non_negative("num_workers", num_workers)
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, Dataset] = {}

    def load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = {name: TensorDataset(*tensors) for name, tensors in self.load().items()}

    def collate_fn(self, split: str):
        """How batches of ``split`` are assembled (None: torch's default)."""
        return None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        common = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(split),
        )
        if shuffle and not _distributed(self):  # resumable mid-epoch (DDP: Lightning's DistributedSampler)
            data = self.splits[split]
            return ResumableDataLoader(data, sampler=ResumableRandomSampler(len(data)),
                                       progress=lambda: trained_batches_mid_epoch(self.trainer), **common)
        return DataLoader(self.splits[split], shuffle=shuffle, **common)


def _distributed(datamodule: L.LightningDataModule) -> bool:
    trainer = datamodule.trainer
    return trainer is not None and trainer.world_size > 1

