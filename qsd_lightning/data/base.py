"""Shared DataModule plumbing for in-memory tensor data sets."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import CorruptDataError, DataNotFoundError  # re-exported

__all__ = ["SplitDataModule", "TensorDataModule", "DataNotFoundError", "CorruptDataError", "seeded_split"]


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

    def __init__(self, data_dir: str | Path = "data", batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(split),
        )

