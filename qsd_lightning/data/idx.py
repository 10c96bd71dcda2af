"""Reader of the IDX format (MNIST, Fashion-MNIST), plain or gzipped, with clear errors.

torchvision's reader of the format (``read_sn3_pascalvincent_tensor``, 0.29) is not used: it
opens no gzipped file (the form torchvision itself downloads), reads a file whole with no bound,
and reports a bad file with a bare ``AssertionError`` or a reshape error that names no file.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from .base import CorruptDataError

__all__ = ["read_idx"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
#: the largest array read_idx accepts by default (MNIST's largest file holds 47 MB)
MAX_BYTES = 1 << 31


def _read_exactly(f, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_idx(path: str | Path, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """The array stored in an IDX file; ``CorruptDataError`` naming the file if it is broken.

    Reads the header first and then only the bytes it declares (at most ``max_bytes``), so a
    corrupt header or a gzip bomb cannot make it allocate more than that.
    """
    path = Path(path)
    if path.is_dir():
        raise CorruptDataError(f"{path} is a directory, expected an IDX file: move the file it holds up one level")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            magic = _read_exactly(f, 4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
                empty = " (the file is empty)" if not magic else ""
                raise CorruptDataError(f"{path} is not an IDX file (bad magic number){empty}: download or copy it again")
            dtype, ndim = np.dtype(_DTYPES[magic[2]]), magic[3]
            dims = _read_exactly(f, 4 * ndim)
            if len(dims) < 4 * ndim:
                raise CorruptDataError(f"{path} is truncated (incomplete header): download or copy it again")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
            if size > max_bytes:
                raise CorruptDataError(f"{path} declares an array of shape {shape} ({size} bytes, more than {max_bytes}): corrupt header")
            body = _read_exactly(f, size + 1)
    except CorruptDataError:
        raise
    except (OSError, EOFError, zlib.error) as err:  # bad gzip stream, truncated archive, unreadable
        raise CorruptDataError(f"cannot read {path}: {err}") from err
    if len(body) != size:
        header = 4 + 4 * ndim
        raise CorruptDataError(
            f"{path} has {header + len(body)}{'+' if len(body) > size else ''} bytes, expected {header + size} "
            f"for shape {shape}: truncated or corrupt"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)
