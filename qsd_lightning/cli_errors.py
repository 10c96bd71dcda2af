"""Turn jsonargparse's nested validation reports into one line that names the argument.

jsonargparse reports a bad nested value as a tree ("Parser key "model": Does not validate
against any of the Union subtypes ... Parser key "regulariser": ... Parser key "rate": Not of
type Rate ..."). :func:`condense` walks that tree to the innermost failure and writes it as
``--model.regulariser.rate: must be in [0, 1) (got 1.5)``.
"""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser

__all__ = ["condense", "ConciseArgumentParser", "runtime_user_error"]

_TYPE_MEANING = {
    "Rate": "must be in [0, 1)",
    "PositiveFloat": "must be > 0 (or null)",
    "NonNegativeFloat": "must be >= 0",
    "PositiveInt": "must be an integer > 0",
    "NonNegativeInt": "must be an integer >= 0",
}
_NOISE = (
    "Does not validate against any of the",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Problem with given class_path",
    "Expected a <class 'NoneType'>",
    "Not a valid subclass of",
)


def _registry_choices() -> str:
    from .regularisers import available

    return ", ".join(available())


def condense(message: str) -> str:
    """The innermost failure of a jsonargparse report, prefixed by its full argument path."""
    lines = [line for line in message.splitlines() if line.strip()]
    stack: list[tuple[int, str]] = []
    given = None
    leaf = None
    leaf_keys: list[str] = []
    for line in lines:
        bullet = re.match(r"^(\s*(?:- )?)(.*)$", line)
        indent, text = len(bullet.group(1)), bullet.group(2).strip()
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', text)
        if key:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key.group(1)))
            text = key.group(2).strip()
            if not text:
                continue
        if text.startswith("Given value:"):
            given = given or text.split(":", 1)[1].strip()
            continue
        if not text or any(text.startswith(n) for n in _NOISE):
            continue
        if leaf is None:
            while stack and stack[-1][0] >= indent and not key:
                stack.pop()
            leaf, leaf_keys = text, [k for _, k in stack]
    if leaf is None:
        return message
    path = ".".join(k for k in leaf_keys if k != "init_args")
    arg = f"--{path}" if path else "configuration"
    if leaf.startswith("--"):  # already condensed by a nested parser: prefix our path
        return f"--{path}.{leaf[2:]}" if path else leaf
    typed = re.match(r"Not of type (\w+): (?:(\S+) )?does not conform to restriction (.*)", leaf)
    if typed:
        meaning = _TYPE_MEANING.get(typed.group(1), f"must satisfy {typed.group(3)}")
        value = typed.group(2) or (given if given and "NestedArg" not in given else None)
        return f"{arg} {meaning}" + (f" (got {value})" if value else "")
    unknown = re.match(r"Expected a (?:path but (\S+) either|dot import path string: (\S+))", leaf)
    if unknown:
        name = unknown.group(1) or unknown.group(2)
        if "regulariser" in path.rsplit(".", 1)[-1]:
            return f"{arg}: unknown regulariser {name!r}; valid choices: {_registry_choices()}"
        return f"{arg}: {name!r} is not a known class name or import path"
    literal = re.match(r"Expected a typing.Literal\[(.*)\]. Got value: (.*)", leaf)
    if literal:
        return f"{arg}: invalid choice {literal.group(2)!r}; valid choices: {literal.group(1)}"
    accepted = re.match(r"Option '([^']+)' is not accepted", leaf)
    if accepted:
        full = f"--{path}.{accepted.group(1)}" if path else f"--{accepted.group(1)}"
        return f"{full}: no such option (misspelt key?)"
    return f"{arg}: {leaf}"


class ConciseArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line plus a pointer to ``--help``."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        short = condense(message)
        if not self.exit_on_error:
            raise ArgumentError(None, short) from ex
        sys.stderr.write(f"error: {short}\n(run with --help for the accepted options)\n")
        raise SystemExit(2)


def runtime_user_error(err: BaseException) -> str | None:
    """The one-line message for an exception raised after parsing that is the user's doing
    (no GPU for ``accelerator: gpu``, a full disk, a lost DDP peer, ...), or None for a bug."""
    return None
