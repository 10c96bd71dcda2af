"""Tokenisation and vocabularies for the text data modules: deterministic, dependency-free.

>>> tokenize("A <br />great film, isn't it?!")
['a', 'great', 'film', ',', "isn't", 'it', '?', '!']
>>> vocab = Vocabulary.build([["b", "a"], ["a", "c"]], max_size=10, min_freq=1)
>>> vocab.tokens
['<pad>', '<unk>', 'a', 'b', 'c']
>>> vocab.encode(["a", "zzz"])
[2, 1]
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["PAD", "UNK", "PAD_INDEX", "UNK_INDEX", "TOKENIZER_VERSION", "tokenize", "Vocabulary"]

PAD, UNK = "<pad>", "<unk>"
PAD_INDEX, UNK_INDEX = 0, 1
#: bump whenever :func:`tokenize` changes, so that saved vocabularies are rebuilt
TOKENIZER_VERSION = 1

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# words (letters/digits, with inner apostrophes: isn't, n't) or single punctuation marks
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercase regex tokeniser: HTML line breaks dropped, words and punctuation marks."""
    return _TOKEN.findall(_BREAK.sub(" ", text).lower())


class Vocabulary:
    """Token <-> id map: id 0 is ``<pad>``, id 1 is ``<unk>``, then tokens by frequency.

    Built deterministically: tokens counted over the training texts, kept if they occur at
    least ``min_freq`` times, sorted by decreasing count with ties broken alphabetically,
    truncated so that the whole vocabulary (specials included) has at most ``max_size`` ids.
    """

    def __init__(self, tokens: Sequence[str], settings: dict | None = None) -> None:
        if list(tokens[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary must start with {PAD!r}, {UNK!r}")
        self.tokens = list(tokens)
        self.settings = dict(settings or {})
        self.index = {token: i for i, token in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("duplicate tokens in vocabulary")

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    @classmethod
    def build(cls, documents: Iterable[Sequence[str]], max_size: int, min_freq: int = 1, settings: dict | None = None) -> "Vocabulary":
        if max_size < 3:
            raise ValueError(f"max_vocab must be >= 3 (<pad>, <unk> and one token), got {max_size}")
        counts: Counter[str] = Counter()
        for doc in documents:
            counts.update(doc)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in (PAD, UNK)), key=lambda t: (-counts[t], t))
        return cls([PAD, UNK, *kept[: max_size - 2]], settings)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        get = self.index.get
        return [get(t, UNK_INDEX) for t in tokens]

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (a concurrent reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": "qsd-vocabulary", "version": 1, "settings": self.settings, "tokens": self.tokens},
                          ensure_ascii=False, indent=0)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private: readable like any file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        from .base import CorruptDataError

        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != "qsd-vocabulary":
                raise ValueError("not a vocabulary file")
            return cls(data["tokens"], data.get("settings"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CorruptDataError(f"cannot read vocabulary {path}: {err}; delete it to rebuild it") from err
