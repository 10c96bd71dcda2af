"""Read the history of a W&B run file (``run-<id>.wandb``) without a W&B server.

An offline run keeps everything it logged in one file: a 7-byte header (``:W&B``, magic
0xBEE1, version 0) then LevelDB-log-style records in 32 KiB blocks, each chunk with a 7-byte
header (CRC32C, length, type FULL/FIRST/MIDDLE/LAST) and the chunks of one record forming a
serialised ``wandb_internal_pb2.Record``. Used by tests and result scripts to read back what a
run logged.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

__all__ = ["iter_records", "read_history", "find_run_files"]

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file (bad header)")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # zero padding at the end of a block
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:
            continue
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def iter_records(path: str | Path):
    """Every protobuf ``Record`` in a run file."""
    from wandb.proto import wandb_internal_pb2

    for payload in _payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def read_history(path: str | Path) -> list[dict]:
    """The logged history rows (``run.log`` calls) as dicts of decoded JSON values."""
    rows = []
    for record in iter_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def find_run_files(root: str | Path) -> list[Path]:
    """All ``run-*.wandb`` files below ``root``, oldest first."""
    return sorted(Path(root).rglob("run-*.wandb"), key=lambda p: p.stat().st_mtime)
