"""The one archive helper of the data modules: find tar archives in a folder, read the files
they hold in one streaming pass, or unpack a download.

Reading extracts nothing: members are read from the stream into memory by the caller, so no
member name (``../x``, an absolute path, a link) can write outside the data folder, and an
archive read twice costs no disk. :func:`extract` (for downloads) refuses members that would
land outside the destination, links leaving it and device files. Any error of the archive
itself (truncated download, bad compression stream) becomes one ``CorruptDataError`` naming
the archive.
"""

from __future__ import annotations

import lzma
import tarfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from ..errors import CorruptDataError, UserError

__all__ = ["ARCHIVE_ERRORS", "ARCHIVE_SUFFIXES", "archive_errors", "extract", "find_archives", "is_archive", "tar_files"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tar")
#: what reading a damaged archive raises (tarfile, gzip, xz, bz2, the file system)
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error)


def is_archive(path: Path) -> bool:
    """Whether ``path`` is named like an archive this module reads (case-insensitive)."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def find_archives(folder: Path) -> list[Path]:
    """The archives directly in ``folder``, sorted by name ([] if it is not a folder)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_archive(p))


@contextmanager
def archive_errors(path: Path) -> Iterator[None]:
    """Turn a damaged-archive error raised in the block into ``CorruptDataError`` naming ``path``
    (the caller's own errors, such as a ``CorruptDataError`` naming a member, pass unchanged)."""
    try:
        yield
    except UserError:  # DataNotFoundError is an OSError too: not the archive's fault
        raise
    except ARCHIVE_ERRORS as err:
        raise CorruptDataError(
            f"cannot read archive {path}: {type(err).__name__}: {err} (truncated or corrupt? copy or download it again)"
        ) from err


def tar_files(path: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes]]]:
    """``(member, file object)`` for each regular file of the tar archive ``path`` (any
    compression), in archive order, streaming (one pass, no seeks). Read a member before
    asking for the next one; wrap the loop in :func:`archive_errors`."""
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if member.isfile():
                yield member, tar.extractfile(member)


def extract(path: Path, dest: Path) -> None:
    """Unpack the tar archive ``path`` (any compression) into ``dest``. A member that would
    land outside ``dest`` (``../x``, an absolute path, a link pointing out) or that is a device
    file is refused with ``CorruptDataError`` naming the archive, before it is written."""
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with archive_errors(path), tarfile.open(path, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            try:
                tar.extractall(dest, filter="data")
            except tarfile.FilterError as err:
                raise CorruptDataError(f"{path}: refused to extract: {err}") from err
            return
        root = dest.resolve()
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or (target != root and root not in target.parents):
                raise CorruptDataError(f"{path}: refused to extract {member.name!r}: not a plain file inside {dest}")
        tar.extractall(dest)
