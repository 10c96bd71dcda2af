"""Finding the checkpoint that ``--ckpt_path last`` means.

A run keeps its checkpoints and the config that made it (``config.yaml``) in one folder. These
helpers list the ``last*.ckpt`` files under a root (newest first, one per run folder), pick the
newest readable checkpoint of a run when its ``last.ckpt`` is damaged, and read which data
module a run was trained on. Which run matches the current configuration is decided by the CLI,
which owns the parser.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from .checkpointing import CheckpointError, load_checkpoint

__all__ = ["RUN_CONFIG", "last_checkpoints", "newest_readable", "saved_data_config"]

#: the file beside a run's checkpoints holding the config that made it
RUN_CONFIG = "config.yaml"

_SKIP_DIRS = {".git", "wandb", "__pycache__", "node_modules"}


def last_checkpoints(root: Path) -> list[Path]:
    """``last*.ckpt`` files under ``root``, newest first, the newest one per folder."""
    found: dict[Path, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        for name in filenames:
            if name.startswith("last") and name.endswith(".ckpt"):
                path = Path(dirpath) / name
                current = found.get(path.parent)
                if current is None or _mtime(path) > _mtime(current):
                    found[path.parent] = path
    return sorted(found.values(), key=_mtime, reverse=True)


def newest_readable(last: Path, trusted: bool = False) -> tuple[Path, dict | None, str]:
    """(path, checkpoint, note): ``last`` itself when it loads; otherwise the newest readable
    checkpoint in its folder, with a note saying why; checkpoint None when none loads."""
    try:
        return last, load_checkpoint(last, trusted), ""
    except CheckpointError as err:
        reason = str(err)
    for other in sorted(last.parent.glob("*.ckpt"), key=_mtime, reverse=True):
        if other == last:
            continue
        try:
            checkpoint = load_checkpoint(other, trusted)
        except CheckpointError:
            continue
        return other, checkpoint, f"{last} is unreadable ({reason}); using the newest readable checkpoint of its run, {other}"
    return last, None, reason


def saved_data_config(checkpoint: Path) -> str | None:
    """The data module class a run was trained on, from the ``config.yaml`` beside its
    checkpoints (None when there is none or it cannot be read)."""
    path = checkpoint.parent / RUN_CONFIG
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    data = saved.get("data") if isinstance(saved, dict) else None
    return data.get("class_path") if isinstance(data, dict) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
