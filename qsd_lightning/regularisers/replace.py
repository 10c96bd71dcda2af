"""Swap every dropout of an existing network (torchvision, timm, Hugging Face, ...) for a
registered regulariser, and say where.

Three kinds of site, each reached where the library applies it:

* ``module``: torch dropout modules (``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``,
  ``FeatureAlphaDropout``) are replaced by a regulariser module, which keeps torch's ``p`` /
  ``inplace`` attributes for code that reads them.
* ``functional``: ``F.dropout(x, p=self.drop_rate, training=self.training)`` and friends in library
  code (timm classifier heads, torchvision DenseNet / Swin): found in the source
  (:mod:`.functional_sites`), given a regulariser module of their own (a child of the calling
  module) and routed to it in training by a ``TorchFunctionMode``.
* ``attention``: dropout of attention probabilities, inside fused kernels (SDPA,
  ``nn.MultiheadAttention``, Hugging Face attention functions): in training the attention is
  computed explicitly with the regulariser on the probabilities (:mod:`.attention`); timm
  attention uses its own unfused path (``fused_attn`` off in training), Hugging Face models a
  registered ``AttentionInterface`` function (``regularised_sdpa`` / ``regularised_eager``).

Eval forwards run the original code: outputs are bit-identical to the original model's. What
cannot be replaced (stochastic depth, flash-attention kernels, masks drawn by hand) is listed
in :attr:`Replacement.unreached`, never left silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from torch import nn

from . import attention as _attention
from .functional_sites import (
    STOCHASTIC_DEPTH,
    Found,
    _free_name,
    hook_owner,
    is_regulariser,
    scan_module,
)
from .sites import Sites

__all__ = ["replace_dropout", "Replacement", "Site", "Unreached", "DROPOUT_TYPES"]

#: torch's dropout modules; each keeps its own ``p`` as the rate unless one is given.
DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

# channel dropouts mask whole feature maps: dims after the channel dim are locked
_LOCKED_DIMS = {nn.Dropout1d: (2,), nn.Dropout2d: (2, 3), nn.Dropout3d: (2, 3, 4)}


@dataclass
class Site:
    """One dropout site now served by ``regulariser`` (the module at ``path`` in the model).

    ``kind``: ``module`` (a dropout module replaced), ``functional`` (a functional dropout call
    routed to it) or ``attention`` (attention-probability dropout); ``rate`` is the original
    rate; ``origin`` says what was there and how the site is reached.
    """

    path: str
    kind: str
    rate: float
    origin: str
    regulariser: nn.Module
    locked: Any = dataclasses.field(default=None, repr=False)


@dataclass
class Unreached:
    """A dropout-like site left as it is, and why."""

    path: str
    what: str
    reason: str


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, rows)]


class Replacement:
    """What :func:`replace_dropout` did: the :class:`Site` list (``sites``) and what it could
    not replace (``unreached``). ``print(result)`` shows both as tables; ``len(result)``,
    ``int(result)`` and ``result.count`` give the number of sites (regulariser modules now
    applied), the old return value. Sites found only at run time are appended (with a warning).
    """

    def __init__(self, name: str, kwargs: dict[str, Any], root: nn.Module) -> None:
        self.name = name
        self.kwargs = dict(kwargs)
        self.root = root
        self.sites: list[Site] = []
        self.unreached: list[Unreached] = []
        self._warned: set = set()
        self._init_args = {"rate": 0.5, **self.kwargs}  # the template's rate is replaced at every site
        self._sites = Sites(name, init_args=self._init_args)  # unknown name or bad settings fail here
        self._locked_sites: dict[tuple, Sites] = {}

    def make(self, rate: float, locked: Any = None) -> nn.Module:
        """A fresh regulariser for a site of rate ``rate`` (``rate`` in kwargs overrides it);
        a tuple ``locked`` is the site's ``locked_dims`` when the regulariser takes them and
        kwargs set none."""
        rate = self.kwargs.get("rate", rate)
        if not isinstance(locked, tuple) or "locked_dims" in self.kwargs:
            return self._sites(rate)
        if locked not in self._locked_sites:
            self._locked_sites[locked] = Sites(self.name, init_args=self._init_args, locked_dims=locked)  # unlocked if not taken
        return self._locked_sites[locked](rate)

    @property
    def count(self) -> int:
        return len(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def __int__(self) -> int:
        return len(self.sites)

    def __index__(self) -> int:
        return len(self.sites)

    def __iter__(self) -> Iterator[Site]:
        return iter(self.sites)

    def __getitem__(self, i: int) -> Site:
        return self.sites[i]

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for site in self.sites:
            out[site.kind] = out.get(site.kind, 0) + 1
        return out

    def __repr__(self) -> str:
        kinds = ", ".join(f"{v} {k}" for k, v in self.by_kind().items()) or "none"
        return f"<Replacement {self.name!r}: {len(self.sites)} sites ({kinds}), {len(self.unreached)} unreached>"

    def __str__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        lines = [f"replace_dropout(model, {self.name!r}{args}): {len(self.sites)} sites"]
        if self.sites:
            rows = [(s.path, s.kind, f"{s.rate:g}", repr(s.regulariser), s.origin) for s in self.sites]
            lines += _table(rows, ("path", "kind", "rate", "regulariser", "origin"))
        if self.unreached:
            lines += ["", f"not replaced ({len(self.unreached)}):"]
            lines += _table([(u.path or "<root>", u.what, u.reason) for u in self.unreached], ("path", "what", "why"))
        return "\n".join(lines)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def replace_dropout(model: nn.Module, name: str = "qsd", **kwargs: Any) -> Replacement:
    """Make every dropout of ``model`` a ``build(name, rate=<its rate>, **kwargs)`` regulariser.

    Works on any ``nn.Module`` (torchvision, timm, Hugging Face models): the paper's point that
    QSD applies wherever dropout does. Dropout modules are replaced; functional dropout and
    attention-probability dropout (fused attention, ``nn.MultiheadAttention``, Hugging Face
    attention functions) are routed to regulariser modules registered on the model (see the
    module docstring). Each site keeps its rate unless ``rate`` is given, and channel dropouts
    keep masking whole channels. Dropout modules of rate 0 are replaced too (identity until a
    ``rate`` is given); functional sites of rate 0 are listed as not replaced (never applied).
    Eval outputs are unchanged bit for bit. Calling it again re-targets the same sites.

    Returns a :class:`Replacement`: ``print()`` it for the table of sites; ``len()`` / ``int()``
    / ``.count`` give their number.
    """
    result = Replacement(name, kwargs, model)  # unknown name: ValueError before touching the model
    result.make(0.5)  # invalid settings fail here too, not half-way through the model
    rows: dict[str, Site] = {}
    previous: Optional[Replacement] = model.__dict__.get("_dropout_replacement")

    # 0. a second call re-targets the sites of the first
    if previous is not None:
        for site in previous.sites:
            parent_path, _, child = site.path.rpartition(".")
            try:
                parent = model.get_submodule(parent_path)
                old = getattr(parent, child)
            except AttributeError:  # the model changed since: that site is gone
                continue
            new = result.make(site.rate, site.locked)
            new.train(old.training)
            setattr(parent, child, new)
            rows[site.path] = dataclasses.replace(site, regulariser=new)

    # 1. dropout modules
    for parent_path, parent in list(model.named_modules()):
        if is_regulariser(parent):
            continue
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, DROPOUT_TYPES):
                continue
            locked = _LOCKED_DIMS.get(type(child))
            new = result.make(child.p, locked)
            new.train(child.training)
            setattr(parent, child_name, new)
            path = _join(parent_path, child_name)
            rows[path] = Site(path, "module", float(child.p), f"nn.{type(child).__name__}", new, locked)

    # 2. functional and attention sites, found in the source of each module's class
    hf_owners: list[tuple[str, nn.Module, Optional[str]]] = []
    for path, module in list(model.named_modules()):
        if is_regulariser(module):
            continue
        if type(module).__name__ in STOCHASTIC_DEPTH:
            rate = getattr(module, "drop_prob", getattr(module, "p", None))
            if isinstance(rate, (int, float)) and rate > 0:
                result.unreached.append(Unreached(
                    path, f"{type(module).__name__}({rate:g})",
                    "stochastic depth (drops whole residual branches per sample): not dropout, left as is"))
            continue
        layerdrop = getattr(module, "layerdrop", None)  # Hugging Face LayerDrop (BART, Whisper, wav2vec2, ...)
        if isinstance(layerdrop, float) and layerdrop > 0:
            result.unreached.append(Unreached(
                path, f"LayerDrop({layerdrop:g})", "skips whole layers per training step: not dropout, left as is"))
        if isinstance(module, nn.MultiheadAttention):
            _multihead(module, path, result, rows)
            continue
        for found in scan_module(module):
            owner = _found(module, path, found, result, rows)
            if owner is not None:
                hf_owners.append(owner)

    # 3. Hugging Face: attention through the registered regularised attention functions
    if hf_owners:
        failed = _attention.install_hf_attention(model, [m for _, m, _ in hf_owners])
        for path, module, child in hf_owners:
            reason = failed.get(id(module))
            if reason is None:
                continue
            site_path = _join(path, module.__dict__["_dropout_sites"].pop("attention"))
            site = rows.get(site_path)
            if child is not None:  # created for this site only: take it out again
                delattr(module, child)
                rows.pop(site_path, None)
            elif site is not None:
                site.kind, site.origin = "module", site.origin.split(", read as .p")[0]
            result.unreached.append(Unreached(path, "attention probabilities (HF attention interface)", reason))

    order = {path: i for i, (path, _) in enumerate(model.named_modules())}
    result.sites = sorted(rows.values(), key=lambda site: order.get(site.path, len(order)))
    if not is_regulariser(model):
        hook_owner(model, result)  # catch-all: dropout calls the scan missed get a regulariser too
    model.__dict__["_dropout_replacement"] = result
    return result


def _multihead(module: nn.MultiheadAttention, path: str, result: Replacement, rows: dict[str, Site]) -> None:
    sites = module.__dict__.setdefault("_dropout_sites", {})
    if "*" in sites:  # already routed (a second call re-targeted it)
        hook_owner(module, result)
        return
    if not module.dropout:
        result.unreached.append(Unreached(path, "nn.MultiheadAttention dropout", "rate 0: never applied"))
        return
    if _attention.MHA_BODY is None:  # pragma: no cover - depends on torch's internals
        result.unreached.append(Unreached(
            path, "nn.MultiheadAttention dropout",
            "this torch version's multi_head_attention_forward cannot be routed"))
        return
    name = _free_name(module, "attn_regulariser")
    regulariser = result.make(float(module.dropout))
    regulariser.train(module.training)
    module.add_module(name, regulariser)
    sites["*"] = name
    site_path = _join(path, name)
    origin = f"nn.MultiheadAttention(dropout={module.dropout:g}): attention probabilities"
    rows[site_path] = Site(site_path, "attention", float(module.dropout), origin, regulariser)
    hook_owner(module, result)


def _found(module: nn.Module, path: str, found: Found, result: Replacement, rows: dict[str, Site]):
    """Give the site ``found`` in ``module`` its regulariser. Returns ``(path, module, new child
    or None)`` for Hugging Face attention sites (installed afterwards), else None."""
    sites = module.__dict__.setdefault("_dropout_sites", {})
    hf = found.key == "attention"
    if found.key in sites:  # already routed (a second call re-targeted it)
        hook_owner(module, result)
        return (path, module, None) if hf else None
    what = f"{found.call} at {found.where}"
    arg = "dropout" if hf else ("dropout_p" if found.kind == "attention" else "p")
    child: Optional[str] = None
    if found.reuse is not None:
        sites[found.key] = found.reuse
        site_path = _join(path, found.reuse)
        site = rows.get(site_path)
        regulariser = module.get_submodule(found.reuse)
        if site is None:  # a regulariser that was there before
            site = rows[site_path] = Site(site_path, found.kind, float(regulariser.rate), "regulariser", regulariser)
        site.kind = "attention" if found.kind == "attention" else site.kind
        site.origin += f", read as .p by {what}"
        if found.call == "F.scaled_dot_product_attention" and isinstance(getattr(module, "fused_attn", None), bool):
            if "_dropout_timm" not in module.__dict__:
                module.register_forward_pre_hook(_attention.timm_unfused_in_training)
            module.__dict__["_dropout_timm"] = (module.fused_attn, found.reuse)
            site.origin += " (timm: fused_attn off in training)"
    elif found.rate is None or found.locked == "channel":
        result.unreached.append(Unreached(
            path, what, f"rate {found.expr!r} is not known before training: it gets a regulariser on its first "
            "training call (RuntimeWarning)"))
    elif found.rate == 0.0:
        result.unreached.append(Unreached(path, what, f"rate 0 ({arg}={found.expr}): never applied"))
        return None
    else:
        child = _free_name(module, found.hint)
        regulariser = result.make(found.rate, found.locked)
        regulariser.train(module.training)
        module.add_module(child, regulariser)
        sites[found.key] = child
        site_path = _join(path, child)
        origin = f"{what} ({arg}={found.expr})"
        rows[site_path] = Site(site_path, found.kind, found.rate, origin, regulariser, found.locked)
    hook_owner(module, result)
    return (path, module, child) if hf and found.key in sites else None
