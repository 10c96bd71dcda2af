"""Penn Treebank (Mikolov's language-modelling version) as contiguous BPTT windows.

Files ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt`` (one sentence a line, already
lower-cased, numbers as ``N``, rare words as ``<unk>``); every line ends with an ``<eos>`` token.
The vocabulary (every train word type plus ``<eos>``: 10,000 for PTB) is built deterministically
from the train split (most frequent first, ties alphabetical) and saved as ``vocab.txt`` beside
the files. Each split is one token stream: on ``world_size`` ranks each rank takes a contiguous
shard, cuts it into ``batch_size`` contiguous rows (``batchify``) and reads ``[B, bptt]`` windows
left to right, so a hidden state carried from one batch to the next continues the same text.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Iterator, Literal, Optional

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from .base import ConfigError, CorruptDataError, DataNotFoundError, PositiveInt, check_data_dir, check_positive
from .network import HF_HOST, hf_offline
from .text import Vocabulary
from .network import reachable as _reachable  # a module attribute: tests replace it

__all__ = [
    "PTBDataModule",
    "PTB_FILES",
    "BPTTWindows",
    "batchify",
    "build_vocab",
    "encode",
    "read_tokens",
    "shard",
]

PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
EOS = "<eos>"
HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
# the loaders never use worker processes, so this Lightning warning does not apply to them
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
HF_SUBDIR = "hf"  # data_dir/hf/: the text files written from a Hugging Face download
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not \t \n \r


# ---------------------------------------------------------------- pure functions (tested alone)


def read_tokens(path: str | Path) -> list[str]:
    """Words of a PTB-format file, ``<eos>`` after every line; ``CorruptDataError`` naming the
    file if it is not UTF-8 text, holds control bytes, or has no words.

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only (not at U+2028, U+0085 ...: those
    separate words, like any Unicode space); a leading byte-order mark is dropped."""
    path = Path(path)
    if path.is_dir():
        raise CorruptDataError(f"{path} is a directory, expected PTB-format text (one sentence a line)")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CorruptDataError(f"cannot read {path}: {err}") from err
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CorruptDataError(f"{path} is UTF-16 text, not UTF-8: save it as UTF-8 (one sentence a line)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise CorruptDataError(
            f"{path}:{line} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "expected PTB-format text, one sentence a line"
        ) from None
    bad = _CONTROL.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise CorruptDataError(f"{path}:{line} holds a control byte {bad.group()!r}: binary data, not PTB-format text")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    if len(tokens) == tokens.count(EOS):
        raise CorruptDataError(f"{path} has no words: empty or truncated")
    return tokens


def build_vocab(tokens: list[str]) -> list[str]:
    """Every word type of ``tokens`` (plus ``<eos>``), most frequent first, ties alphabetical;
    no special ids (Mikolov's PTB already has ``<unk>`` in its text)."""
    return Vocabulary.build([tokens], specials=(), always=(EOS,)).tokens


def encode(tokens: list[str], vocab: Vocabulary | list[str], source: str | Path = "text") -> Tensor:
    """Token ids (int64); words outside ``vocab`` become ``<unk>`` if the vocabulary has it,
    otherwise ``CorruptDataError`` naming ``source``."""
    if not isinstance(vocab, Vocabulary):
        vocab = Vocabulary(list(vocab), specials=())
    return torch.tensor(vocab.encode(tokens, source), dtype=torch.long)


def shard(stream: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous part of a token stream: ``world_size`` equal parts, the
    remainder (fewer than ``world_size`` tokens) dropped, so every rank gets as many batches."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    n = len(stream) // world_size
    return stream[rank * n : (rank + 1) * n]


def batchify(stream: Tensor, batch_size: int) -> Tensor:
    """``[batch_size, N]``: row i is the i-th contiguous chunk of ``stream`` (tail dropped)."""
    n = len(stream) // batch_size
    if n < 2:
        raise ValueError(
            f"a stream of {len(stream)} tokens is too short for batch_size {batch_size} "
            "(each row needs at least 2 tokens: an input and its target)"
        )
    return stream[: n * batch_size].view(batch_size, n)


class BPTTWindows(IterableDataset):
    """``(input, target)`` windows ``[B, L]`` of ``data [B, N]`` left to right, L = ``bptt``
    (shorter last window); target is the input shifted by one step. Iterable, so Lightning
    never adds a (shuffling, interleaving) distributed sampler: ranks shard the stream."""

    def __init__(self, data: Tensor, bptt: int, first_row: int = 0) -> None:
        if bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {bptt}")
        self.data = data
        self.bptt = bptt
        self.first_row = first_row

    def __len__(self) -> int:
        return math.ceil((self.data.shape[1] - 1) / self.bptt)

    def sequence_indices(self, window: int) -> Tensor:
        """``LongTensor[B]``: the number, in text order, of each row of window ``window`` (row
        ``r`` of this rank's data is row ``first_row + r`` of the split): ``(first_row + r) *
        len(self) + window``. Ranks hold equal contiguous shards, so over all ranks these are
        ``0 .. world_size * B * len(self) - 1``."""
        rows = torch.arange(self.first_row, self.first_row + self.data.shape[0])
        return rows * len(self) + window

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.data.shape[1]
        for start in range(0, n - 1, self.bptt):
            length = min(self.bptt, n - 1 - start)
            yield self.data[:, start : start + length], self.data[:, start + 1 : start + 1 + length]


# ---------------------------------------------------------------- data module


class PTBDataModule(L.LightningDataModule):
    """Penn Treebank word-level language modelling (Mikolov et al. 2010 preprocessing).

    Args:
        data_dir: folder with ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``.
        batch_size: rows of the training batch (contiguous streams, Zaremba et al.: 20).
        bptt: time steps per window (truncated back-propagation through time: 35).
        eval_batch_size: rows for validation and test (default: ``batch_size``).
        source: ``files`` reads ``data_dir``; ``hf`` downloads ``hf_name`` with Hugging Face
            ``datasets`` (cache and text files under ``data_dir/hf``); ``auto`` uses the files in
            ``data_dir`` when present, else a previous download under ``data_dir/hf``, else
            downloads.
        hf_name: the Hugging Face data set (train/validation/test with a ``sentence`` column).
        save_vocab: write ``vocab.txt`` (one word a line, line number = id) beside the files
            (skipped, silently, in a folder marked read-only such as the shared copy).
    """

    def __init__(
        self,
        data_dir: str = "data/ptb",
        batch_size: PositiveInt = 20,
        bptt: PositiveInt = 35,
        eval_batch_size: Optional[PositiveInt] = None,
        source: Literal["auto", "files", "hf"] = "auto",
        hf_name: str = "ptb_text_only",
        save_vocab: bool = True,
    ) -> None:
        super().__init__()
        check_positive("batch_size", batch_size)
        check_positive("eval_batch_size", eval_batch_size, optional=True)
        check_positive("bptt", bptt)
        if source not in ("auto", "files", "hf"):
            raise ConfigError(f"--data.source must be 'auto', 'files' or 'hf' (got {source!r})")
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.bptt = bptt
        self.eval_batch_size = eval_batch_size or batch_size
        self._eval_batch_size = eval_batch_size
        self.source = source
        self.hf_name = hf_name
        self.save_vocab = save_vocab
        self.vocab = Vocabulary([], specials=())
        self.streams: dict[str, Tensor] = {}

    # -- locating / downloading

    @staticmethod
    def _complete(folder: Path) -> bool:
        return all((folder / name).is_file() for name in PTB_FILES.values())

    def _missing_message(self, reason: str) -> str:
        names = ", ".join(PTB_FILES.values())
        return (
            f"Penn Treebank not found in {self.data_dir.resolve()} ({reason}). Expected the files {names} "
            "(Mikolov's simple-examples/data, one sentence a line) in that directory. Copy them there "
            "or point --data.data_dir at a folder that has them, or "
            f"run once with network access and --data.source auto|hf to download Hugging Face's "
            f"'{self.hf_name}' into {self.data_dir / HF_SUBDIR}."
        )

    def _folder(self, download: bool) -> Path:
        """The folder holding the three files, downloading them if allowed and needed."""
        check_data_dir(self.data_dir)
        hf_dir = self.data_dir / HF_SUBDIR
        if self.source in ("auto", "files") and self._complete(self.data_dir):
            return self.data_dir
        folders = [p for p in (self.data_dir / n for n in PTB_FILES.values()) if p.is_dir()]
        if folders and self.source != "hf":  # a folder where a file should be: say so rather than "not found"
            raise CorruptDataError(f"{folders[0]} is a directory, expected PTB-format text (one sentence a line)")
        if self.source == "files":
            raise DataNotFoundError(self._missing_message("source is 'files'"))
        if self._complete(hf_dir):
            return hf_dir
        if not download:
            raise DataNotFoundError(self._missing_message("files missing"))
        self._download_hf(hf_dir)
        return hf_dir

    def _download_hf(self, folder: Path) -> None:
        if hf_offline():
            raise DataNotFoundError(self._missing_message("Hugging Face is set offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)"))
        if not _reachable(HF_HOST):
            raise DataNotFoundError(self._missing_message(f"no network: {HF_HOST} is unreachable"))
        try:
            import datasets

            ds = datasets.load_dataset(self.hf_name, cache_dir=str(folder / "cache"))
            texts = {split: ds[hf_split]["sentence"] for split, hf_split in HF_SPLITS.items()}
        except Exception as err:  # network, missing data set, changed layout
            raise DataNotFoundError(self._missing_message(f"download of '{self.hf_name}' failed: {err}")) from err
        folder.mkdir(parents=True, exist_ok=True)
        for split, lines in texts.items():
            tmp = folder / (PTB_FILES[split] + ".part")
            tmp.write_text("".join(f" {line.strip()} \n" for line in lines), encoding="utf-8")
            tmp.replace(folder / PTB_FILES[split])

    # -- loading

    def _load(self, download: bool = False) -> None:
        if self.streams:
            return
        folder = self._folder(download)
        tokens = {split: read_tokens(folder / name) for split, name in PTB_FILES.items()}
        self.vocab = Vocabulary(build_vocab(tokens["train"]), specials=())
        self.streams = {split: encode(toks, self.vocab, folder / PTB_FILES[split]) for split, toks in tokens.items()}
        self.folder = folder

    @property
    def vocab_size(self) -> int:
        """Number of word types incl. ``<eos>`` (10,000 for PTB); loads the data if needed."""
        self._load(download=True)
        return len(self.vocab)

    def _write_vocab(self) -> None:
        path = self.folder / "vocab.txt"
        text = self.vocab.text()
        if not self.folder.stat().st_mode & 0o222:  # a folder marked read-only (shared data): leave it
            return
        try:
            if path.is_file() and path.read_text(encoding="utf-8") == text:
                return
            path.write_text(text, encoding="utf-8")
        except OSError as err:
            warnings.warn(f"could not save the vocabulary to {path}: {err}", stacklevel=2)

    def prepare_data(self) -> None:
        self._load(download=True)
        if self.save_vocab:
            self._write_vocab()

    def setup(self, stage: str | None = None) -> None:
        self._load(download=False)

    # -- loaders

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def windows(self, split: str) -> BPTTWindows:
        """The ``(input, target)`` windows of ``split`` for this rank."""
        self._load()
        rank, world_size = self._rank()
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        stream = shard(self.streams[split], rank, world_size)
        if len(stream) // batch_size < 2:
            arg = "eval_batch_size" if split != "train" and self._eval_batch_size is not None else "batch_size"
            raise ConfigError(
                f"--data.{arg} {batch_size} is too large for {self.folder / PTB_FILES[split]}: its {len(stream)} tokens "
                f"(per rank, on {world_size}) give each of the {batch_size} rows fewer than 2 tokens; lower --data.{arg}"
            )
        data = batchify(stream, batch_size)
        return BPTTWindows(data, self.bptt, first_row=rank * batch_size)

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.windows(split), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
