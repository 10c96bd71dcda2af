"""CIFAR-10 / CIFAR-100 from whatever form is on disk, with clear errors when it is not.

Sources, tried in this order under ``data_dir``:

1. torchvision's pickle batches: ``cifar-10-batches-py/{data_batch_1..5,test_batch}`` or
   ``cifar-100-python/{train,test}`` (also accepted when ``data_dir`` *is* that folder);
   ``prepare_data`` downloads torchvision's checksummed archive when nothing is found and
   ``download`` is on, and unpacks it with :func:`~qsd_lightning.data.archive.extract`
   (torchvision's layout, not its reader: that one unpickles with plain ``pickle.load``;
   batches here go through a restricted, size-bounded unpickler).
2. image folders ``train/<class>/*.png|jpg`` and ``test/<class>/...`` in ``data_dir`` or one
   of its subfolders. Classes are the folder names in sorted order (numerically if all are
   numbers), which for the CIFAR class names is the canonical label order.
3. a ``.tar.gz`` / ``.tar.xz`` / ``.tgz`` / ``.tar`` archive in ``data_dir`` holding either of
   the above, read in one streaming pass (nothing is extracted to disk).

Images are kept as uint8 ``[N, 3, 32, 32]`` and normalised per batch with the usual CIFAR
mean and std; augmentation (4-pixel zero-padded random crop + horizontal flip) applies to the
training split only. Everything is sorted and split with a fixed seed, so every process
builds the same data.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterable, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100

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
    require,
    seeded_split,
)
from .archive import ARCHIVE_ERRORS, archive_errors, extract, find_archives, tar_files
from .network import download, probe_urls

__all__ = [
    "CIFARDataModule",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR_STATS",
    "CIFARCollate",
    "random_crop_flip",
    "read_cifar",
]

log = logging.getLogger(__name__)

Dataset = Literal["cifar10", "cifar100"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
    camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
    leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
    otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
    rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
    sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
    willow_tree wolf woman worm""".split()
)

#: per-channel mean and std of the training images, in [0, 1] units
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True)
class _Layout:
    title: str
    folder: str  # torchvision's extracted folder
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    archive: str  # torchvision's download
    url: str
    md5: str  # of the archive
    classes: tuple[str, ...]


def _layout(reader: type, title: str, label_key: str, classes: tuple[str, ...]) -> _Layout:
    """The on-disk layout torchvision's ``reader`` (CIFAR10 or CIFAR100) downloads and reads:
    its folder, batch files, meta file and class-name key, archive and address."""
    return _Layout(
        title, reader.base_folder, tuple(name for name, _ in reader.train_list), tuple(name for name, _ in reader.test_list),
        reader.meta["filename"], label_key, reader.meta["key"], reader.filename, reader.url, reader.tgz_md5, classes,
    )


LAYOUTS = {
    "cifar10": _layout(CIFAR10, "CIFAR-10", "labels", CIFAR10_CLASSES),
    "cifar100": _layout(CIFAR100, "CIFAR-100", "fine_labels", CIFAR100_CLASSES),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SHAPE = (3, 32, 32)

Arrays = tuple[np.ndarray, np.ndarray]  # uint8 [N, 3, 32, 32], int64 [N]


# ----------------------------------------------------------------------------- pickle batches

_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})
#: the most images one pickle file of either data set holds (CIFAR-100's ``train``)
MAX_BATCH_IMAGES = 50000
_PER_IMAGE = 3072 + 512  # pixels, plus room for its label(s), file name and pickle overhead
_SCALAR_COST = 8  # an int or float counts as 8 bytes (what it becomes in an int64 array)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (what the CIFAR batches hold)."""

    _ALLOWED = _ALLOWED_GLOBALS

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} (not a CIFAR batch)")


class _TooBig(Exception):
    pass


# opcodes whose argument is a length and that many bytes: (bytes of the length, signed)
_SIZED = {
    "SHORT_BINSTRING": (1, False), "SHORT_BINBYTES": (1, False), "SHORT_BINUNICODE": (1, False),
    "BINSTRING": (4, True), "BINBYTES": (4, False), "BINUNICODE": (4, False),
    "BINUNICODE8": (8, False), "BINBYTES8": (8, False), "BYTEARRAY8": (8, False),
}


def _utf8_chars(raw: bytes, start: int, n: int) -> int:
    """Number of characters in the UTF-8 text ``raw[start : start + n]``: its bytes less the
    continuation bytes (0b10xxxxxx), counted 4 MB at a time."""
    continuation, step = 0, 1 << 22
    for i in range(start, start + n, step):
        chunk = np.frombuffer(raw, dtype=np.uint8, count=min(step, start + n - i), offset=i)
        continuation += int(np.count_nonzero((chunk & 0xC0) == 0x80))
    return n - continuation


def _opcodes(raw: bytes):
    """``(name, arg, size)`` per opcode of ``raw``, up to STOP. Strings and bytes are not
    decoded (``arg`` None) unless shorter than 256 bytes; ``size`` is their length in bytes."""
    import pickletools

    f, end = io.BytesIO(raw), len(raw)
    while True:
        code = f.read(1)
        if not code:
            raise pickle.UnpicklingError("no STOP opcode: truncated")
        op = pickletools.code2op.get(code.decode("latin-1"))
        if op is None:
            raise pickle.UnpicklingError(f"invalid pickle opcode {code!r} at byte {f.tell() - 1}")
        if op.name in _SIZED:
            width, signed = _SIZED[op.name]
            prefix = f.read(width)
            n = int.from_bytes(prefix, "little", signed=signed)
            if len(prefix) < width or n < 0 or f.tell() + n > end:
                raise pickle.UnpicklingError(f"{op.name} at byte {f.tell() - len(prefix) - 1} runs past the end: truncated")
            if n < 256:
                value = f.read(n)
                arg = value.decode("utf-8", "surrogatepass") if "UNICODE" in op.name else value
            else:
                start = f.seek(n, 1) - n
                arg = None
                if "UNICODE" in op.name:  # characters, not UTF-8 bytes: what the str (latin-1 text) takes
                    n = _utf8_chars(raw, start, n)
            yield op.name, arg, n
        else:
            arg = op.arg.reader(f) if op.arg is not None else None
            yield op.name, arg, len(arg) if isinstance(arg, (str, bytes)) else 0
        if op.name == "STOP":
            return


def _scan_pickle(raw: bytes, max_bytes: int, max_items: int) -> None:
    """Refuse a pickle whose objects would add up to more than ``max_bytes``, *before* it is
    unpickled, without building any of them.

    A pickle can name one object many times through its memo (``BINGET``): 86 kB can describe
    a list of 20,000 references to one 3,072-number row, which numpy then turns into a 480 MB
    array. So this walks the opcodes once, keeping for each object only its own size and the
    objects it holds (memo references included), and then adds up the size of the whole tree
    as if every reference were a copy. Strings and bytes count their length, numbers 8 bytes;
    a container holding more than ``max_items`` entries, a reference cycle, an unknown global,
    or an opcode outside what numpy arrays and plain containers use is refused too.
    Raises ``pickle.UnpicklingError`` (or ``_TooBig``) with the reason.
    """
    own: list[int] = []
    kids: list[list[int]] = []
    text: dict[int, str] = {}  # short str values, for STACK_GLOBAL
    stack: list[int] = []  # node ids; -1 is a MARK
    memo: dict[int, int] = {}
    root = None

    def node(size: int, children: list[int] | None = None, value=None) -> int:
        own.append(size)
        kids.append(children or [])
        if isinstance(value, str) and len(value) < 256:
            text[len(own) - 1] = value
        return len(own) - 1

    def pop() -> int:
        if not stack or stack[-1] == -1:
            raise pickle.UnpicklingError("stack underflow")
        return stack.pop()

    def pop_mark() -> list[int]:
        if -1 not in stack:
            raise pickle.UnpicklingError("no MARK on the stack")
        i = len(stack) - 1 - stack[::-1].index(-1)
        items = stack[i + 1 :]
        del stack[i:]
        return items

    def add(target: int, items: list[int]) -> None:
        kids[target].extend(items)
        if len(kids[target]) > max_items:
            raise _TooBig(f"a container of more than {max_items} entries")

    def check_global(module: str, name: str) -> None:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} (not a CIFAR batch)")

    for name, arg, length in _opcodes(raw):
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            root = pop()
            break
        if name == "MARK":
            stack.append(-1)
        elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "NONE", "NEWTRUE",
                      "NEWFALSE", "FLOAT", "BINFLOAT"):
            stack.append(node(_SCALAR_COST))
        elif name in ("STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
                      "BYTEARRAY8", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
            stack.append(node(length + _SCALAR_COST, value=arg))
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE", "EMPTY_SET"):
            stack.append(node(_SCALAR_COST))
        elif name in ("LIST", "TUPLE", "DICT", "FROZENSET"):
            items = pop_mark()
            stack.append(node(_SCALAR_COST))
            add(stack[-1], items)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            items = [pop() for _ in range(int(name[-1]))][::-1]
            stack.append(node(_SCALAR_COST, items))
        elif name in ("APPEND", "SETITEM"):
            items = [pop() for _ in range(1 if name == "APPEND" else 2)][::-1]
            add(stack[-1] if stack and stack[-1] != -1 else pop(), items)
        elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
            items = pop_mark()
            add(stack[-1] if stack and stack[-1] != -1 else pop(), items)
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            check_global(module, attr)
            if name == "INST":
                stack.append(node(_SCALAR_COST, pop_mark()))
            else:
                stack.append(node(_SCALAR_COST))
        elif name == "STACK_GLOBAL":
            attr, module = pop(), pop()
            if module not in text or attr not in text:
                raise pickle.UnpicklingError("STACK_GLOBAL without a module and name string")
            check_global(text[module], text[attr])
            stack.append(node(_SCALAR_COST))
        elif name in ("REDUCE", "NEWOBJ"):
            args, func = pop(), pop()
            stack.append(node(_SCALAR_COST, [func, args]))
        elif name == "NEWOBJ_EX":
            kwargs, args, cls = pop(), pop(), pop()
            stack.append(node(_SCALAR_COST, [cls, args, kwargs]))
        elif name == "OBJ":
            stack.append(node(_SCALAR_COST, pop_mark()))
        elif name == "BUILD":
            state = pop()
            add(stack[-1] if stack and stack[-1] != -1 else pop(), [state])
        elif name == "POP":
            if stack and stack[-1] == -1:
                stack.pop()
            else:
                pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1] if stack and stack[-1] != -1 else pop())
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack or stack[-1] == -1:
                raise pickle.UnpicklingError("memoising an empty stack")
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in memo:
                raise pickle.UnpicklingError(f"memo key {arg} not found")
            stack.append(memo[int(arg)])
        else:  # PERSID, BINPERSID, EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER: never in a CIFAR batch
            raise pickle.UnpicklingError(f"unexpected pickle opcode {name} (not a CIFAR batch)")
    if root is None:
        raise pickle.UnpicklingError("no STOP opcode: truncated")

    # total size of the tree below the root, every reference counted as a copy (memoised per
    # object, so this is linear in the number of objects and references)
    size: dict[int, int] = {}
    on_path: set[int] = set()
    todo: list[tuple[int, bool]] = [(root, False)]
    while todo:
        n, done = todo.pop()
        if done:
            on_path.discard(n)
            size[n] = min(own[n] + sum(size[k] for k in kids[n]), max_bytes + 1)  # clamped: no huge ints
            continue
        if n in size:
            continue
        if n in on_path:
            raise pickle.UnpicklingError("an object that contains itself (not a CIFAR batch)")
        on_path.add(n)
        todo.append((n, True))
        todo.extend((k, False) for k in kids[n] if k not in size)
    if size[root] > max_bytes:
        raise _TooBig(f"objects of more than {max_bytes} bytes once its repeated references are expanded")


def _unpickle(f: IO[bytes], where: str, max_images: int = MAX_BATCH_IMAGES) -> dict:
    """The dict in a CIFAR pickle, read with bounded memory: a file, or the objects it describes,
    larger than a batch of ``max_images`` images can be is refused before anything is built."""
    max_bytes = max_images * _PER_IMAGE + (1 << 20)
    max_file = 2 * max_bytes  # protocol-2 pickles of bytes store them as latin-1 text: up to 2 bytes each
    try:
        raw = f.read(max_file + 1)
    except ARCHIVE_ERRORS as err:
        raise CorruptDataError(f"cannot read CIFAR batch {where}: {type(err).__name__}: {err}") from err
    if len(raw) > max_file:
        raise CorruptDataError(
            f"{where} is larger than a CIFAR batch of {max_images} images can be (over {max_file} bytes): not a CIFAR batch"
        )
    try:
        _scan_pickle(raw, max_bytes, 2 * max_images + 1024)
        entry = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _TooBig as err:
        raise CorruptDataError(
            f"cannot read CIFAR batch {where}: it describes {err}, more than a batch of {max_images} images holds: "
            "corrupt or crafted file, download or copy it again"
        ) from None
    except Exception as err:  # truncated (EOFError, ValueError), garbage (UnpicklingError), bad array state
        raise CorruptDataError(f"cannot read CIFAR batch {where}: {type(err).__name__}: {err}") from err
    if not isinstance(entry, dict):
        raise CorruptDataError(f"{where} is not a CIFAR batch (a {type(entry).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _batch_arrays(entry: dict, label_key: str, where: str) -> Arrays:
    if "data" not in entry or label_key not in entry:
        raise CorruptDataError(f"{where} lacks the 'data' or {label_key!r} entry of a CIFAR batch")
    data = entry["data"]
    if not isinstance(data, np.ndarray):
        raise CorruptDataError(f"{where}: 'data' is a {type(data).__name__}, expected a uint8 numpy array [N, 3072]")
    try:
        labels = np.asarray(entry[label_key])
        ok = labels.ndim == 1 and (labels.dtype.kind in "iu" or len(labels) == 0)
        labels = labels.astype(np.int64) if ok else labels
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise CorruptDataError(f"{where}: {label_key!r} is not a list of integer labels")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise CorruptDataError(
            f"{where}: expected uint8 data of shape [N, 3072] and N labels, "
            f"got data {data.dtype}{list(data.shape)} and {len(labels)} labels"
        )
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _class_names(entry: dict, key: str, where: str) -> Optional[tuple[str, ...]]:
    names = entry.get(key)
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise CorruptDataError(f"{where}: {key!r} is not a list of class names")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names) or None


def _concat(parts: list[Arrays]) -> Arrays:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _find_pickle_folder(data_dir: Path, layout: _Layout) -> Optional[Path]:
    """The folder holding the batches; ``DataNotFoundError`` if only some of them are there."""
    names = (*layout.train, *layout.test)
    for folder in (data_dir / layout.folder, data_dir):
        present = [n for n in names if (folder / n).is_file()]
        if len(present) == len(names):
            return folder
        if present and (folder != data_dir or folder.name == layout.folder):
            missing = [n for n in names if n not in present]
            raise DataNotFoundError(
                f"{layout.title} batches in {folder.resolve()} are incomplete: missing {', '.join(missing)}. "
                f"Delete the folder and download again (--data.download true), or copy the missing files."
            )
    return None


def _read_pickle_folder(folder: Path, layout: _Layout) -> tuple[Arrays, Arrays, tuple[str, ...]]:
    def read(names: Sequence[str]) -> Arrays:
        parts = []
        for name in names:
            with open(folder / name, "rb") as f:
                entry = _unpickle(f, str(folder / name), _max_images(layout, name))
            parts.append(_batch_arrays(entry, layout.label_key, str(folder / name)))
        return _concat(parts)

    classes = layout.classes
    if (folder / layout.meta).is_file():
        meta = str(folder / layout.meta)
        with open(folder / layout.meta, "rb") as f:
            classes = _class_names(_unpickle(f, meta, _META_IMAGES), layout.names_key, meta) or classes
        _check_class_count(classes, layout, meta)
    return read(layout.train), read(layout.test), classes


_META_IMAGES = 100  # the meta files hold a few hundred bytes of names: the budget of 100 images is plenty


def _max_images(layout: _Layout, name: str) -> int:
    """How many images the batch file ``name`` holds at most (10,000; 50,000 for CIFAR-100's train)."""
    return MAX_BATCH_IMAGES // len(layout.train) if name in layout.train else 10000


def _check_class_count(classes: Sequence[str], layout: _Layout, where: str) -> None:
    if len(classes) != len(layout.classes):
        raise CorruptDataError(
            f"{where} names {len(classes)} classes, {layout.title} has {len(layout.classes)}; is --data.dataset right?"
        )


# ----------------------------------------------------------------------------- image folders

def _class_order(names: Iterable[str]) -> list[str]:
    names = sorted(set(names))
    return sorted(names, key=int) if names and all(n.isdigit() for n in names) else names


def _decode_image(raw: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # truncated or not an image
        raise CorruptDataError(f"cannot decode image {where}: {err}") from err
    if array.shape != (32, 32, 3):
        raise CorruptDataError(f"image {where} is {array.shape[1]}x{array.shape[0]}, expected 32x32")
    return array.transpose(2, 0, 1)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _assemble(images: dict[str, dict[str, list[tuple[str, np.ndarray]]]], where: str) -> tuple[Arrays, Arrays, tuple[str, ...]]:
    """``images[split][class] = [(file name, CHW uint8)]`` -> arrays sorted by class and name."""
    train_classes, test_classes = _class_order(images["train"]), _class_order(images["test"])
    if train_classes != test_classes:
        raise CorruptDataError(
            f"{where}: train/ and test/ have different class folders "
            f"({len(train_classes)} vs {len(test_classes)}: {sorted(set(train_classes) ^ set(test_classes))[:5]})"
        )
    index = {name: i for i, name in enumerate(train_classes)}

    def split(name: str) -> Arrays:
        xs, ys = [], []
        for cls in train_classes:
            for _, array in sorted(images[name][cls], key=lambda item: item[0]):
                xs.append(array)
                ys.append(index[cls])
        return np.stack(xs), np.asarray(ys, dtype=np.int64)

    return split("train"), split("test"), tuple(train_classes)


def _find_image_root(data_dir: Path) -> Optional[Path]:
    if not data_dir.is_dir():
        return None
    for root in (data_dir, *sorted(p for p in data_dir.iterdir() if p.is_dir())):
        if (root / "train").is_dir() and (root / "test").is_dir():
            return root
    return None


def _read_image_root(root: Path) -> tuple[Arrays, Arrays, tuple[str, ...]]:
    images: dict[str, dict[str, list]] = {}
    for split in ("train", "test"):
        images[split] = {}
        for cls_dir in sorted(p for p in (root / split).iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(p for p in cls_dir.iterdir() if p.is_file() and _is_image(p.name))
            images[split][cls_dir.name] = [(p.name, _decode_image(p.read_bytes(), str(p))) for p in files]
        if not any(images[split].values()):
            raise DataNotFoundError(f"no images (*.png, *.jpg) in {root / split}/<class>/")
    return _assemble(images, str(root))


# ----------------------------------------------------------------------------- archives

def _find_archives(data_dir: Path, dataset: str) -> list[Path]:
    """The archives in ``data_dir``, those named like ``dataset`` first."""
    archives = find_archives(data_dir)
    wanted = re.compile(r"cifar[-_]?100" if dataset == "cifar100" else r"cifar[-_]?10(?!0)", re.IGNORECASE)
    return sorted(archives, key=lambda p: (not wanted.search(p.name), p.name))


def _read_archive(path: Path, layout: _Layout) -> Optional[tuple[Arrays, Arrays, tuple[str, ...]]]:
    """Arrays from an archive of pickle batches or image folders; None if it holds neither."""
    batch_names = {*layout.train, *layout.test, layout.meta}
    batches: dict[str, dict] = {}
    images: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    with archive_errors(path):
        for member, f in tar_files(path):
            parts = PurePosixPath(member.name).parts
            where = f"{member.name} in {path}"
            if parts[-1] in batch_names and (len(parts) == 1 or parts[-2] == layout.folder):
                limit = _META_IMAGES if parts[-1] == layout.meta else _max_images(layout, parts[-1])
                batches[parts[-1]] = _unpickle(f, where, limit)
            elif len(parts) >= 3 and parts[-3] in images and _is_image(parts[-1]):
                array = _decode_image(f.read(), where)
                images[parts[-3]].setdefault(parts[-2], []).append((parts[-1], array))

    if all(name in batches for name in (*layout.train, *layout.test)):
        def read(names: Sequence[str]) -> Arrays:
            return _concat([_batch_arrays(batches[n], layout.label_key, f"{n} in {path}") for n in names])

        meta = f"{layout.meta} in {path}"
        classes = _class_names(batches.get(layout.meta, {}), layout.names_key, meta) or layout.classes
        _check_class_count(classes, layout, meta)
        return read(layout.train), read(layout.test), classes
    if any(images["train"].values()) and any(images["test"].values()):
        return _assemble(images, str(path))
    return None


# ----------------------------------------------------------------------------- entry points

def _find_source(data_dir: Path, dataset: str) -> Optional[tuple[str, Path]]:
    """Cheap look for data (nothing decoded): ("pickle" | "images" | "archive", path)."""
    layout = LAYOUTS[dataset]
    folder = _find_pickle_folder(data_dir, layout)
    if folder is not None:
        return "pickle", folder
    root = _find_image_root(data_dir)
    if root is not None:
        return "images", root
    archives = _find_archives(data_dir, dataset)
    if archives:
        return "archive", archives[0]
    return None


def read_cifar(data_dir: str | Path, dataset: Dataset = "cifar10") -> tuple[Arrays, Arrays, tuple[str, ...], str]:
    """``(train, test, classes, source)`` with uint8 images ``[N, 3, 32, 32]`` and int64 labels.

    ``DataNotFoundError`` if ``data_dir`` holds none of the supported forms,
    ``CorruptDataError`` naming the file when one cannot be read.
    """
    if dataset not in LAYOUTS:
        raise ConfigError(f"--data.dataset must be one of {', '.join(LAYOUTS)} (got {dataset!r})")
    data_dir, layout = Path(data_dir), LAYOUTS[dataset]
    check_data_dir(data_dir)
    found = _find_source(data_dir, dataset)
    if found is None:
        raise DataNotFoundError(missing_message(data_dir, dataset, "no data files"))
    kind, path = found
    if kind == "pickle":
        train, test, classes = _read_pickle_folder(path, layout)
    elif kind == "images":
        train, test, classes = _read_image_root(path)
    else:
        result = None
        for archive in _find_archives(data_dir, dataset):
            result = _read_archive(archive, layout)
            if result is not None:
                path = archive
                break
        if result is None:
            raise DataNotFoundError(
                missing_message(data_dir, dataset, "its archives hold neither CIFAR batches nor train/<class>/ images")
            )
        train, test, classes = result
    num_classes = len(layout.classes)
    for name, (x, y) in (("train", train), ("test", test)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise CorruptDataError(f"{path}: {name} labels outside 0..{num_classes - 1} for {layout.title}")
    if kind != "pickle" and len(classes) != num_classes:
        raise CorruptDataError(
            f"{path} has {len(classes)} class folders, {layout.title} has {num_classes}; "
            "is --data.dataset right?"
        )
    return train, test, classes, f"{kind} {path}"


def missing_message(data_dir: Path, dataset: str, reason: str) -> str:
    layout = LAYOUTS[dataset]
    batches = ", ".join((*layout.train, *layout.test))
    return (
        f"{layout.title} not found in {Path(data_dir).resolve()} ({reason}). Expected one of: torchvision's "
        f"pickle batches {layout.folder}/{{{batches}}}; image folders train/<class>/*.png|jpg and "
        f"test/<class>/*.png|jpg; or a .tar.gz/.tar.xz archive of either, in that directory. Get them with "
        f"network access by running once with --data.download true (torchvision fetches {layout.archive}), "
        "or copy them there, or point --data.data_dir at a folder that has them."
    )


# ----------------------------------------------------------------------------- batches

def random_crop_flip(x: Tensor, padding: int = 4, generator: Optional[torch.Generator] = None) -> Tensor:
    """Random ``H x W`` crops of the zero-padded batch and random horizontal flips, per image.

    ``x``: ``[B, C, H, W]`` (uint8 or float). Uses torch's global generator unless given one.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = (torch.rand(b, generator=generator) < 0.5)[:, None, None, None]
    return torch.where(flip, out.flip(-1), out)


class CIFARCollate:
    """Stacks uint8 samples, optionally augments, then normalises to float32."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], augment: bool = False) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = augment

    def __call__(self, samples: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        x = torch.stack([s[0] for s in samples])
        y = torch.stack([s[1] for s in samples])
        if self.augment:
            x = random_crop_flip(x)
        return (x.float() / 255.0 - self.mean) / self.std, y


class CIFARDataModule(TensorDataModule):
    """CIFAR-10 or CIFAR-100 (see the module docstring for the accepted on-disk forms).

    ``prepare_data`` (rank 0) downloads torchvision's batches when nothing is found and
    ``download`` is on; offline (its server unreachable within 3 s) it stops at once naming ``data_dir``,
    the files expected and how to get them. The validation set is a seeded split of
    ``val_size`` training images. ``augment``: 4-pixel zero-padded random crops and
    horizontal flips, training split only. ``train_size``: keep only that many images of the
    training split (a seeded choice, the same for every run with the same ``seed``), for
    data-limited experiments and short CPU budgets; ``None`` keeps them all.
    """

    def __init__(
        self,
        data_dir: str = "data/cifar10",
        dataset: Dataset = "cifar10",
        batch_size: PositiveInt = 128,
        val_size: PositiveInt = 5000,
        train_size: Optional[PositiveInt] = None,
        augment: bool = False,
        download: bool = True,
        seed: int = 0,
        num_workers: NonNegativeInt = 0,
    ) -> None:
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed)
        require(dataset in LAYOUTS, "dataset", f"must be one of {', '.join(LAYOUTS)}", dataset)
        check_positive("val_size", val_size)
        check_positive("train_size", train_size, optional=True)
        self.dataset = dataset
        self.val_size = val_size
        self.train_size = train_size
        self.augment = augment
        self.download = download
        self.num_classes = len(LAYOUTS[dataset].classes)
        self.mean, self.std = CIFAR_STATS[dataset]
        self.classes: tuple[str, ...] = LAYOUTS[dataset].classes
        self.source: str | None = None

    def prepare_data(self) -> None:
        check_data_dir(self.data_dir)
        if _find_source(self.data_dir, self.dataset) is not None:
            return
        if not self.download:
            raise DataNotFoundError(missing_message(self.data_dir, self.dataset, "download is off"))
        layout = LAYOUTS[self.dataset]
        why = probe_urls([layout.url])
        if why is not None:  # offline: fail in seconds, not after torchvision's retries
            raise DataNotFoundError(missing_message(self.data_dir, self.dataset, f"download failed: {why}"))
        try:  # torchvision's URL and checksum; not its reader, which unpickles with plain pickle.load
            download(layout.url, self.data_dir / layout.archive, layout.md5)
        except Exception as err:  # refused, HTTP error, bad checksum
            raise DataNotFoundError(missing_message(self.data_dir, self.dataset, f"download failed: {err}")) from err
        extract(self.data_dir / layout.archive, self.data_dir)

    def load(self):
        (x_train, y_train), (x_test, y_test), self.classes, self.source = read_cifar(self.data_dir, self.dataset)
        log.info("%s: %d train, %d test images from %s", self.dataset, len(y_train), len(y_test), self.source)
        check_val_size(self.val_size, len(y_train), self.source)
        val, train = seeded_split(len(y_train), (self.val_size / len(y_train),), self.seed)
        if self.train_size is not None:
            if self.train_size > len(train):
                raise ConfigError(
                    f"--data.train_size {self.train_size} is more than the {len(train)} training images left "
                    f"after the {self.val_size}-image validation split of {self.source}: lower --data.train_size or --data.val_size"
                )
            train = train[: self.train_size]  # the split is a seeded permutation: a random subset
        x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
        return {
            "train": (x_train[train], y_train[train]),
            "val": (x_train[val], y_train[val]),
            "test": (torch.from_numpy(x_test), torch.from_numpy(y_test)),
        }

    def collate_fn(self, split: str) -> "CIFARCollate":
        return CIFARCollate(self.mean, self.std, augment=self.augment and split == "train")
