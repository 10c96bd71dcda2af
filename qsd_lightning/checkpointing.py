"""Reading checkpoints safely and checking that they fit the model.

Checkpoints are pickles, and a pickle can run code when it is loaded. Every checkpoint a user
names is therefore read with ``torch.load(weights_only=True)``: tensors, plain containers and
numbers only. The project's own checkpoints (random generator states included) load that way.
A file that needs more is refused in one line; ``trusted=True`` (the CLI's
``--weights_only false``, Lightning's own flag) is the explicit opt-in for a legacy file the
user trusts.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .errors import CheckpointError

__all__ = ["AtomicCheckpointIO", "CheckpointError", "load_checkpoint", "check_checkpoint_fits", "readable_checkpoint"]

#: errors of a full or over-quota disk, reported in one line
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def load_checkpoint(path: str | Path, trusted: bool = False) -> dict:
    """The checkpoint at ``path`` as a dict, loaded without running any code it may hold.

    Raises :class:`CheckpointError` (one line naming the file) when the file is missing, a
    directory, truncated, not a Lightning checkpoint, or needs code to load (unless
    ``trusted``).
    """
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the path of a .ckpt file in it")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(p, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        if trusted:
            raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
        first = str(err).strip().splitlines()
        detail = next((line.strip() for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it holds objects that run code when loaded ({detail}). "
            "If you made this file and trust it, pass --weights_only false"
        ) from None
    except Exception as err:  # truncated, not a torch file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}".splitlines()[0]) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def check_checkpoint_fits(checkpoint: dict, model: torch.nn.Module, path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming what differs if the weights do not fit ``model``."""
    saved, expected = checkpoint["state_dict"], model.state_dict()
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shapes = sorted(
        k for k in set(saved) & set(expected)
        if hasattr(saved[k], "shape") and hasattr(expected[k], "shape") and saved[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"{name}: {few(keys)}" for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__} as configured ({'; '.join(parts)}). "
            "It was saved by another architecture or configuration: use the config it was trained with."
        )


def readable_checkpoint(path: str | Path, trusted: bool = False) -> bool:
    """Whether ``path`` loads as a Lightning checkpoint (safely unless ``trusted``)."""
    try:
        load_checkpoint(path, trusted)
    except CheckpointError:
        return False
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints that are either complete or absent, on any local filesystem.

    Lightning's default writes the temporary file in ``$TMPDIR`` and then copies it over the
    target, which is not atomic when the checkpoint directory is on another filesystem
    (cluster scratch, NFS): a kill mid-copy leaves a truncated ``last.ckpt``. Here the
    temporary file is written beside the target, flushed to disk and renamed over it
    (``os.replace`` is atomic within one filesystem). On any failure the temporary file is
    removed, so the previous checkpoint stays intact; a full disk becomes a one-line
    :class:`CheckpointError`. Remote paths (``s3://``, ...) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # serialise first: torch's zip writer hides the errno of a failed write
        torch.save(checkpoint, buffer)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buffer.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException as err:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if isinstance(err, OSError) and err.errno in _DISK_FULL:
                raise CheckpointError(
                    f"cannot write checkpoint {target}: {os.strerror(err.errno)}; free space on that disk or set "
                    "--trainer.default_root_dir to another one (earlier checkpoints are intact)"
                ) from None
            raise
        _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (best effort: not every filesystem supports it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
