"""``predict`` writes one CSV file per run: :class:`PredictionWriter`.

The contract every task's ``predict_step`` keeps: it returns a dict of tensors whose first
dimension is the batch, with an ``index`` column (``LongTensor[B]``) holding each sample's
index in the predict data set. Classifiers return ``index``, ``pred`` and ``probs``
(``[B, C]``); language models ``index``, ``nll`` (summed over the sequence), ``tokens`` and
``ppl`` (= exp(nll / tokens)). :func:`sample_indices` and :func:`sequence_indices` compute the
index for map-style and for windowed-stream data.

The file: ``<dirpath>/predictions.csv`` (``dirpath`` defaults to ``trainer.default_root_dir``,
the run's output folder); an existing file is never replaced: the next run writes
``predictions.1.csv``, then ``predictions.2.csv`` ... One column per 1-D tensor, ``<key>_<j>``
columns for a 2-D tensor (``probs_0 .. probs_9``), one row per sample sorted by ``index``.
Under DDP every rank sends its rows to rank 0, which merges them and writes the file; it is
written to a temporary file beside the target and then linked into place, so a reader never
sees half a file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from .._lightning_compat import attached_trainer

__all__ = ["PredictionWriter", "sample_indices", "sequence_indices", "next_free_path"]

INDEX = "index"
DATALOADER = "dataloader_idx"


# ---------------------------------------------------------------- indices for predict_step


def _predict_loader(module, dataloader_idx: int):
    trainer = attached_trainer(module)
    loaders = getattr(trainer, "predict_dataloaders", None) if trainer is not None else None
    if isinstance(loaders, (list, tuple)):
        return loaders[dataloader_idx] if dataloader_idx < len(loaders) else None
    if isinstance(loaders, Mapping):
        return list(loaders.values())[dataloader_idx] if dataloader_idx < len(loaders) else None
    return loaders


def sample_indices(module, batch_size: int, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
    """``LongTensor[batch_size]``: the indices, in the predict data set, of the samples of
    batch ``batch_idx`` (call it from ``predict_step``).

    In ``predict`` Lightning wraps a ``DataLoader``'s batch sampler so that it records the
    indices it yields (also under DDP, where its ``DistributedSampler`` gives each rank every
    ``world_size``-th index, and with any batch sampler, e.g. one that batches by length); they
    are read from there. A loader without a sampler (an iterable data set) counts the samples
    in the order they come: right for one process reading the data in order (called outside
    a trainer: ``batch_idx * batch_size + arange(batch_size)``).
    """
    loader = _predict_loader(module, dataloader_idx)
    seen = getattr(getattr(loader, "batch_sampler", None), "seen_batch_indices", None)
    device = getattr(module, "device", None)
    if seen is not None and batch_idx < len(seen) and len(seen[batch_idx]) == batch_size:
        return torch.as_tensor(list(seen[batch_idx]), dtype=torch.long, device=device)
    counters = module.__dict__.setdefault("_predict_sample_counters", {})
    start = 0 if batch_idx == 0 else counters.get(dataloader_idx, batch_idx * batch_size)  # called alone: full batches
    counters[dataloader_idx] = start + batch_size
    return torch.arange(start, start + batch_size, dtype=torch.long, device=device)


def sequence_indices(module, rows: int, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
    """``LongTensor[rows]``: the index of each row of window ``batch_idx`` when the predict data
    are contiguous streams read in windows (language modelling with truncated BPTT).

    The data set says where its rows are (``dataset.sequence_indices(window)``, as
    :class:`~qsd_lightning.data.ptb.BPTTWindows` does: the sequences numbered in text order
    over all ranks); otherwise the rows of each window are counted as samples
    (:func:`sample_indices`).
    """
    dataset = getattr(_predict_loader(module, dataloader_idx), "dataset", None)
    locate = getattr(dataset, "sequence_indices", None)
    if callable(locate):
        index = torch.as_tensor(locate(batch_idx), dtype=torch.long)
        if index.shape == (rows,):
            return index.to(getattr(module, "device", None))
    return sample_indices(module, rows, batch_idx, dataloader_idx)


# ---------------------------------------------------------------- the writer


def next_free_path(directory: Path, filename: str) -> Iterator[Path]:
    """The names a run may take, in order: ``predictions.csv``, ``predictions.1.csv``, ..."""
    stem, suffix = os.path.splitext(filename)
    yield directory / filename
    for n in range(1, 10000):
        yield directory / f"{stem}.{n}{suffix}"


def _link_without_replacing(tmp: Path, directory: Path, filename: str) -> Path:
    """Give the complete file ``tmp`` the first free name of :func:`next_free_path`; an existing
    file (another run's, maybe written a moment ago by a concurrent run) is never replaced:
    ``os.link`` fails if the name exists. Where hard links are not supported, the name is
    checked and the file moved there with ``os.replace``."""
    for target in next_free_path(directory, filename):
        try:
            os.link(tmp, target)
        except FileExistsError:
            continue
        except OSError:  # no hard links here (some network or FUSE file systems)
            if target.exists():
                continue
            os.replace(tmp, target)
            return target
        tmp.unlink()
        return target
    raise FileExistsError(f"{directory} already holds {filename} and 9,999 numbered copies: move some away")


def _format_column(values: Tensor) -> list[str]:
    if values.dtype == torch.bool:
        return [str(int(v)) for v in values.tolist()]
    if values.is_floating_point():
        if values.dtype == torch.float64:
            return [repr(v) for v in values.tolist()]
        return [format(v, ".9g") for v in values.float().tolist()]  # float32 round-trips in 9 digits
    return [str(v) for v in values.tolist()]


class PredictionWriter(BasePredictionWriter):
    """Write what ``predict`` computes to one CSV file per run and say where, in one line.

    Every task's ``predict_step`` returns a dict of tensors with the batch first and an
    ``index`` (the sample's index in the predict data set; without one, the batch indices
    Lightning's sampler gave are used). The rows of all batches (and, under DDP, of all ranks,
    gathered on rank 0) are sorted by ``index`` and written to
    ``<dirpath>/<filename>``: 1-D tensors one column each, 2-D tensors ``<key>_<j>`` columns,
    larger ones flattened per sample. A file of that name is never overwritten: the next free
    name ``predictions.1.csv``, ``predictions.2.csv`` ... is taken. Rank 0 prints
    ``predictions: <rows> rows -> <path>``; :attr:`path` holds it on every rank.

    Args:
        dirpath: the folder; default (null): ``trainer.default_root_dir``, the run's output
            folder (``runs/<experiment>``): the same on every rank, present with or without
            loggers, and unlike a logger's version folder not created anew by each command.
        filename: the file's name (``predictions.csv``).
    """

    def __init__(self, dirpath: Optional[str] = None, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        if not filename or os.sep in filename or (os.altsep and os.altsep in filename):
            raise ValueError(f"PredictionWriter: filename must be a plain file name, got {filename!r} (use dirpath for the folder)")
        self.dirpath = dirpath
        self.filename = filename
        self.path: Optional[Path] = None
        self.rows = 0
        self._parts: dict[int, dict[str, list[Tensor]]] = {}
        self._counted: dict[int, int] = {}

    # -- collecting

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._parts, self._counted = {}, {}
        self.path, self.rows = None, 0

    def _as_columns(self, prediction: Any, batch_indices, dataloader_idx: int) -> dict[str, Tensor]:
        if isinstance(prediction, Tensor):
            prediction = {"pred": prediction}
        if not isinstance(prediction, Mapping):
            raise TypeError(
                f"PredictionWriter: predict_step must return a dict of tensors with the batch first "
                f"(e.g. {{'index': ..., 'pred': ...}}), got {type(prediction).__name__}"
            )
        columns: dict[str, Tensor] = {}
        size = None
        for key, value in prediction.items():
            value = torch.as_tensor(value).detach()
            if value.ndim == 0:
                raise ValueError(f"PredictionWriter: predict_step's {key!r} is a scalar; every value needs the batch as first dimension")
            if size is not None and value.shape[0] != size:
                raise ValueError(f"PredictionWriter: predict_step's {key!r} has {value.shape[0]} rows, the others {size}")
            size = value.shape[0]
            columns[str(key)] = value.cpu()
        if size is None:
            return columns
        if INDEX not in columns:
            if batch_indices is not None and len(batch_indices) == size:
                index = torch.as_tensor(list(batch_indices), dtype=torch.long)
            else:  # no sampler: count the samples in order
                start = self._counted.get(dataloader_idx, 0)
                index = torch.arange(start, start + size)
            columns = {INDEX: index, **columns}
        self._counted[dataloader_idx] = self._counted.get(dataloader_idx, 0) + size
        return columns

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        columns = self._as_columns(prediction, batch_indices, dataloader_idx)
        if not columns:
            return
        part = self._parts.setdefault(dataloader_idx, {})
        if part and set(part) != set(columns):
            raise ValueError(f"PredictionWriter: predict_step returned keys {sorted(columns)} after {sorted(part)}")
        for key, value in columns.items():
            part.setdefault(key, []).append(value)

    # -- merging and writing

    def _local(self) -> dict[int, dict[str, Tensor]]:
        return {dl: {key: torch.cat(values) for key, values in part.items()} for dl, part in self._parts.items()}

    @staticmethod
    def _gather(trainer, local):
        """The parts of every rank on rank 0 (``None`` on the others)."""
        if trainer.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return [local]
        gathered = [None] * torch.distributed.get_world_size() if trainer.is_global_zero else None
        torch.distributed.gather_object(local, gathered, dst=0)
        return gathered

    @staticmethod
    def _merge(parts: list[dict[int, dict[str, Tensor]]]) -> dict[str, Tensor]:
        loaders = sorted({dl for part in parts for dl in part})
        merged: dict[str, list[Tensor]] = {}
        for dl in loaders:
            pieces = [part[dl] for part in parts if dl in part]
            keys = list(pieces[0])
            for piece in pieces:
                if set(piece) != set(keys):
                    raise ValueError(f"PredictionWriter: ranks returned different keys: {sorted(keys)} and {sorted(piece)}")
            block = {key: torch.cat([piece[key] for piece in pieces]) for key in keys}
            n = len(block[INDEX])
            if len(loaders) > 1:
                block = {DATALOADER: torch.full((n,), dl, dtype=torch.long), **block}
            for key, value in block.items():
                merged.setdefault(key, []).append(value)
        out = {key: torch.cat(values) for key, values in merged.items()}
        if not out:
            return out
        order = torch.argsort(out[INDEX], stable=True)
        if DATALOADER in out:
            order = order[torch.argsort(out[DATALOADER][order], stable=True)]
        return {key: value[order] for key, value in out.items()}

    def _header_and_columns(self, table: dict[str, Tensor]) -> tuple[list[str], list[list[str]]]:
        keys = [k for k in (DATALOADER, INDEX) if k in table] + [k for k in table if k not in (DATALOADER, INDEX)]
        header, columns = [], []
        for key in keys:
            value = table[key]
            if value.ndim == 1:
                header.append(key)
                columns.append(_format_column(value))
            else:
                flat = value.reshape(value.shape[0], -1)
                for j in range(flat.shape[1]):
                    header.append(f"{key}_{j}")
                    columns.append(_format_column(flat[:, j]))
        return header, columns

    def _write(self, trainer, table: dict[str, Tensor]) -> tuple[Optional[Path], int]:
        if not table:
            return None, 0
        index = table[INDEX]
        keyed = torch.stack([table[DATALOADER], index], 1) if DATALOADER in table else index[:, None]
        if len(torch.unique(keyed, dim=0)) != len(index):
            rank_zero_warn("PredictionWriter: some sample indices occur more than once (a sampler that repeats samples, "
                           "or a data set that gives no indices under DDP); every row is written, sorted by index")
        directory = Path(self.dirpath if self.dirpath is not None else trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        header, columns = self._header_and_columns(table)
        tmp = directory / f".{self.filename}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(header)
                writer.writerows(zip(*columns))
                fh.flush()
                os.fsync(fh.fileno())
            path = _link_without_replacing(tmp, directory, self.filename)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path, len(index)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        super().on_predict_epoch_end(trainer, pl_module)
        parts = self._gather(trainer, self._local())
        path, rows = (None, 0)
        if trainer.is_global_zero:
            path, rows = self._write(trainer, self._merge(parts))
            if path is None:
                print("predictions: 0 rows, no file written", flush=True)
            else:
                print(f"predictions: {rows} rows -> {path}", flush=True)
        if trainer.world_size > 1:
            path, rows = trainer.strategy.broadcast((path, rows), src=0)
        self.path, self.rows = path, rows
        self._parts = {}
