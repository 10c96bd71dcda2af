"""Turn jsonargparse's nested validation reports into one line that names the argument.

jsonargparse reports a bad nested value as a tree ("Parser key "model": Does not validate
against any of the Union subtypes ... Parser key "regulariser": ... Parser key "rate": Not of
type Rate ..."). :func:`condense` walks that tree to the innermost failure and writes it as
``--model.regulariser.rate: must be in [0, 1) (got 1.5)``; it falls back to the raw message
when nothing in it is recognised.

:func:`runtime_user_error` does the same for exceptions raised after parsing that are the
user's doing (no GPU for ``--trainer.accelerator gpu``, trainer values Lightning refuses, a
full disk, a model whose settings do not fit: a :class:`~qsd_lightning.errors.UserError` that
jsonargparse wrapped while building the model); every other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser

__all__ = ["condense", "ConciseArgumentParser", "runtime_user_error"]

_TYPE_MEANING = {
    "Rate": "must be in [0, 1)",
    "PositiveFloat": "must be > 0 (or null)",
    "NonNegativeFloat": "must be >= 0",
    "PositiveInt": "must be an integer > 0",
    "NonNegativeInt": "must be an integer >= 0",
    "NumClasses": "must be an integer >= 2 (a classifier needs two classes or more)",
    "OpenUnitInterval": "must be a fraction in (0, 1)",
    "HalfFraction": "must be a fraction in (0, 0.5)",
    "VocabularySize": "must be an integer >= 3 (<pad>, <unk> and at least one token)",
    "Dim": "must name non-batch dims: integers other than 0 (dim 0 is the batch; -1 is the last dim)",
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
_TYPE_WORDS = {
    "bool": "true/false", "int": "an integer", "float": "a number", "str": "a string", "list": "a list",
    "tuple": "a list", "dict": "a mapping", "NoneType": "null", "collections.abc.Sequence": "a list",
    "collections.abc.Iterable": "a list", "collections.abc.Mapping": "a mapping",
}
SUBCOMMANDS = ("fit", "validate", "test", "predict")
EXAMPLE = "python -m qsd_lightning fit --config configs/mlp_digits.yaml"

#: the command line of the last parse, to name the config file of a YAML syntax error
_ARGV: list[str] = []
_PARSING = False


# ----------------------------------------------------------------------------- helpers
def _registry_choices() -> str:
    from .regularisers import available

    return ", ".join(available())


def _import(class_path: str) -> Optional[type]:
    module, _, name = class_path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 - an unresolvable path just gets the plain message
        return None
    return obj if isinstance(obj, type) else None


def _registry_name(cls: type) -> Optional[str]:
    from .regularisers import registry

    for name, registered in registry._REGISTRY.items():
        if cls is registered or cls is getattr(registered, "_alias", None):
            return name
    return None


def _arguments(cls: type) -> list[str]:
    """The constructor arguments a user can set (not ``params`` / ``optimizer``, which the task
    passes to optimisers and schedulers)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return []
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
    return [n for n in names if n not in ("params", "optimizer")]


def _did_you_mean(name: str, choices: Sequence[str], show=lambda c: repr(c)) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {show(close[0])}?" if close else ""


def _unknown_argument(option: str, name: str, class_path: str) -> Optional[str]:
    """``{option}.{name}`` is not an argument of the class at ``class_path``: say what it takes
    and, for a registered regulariser, which regularisers take ``name``."""
    cls = _import(class_path)
    if cls is None:
        return None
    accepted = _arguments(cls)
    registered = _registry_name(cls)
    if registered is None:
        shown = cls.__name__
        return (
            f"{option}.{name}: no such option (misspelt key?)"
            + (f"; {shown} takes {', '.join(accepted)}" if accepted else "")
            + _did_you_mean(name, accepted, lambda c: f"{option}.{c}")
        )
    from .regularisers import available, get

    takers = [n for n in available() if name in _arguments(get(n))]
    takes = f"; {registered} takes {', '.join(accepted)}"
    if takers:
        return (
            f"{option}.{name}: {registered} has no argument '{name}'; add {option} {takers[0]} before it "
            f"(or use a regulariser that takes {name}: {', '.join(takers)})" + takes
        )
    everything = sorted({a for n in available() for a in _arguments(get(n))})
    return f"{option}.{name}: no registered regulariser has an argument '{name}'" + takes + _did_you_mean(name, everything)


def _known_classes(key: str) -> tuple[list[str], str]:
    """Class names accepted at an option whose last key is ``key``, and how to show them."""
    if key == "model":
        from lightning.pytorch import LightningModule

        from . import tasks

        names = [n for n in tasks.__all__ if isinstance(getattr(tasks, n), type)
                 and issubclass(getattr(tasks, n), LightningModule) and n != "ClassificationTask"]
        return names, "list"
    if key == "data":
        from lightning.pytorch import LightningDataModule

        from . import data

        names = [n for n in data.__all__ if isinstance(getattr(data, n), type)
                 and issubclass(getattr(data, n), LightningDataModule) and n != "TensorDataModule"]
        return names, "list"
    if key == "optimizer":
        import torch

        return [f"torch.optim.{n}" for n, c in vars(torch.optim).items()
                if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer], "torch.optim"
    if key == "lr_scheduler":
        import torch

        sched = torch.optim.lr_scheduler
        return [f"torch.optim.lr_scheduler.{n}" for n, c in vars(sched).items()
                if isinstance(c, type) and issubclass(c, (sched.LRScheduler, sched.ReduceLROnPlateau))
                and not n.startswith("_") and c is not sched.LRScheduler], "torch.optim.lr_scheduler"
    return [], ""


def _unknown_class(arg: str, key: str, name: str) -> str:
    base = f"{arg}: {name!r} is not a known class name or import path"
    names, kind = _known_classes(key)
    if not names:
        return base
    last = name.rsplit(".", 1)[-1]
    by_last = {n.rsplit(".", 1)[-1]: n for n in names}
    close = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.6) or difflib.get_close_matches(
        last.lower(), [n.lower() for n in by_last], n=1, cutoff=0.6
    )
    if close:
        match = next(n for n in by_last if n.lower() == close[0].lower())
        return f"{base}; did you mean {by_last[match]}?"
    if kind == "list":
        return f"{base}; valid choices: {', '.join(sorted(names))}"
    return f"{base}; any class in {kind} works, e.g. {', '.join(sorted(names)[:3])}"


def _prefix_options(text: str, path: str) -> str:
    """A message condensed by a nested parser names options relative to it (``--gamma``):
    prefix every option in it with this parser's ``path``."""
    if not path:
        return text
    return re.sub(r"(?<![\w.-])--(?=[A-Za-z_])", f"--{path}.", text)


def _yaml_files(folder: Path) -> list[str]:
    try:
        return sorted(str(p) for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    except OSError:
        return []


def _missing_config(name: str) -> str:
    path = Path(name)
    folder = path.parent if str(path.parent) not in ("", ".") else Path(".")
    where = folder if folder.is_dir() else Path("configs")
    files = _yaml_files(where)
    close = difflib.get_close_matches(path.name, [Path(f).name for f in files], n=1, cutoff=0.5)
    message = f"--config: no such file {name!r}"
    if not folder.is_dir():
        message += f" (there is no folder {str(folder)!r} under {Path.cwd()})"
    if close:
        return message + f"; did you mean {str(where / close[0])!r}?"
    if files:
        shown = ", ".join(files[:8]) + (", ..." if len(files) > 8 else "")
        return message + f"; the configs in {where}/: {shown}"
    return message + f"; give the path of a config file, e.g. {EXAMPLE}"


def _folder_config(name: str) -> str:
    path = Path(name)
    if not path.is_dir():
        return f"--config: {name!r} is not a file; give the path of a config file, e.g. {EXAMPLE}"
    files = _yaml_files(path)
    if files:
        shown = ", ".join(files[:8]) + (", ..." if len(files) > 8 else "")
        return f"--config: {name!r} is a folder, not a config file; give one of its files: {shown}"
    return f"--config: {name!r} is a folder with no .yaml files; give the path of a config file, e.g. {EXAMPLE}"


def _config_paths(argv: Sequence[str]) -> list[str]:
    paths = []
    for i, arg in enumerate(argv):
        if re.fullmatch(r"--(?:\w+\.)?config", arg) and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif re.match(r"--(?:\w+\.)?config=", arg):
            paths.append(arg.split("=", 1)[1])
    return paths


def _yaml_problem(problem: str, line: Optional[str], column: Optional[str], argv: Sequence[str]) -> str:
    """``<file> line N (column M): <problem>`` for the config file that does not parse."""
    import yaml

    for name in _config_paths(argv):
        try:
            yaml.safe_load(Path(name).read_text(encoding="utf-8"))
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            if mark is None:
                continue
            what = err.problem or problem
            return f"{name} line {mark.line + 1} (column {mark.column + 1}): {what}; fix the YAML there (indentation, ':' or quotes)"
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
    where = f"line {line} (column {column}) of the config" if line else "the config"
    return f"{where}: {problem}; fix the YAML there (indentation, ':' or quotes)"


_SECTIONS = ("seed_everything", "trainer", "model", "data", "ckpt_path")


def _not_a_mapping(argv: Sequence[str], shown: str) -> str:
    """A config file that is valid YAML but not a mapping of settings."""
    import yaml

    for name in _config_paths(argv):
        try:
            content = yaml.safe_load(Path(name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if not isinstance(content, dict):
            what = "is empty" if content is None else f"holds a {type(content).__name__}, not a mapping of settings"
            return (f"--config {name} {what}: a config maps sections to settings (trainer:, model:, data:), "
                    "e.g. configs/mlp_digits.yaml")
    return (f"the config is not a mapping of settings (got {shown!r}): a config maps sections to settings "
            "(trainer:, model:, data:), e.g. configs/mlp_digits.yaml")


def _expected(texts: list[str]) -> Optional[str]:
    """``true/false or an integer`` from a union's "Expected a <class 'bool'>" errors."""
    parts: list[str] = []
    choices: list[str] = []
    for text in texts:
        cls = re.match(r"Expected a <class '([\w.]+)'>", text)
        literal = re.match(r"Expected a typing\.Literal\[(.*)\]", text)
        if cls:
            word = _TYPE_WORDS.get(cls.group(1), cls.group(1).rsplit(".", 1)[-1])
            if word not in parts:
                parts.append(word)
        elif literal:
            choices += [c for c in literal.group(1).split(", ") if c not in choices]
        else:
            return None
    if choices:
        parts.insert(0, f"one of {', '.join(choices)}")
    if not parts:
        return None
    if "null" in parts and len(parts) > 1:  # "an integer, or null" reads better last
        parts.remove("null")
        parts.append("null")
    return " or ".join(parts)


# ----------------------------------------------------------------------------- condense
def _top_level(text: str, argv: Sequence[str]) -> Optional[str]:
    """Messages about the command line as a whole (subcommand, required parts, config files)."""
    sub = re.match(r"argument subcommand: invalid choice: '([^']*)' \(choose from (.*)\)$", text)
    if sub:
        choices = [c.strip(" '") for c in sub.group(2).split(",")]
        if argv and argv[0].startswith("-") and sub.group(1) not in argv[:1]:  # options before the subcommand
            sub_name = next((a for a in argv if a in choices), "fit")
            rest = " ".join(a for a in argv if a != sub_name)
            return f"options must come after the subcommand: python -m qsd_lightning {sub_name} {rest}"
        return (
            f"unknown subcommand {sub.group(1)!r}; use one of {', '.join(choices)}"
            + _did_you_mean(sub.group(1), choices)
            + f" (e.g. {EXAMPLE})"
        )
    if re.match(r'expected "subcommand" to be one of \{.*\}, but it was not provided', text):
        config = " or ".join(f"--config {p}" for p in _config_paths(argv)) or "--config configs/<x>.yaml"
        return (
            f"no subcommand: start with one of {', '.join(SUBCOMMANDS)}, before the options, "
            f"e.g. python -m qsd_lightning fit {config}"
        )
    before = re.match(r"Option '([^']+)' is not accepted before subcommand '(\w+)'", text)
    if before:
        key = re.sub(r"\.(init_args|dict_kwargs)\.", ".", before.group(1))
        sub_name = before.group(2)
        given = " ".join(a for a in argv if a != sub_name) if argv else f"--{key} ..."
        what = "--config and every other option" if _config_paths(argv) else f"--{key}"
        return f"{what} must come after the subcommand: python -m qsd_lightning {sub_name} {given}"
    required = re.match(r"the following arguments are required: (.*)$", text)
    if required:
        keys = [k.strip() for k in required.group(1).split(",")]
        sub_name = keys[0].split(".", 1)[0] if "." in keys[0] else ""
        options = ", ".join("--" + k.split(".", 1)[-1] for k in keys)
        return (
            f"{sub_name + ' ' if sub_name else ''}needs {options}: give a config that sets them, "
            f"e.g. python -m qsd_lightning {sub_name or 'fit'} --config configs/mlp_digits.yaml"
        )
    unexpected = re.match(r"Unexpected config: ?(.*)$", text)
    if unexpected:
        return _not_a_mapping(argv, unexpected.group(1))
    subcommand_key = re.match(r"Subcommand '(\w+)' does not accept option '([^']+)'", text)
    if subcommand_key:
        key = re.sub(r"\.(init_args|dict_kwargs)(?=\.)", "", subcommand_key.group(2))
        head, _, rest = key.partition(".")
        close = difflib.get_close_matches(head, list(_SECTIONS), n=1, cutoff=0.6)
        hint = f"; did you mean --{close[0]}{'.' + rest if rest else ''}?" if close else f"; the sections are {', '.join(_SECTIONS)}"
        return f"--{key}: no such option in {subcommand_key.group(1)} (misspelt key?){hint}"
    unrecognised = re.match(r"unrecognized arguments: (.*)$", text)
    if unrecognised:
        given = unrecognised.group(1).split()
        if argv and not any(a in SUBCOMMANDS for a in argv):
            return _top_level('expected "subcommand" to be one of {fit}, but it was not provided', argv)
        if given and given[0] in SUBCOMMANDS:
            return f"the subcommand {given[0]!r} must come first: python -m qsd_lightning {given[0]} [options]"
        if given and given[0].startswith("--"):
            key = given[0][2:].split("=", 1)[0]
            head, _, rest = key.partition(".")
            close = difflib.get_close_matches(head, list(_SECTIONS), n=1, cutoff=0.6)
            if close and close[0] != head:
                return f"--{key}: no such option (misspelt key?); did you mean --{close[0]}{'.' + rest if rest else ''}?"
        return (
            f"unrecognized arguments: {unrecognised.group(1)}: options take the form --key value and go after the "
            f"subcommand (e.g. {EXAMPLE} --trainer.max_epochs 5)"
        )
    return None


def condense(message: str, argv: Optional[Sequence[str]] = None) -> str:
    """The innermost failure of a jsonargparse report, prefixed by its full argument path.

    ``argv`` (the command line, optional) lets a YAML syntax error name its config file.
    Unrecognised reports come back unchanged.
    """
    argv = list(_ARGV if argv is None else argv)
    first = message.strip().splitlines()[0].strip() if message.strip() else message
    top = _top_level(first, argv)
    if top is not None:
        return top
    lines = [line for line in message.splitlines() if line.strip()]
    stack: list[tuple[int, str]] = []
    given = None
    leaf = None
    leaf_keys: list[str] = []
    leaf_class: Optional[str] = None
    leaf_indent, leaf_index = 0, 0
    class_path: Optional[str] = None
    recognised = False  # a parser key, a given value or a known wrapper line seen
    for index, line in enumerate(lines):
        bullet = re.match(r"^(\s*(?:- )?)(.*)$", line)
        indent, text = len(bullet.group(1)), bullet.group(2).strip()
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', text)
        if key:
            recognised = True
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key.group(1)))
            text = key.group(2).strip()
            if not text:
                continue
        if text.startswith("Given value:"):
            recognised = True
            given = given or text.split(":", 1)[1].strip()
            continue
        problem_class = re.match(r"Problem with given class_path '([^']+)'", text)
        if problem_class and leaf is None:
            class_path = problem_class.group(1)
        if not text:
            continue
        if any(text.startswith(n) for n in _NOISE):
            recognised = True
            continue
        if leaf is None:
            while stack and stack[-1][0] >= indent and not key:
                stack.pop()
            leaf, leaf_keys, leaf_class = text, [k for _, k in stack], class_path
            leaf_indent, leaf_index = indent, index
    if leaf is None:
        return message
    path = ".".join(k for k in leaf_keys if k != "init_args")
    arg = f"--{path}" if path else "configuration"
    last_key = path.rsplit(".", 1)[-1]

    yaml_error = re.match(r"Problems parsing config\s*:\s*(.*)$", leaf)
    if yaml_error:
        where = re.search(r'line (\d+), column (\d+)', message)
        return _yaml_problem(yaml_error.group(1).strip(), where and where.group(1), where and where.group(2), argv)
    if last_key == "config":
        missing = re.match(r"File does not exist: '(.*)'$", leaf)
        if missing:
            return _missing_config(missing.group(1))
        folder = re.match(r"Path is not a file: '(.*)'$", leaf)
        if folder:
            return _folder_config(folder.group(1))
    callable_ = re.match(r"Type .* expects a function or a callable class: (--[\w.]+): (.*?)(?:\. Got value: (.*))?$", leaf)
    if callable_:  # an optimiser / scheduler argument: inner option, message and class path
        inner = re.search(r"class_path='([^']+)'", callable_.group(3) or "")
        leaf = f"{callable_.group(1)}: {callable_.group(2)}"
        leaf_class = inner.group(1) if inner else None
    if leaf.startswith("--"):  # already condensed by a nested parser: prefix our path
        no_option = re.match(r"^--([\w]+): no such option \(misspelt key\?\)$", leaf)
        if no_option and leaf_class:
            rich = _unknown_argument(arg if path else "-", no_option.group(1), leaf_class)
            if rich is not None and path:
                return rich
        return _prefix_options(leaf, path)
    typed = re.match(r"Not of type (\w+): (?:(\S+) )?does not conform to restriction (.*)", leaf)
    if typed:
        meaning = _TYPE_MEANING.get(typed.group(1), f"must satisfy {typed.group(3)}")
        value = typed.group(2) or (given if given and "NestedArg" not in given else None)
        return f"{arg} {meaning}" + (f" (got {value})" if value else "")
    not_number = re.match(r"Not of type (\w+): could not convert string to (\w+): (.*)", leaf)
    if not_number:
        meaning = _TYPE_MEANING.get(not_number.group(1), f"must be of type {not_number.group(1)}")
        return f"{arg} {meaning} (got {not_number.group(3)}, not a number)"
    unknown = re.match(r"Expected a (?:path but (\S+) either|dot import path string: (\S+))", leaf)
    if unknown:
        name = unknown.group(1) or unknown.group(2)
        if "regulariser" in last_key:
            return f"{arg}: unknown regulariser {name!r}; valid choices: {_registry_choices()}" + _did_you_mean(
                name, _registry_choices().split(", ")
            )
        return _unknown_class(arg, last_key, name)
    literal = re.match(r"Expected a typing.Literal\[(.*)\]. Got value: (.*)", leaf)
    if literal:
        return f"{arg}: invalid choice {literal.group(2)!r}; valid choices: {literal.group(1)}"
    expected = re.match(r"Expected a (<class '[\w.]+'>|typing\.Literal\[.*\])(?:\. Got value: (.*))?$", leaf)
    if expected:  # one type, or the first of a union's: gather the union's alternatives
        alternatives = [leaf]
        for line in lines[leaf_index + 1 :]:
            bullet = re.match(r"^(\s*(?:- )?)(.*)$", line)
            if len(bullet.group(1)) != leaf_indent:
                break
            alternatives.append(bullet.group(2).strip())
        words = _expected([a.split(". Got value:", 1)[0] for a in alternatives])
        value = expected.group(2) or (given if given and "NestedArg" not in given else None)
        if words:
            got = f" (got {value})" if value is not None else ""
            if words.startswith("a list") and value is not None and not value.startswith("["):
                return f"{arg}: expected a list, e.g. {arg} [{value}]{got}"
            return f"{arg}: expected {words}{got}"
    accepted = re.match(r"Option '([^']+)' is not accepted", leaf)
    if accepted:
        full = f"--{path}.{accepted.group(1)}" if path else f"--{accepted.group(1)}"
        return f"{full}: no such option (misspelt key?)"
    if not path and not recognised:  # nothing recognised and no argument to name: as it came
        return message.strip()
    return f"{arg}: {leaf}"


class ConciseArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line plus a pointer to ``--help``."""

    def parse_args(self, *args: Any, **kwargs: Any):
        global _PARSING
        outermost = not _PARSING
        if outermost:  # subcommand parsers see only their part of the command line
            given = args[0] if args else kwargs.get("args")
            given = sys.argv[1:] if given is None else given
            _ARGV[:] = list(given) if isinstance(given, (list, tuple)) and all(isinstance(a, str) for a in given) else []
        _PARSING = True
        try:
            return super().parse_args(*args, **kwargs)
        finally:
            if outermost:
                _PARSING = False

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        short = condense(message)
        if not self.exit_on_error:
            raise ArgumentError(None, short) from ex
        sys.stderr.write(f"error: {short}\n(run with --help for the accepted options)\n")
        raise SystemExit(2)


# ----------------------------------------------------------------------------- run time
_NO_GPU = "use --trainer.accelerator cpu or auto"


def _wrapped(err: BaseException) -> list[BaseException]:
    """``err``, and when it is jsonargparse's report of a failed instantiation ("Does not
    validate against any of the Union subtypes" around a constructor's exception), the
    exceptions it wraps."""
    chain = [err]
    text = str(err)
    if isinstance(err, (ValueError, TypeError)) and (
        text.startswith("Does not validate against any of the Union subtypes") or text.startswith("Problem with given class_path")
    ):
        seen = {id(err)}
        current = err.__cause__ or err.__context__
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            chain.append(current)
            current = current.__cause__ or current.__context__
    return chain


def _slurm_message(text: str) -> Optional[str]:
    """Lightning's refusals of a SLURM job that does not match the trainer (SLURMEnvironment)."""
    devices = re.match(r"You set `devices=(\d+)` in Lightning, but the number of tasks per node configured in SLURM "
                       r"`--ntasks-per-node=(\d+)` does not match", text)
    if devices:
        return (f"--trainer.devices {devices.group(1)} does not match the SLURM job's --ntasks-per-node={devices.group(2)}: "
                f"give --trainer.devices {devices.group(2)} (one task per device), or change the job")
    nodes = re.match(r"You set `num_nodes=(\d+)` in Lightning, but the number of nodes configured in SLURM "
                     r"`--nodes=(\d+)` does not match", text)
    if nodes:
        return (f"--trainer.num_nodes {nodes.group(1)} does not match the SLURM job's --nodes={nodes.group(2)}: "
                f"give --trainer.num_nodes {nodes.group(2)}, or change the job")
    ntasks = re.match(r"You set `--ntasks=(\d+)` in your SLURM bash script, but this variable is not supported", text)
    if ntasks:
        return (f"the SLURM job sets --ntasks={ntasks.group(1)}, which Lightning cannot map to nodes: "
                f"use #SBATCH --ntasks-per-node (one task per device) instead")
    return None


def _trainer_message(err: BaseException) -> Optional[str]:
    """Lightning's refusals of trainer settings, as one line naming the ``--trainer`` option."""
    text = str(err).strip()
    kind = type(err).__name__
    slurm = _slurm_message(text)
    if slurm is not None and kind in ("ValueError", "RuntimeError"):
        return slurm
    if kind == "MisconfigurationException":
        if text.startswith("No supported gpu backend found"):
            return f"--trainer.accelerator gpu: no GPU is visible to this process (torch.cuda.is_available() is False); {_NO_GPU}"
        gone = re.match(r"`(\w+)Accelerator` can not run on your system since the accelerator is not available", text)
        if gone:
            name = gone.group(1).lower()
            what = {"cuda": "no CUDA GPU is visible to this process (torch.cuda.is_available() is False)",
                    "mps": "no Apple MPS GPU is available here"}.get(name, f"the {name} accelerator is not available here")
            return f"--trainer.accelerator {name}: {what}; {_NO_GPU}"
        many = re.match(r"You requested gpu: (.*?)\s+But your machine only has: (.*)$", text, re.S)
        if many:
            return (f"--trainer.devices asks for GPUs {many.group(1).strip()} but this machine has {many.group(2).strip()}: "
                    "lower --trainer.devices (or set it to auto)")
        limit = re.match(r"`(max_epochs|max_steps)` must be a non-negative integer or -1.*You passed in (\S+?)\.?$", text)
        if limit:
            return f"--trainer.{limit.group(1)} must be an integer >= 0, or -1 for no limit (got {limit.group(2)})"
        fraction = re.match(r"You have passed invalid value (\S+) for (\w+), it has to be in \[0.0, 1.0\] or an int", text)
        if fraction:
            return (f"--trainer.{fraction.group(2)} must be a fraction in [0.0, 1.0] or a number of batches "
                    f"(an integer >= 0) (got {fraction.group(1)})")
        devices = re.match(r"`Trainer\(devices=(.*?)\)` value is not a valid input using (\w+) accelerator", text)
        if devices:
            return f"--trainer.devices {devices.group(1).strip(chr(39))}: not a valid number of {devices.group(2)} devices; use an integer >= 1 or auto"
        dev_run = re.match(r"fast_dev_run=(\S+) is not a valid configuration", text)
        if dev_run:
            return f"--trainer.fast_dev_run must be true/false or a number of batches >= 0 (got {dev_run.group(1)})"
        timer = re.match(r"`Timer\(duration=(.*?)\)` is not a valid duration", text)
        if timer:
            return f"--trainer.max_time {timer.group(1)} is not a duration: write DD:HH:MM:SS, e.g. 00:12:00:00"
        clip = re.match(r"`gradient_clip_algorithm` (\S+) is invalid. Allowed algorithms: (.*)$", text)
        if clip:
            return f"--trainer.gradient_clip_algorithm: invalid choice {clip.group(1)!r}; valid choices: {clip.group(2).strip('[].')}"
        return None
    if isinstance(err, ValueError):
        accelerator = re.match(r"You selected an invalid accelerator name: `accelerator='(.*?)'`. Available names are: (.*?)\.?$", text)
        if accelerator:
            return (f"--trainer.accelerator: unknown accelerator {accelerator.group(1)!r}; valid choices: "
                    f"{accelerator.group(2)}, gpu" + _did_you_mean(accelerator.group(1), [*accelerator.group(2).split(", "), "gpu"]))
        strategy = re.match(r"You selected an invalid strategy name: `strategy='(.*?)'`", text)
        if strategy:
            from lightning.pytorch.strategies import StrategyRegistry

            known = ["auto", *StrategyRegistry.available_strategies()]
            return (f"--trainer.strategy: unknown strategy {strategy.group(1)!r}; e.g. auto, ddp, ddp_spawn, fsdp, deepspeed"
                    + _did_you_mean(strategy.group(1), known))
        nodes = re.match(r"`num_nodes` must be a positive integer, but got (\S+?)\.?$", text)
        if nodes:
            return f"--trainer.num_nodes must be an integer >= 1 (got {nodes.group(1)})"
        precision = re.match(r"Precision '?(.*?)'? is invalid. Allowed precision values: \((.*)\)$", text)
        if precision:
            return f"--trainer.precision: invalid choice {precision.group(1)!r}; valid choices: {precision.group(2)}"
        return None
    if isinstance(err, TypeError):
        cpu = re.match(r"`devices` selected with `CPUAccelerator` should be an int > 0", text)
        if cpu:
            return "--trainer.devices must be an integer > 0 (or auto) with the cpu accelerator"
        return None
    if isinstance(err, ModuleNotFoundError) and text.startswith("Requirement 'torch_xla"):
        return f"--trainer.accelerator tpu: no TPU here (torch_xla is not installed); {_NO_GPU}"
    return None


def _resource_message(err: BaseException) -> Optional[str]:
    """The machine ran out of something the user controls (GPU memory, disk space)."""
    import torch

    out_of_memory = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if out_of_memory is not None and isinstance(err, out_of_memory):
        first = str(err).strip().splitlines()[0] if str(err).strip() else "CUDA out of memory"
        first = first.split(". Tried", 1)[0].split(". GPU", 1)[0]
        return (f"out of GPU memory ({first}): lower --data.batch_size or the model's size, or use "
                "--trainer.precision bf16-mixed")
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return (f"no space left on the device{where}: free some space, or point --trainer.default_root_dir "
                "(and the loggers' save_dir) at a disk with room")
    return None


_DDP_FIX = ("check that every rank is alive and can reach MASTER_ADDR:MASTER_PORT; "
            "--ddp_timeout SECONDS sets how long a rank waits for the others")


def _raised_in_torch_distributed(err: BaseException) -> bool:
    """Whether ``err`` came out of a collective (a frame in torch.distributed or DDP's wrapper)."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__) if err.__traceback__ is not None else []
    return any(re.search(r"torch[/\\](distributed|nn[/\\]parallel[/\\]distributed\.py)", frame.filename) for frame in frames)


def _distributed_message(err: BaseException) -> Optional[str]:
    """A DDP peer that never joined, stopped answering or died: torch.distributed's own errors
    (store and backend timeouts, closed connections) are the machine's state, not a bug here."""
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", None)
    text = str(err).strip()
    from_backend = isinstance(err, RuntimeError) and (
        re.search(r"gloo|nccl|c10d|ProcessGroup", text, re.I) or _raised_in_torch_distributed(err))
    if not (from_backend or (dist_error is not None and isinstance(err, dist_error))):
        return None
    first = text.splitlines()[0] if text else type(err).__name__
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[file.cc:81]" prefix
    if re.search(r"waiting for clients|clients joined", text):
        return f"DDP: not every rank joined the run ({first}); {_DDP_FIX}"
    if re.search(r"timed out|timeout", text, re.I):
        return f"DDP: a rank stopped answering ({first}); {_DDP_FIX}"
    if re.search(r"connection (closed|reset)|broken pipe|peer|pair closure", text, re.I):
        return f"DDP: a rank left the run ({first}); {_DDP_FIX}"
    return None


def runtime_user_error(err: BaseException) -> str | None:
    """The one-line message for an exception raised after parsing that is the user's doing
    (no GPU for ``accelerator: gpu``, a full disk, a lost DDP peer, ...), or None for a bug."""
    from .errors import UserError

    for index, current in enumerate(_wrapped(err)):
        if index > 0 and isinstance(current, UserError):
            return str(current)
        message = _trainer_message(current) or _resource_message(current) or _distributed_message(current)
        if message is not None:
            return message
    return None
