"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, no download."""

from __future__ import annotations

import torch

from .base import ConfigError, NonNegativeInt, OpenUnitInterval, PositiveInt, TensorDataModule, require, seeded_split

__all__ = ["DigitsDataModule"]


class DigitsDataModule(TensorDataModule):
    """Digits (UCI optical recognition, as bundled with scikit-learn), flattened to 64 features.

    Pixel values 0..16 are scaled to [0, 1]. The train/val/test split is a fixed permutation
    drawn from ``seed`` (default 60/20/20), identical in every process and every run.
    """

    num_features = 64
    num_classes = 10

    def __init__(
        self,
        batch_size: PositiveInt = 64,
        val_fraction: OpenUnitInterval = 0.2,
        test_fraction: OpenUnitInterval = 0.2,
        seed: int = 0,
        num_workers: NonNegativeInt = 0,
    ) -> None:
        super().__init__(data_dir=".", batch_size=batch_size, num_workers=num_workers, seed=seed)
        for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            require(isinstance(value, (int, float)) and 0 < value < 1, arg, "must be in (0, 1)", value)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)

    def _check_fractions(self) -> None:
        # checked when the data is loaded, not in __init__: the CLI then reports it in one line
        if not self.val_fraction + self.test_fraction < 1:
            raise ConfigError(
                f"--data.val_fraction + --data.test_fraction must be < 1 to leave training data "
                f"(got {self.val_fraction:g} + {self.test_fraction:g})"
            )

    def load(self):
        from sklearn.datasets import load_digits

        self._check_fractions()
        images, labels = load_digits(return_X_y=True)
        x = torch.as_tensor(images, dtype=torch.float32) / 16.0
        y = torch.as_tensor(labels, dtype=torch.long)
        val, test, train = seeded_split(len(y), (self.val_fraction, self.test_fraction), self.seed)
        return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
