"""MNIST from IDX files under ``data_dir`` (torchvision downloads them when online)."""

from __future__ import annotations

import socket
from pathlib import Path

import torch

from .base import DataNotFoundError, TensorDataModule, seeded_split
from .idx import read_idx

__all__ = ["MNISTDataModule", "MNIST_FILES"]

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MEAN, _STD = 0.1307, 0.3081


def find_mnist_files(data_dir: Path) -> dict[str, Path] | None:
    """Paths of the four IDX files (``.gz`` or not) in ``data_dir`` or torchvision's
    ``data_dir/MNIST/raw`` layout; None if any is missing."""
    found = {}
    for key, stem in MNIST_FILES.items():
        for folder in (data_dir, data_dir / "MNIST" / "raw"):
            hits = [folder / name for name in (stem, stem + ".gz") if (folder / name).is_file()]
            if hits:
                found[key] = hits[0]
                break
        else:
            return None
    return found


class MNISTDataModule(TensorDataModule):
    """MNIST digits, 784 features normalised by the training mean and std.

    ``prepare_data`` (rank 0) downloads with torchvision when the files are missing and
    ``download`` is true; offline, it stops at once naming ``data_dir`` and the files it needs.
    The validation set is a seeded split of ``val_size`` images from the 60,000 training images.
    """

    num_features = 784
    num_classes = 10

    def __init__(
        self,
        data_dir: str = "data/mnist",
        batch_size: int = 60,
        val_size: int = 5000,
        download: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.val_size = val_size
        self.download = download

    def _missing_message(self, reason: str) -> str:
        names = ", ".join(f"{stem}[.gz]" for stem in MNIST_FILES.values())
        return (
            f"MNIST not found in {self.data_dir.resolve()} ({reason}). Expected the four IDX files "
            f"{names} in that directory (or in its MNIST/raw/). Get them with network access by "
            "running once with --data.download true, or copy them there (e.g. from the project's "
            "shared/data/mnist), or point --data.data_dir at a folder that has them."
        )

    def prepare_data(self) -> None:
        if find_mnist_files(self.data_dir) is not None:
            return
        if not self.download:
            raise DataNotFoundError(self._missing_message("download is off"))
        from torchvision.datasets import MNIST

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            MNIST(str(self.data_dir), train=True, download=True)
            MNIST(str(self.data_dir), train=False, download=True)
        except Exception as err:  # no network, refused, HTTP error
            raise DataNotFoundError(self._missing_message(f"download failed: {err}")) from err
        finally:
            socket.setdefaulttimeout(previous)

    def load(self):
        files = find_mnist_files(self.data_dir)
        if files is None:
            raise DataNotFoundError(self._missing_message("files missing"))
        arrays = {key: torch.from_numpy(read_idx(path).copy()) for key, path in files.items()}

        def images(key: str) -> torch.Tensor:
            return ((arrays[key].float() / 255.0) - _MEAN) / _STD

        x_train, y_train = images("train_images").flatten(1), arrays["train_labels"].long()
        x_test, y_test = images("test_images").flatten(1), arrays["test_labels"].long()
        if len(x_train) != len(y_train) or len(x_test) != len(y_test):
            raise ValueError(f"MNIST files in {self.data_dir} disagree on the number of images and labels")
        val, train = seeded_split(len(y_train), (self.val_size / len(y_train),), self.seed)
        return {
            "train": (x_train[train], y_train[train]),
            "val": (x_train[val], y_train[val]),
            "test": (x_test, y_test),
        }
