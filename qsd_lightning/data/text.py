"""Tokenisation and the one vocabulary class of the text data modules (sentiment, PTB):
deterministic, dependency-free.

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
    """Token <-> id map, the one vocabulary of every text data module.

    ``specials`` come first (default: id 0 ``<pad>``, id 1 ``<unk>``; the language models use
    none), then the tokens. Built deterministically: tokens counted over the training texts,
    kept if they occur at least ``min_freq`` times (tokens in ``always`` are kept even when
    absent), sorted by decreasing count with ties broken alphabetically, truncated so that the
    whole vocabulary (specials included) has at most ``max_size`` ids. A token outside the
    vocabulary encodes as ``<unk>`` when the vocabulary has it, else is refused.
    """

    def __init__(self, tokens: Sequence[str], settings: dict | None = None, specials: Sequence[str] = (PAD, UNK)) -> None:
        self.specials = tuple(specials)
        if tuple(tokens[: len(self.specials)]) != self.specials:
            raise ValueError(f"a vocabulary must start with {', '.join(map(repr, self.specials))}")
        self.tokens = list(tokens)
        self.settings = dict(settings or {})
        self.index = {token: i for i, token in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("duplicate tokens in vocabulary")

    def __len__(self) -> int:
        return len(self.tokens)

    def __iter__(self):
        return iter(self.tokens)

    def __getitem__(self, i: int) -> str:
        return self.tokens[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple)):  # a plain token list (what PTB's vocab.txt holds)
            return self.tokens == list(other)
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    __hash__ = None  # mutable, compared by value

    @property
    def unk_index(self) -> int | None:
        """The id of ``<unk>``, None when the vocabulary has none."""
        return self.index.get(UNK)

    @classmethod
    def build(
        cls,
        documents: Iterable[Sequence[str]],
        max_size: int | None = None,
        min_freq: int = 1,
        settings: dict | None = None,
        specials: Sequence[str] = (PAD, UNK),
        always: Sequence[str] = (),
    ) -> "Vocabulary":
        specials = tuple(specials)
        if max_size is not None and max_size < len(specials) + 1:
            named = ", ".join(specials)
            raise ValueError(f"max_vocab must be >= {len(specials) + 1} ({named} and one token), got {max_size}")
        counts: Counter[str] = Counter()
        for doc in documents:
            counts.update(doc)
        for token in always:
            counts.setdefault(token, 0)
        kept = sorted(
            (t for t, c in counts.items() if (c >= min_freq or t in always) and t not in specials),
            key=lambda t: (-counts[t], t),
        )
        if max_size is not None:
            kept = kept[: max_size - len(specials)]
        return cls([*specials, *kept], settings, specials)

    def encode(self, tokens: Iterable[str], source: object = "text") -> list[int]:
        """Ids of ``tokens``; unknown ones become ``<unk>``, or, in a vocabulary without it,
        ``CorruptDataError`` naming ``source`` and the word."""
        get, unk = self.index.get, self.unk_index
        if unk is not None:
            return [get(t, unk) for t in tokens]
        tokens = tokens if isinstance(tokens, list) else list(tokens)
        ids = [get(t) for t in tokens]
        if None in ids:
            from .base import CorruptDataError

            word = tokens[ids.index(None)]
            raise CorruptDataError(f"{source}: word {word!r} is not in the training vocabulary and the vocabulary has no {UNK}")
        return ids

    def text(self) -> str:
        """One token a line, line number = id (the human-readable form, e.g. PTB's vocab.txt)."""
        return "".join(token + "\n" for token in self.tokens)

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (a concurrent reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"format": "qsd-vocabulary", "version": 1, "settings": self.settings, "tokens": self.tokens}
        if self.specials != (PAD, UNK):
            record["specials"] = list(self.specials)
        text = json.dumps(record, ensure_ascii=False, indent=0)
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
            return cls(data["tokens"], data.get("settings"), data.get("specials", (PAD, UNK)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CorruptDataError(f"cannot read vocabulary {path}: {err}; delete it to rebuild it") from err
