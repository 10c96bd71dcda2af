"""Writers of the on-disk data formats the data modules read (IDX, CIFAR pickle batches,
image folders, PTB text, SST-2 tsv files): tiny real-format data sets for the tests, shared by
the test modules. Test-only: the library reads these formats and never writes them."""

from __future__ import annotations

import gzip
import pickle
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qsd_lightning.data.cifar import CIFAR10_CLASSES, LAYOUTS, Arrays, Dataset

__all__ = [
    "PTB_VOCAB",
    "PTB_WORDS",
    "build_tiny_data",
    "review",
    "tiny_arrays",
    "write_cifar_pickles",
    "write_idx",
    "write_image_folder",
    "write_ptb",
    "write_tiny_mnist",
    "write_stsa",
    "write_tsv",
]


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


def tiny_arrays(n: int, num_classes: int = 10, seed: int = 0):
    """``n`` random uint8 images [n, 3, 32, 32], every class present (labels cycle)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % num_classes
    return x, y


# ------------------------------------------------------------------- PTB-format text
PTB_WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "<unk>", "N", "ran"]
#: the vocabulary size of ``write_ptb``'s text: its words + ``<eos>``
PTB_VOCAB = len(PTB_WORDS) + 1


def write_ptb(folder: Path, lines: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Tiny PTB-format files (Mikolov's layout: leading/trailing space, one sentence a line)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (lines or {"train": 60, "valid": 20, "test": 20}).items():
        text = "".join(" " + " ".join(rng.choice(PTB_WORDS) for _ in range(rng.randint(3, 9))) + " \n" for _ in range(n))
        if split == "train":  # every word type occurs in train
            text += " " + " ".join(PTB_WORDS) + " \n"
        (folder / f"ptb.{split}.txt").write_text(text)
    return folder


# ------------------------------------------------------------------- movie reviews (IMDB / SST-2)
POS = ["great", "wonderful", "superb", "loved", "moving"]
NEG = ["awful", "boring", "terrible", "hated", "dull"]
FILLER = ["the", "film", "a", "plot", "actor", "was", "and", "it", "story", "scene", "music", "isn't"]


def review(rng: random.Random, label: int) -> str:
    """One random review: filler words plus two sentiment words of the label, IMDB markup."""
    words = rng.choices(FILLER, k=rng.randint(2, 25)) + rng.choices(POS if label else NEG, k=2)
    rng.shuffle(words)
    return " ".join(words).capitalize() + ".<br /><br />The End!"


def write_tsv(root: Path, n_train: int = 60, dev: bool = True, test: str | None = "glue", seed: int = 0) -> Path:
    """SST-2 style ``train.tsv`` (+ ``dev.tsv``; ``test.tsv`` unlabelled as GLUE's, labelled, or none)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    def rows(n):
        return [(review(rng, i % 2).lower().replace("<br /><br />", " "), i % 2) for i in range(n)]

    (root / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows(n_train)), encoding="utf-8")
    if dev:
        (root / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows(16)), encoding="utf-8")
    if test == "glue":  # GLUE's test.tsv: no labels
        (root / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, (s, _) in enumerate(rows(10))), encoding="utf-8")
    elif test == "labelled":
        (root / "test.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows(14)), encoding="utf-8")
    return root


def write_stsa(root: Path, n_train: int = 60, dev: bool = True, test: bool = True, seed: int = 0, stem: str = "stsa.binary") -> Path:
    """Kim (2014)-style ``stsa.binary.{train,dev,test}``: one ``<label> <sentence>`` a line,
    lower-case, tokenised, with the PTB escapes the real files carry (``-lrb-``, ``\\/``)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    escapes = " -lrb- 9\\/10 -rrb- "

    def lines(n):
        return "".join(f"{i % 2} {review(rng, i % 2).lower().replace('<br /><br />', escapes)}\n" for i in range(n))

    (root / f"{stem}.train").write_text(lines(n_train), encoding="utf-8")
    if dev:
        (root / f"{stem}.dev").write_text(lines(16), encoding="utf-8")
    if test:
        (root / f"{stem}.test").write_text(lines(14), encoding="utf-8")
    return root


# ------------------------------------------------------------------- one tiny data set per architecture
def build_tiny_data(root: Path) -> Path:
    """Tiny CIFAR-10 pickles, PTB text and SST-2 tsv files under ``root``."""
    write_cifar_pickles(root / "cifar10", "cifar10", tiny_arrays(24, 10, 0), tiny_arrays(8, 10, 1))
    write_ptb(root / "ptb")
    write_tsv(root / "sst2")
    return root
