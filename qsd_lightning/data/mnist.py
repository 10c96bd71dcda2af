"""MNIST from IDX files under ``data_dir`` (torchvision downloads them when online)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torchvision.datasets import MNIST

from .base import (
    ConfigError,
    CorruptDataError,
    DataNotFoundError,
    NonNegativeInt,
    PositiveInt,
    TensorDataModule,
    check_data_dir,
    check_positive,
    check_val_size,
    seeded_split,
)
from .idx import read_idx
from .network import download, probe_urls

__all__ = ["MNISTDataModule", "MNIST_FILES"]

#: the four IDX files, named as torchvision downloads them (less ``.gz``):
#: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte
MNIST_FILES = dict(
    zip(("train_images", "train_labels", "test_images", "test_labels"), (name.removesuffix(".gz") for name, _ in MNIST.resources))
)
_MEAN, _STD = 0.1307, 0.3081


def _names(stem: str) -> tuple[str, ...]:
    # LeCun's names, gzipped or not, and the dotted spelling of some mirrors (train-images.idx3-ubyte)
    dotted = stem.replace("-idx", ".idx")
    return (stem, stem + ".gz", dotted, dotted + ".gz")


def find_mnist_files(data_dir: Path) -> dict[str, Path] | None:
    """Paths of the four IDX files (``.gz`` or not) in ``data_dir`` or torchvision's
    ``data_dir/MNIST/raw`` layout; None if any is missing. A folder named like a file (what
    some unzip tools make: ``train-images-idx3-ubyte/train-images-idx3-ubyte``) is looked into."""
    found = {}
    for key, stem in MNIST_FILES.items():
        for folder in (data_dir, data_dir / "MNIST" / "raw"):
            candidates = [folder / name for name in _names(stem)]
            candidates += [c / name for c in candidates if c.is_dir() for name in _names(stem)]
            hits = [c for c in candidates if c.is_file()]
            if hits:
                found[key] = hits[0]
                break
        else:
            return None
    return found


def _check_idx(path: Path, array: np.ndarray, kind: str) -> None:
    """``CorruptDataError`` naming ``path`` unless ``array`` is MNIST images or labels."""
    shape = "x".join(str(n) for n in array.shape) or "scalar"
    if kind == "images":
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (28, 28):
            hint = " (a labels file?)" if array.ndim == 1 else ""
            raise CorruptDataError(
                f"{path} is not an MNIST images file{hint}: it holds {array.dtype} [{shape}], expected uint8 [N x 28 x 28]"
            )
    else:
        if array.ndim != 1 or array.dtype.kind not in "iu":
            hint = " (an images file?)" if array.ndim == 3 else ""
            raise CorruptDataError(
                f"{path} is not an MNIST labels file{hint}: it holds {array.dtype} [{shape}], expected uint8 [N] labels 0-9"
            )
        bad = np.flatnonzero((array < 0) | (array > 9))
        if len(bad):
            raise CorruptDataError(
                f"{path}: label {int(array[bad[0]])} at index {int(bad[0])} is outside 0-9 "
                f"({len(bad)} such labels): not an MNIST labels file, or corrupt"
            )
    if len(array) == 0:
        raise CorruptDataError(f"{path} holds no {kind}: download or copy it again")


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
        batch_size: PositiveInt = 60,
        val_size: PositiveInt = 5000,
        download: bool = True,
        seed: int = 0,
        num_workers: NonNegativeInt = 0,
        train_size: Optional[PositiveInt] = None,
    ) -> None:
        """``train_size``: train on only this many of the images left after the validation
        split (the first of the same seeded permutation, so a smaller set is a subset of a larger
        one; the regime where dropout pays, docs/results.md); None: all of them."""
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_positive("val_size", val_size)
        check_positive("train_size", train_size, optional=True)
        self.val_size = val_size
        self.train_size = train_size
        self.download = download

    def _missing_message(self, reason: str) -> str:
        names = ", ".join(f"{stem}[.gz]" for stem in MNIST_FILES.values())
        return (
            f"MNIST not found in {self.data_dir.resolve()} ({reason}). Expected the four IDX files "
            f"{names} in that directory (or in its MNIST/raw/). Get them with network access by "
            "running once with --data.download true, or copy them there, or point --data.data_dir at a "
            "folder that has them."
        )

    def prepare_data(self) -> None:
        check_data_dir(self.data_dir)
        if find_mnist_files(self.data_dir) is not None:
            return
        if not self.download:
            raise DataNotFoundError(self._missing_message("download is off"))
        why = probe_urls(MNIST.mirrors)
        if why is not None:  # offline: fail in seconds, not after torchvision's retries
            raise DataNotFoundError(self._missing_message(f"download failed: {why}"))
        for filename, md5 in MNIST.resources:  # torchvision's file list and checksums, our bounded download
            errors = []
            for mirror in MNIST.mirrors:
                try:
                    download(mirror + filename, self.data_dir / filename, md5)
                    break
                except OSError as err:  # refused, HTTP error, stalled, bad checksum: the next mirror
                    errors.append(f"{mirror}: {err}")
            else:
                raise DataNotFoundError(self._missing_message(f"download failed: {'; '.join(errors)}"))

    def load(self):
        check_data_dir(self.data_dir)
        files = find_mnist_files(self.data_dir)
        if files is None:
            raise DataNotFoundError(self._missing_message("files missing"))
        raw = {}
        for key, path in files.items():
            raw[key] = read_idx(path)
            _check_idx(path, raw[key], key.split("_")[1])
        for split in ("train", "test"):
            n_images, n_labels = len(raw[f"{split}_images"]), len(raw[f"{split}_labels"])
            if n_images != n_labels:
                raise CorruptDataError(
                    f"{files[split + '_images']} holds {n_images} images but {files[split + '_labels']} holds "
                    f"{n_labels} labels: files of different data sets? copy a matching pair"
                )
        check_val_size(self.val_size, len(raw["train_labels"]), files["train_labels"].parent)
        arrays = {key: torch.from_numpy(array.copy()) for key, array in raw.items()}

        def images(key: str) -> torch.Tensor:
            return ((arrays[key].float() / 255.0) - _MEAN) / _STD

        x_train, y_train = images("train_images").flatten(1), arrays["train_labels"].long()
        x_test, y_test = images("test_images").flatten(1), arrays["test_labels"].long()
        val, train = seeded_split(len(y_train), (self.val_size / len(y_train),), self.seed)
        if self.train_size is not None:
            if self.train_size > len(train):
                raise ConfigError(
                    f"--data.train_size {self.train_size}: only {len(train)} training images are left after the "
                    f"validation split of {self.val_size}; give at most {len(train)} (or null for all)"
                )
            train = train[: self.train_size]
        return {
            "train": (x_train[train], y_train[train]),
            "val": (x_train[val], y_train[val]),
            "test": (x_test, y_test),
        }
