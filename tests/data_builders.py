"""Writers of the on-disk data formats the data modules read (IDX, CIFAR pickle batches,
image folders): tiny real-format data sets for the tests. Test-only: the library reads these
formats and never writes them."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qsd_lightning.data.cifar import CIFAR10_CLASSES, LAYOUTS, Arrays, Dataset

__all__ = ["write_cifar_pickles", "write_idx", "write_image_folder", "write_tiny_mnist"]


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzipped if ``path`` ends in .gz)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_tiny_mnist(folder, n_train=120, n_test=40, gz=True):
    """The four MNIST IDX files (gzipped unless ``gz`` is false) with random images and labels."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n))


def write_cifar_pickles(
    root: str | Path, dataset: Dataset, train: Arrays, test: Arrays, classes: Optional[Sequence[str]] = None
) -> Path:
    """Write uint8 ``[N, 3, 32, 32]`` images and labels as torchvision's pickle batches
    (same folder, file names, dict keys and protocol 2 as the originals); returns the folder."""
    layout = LAYOUTS[dataset]
    folder = Path(root) / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    classes = list(classes or layout.classes)

    def entry(x: np.ndarray, y: np.ndarray, label: str, start: int) -> dict:
        x = np.ascontiguousarray(x, dtype=np.uint8).reshape(len(x), -1)
        names = [f"image_{start + i:05d}.png" for i in range(len(x))]
        labels = [int(v) for v in y]
        if dataset == "cifar10":
            return {"batch_label": label, "labels": labels, "data": x, "filenames": names}
        return {"filenames": names, "batch_label": label, "fine_labels": labels,
                "coarse_labels": [v // 5 for v in labels], "data": x}

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    x, y = train
    chunks = np.array_split(np.arange(len(y)), len(layout.train))
    for i, (name, idx) in enumerate(zip(layout.train, chunks), start=1):
        label = f"training batch {i} of {len(layout.train)}" if dataset == "cifar10" else "training batch 1 of 1"
        dump(name, entry(x[idx], y[idx], label, int(idx[0]) if len(idx) else 0))
    dump(layout.test[0], entry(test[0], test[1], "testing batch 1 of 1", 0))
    if dataset == "cifar10":
        dump(layout.meta, {"num_cases_per_batch": len(chunks[0]), "label_names": classes, "num_vis": 3072})
    else:
        dump(layout.meta, {"fine_label_names": classes, "coarse_label_names": [f"superclass_{i}" for i in range(20)]})
    return folder


def write_image_folder(
    root: str | Path, train: Arrays, test: Arrays, classes: Sequence[str] = CIFAR10_CLASSES, fmt: str = "png"
) -> Path:
    """Write ``root/{train,test}/<class>/NNNN.<fmt>`` (png is lossless; jpg at quality 75)."""
    from PIL import Image

    root = Path(root)
    for split, (x, y) in (("train", train), ("test", test)):
        counts: dict[int, int] = {}
        for image, label in zip(np.asarray(x, dtype=np.uint8), np.asarray(y)):
            folder = root / split / classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            n = counts[int(label)] = counts.get(int(label), -1) + 1
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{n:04d}.{fmt}", quality=75)
    return root
