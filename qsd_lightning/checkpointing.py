"""Reading checkpoints safely and checking that they fit the model.

Checkpoints are pickles, and a pickle can run code when it is loaded. Every checkpoint a user
names is therefore read with ``torch.load(weights_only=True)``: tensors, plain containers and
numbers only. The project's own checkpoints (random generator states included) load that way.
A file that needs more is refused in one line; ``trusted=True`` (the CLI's
``--weights_only false``, Lightning's own flag) is the explicit opt-in for a legacy file the
user trusts.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import CheckpointError

__all__ = ["CheckpointError", "load_checkpoint", "check_checkpoint_fits"]


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
