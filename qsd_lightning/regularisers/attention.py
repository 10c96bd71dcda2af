"""Attention-probability dropout through a regulariser (used by :func:`.replace.replace_dropout`).

Fused attention kernels (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``, Hugging
Face's attention functions) draw their Bernoulli mask on the attention probabilities inside the
kernel, where no module can replace it. In training, where such a site has a regulariser, the
attention is computed explicitly instead (:func:`regularised_sdpa`, the reference computation
of torch's documentation) with the regulariser applied to the probabilities; in eval, and where
the regulariser is the identity, the original fused call runs untouched, so eval outputs stay
bit for bit those of the original model.

* ``F.scaled_dot_product_attention(dropout_p > 0)`` anywhere (timm's fused path included):
  routed by :mod:`.functional_sites` to :func:`regularised_sdpa`.
* timm attention modules: the library's own switch, ``fused_attn``, is turned off for training
  forwards only (:func:`timm_unfused_in_training`), so timm computes the probabilities itself and
  applies its ``attn_drop`` module (the regulariser) to them.
* ``nn.MultiheadAttention``: torch's own ``F.multi_head_attention_forward`` body runs under the
  router (:data:`MHA_BODY`), whose internal dropout / SDPA calls then reach the regulariser.
* Hugging Face: an attention function registered with ``transformers.AttentionInterface``
  (``regularised_sdpa``, ``regularised_eager``) wraps the model's implementation
  (:func:`install_hf_attention`).

:func:`attend` is the entry point for models that hold their attention regulariser themselves
(this project's :class:`~qsd_lightning.models.TransformerLanguageModel`): where the regulariser
applies, :func:`regularised_sdpa`, the same function the router calls for ``replace_dropout``'s
fused-attention sites; where it is the identity (eval, rate 0, ``none``), the fused kernel
without dropout, as the router does.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SDPA_ARGS",
    "MHA_BODY",
    "applies",
    "attend",
    "bind_sdpa",
    "regularised_sdpa",
    "timm_unfused_in_training",
    "install_hf_attention",
    "HF_PREFIX",
]

SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def applies(regulariser: nn.Module) -> bool:
    """Whether ``regulariser`` changes its input now (training, rate > 0, not the identity)."""
    from .quantal import NoRegulariser

    identity = isinstance(regulariser, (NoRegulariser, nn.Identity))
    return bool(regulariser.training and getattr(regulariser, "rate", 1.0) and not identity)


def bind_sdpa(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of an ``F.scaled_dot_product_attention`` call, by name."""
    bound = dict(_SDPA_DEFAULTS)
    bound.update(zip(SDPA_ARGS, args))
    bound.update(kwargs)
    return bound


def regularised_sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    regulariser: nn.Module,
) -> Tensor:
    """``F.scaled_dot_product_attention`` computed explicitly, ``regulariser`` applied to the
    attention probabilities ``[..., L, S]`` instead of Bernoulli dropout at ``dropout_p``.

    Same masking conventions as torch (boolean masks keep ``True``, float masks are added,
    ``is_causal`` is top-left aligned); fully masked rows give zeros as in torch's math kernel.
    Softmax runs in float32 for half-precision inputs.
    """
    L, S = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa:
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    scores = (query @ key.transpose(-2, -1)) * scale
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    softmax = getattr(torch, "_safe_softmax", None)
    probs = softmax(scores, -1) if softmax is not None else torch.softmax(scores, -1)
    probs = regulariser(probs.to(value.dtype))
    return probs @ value


def attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    regulariser: nn.Module,
    fused: Optional[Callable[..., Tensor]] = None,
) -> Tensor:
    """Attention whose probabilities go through ``regulariser``:
    ``softmax(Q K^T scale + mask) -> regulariser -> @ V``.

    Where the regulariser changes its input (:func:`applies`: training, rate > 0, not the
    identity) the probabilities are computed explicitly (:func:`regularised_sdpa`); otherwise
    the fused kernel ``fused`` (default ``F.scaled_dot_product_attention``) runs with
    ``dropout_p=0``, which equals the explicit path within float tolerance. ``query`` ``[B, H,
    L, E]``, ``key`` / ``value`` ``[B, H, S, E]``; the regulariser sees ``[B, H, L, S]``.
    """
    if applies(regulariser):
        return regularised_sdpa(query, key, value, attn_mask, 0.0, is_causal, scale, enable_gqa, regulariser=regulariser)
    fused = F.scaled_dot_product_attention if fused is None else fused
    kwargs = {"enable_gqa": True} if enable_gqa else {}
    return fused(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal, scale=scale, **kwargs)


def _body_without_dispatch(fn: Callable) -> Optional[Callable]:
    """A copy of torch's Python function ``fn`` whose own ``__torch_function__`` dispatch is off.

    Under a ``TorchFunctionMode`` torch hands a composite function (``F.multi_head_attention_forward``)
    to the mode as one call, so its inner dropout / SDPA calls are invisible to the mode; running
    this copy inside the mode's handler makes them visible. ``None`` if torch's layout changed.
    """
    if not isinstance(fn, types.FunctionType) or "has_torch_function" not in fn.__code__.co_names:
        return None
    namespace = dict(fn.__globals__)
    namespace["has_torch_function"] = lambda *_: False
    body = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    body.__kwdefaults__ = fn.__kwdefaults__
    return body


#: ``F.multi_head_attention_forward`` without its top-level torch-function dispatch.
MHA_BODY = _body_without_dispatch(F.multi_head_attention_forward)


# --- timm -------------------------------------------------------------------------------------


def timm_unfused_in_training(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of a timm attention module: ``fused_attn`` off while its attention-dropout
    regulariser applies (training), so timm applies that module to the probabilities itself;
    the original setting (fused kernel) in eval, so eval outputs are unchanged."""
    state = module.__dict__.get("_dropout_timm")
    if state is None:
        return
    fused, site = state
    regulariser = module.get_submodule(site)
    module.fused_attn = bool(fused) and not (module.training and applies(regulariser))


# --- Hugging Face -----------------------------------------------------------------------------

HF_PREFIX = "regularised_"
#: original implementations that can be wrapped (others fuse dropout into their own kernels)
HF_WRAPPABLE = ("sdpa", "eager")


def hf_original(module: nn.Module, implementation: str) -> Optional[Callable]:
    """The attention function ``module`` would use under ``implementation`` (``sdpa``/``eager``):
    looked up in the namespace of the modeling file that defines its ``forward``."""
    return _hf_original(type(module), implementation)


@functools.lru_cache(maxsize=256)
def _hf_original(cls: type, implementation: str) -> Optional[Callable]:
    forward = getattr(cls, "forward", None)
    namespace = getattr(inspect.unwrap(forward), "__globals__", {}) if forward is not None else {}
    eager = namespace.get("eager_attention_forward")
    if implementation == "eager":
        return eager
    interface = namespace.get("ALL_ATTENTION_FUNCTIONS")
    if interface is None:
        from transformers import AttentionInterface

        interface = AttentionInterface()
    try:
        return interface[implementation]
    except KeyError:
        return None


def _hf_wrapper(implementation: str) -> Callable:
    def regularised_attention(module, query, key, value, attention_mask, dropout=0.0, **kwargs):
        from .functional_sites import attention_site, routing

        original = hf_original(module, implementation)
        if not (module.training and dropout):
            return original(module, query, key, value, attention_mask, dropout=dropout, **kwargs)
        site = attention_site(module, "attention", float(dropout), "HF attention interface")
        if site is None or not applies(site):
            return original(module, query, key, value, attention_mask, dropout=0.0, **kwargs)
        with routing(site, module):
            return original(module, query, key, value, attention_mask, dropout=dropout, **kwargs)

    regularised_attention.__name__ = f"{HF_PREFIX}{implementation}"
    regularised_attention.__qualname__ = regularised_attention.__name__
    return regularised_attention


def register_hf_attention() -> None:
    """Register ``regularised_sdpa`` / ``regularised_eager`` with transformers' attention and
    attention-mask interfaces (idempotent; the masks are those of the wrapped implementation)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for implementation in HF_WRAPPABLE:
        name = HF_PREFIX + implementation
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _hf_wrapper(implementation))
        if name not in AttentionMaskInterface._global_mapping:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[implementation])


def install_hf_attention(model: nn.Module, owners: list[nn.Module]) -> dict[int, str]:
    """Route the attention of ``owners`` (Hugging Face attention modules with a site) through
    the regularised attention functions.

    Each distinct config switches from ``X`` to ``regularised_X`` (``model.set_attn_implementation``
    where the whole model uses one implementation, else per config). Returns, for the owners that
    could not be switched (``id(owner)``), the reason.
    """
    register_hf_attention()
    failed: dict[int, str] = {}
    configs: dict[int, Any] = {}
    for owner in owners:
        config = getattr(owner, "config", None)
        current = getattr(config, "_attn_implementation", None)
        if config is None:
            failed[id(owner)] = "attention module has no config to select the attention function"
        elif current in HF_WRAPPABLE or (isinstance(current, str) and current.startswith(HF_PREFIX)):
            if isinstance(current, str) and current in HF_WRAPPABLE and hf_original(owner, current) is None:
                failed[id(owner)] = f"no {current!r} attention function found for {type(owner).__name__}"
            else:
                configs[id(config)] = config
        else:
            failed[id(owner)] = (
                f"attention implementation {current!r} draws its dropout inside its own kernel; load the model "
                "with attn_implementation='sdpa' or 'eager' to regularise attention probabilities"
            )
    from transformers import PreTrainedModel

    roots = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    everywhere = {getattr(m.config, "_attn_implementation", None) for m in roots}
    if len(everywhere) == 1 and everywhere <= set(HF_WRAPPABLE) and configs:
        # the library's own switch, when it changes nothing but what we route
        roots[0].set_attn_implementation(HF_PREFIX + everywhere.pop())
    for config in configs.values():  # configs the model-level call did not reach, or mixed models
        if not config._attn_implementation.startswith(HF_PREFIX):
            config._attn_implementation_internal = HF_PREFIX + config._attn_implementation
    for owner in owners:
        if id(owner) not in failed and not str(owner.config._attn_implementation).startswith(HF_PREFIX):
            failed[id(owner)] = "the model did not accept the regularised attention implementation"
    return failed
