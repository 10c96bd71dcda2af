"""Folder locks: the grid lock in ``<out>`` and each run folder's lock.

An exclusive ``flock`` that the kernel releases when its holder dies (even by SIGKILL), so it
is never stale; the holder writes ``pid N on HOST since TIME`` into the file for whoever finds
it taken. On a folder shared between machines the lock is the filesystem's: NFS (Linux clients
map ``flock`` to NFS byte-range locks), GPFS and CephFS lock across machines; Lustre does when
mounted with ``-o flock`` (with ``localflock`` only within one machine; without either, ``flock``
fails and the runner says so in one line instead of running unlocked).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

from ..errors import UserError

try:  # POSIX advisory locks; without them (Windows) the folder locks are not taken
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["GRID_LOCK", "RUN_LOCK", "OutputFolderError", "FolderInUse", "FolderLock", "lock_holder"]

GRID_LOCK = ".grid.lock"  # in <out>: held by the runner (and --report-only) while it works
RUN_LOCK = ".run.lock"  # in each run folder: held by the run's subprocess for its lifetime


class OutputFolderError(UserError):
    """``--out`` cannot be used (a file, not writable): reported in one line."""


class FolderInUse(OutputFolderError):
    """Another live process holds the folder's lock: reported in one line naming it."""


def _read_holder(path: Path) -> str:
    """What the lock file says about its holder (``pid N on HOST since ...``), one line."""
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "another process (pid not recorded yet)"


class FolderLock:
    """An exclusive ``flock`` on ``path``, released by the kernel when its holder dies (even by
    SIGKILL), so it is never stale. The holder writes ``pid N on HOST since TIME`` into the file,
    and whoever finds the lock taken reads it from there.
    """

    def __init__(self, path: Path, what: str, hint: str = ""):
        self.path, self.what, self.hint = Path(path), what, hint
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0, on_wait=None) -> "FolderLock":
        """Take the lock, waiting up to ``wait`` seconds (``math.inf``: until it is free);
        raise :class:`FolderInUse` if another process still holds it. ``on_wait(holder)`` is
        called once when it has to wait."""
        if fcntl is None:  # pragma: no cover
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline, told = time.monotonic() + wait, False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if not isinstance(err, BlockingIOError):
                        raise _no_locks(self.path, err) from None
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise FolderInUse(f"{self.what} is in use by {_read_holder(self.path)}" + (f"; {self.hint}" if self.hint else "")) from None
                    if on_wait is not None and not told:
                        on_wait(_read_holder(self.path))
                        told = True
                    time.sleep(min(0.25, left))
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _no_locks(path: Path, err: OSError) -> OutputFolderError:
    """The filesystem refuses ``flock`` (ENOLCK, ENOSYS, EOPNOTSUPP: e.g. Lustre without ``-o flock``)."""
    name = errno.errorcode.get(err.errno or 0, str(err.errno))
    return OutputFolderError(
        f"{path.parent}: this filesystem does not support file locks ({name}: {err.strerror}), which keep two runners "
        "off one folder; use a folder on a filesystem with locks (Lustre: mounted with -o flock)"
    )


def lock_holder(path: Path) -> str | None:
    """Who holds the lock at ``path`` (``pid N on HOST ...``), or None when it is free or absent."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path)
        except OSError as err:
            raise _no_locks(Path(path), err) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
