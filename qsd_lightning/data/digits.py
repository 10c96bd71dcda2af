"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, no download."""

from __future__ import annotations

import torch

from .base import TensorDataModule, seeded_split

__all__ = ["DigitsDataModule"]


class DigitsDataModule(TensorDataModule):
    """Digits (UCI optical recognition, as bundled with scikit-learn), flattened to 64 features.

    Pixel values 0..16 are scaled to [0, 1]. The train/val/test split is a fixed permutation
    drawn from ``seed`` (default 60/20/20), identical in every process and every run.
    """

    num_features = 64
    num_classes = 10

    def __init__(
        self, batch_size: int = 64, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0, num_workers: int = 0
    ) -> None:
        super().__init__(data_dir=".", batch_size=batch_size, num_workers=num_workers, seed=seed)
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1")
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def load(self):
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        x = torch.as_tensor(images, dtype=torch.float32) / 16.0
        y = torch.as_tensor(labels, dtype=torch.long)
        val, test, train = seeded_split(len(y), (self.val_fraction, self.test_fraction), self.seed)
        return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
