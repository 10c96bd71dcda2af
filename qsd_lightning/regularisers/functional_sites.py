"""Functional dropout sites: found in library source, routed to regulariser modules at run time.

Library code also drops out without a dropout module: ``F.dropout(x, p=self.drop_rate,
training=self.training)`` (timm heads, torchvision DenseNet / Swin), ``F.scaled_dot_product_attention(...,
dropout_p=self.attn_drop.p)`` (fused attention), ``nn.MultiheadAttention``'s ``dropout`` float.
:func:`replace_dropout <.replace.replace_dropout>` handles these in two steps.

**Scan** (:func:`scan_module`). The source of every module class in the model (the methods the
instance actually uses, and module-level helper functions they call, one level deep) is parsed
with :mod:`ast`; each call of a torch dropout function or of SDPA with a dropout probability is a
*site* at ``file:line``. Its rate expression is evaluated against the module as if training
(``self.attn_drop.p if self.training else 0.`` gives the rate; locals and helper parameters are
substituted from the code). Each site gets its own regulariser module, registered as a child of
the module that makes the call (so it shows in ``model.modules()``, the state dict and the
report), unless the rate is read from a regulariser child's ``.p``, which then serves the site.

**Routing** (:class:`DropoutRouter`). A ``torch.overrides.TorchFunctionMode`` is entered by
forward pre-hooks (and left by always-called forward hooks) on the model's root and on every
module owning a site, in training mode only. It intercepts the torch dropout functions,
``F.scaled_dot_product_attention`` with ``dropout_p > 0``, ``F.multi_head_attention_forward``
and the Bernoulli samplers. A dropout call is attributed to the innermost module on the call
stack and its ``file:line`` and goes through that site's regulariser; SDPA is computed
explicitly with the regulariser on the probabilities (:func:`.attention.regularised_sdpa`). Eval
forwards never enter the mode, so eval outputs are untouched. A call the scan missed is not left
as Bernoulli dropout: a regulariser is created for it on the spot, with a ``RuntimeWarning``
naming it, and added to the report. ``torch.bernoulli`` / ``Tensor.bernoulli_`` outside
regularisers and stochastic depth are reported (warning) as possible hand-written dropout.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import inspect
import os
import sys
import threading
import types
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import attention as _attention
from .base import Regulariser
from .registry import name_of

__all__ = [
    "DropoutRouter",
    "Found",
    "STOCHASTIC_DEPTH",
    "attention_site",
    "hook_owner",
    "is_regulariser",
    "routing",
    "scan_module",
    "short_path",
]


# --- what counts as dropout ------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    label: str
    locked: Any  # None (elementwise), a tuple of dims, or "channel" (every dim after dim 1)
    training_name: str  # "training" (F.*) or "train" (torch.*)
    training_default: Optional[bool]  # None: required
    inplace: Optional[bool]  # None: read the ``inplace`` argument


_DROPOUT: dict[Any, _Spec] = {
    F.dropout: _Spec("F.dropout", None, "training", True, None),
    F.dropout1d: _Spec("F.dropout1d", (2,), "training", True, None),
    F.dropout2d: _Spec("F.dropout2d", (2, 3), "training", True, None),
    F.dropout3d: _Spec("F.dropout3d", (2, 3, 4), "training", True, None),
    F.alpha_dropout: _Spec("F.alpha_dropout", None, "training", False, None),
    F.feature_alpha_dropout: _Spec("F.feature_alpha_dropout", "channel", "training", False, None),
    torch.dropout: _Spec("torch.dropout", None, "train", None, False),
    torch.dropout_: _Spec("torch.dropout_", None, "train", None, True),
    torch.feature_dropout: _Spec("torch.feature_dropout", "channel", "train", None, False),
    torch.feature_dropout_: _Spec("torch.feature_dropout_", "channel", "train", None, True),
    torch.alpha_dropout: _Spec("torch.alpha_dropout", None, "train", None, False),
    torch.alpha_dropout_: _Spec("torch.alpha_dropout_", None, "train", None, True),
    torch.feature_alpha_dropout: _Spec("torch.feature_alpha_dropout", "channel", "train", None, False),
    torch.feature_alpha_dropout_: _Spec("torch.feature_alpha_dropout_", "channel", "train", None, True),
}
_SDPA = F.scaled_dot_product_attention
_MHA = F.multi_head_attention_forward
_BERNOULLI = {torch.bernoulli, Tensor.bernoulli, Tensor.bernoulli_, torch.native_dropout}

#: class names of stochastic-depth / structured-drop modules: regularisers with their own
#: semantics (drop whole residual branches or blocks), reported and left as they are
STOCHASTIC_DEPTH = ("DropPath", "StochasticDepth", "DropBlock2d", "DropBlock2D", "DropBlock")


@functools.lru_cache(maxsize=4096)
def _norm(filename: str) -> str:
    """One spelling per source file (the scan and the call stack must agree)."""
    return os.path.realpath(filename)


# frames skipped when locating the caller of a dropout call
_INTERNAL_FILES = {_norm(f) for f in (__file__, _attention.__file__, F.__file__, torch.overrides.__file__)}


def is_regulariser(module: Any) -> bool:
    return isinstance(module, Regulariser) or (isinstance(module, nn.Module) and name_of(module) is not None)


def _is_stochastic_depth(module: nn.Module) -> bool:
    return type(module).__name__ in STOCHASTIC_DEPTH


def short_path(filename: str) -> str:
    """``.../site-packages/timm/models/resnet.py`` -> ``timm/models/resnet.py``."""
    parts = os.path.normpath(filename).split(os.sep)
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    return "/".join(parts[-3:])


# --- scan ------------------------------------------------------------------------------------


@dataclass
class Found:
    """A dropout call found in the source of a module's class."""

    key: str  # routing key: "file:line", or "attention" (Hugging Face attention interface)
    kind: str  # "functional" or "attention"
    call: str  # "F.dropout", "F.scaled_dot_product_attention", "HF attention interface"
    where: str  # "timm/models/resnet.py:803"
    expr: str  # source text of the rate argument
    rate: Optional[float]  # the rate it has in training; None where it cannot be evaluated
    reuse: Optional[str]  # path (from the module) of a regulariser read as ``.p``: it serves the site
    locked: Any
    hint: str  # name for a new child module


@dataclass
class _Record:  # per class, instance-independent
    key: str
    kind: str
    call: str
    where: str
    expr_text: str
    expr: Optional[ast.expr]  # after substitution of locals / helper parameters
    namespace: dict
    locked: Any


@functools.lru_cache(maxsize=256)
def _parse(filename: str, mtime: float) -> Optional[ast.Module]:
    try:
        with open(filename, encoding="utf-8") as fh:
            return ast.parse(fh.read(), filename)
    except (OSError, SyntaxError, ValueError):
        return None


def _tree(filename: Optional[str]) -> Optional[ast.Module]:
    if not filename:
        return None
    try:
        return _parse(filename, os.path.getmtime(filename))
    except OSError:
        return None


def _find_class(tree: ast.Module, qualname: str) -> Optional[ast.ClassDef]:
    body, node = tree.body, None
    for part in qualname.split("."):
        if part == "<locals>":  # a class defined inside a function
            continue
        node = next((n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part), None)
        if node is None:
            break
        body = node.body
    if isinstance(node, ast.ClassDef):
        return node
    # defined under an ``if`` / ``try``: the only class of that name in the file
    name = qualname.rsplit(".", 1)[-1]
    found = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name]
    return found[0] if len(found) == 1 else None


def _find_function(tree: ast.Module, fn: types.FunctionType) -> Optional[ast.FunctionDef]:
    first = fn.__code__.co_firstlineno
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == fn.__name__:
            if node.lineno == first or (node.decorator_list and node.decorator_list[0].lineno == first):
                return node
    return None


def _dotted(node: ast.expr) -> Optional[list[str]]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else head + [node.attr]
    return None


_MISSING = object()


def _resolve(node: ast.expr, namespace: dict) -> Any:
    parts = _dotted(node)
    if not parts or parts[0] == "self":
        return _MISSING
    builtins = namespace.get("__builtins__", {})
    obj = namespace.get(parts[0], _MISSING)
    if obj is _MISSING:
        get = builtins.get if isinstance(builtins, dict) else functools.partial(getattr, builtins)
        obj = get(parts[0], _MISSING)
    for part in parts[1:]:
        if obj is _MISSING:
            break
        obj = getattr(obj, part, _MISSING)
    return obj


def _arg(call: ast.Call, position: int, name: str) -> Optional[ast.expr]:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    if len(call.args) > position and not any(isinstance(a, ast.Starred) for a in call.args[: position + 1]):
        return call.args[position]
    return None


def _assignments(func: ast.AST, before: int) -> dict[str, ast.expr]:
    """Simple ``name = expr`` assignments in ``func`` before line ``before`` (the last one wins)."""
    found: dict[str, tuple[int, ast.expr]] = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        if node.lineno < before and (name not in found or found[name][0] < node.lineno):
            found[name] = (node.lineno, value)
    return {k: v for k, (_, v) in found.items()}


class _Substitute(ast.NodeTransformer):
    def __init__(self, env: dict[str, ast.expr]) -> None:
        self.env = env

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in self.env and isinstance(node.ctx, ast.Load):
            return copy.deepcopy(self.env[node.id])
        return node


def _substitute(expr: Optional[ast.expr], env: dict[str, ast.expr], rounds: int = 3) -> Optional[ast.expr]:
    if expr is None:
        return None
    for _ in range(rounds):
        before = ast.dump(expr)
        expr = _Substitute(env).visit(copy.deepcopy(expr))
        if ast.dump(expr) == before:
            break
    return expr


def _classify(call: ast.Call, namespace: dict) -> Optional[tuple[str, str, Optional[ast.expr], Any]]:
    """``(kind, label, rate expression, locked)`` for a dropout-like call, else None."""
    target = _resolve(call.func, namespace)
    if target is not _MISSING:
        try:
            spec = _DROPOUT.get(target)
        except TypeError:  # unhashable
            spec = None
        if spec is not None:
            expr = _arg(call, 1, "p")
            if expr is None and spec.training_default is not None:
                expr = ast.Constant(0.5)
            return "functional", spec.label, expr, spec.locked
        if target is _SDPA:
            return "attention", "F.scaled_dot_product_attention", _arg(call, 4, "dropout_p"), None
        return None
    # Hugging Face: ``attention_interface(self, q, k, v, mask, dropout=..., ...)``, where the
    # function is a local looked up in ALL_ATTENTION_FUNCTIONS
    if "ALL_ATTENTION_FUNCTIONS" in namespace and any(kw.arg == "dropout" for kw in call.keywords):
        func = call.func
        named = isinstance(func, ast.Name) and "attention" in func.id.lower()
        indexed = isinstance(func, ast.Subscript) and "ALL_ATTENTION_FUNCTIONS" in ast.unparse(func)
        if named or indexed:
            return "hf_attention", "HF attention interface", _arg(call, 99, "dropout"), None
    return None


#: names whose mention in compiled code makes its source worth parsing
_MENTIONS = frozenset(
    {spec.label.rsplit(".", 1)[1] for spec in _DROPOUT.values()}
    | {"scaled_dot_product_attention", "ALL_ATTENTION_FUNCTIONS"}
)


def _mentions(code: types.CodeType) -> bool:
    """Whether ``code`` (or a function nested in it) names a dropout function."""
    if _MENTIONS.intersection(code.co_names):
        return True
    return any(isinstance(c, types.CodeType) and _mentions(c) for c in code.co_consts)


def _is_helper(target: Any) -> bool:
    if not isinstance(target, types.FunctionType):
        return False
    module = getattr(target, "__module__", "") or ""
    return module.split(".")[0] not in ("torch", "qsd_lightning", "builtins", "typing") and _mentions(target.__code__)


def _helper(call: ast.Call, namespace: dict) -> Optional[types.FunctionType]:
    target = _resolve(call.func, namespace)
    return target if _is_helper(target) else None


def _worth_parsing(cls: type, namespace: dict) -> bool:
    """Whether a method of ``cls``, or a module-level function one calls, names a dropout function."""
    for value in vars(cls).values():
        fn = getattr(value, "__func__", getattr(value, "fget", value))  # static/class methods, properties
        code = getattr(inspect.unwrap(fn) if callable(fn) else fn, "__code__", None)
        if not isinstance(code, types.CodeType):
            continue
        if _mentions(code) or any(_is_helper(namespace.get(name)) for name in _all_names(code)):
            return True
    return False


def _all_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _all_names(const)
    return names


def _helper_env(call: ast.Call, fn: types.FunctionType) -> Optional[dict[str, ast.expr]]:
    """Parameters of helper ``fn`` bound to the argument expressions of ``call``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    args = [a for a in call.args if not isinstance(a, ast.Starred)]
    kwargs = {kw.arg: kw.value for kw in call.keywords if kw.arg is not None}
    try:
        bound = sig.bind_partial(*args, **kwargs)
    except TypeError:
        return None
    env: dict[str, ast.expr] = dict(bound.arguments)
    for name, param in sig.parameters.items():
        simple = isinstance(param.default, (int, float, bool, type(None)))
        if name not in env and simple and param.default is not inspect.Parameter.empty:
            env[name] = ast.Constant(param.default)
    return {k: v for k, v in env.items() if isinstance(v, ast.AST)}


def _records_in(func: ast.AST, filename: str, namespace: dict, depth: int) -> list[_Record]:
    out: list[_Record] = []
    for node in ast.walk(func):
        if not isinstance(node, ast.Call):
            continue
        found = _classify(node, namespace)
        if found is not None:
            kind, label, expr, locked = found
            text = ast.unparse(expr) if expr is not None else "?"
            expr = _substitute(expr, _assignments(func, node.lineno))
            key = "attention" if kind == "hf_attention" else f"{filename}:{node.lineno}"
            kind = "attention" if kind == "hf_attention" else kind
            where = f"{short_path(filename)}:{node.lineno}"
            out.append(_Record(key, kind, label, where, text, expr, namespace, locked))
            continue
        if depth == 0:
            continue
        fn = _helper(node, namespace)
        if fn is None:
            continue
        filename2 = inspect.getsourcefile(fn) if fn.__code__ else None
        tree = _tree(_norm(filename2)) if filename2 else None
        fdef = _find_function(tree, fn) if tree is not None else None
        if fdef is None:
            continue
        env = _helper_env(node, fn)
        for rec in _records_in(fdef, _norm(filename2), fn.__globals__, depth - 1):
            # a helper's parameters become the caller's argument expressions (evaluated in the caller)
            expr = _substitute(rec.expr, env) if env is not None else None
            expr = _substitute(expr, _assignments(func, node.lineno))
            text = ast.unparse(expr) if expr is not None else rec.expr_text
            out.append(_Record(rec.key, rec.kind, rec.call, rec.where, text, expr, namespace, rec.locked))
    return out


def _used_methods(cls: type, classdef: ast.ClassDef, instance_type: type) -> list[ast.AST]:
    """Methods of ``cls`` that ``instance_type`` resolves to ``cls`` (not overridden)."""
    out = []
    mro = instance_type.__mro__
    earlier = mro[: mro.index(cls)]
    for node in classdef.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not any(node.name in vars(k) for k in earlier):
                out.append(node)
    return out


@functools.lru_cache(maxsize=1024)
def _class_records(cls: type, instance_type: type) -> tuple[_Record, ...]:
    try:
        filename = inspect.getsourcefile(cls)
    except TypeError:
        return ()
    if not filename:
        return ()
    module = sys.modules.get(cls.__module__)
    if module is None or not _worth_parsing(cls, vars(module)):
        return ()
    namespace = vars(module)
    filename = _norm(filename)
    tree = _tree(filename)
    classdef = _find_class(tree, cls.__qualname__) if tree is not None else None
    if classdef is None:
        return ()
    records: list[_Record] = []
    for method in _used_methods(cls, classdef, instance_type):
        records.extend(_records_in(method, filename, namespace, depth=1))
    return tuple(records)


_SAFE_NODES = (
    ast.Expression, ast.Attribute, ast.Name, ast.Constant, ast.IfExp, ast.Compare, ast.BoolOp, ast.And, ast.Or,
    ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Load, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.Call,
)
_SAFE_CALLS = ("float", "int", "min", "max", "bool")


class _TrainingView:
    """The module as its code sees it in training: ``self.training`` is True."""

    training = True

    def __init__(self, module: nn.Module) -> None:
        object.__setattr__(self, "_module", module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _evaluate(expr: Optional[ast.expr], namespace: dict, module: nn.Module) -> Any:
    if expr is None:
        return _MISSING
    for node in ast.walk(expr):
        if not isinstance(node, _SAFE_NODES):
            return _MISSING
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _SAFE_CALLS):
            return _MISSING
    try:
        code = compile(ast.fix_missing_locations(ast.Expression(body=copy.deepcopy(expr))), "<rate>", "eval")
        return eval(code, namespace, {"self": _TrainingView(module)})  # noqa: S307 - the library's own expression
    except Exception:
        return _MISSING


def _as_rate(value: Any) -> Optional[float]:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0.0 <= value < 1.0 else None


def _reused(expr: Optional[ast.expr], namespace: dict, module: nn.Module) -> Optional[str]:
    """Path (from ``module``) of a regulariser whose ``.p`` the expression reads."""
    if expr is None:
        return None
    for node in ast.walk(expr):
        if isinstance(node, ast.Attribute) and node.attr == "p":
            owner = _evaluate(node.value, namespace, module)
            if is_regulariser(owner):
                for path, sub in module.named_modules():
                    if sub is owner and path:
                        return path
    return None


def _hint(expr: Optional[ast.expr], kind: str) -> str:
    if kind == "attention":
        return "attn_regulariser"
    if expr is not None:
        for node in ast.walk(expr):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                return f"{node.attr}_regulariser"
    return "dropout_regulariser"


def scan_module(module: nn.Module) -> list[Found]:
    """Dropout calls in the source of ``module``'s class (and its bases outside torch)."""
    out: list[Found] = []
    seen: set[str] = set()
    for cls in type(module).__mro__:
        if cls in (object, nn.Module) or cls.__module__.split(".")[0] in ("torch", "builtins", "qsd_lightning"):
            continue
        for rec in _class_records(cls, type(module)):
            if rec.key in seen:
                continue
            seen.add(rec.key)
            value = _evaluate(rec.expr, rec.namespace, module)
            out.append(
                Found(
                    key=rec.key, kind=rec.kind, call=rec.call, where=rec.where, expr=rec.expr_text,
                    rate=_as_rate(value), reuse=_reused(rec.expr, rec.namespace, module),
                    locked=rec.locked, hint=_hint(rec.expr, rec.kind),
                )
            )
    return out


# --- routing ---------------------------------------------------------------------------------


class _State(threading.local):
    def __init__(self) -> None:
        self.tokens: list[Optional[DropoutRouter]] = []  # one per hooked forward in progress
        self.active = 0  # routers entered and not left
        self.forced: list[nn.Module] = []  # site set by an attention function for its inner calls


_STATE = _State()


def _caller() -> tuple[Optional[nn.Module], Optional[str]]:
    """The innermost module on the call stack and the ``file:line`` of the dropout call."""
    frame = sys._getframe(1)
    location = None
    while frame is not None:
        code = frame.f_code
        if location is None and _norm(code.co_filename) not in _INTERNAL_FILES:
            location = f"{_norm(code.co_filename)}:{frame.f_lineno}"
        if code.co_argcount and code.co_varnames[0] == "self":
            obj = frame.f_locals.get("self")
            if isinstance(obj, nn.Module):
                return obj, location
        frame = frame.f_back
    return None, location


def _replacement_for(owner: Optional[nn.Module]):
    found = owner.__dict__.get("_dropout_replacement") if owner is not None else None
    if found is None:
        for token in reversed(_STATE.tokens):
            if token is not None:
                return token.replacement
    return found


def _free_name(owner: nn.Module, base: str) -> str:
    name, i = base, 1
    while hasattr(owner, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _path_of(replacement, module: nn.Module) -> str:
    root = getattr(replacement, "root", None)
    if root is not None:
        for path, sub in root.named_modules():
            if sub is module:
                return path
    return type(module).__name__


_UNPREPARED: set = set()


def _create_site(
    owner: nn.Module, key: str, rate: float, label: str, kind: str, locked: Any, where: str
) -> Optional[nn.Module]:
    """A regulariser for a dropout call the scan did not find: registered on ``owner`` now."""
    replacement = _replacement_for(owner)
    if replacement is None:  # not a model prepared by replace_dropout: say so, once
        if (type(owner), key) not in _UNPREPARED:
            _UNPREPARED.add((type(owner), key))
            warnings.warn(
                f"replace_dropout: {label} at {where} inside {type(owner).__name__} is routed but the module was "
                "not prepared by replace_dropout: left as torch dropout",
                RuntimeWarning,
                stacklevel=4,
            )
        return None
    from .replace import Site

    regulariser = replacement.make(rate, locked)
    regulariser.train(owner.training)
    name = _free_name(owner, "attn_regulariser" if kind == "attention" else "dropout_regulariser")
    owner.add_module(name, regulariser)
    owner.__dict__.setdefault("_dropout_sites", {})[key] = name
    owner_path = _path_of(replacement, owner)
    path = f"{owner_path}.{name}" if owner_path else name
    replacement.sites.append(Site(path, kind, rate, f"{label} at {where} (found at run time)", regulariser))
    warnings.warn(
        f"replace_dropout: {label} at {where} inside {owner_path or '<root>'} ({type(owner).__name__}) was not "
        f"found by the scan; it now goes through {regulariser!r}, registered as {path!r} (the state dict gains "
        "this module)",
        RuntimeWarning,
        stacklevel=4,
    )
    return regulariser


def _site_for(
    owner: Optional[nn.Module], location: Optional[str], rate: float, label: str, kind: str, locked: Any,
    x: Optional[Tensor] = None,
) -> Optional[nn.Module]:
    """The regulariser serving a dropout call of ``owner`` at ``location`` (None: leave the call
    alone, as inside a regulariser or stochastic depth; created with a warning if the scan missed it)."""
    if owner is None or is_regulariser(owner) or _is_stochastic_depth(owner):
        return None
    sites = owner.__dict__.get("_dropout_sites", {})
    name = sites.get(location) or sites.get("*")
    if name is not None:
        try:
            return owner.get_submodule(name)
        except AttributeError:
            pass
    if locked == "channel":
        locked = tuple(range(2, x.ndim)) if x is not None and x.ndim > 2 else None
    where = short_path(location.rsplit(":", 1)[0]) + ":" + location.rsplit(":", 1)[1] if location else "?"
    return _create_site(owner, location or "?", rate, label, kind, locked, where)


def attention_site(owner: nn.Module, key: str, rate: float, label: str) -> Optional[nn.Module]:
    """The regulariser of ``owner``'s attention site ``key`` (created, with a warning, if missing)."""
    sites = owner.__dict__.get("_dropout_sites", {})
    if key in sites:
        return owner.get_submodule(sites[key])
    return _create_site(owner, key, rate, label, "attention", None, f"{type(owner).__name__} ({key})")


@contextlib.contextmanager
def routing(site: nn.Module, owner: Optional[nn.Module] = None) -> Iterator[None]:
    """Send every dropout call inside the block to ``site`` (a router is entered if none is)."""
    _STATE.forced.append(site)
    router = None
    if not _STATE.active:
        router = DropoutRouter(_replacement_for(owner))
        router.__enter__()
    try:
        yield
    finally:
        if router is not None:
            router.__exit__(None, None, None)
        _STATE.forced.pop()


def _bind_dropout(spec: _Spec, args: tuple, kwargs: dict) -> tuple[Tensor, float, bool, bool]:
    x = args[0] if args else kwargs["input"]
    p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
    training = args[2] if len(args) > 2 else kwargs.get(spec.training_name, spec.training_default)
    if spec.inplace is None:
        inplace = args[3] if len(args) > 3 else kwargs.get("inplace", False)
    else:
        inplace = spec.inplace
    return x, float(p), bool(training), bool(inplace)


class DropoutRouter(TorchFunctionMode):
    """Routes torch's functional dropout (and attention dropout) to regulariser modules."""

    def __init__(self, replacement=None) -> None:
        super().__init__()
        self.replacement = replacement

    def __enter__(self):
        _STATE.active += 1
        return super().__enter__()

    def __exit__(self, *exc):
        _STATE.active -= 1
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            spec, bernoulli = _DROPOUT.get(func), func in _BERNOULLI
        except TypeError:  # an unhashable callable: not one of ours
            spec, bernoulli = None, False
        if spec is not None:
            return self._dropout(func, spec, args, kwargs)
        if func is _SDPA:
            return self._sdpa(func, args, kwargs)
        if func is _MHA:
            return self._mha(func, args, kwargs)
        if bernoulli:
            self._bernoulli(func)
        return func(*args, **kwargs)

    def _target(self, rate: float, label: str, kind: str, locked: Any, x: Optional[Tensor] = None):
        if _STATE.forced:
            return _STATE.forced[-1]
        owner, location = _caller()
        return _site_for(owner, location, rate, label, kind, locked, x)

    def _dropout(self, func, spec: _Spec, args, kwargs):
        x, p, training, inplace = _bind_dropout(spec, args, kwargs)
        if not training or p == 0.0:
            return func(*args, **kwargs)
        site = self._target(p, spec.label, "functional", spec.locked, x)
        if site is None:
            return func(*args, **kwargs)
        y = site(x)
        return x.copy_(y) if inplace and y is not x else y

    def _sdpa(self, func, args, kwargs):
        bound = _attention.bind_sdpa(args, kwargs)
        if not bound["dropout_p"]:
            return func(*args, **kwargs)
        site = self._target(float(bound["dropout_p"]), "F.scaled_dot_product_attention", "attention", None)
        if site is None:
            return func(*args, **kwargs)
        bound.pop("dropout_p")
        return _attention.attend(**bound, regulariser=site, fused=func)  # the Transformer LM's attention too

    def _mha(self, func, args, kwargs):
        dropout_p = args[10] if len(args) > 10 else kwargs.get("dropout_p", 0.0)
        training = kwargs.get("training", True)
        if not (training and dropout_p) or _attention.MHA_BODY is None:
            return func(*args, **kwargs)
        site = self._target(float(dropout_p), "nn.MultiheadAttention dropout", "attention", None)
        if site is None:
            return func(*args, **kwargs)
        with routing(site), DropoutRouter(self.replacement):
            return _attention.MHA_BODY(*args, **kwargs)

    def _bernoulli(self, func) -> None:
        owner, location = _caller()
        if owner is None or not owner.training or is_regulariser(owner) or _is_stochastic_depth(owner):
            return
        replacement = _replacement_for(owner)
        key = (type(owner), location)
        if replacement is None or key in replacement._warned:
            return
        replacement._warned.add(key)
        from .replace import Unreached

        where = short_path(location.rsplit(":", 1)[0]) + ":" + location.rsplit(":", 1)[1] if location else "?"
        path = _path_of(replacement, owner)
        name = getattr(func, "__name__", str(func))
        reason = f"{name} at {where}: a random mask drawn by hand (possibly dropout) cannot be replaced"
        replacement.unreached.append(Unreached(path, type(owner).__name__, reason))
        warnings.warn(f"replace_dropout: {path} ({type(owner).__name__}) calls {reason}", RuntimeWarning, stacklevel=4)


# --- hooks -----------------------------------------------------------------------------------


def _enter(module: nn.Module, args: tuple) -> None:
    router = None
    if module.training and not _STATE.active:
        router = DropoutRouter(module.__dict__.get("_dropout_replacement"))
        router.__enter__()
    _STATE.tokens.append(router)


def _leave(module: nn.Module, args: tuple, output: Any) -> None:
    if _STATE.tokens:
        router = _STATE.tokens.pop()
        if router is not None:
            router.__exit__(None, None, None)


def hook_owner(module: nn.Module, replacement) -> None:
    """Enter the router around ``module``'s training forwards (once per module)."""
    module.__dict__["_dropout_replacement"] = replacement
    if module.__dict__.get("_dropout_hooked"):
        return
    module.register_forward_pre_hook(_enter)
    module.register_forward_hook(_leave, always_call=True)
    module.__dict__["_dropout_hooked"] = True

