"""Optimiser and scheduler wiring shared by every task.

:func:`check_optimizer` builds the configured optimiser and scheduler once on a dummy
parameter when the task is built, so that values torch refuses (``--model.optimizer.lr -1``,
``--model.lr_scheduler.step_size 0``) stop the run at once with one line naming the option
(:class:`~qsd_lightning.errors.ConfigError`), not at the first training step with a traceback.
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any, Iterable, Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from ..errors import ConfigError

__all__ = ["configure_optimizers", "check_optimizer", "optimizer_error", "scheduler_error"]

OPTIMIZER_OPTION = "--model.optimizer"
SCHEDULER_OPTION = "--model.lr_scheduler"

#: the words torch's messages use for an optimiser argument -> the argument's name
_ARGUMENT_WORDS = {
    "learning rate": "lr", "epsilon": "eps", "epsilon1": "eps", "epsilon2": "eps", "beta": "betas",
    "weight decay": "weight_decay", "eta": "etas",
}
#: what torch accepts for an argument, for the message
_ACCEPTED = {
    "lr": ">= 0", "eps": ">= 0", "weight_decay": ">= 0", "momentum": ">= 0", "rho": "in [0, 1]", "alpha": ">= 0",
    "lr_decay": ">= 0", "momentum_decay": ">= 0", "betas": "in [0, 1) (each of the two)",
}
_INVALID = re.compile(r"^Invalid (?P<what>[\w ]+?)(?: values?| parameter)?(?: at index (?P<index>\d+))?: (?P<value>.+)$")
_SHOULD = re.compile(r"^(?P<what>[\w ]+?) should be (?P<rule>[<>]=? ?\S+) but is: (?P<value>.+)$")
#: other messages of torch's optimisers about the values they were given
_OTHER_VALUE_MESSAGES = re.compile(
    r"^(Nesterov momentum requires|Tensor \w+(\[\d\])? must be 1-element|betas must be either|Coefficients must be)"
)


def _class_of(factory: Any) -> Optional[type]:
    """The class a jsonargparse/Lightning optimiser or scheduler callable builds (a partial)."""
    if isinstance(factory, type):
        return factory
    if isinstance(factory, functools.partial):
        for candidate in (factory.func, *factory.args):
            if isinstance(candidate, type):
                return candidate
    return None


def _from_torch(cls: Optional[type], package: str) -> bool:
    return cls is not None and cls.__module__.startswith(package)


def optimizer_error(err: BaseException, factory: Any, option: str = OPTIMIZER_OPTION) -> Optional[ConfigError]:
    """The one-line :class:`ConfigError` for a ``ValueError`` that a torch optimiser raised
    about the values it was given, or None (any other exception: not the user's)."""
    cls = _class_of(factory)
    if not isinstance(err, ValueError) or isinstance(err, ConfigError) or not _from_torch(cls, "torch.optim"):
        return None
    text, name = str(err), cls.__name__
    match = _INVALID.match(text) or _SHOULD.match(text)
    if match:
        what = match["what"].strip()
        argument = _ARGUMENT_WORDS.get(what, _ARGUMENT_WORDS.get(what.lower(), what.replace(" ", "_")))
        rule = match.groupdict().get("rule") or _ACCEPTED.get(argument)
        value = match["value"]
        if match.groupdict().get("index") is not None:
            value = f"{value} at index {match['index']}"
        if rule:
            return ConfigError(f"{option}.{argument} must be {rule} for {name} (got {value})")
        return ConfigError(f"{option}.{argument}: {name} rejects {value} ({text})")
    if _OTHER_VALUE_MESSAGES.match(text):
        return ConfigError(f"{option}: {name}: {text}")
    return None


def scheduler_error(err: BaseException, factory: Any, scheduler: Any = None, option: str = SCHEDULER_OPTION) -> Optional[ConfigError]:
    """The one-line :class:`ConfigError` for an error that one of torch's schedulers raised
    because of its arguments (a ``ValueError`` when built, a ``ZeroDivisionError`` when
    stepped), or None."""
    cls = _class_of(factory)
    if isinstance(err, ConfigError) or not _from_torch(cls, "torch.optim.lr_scheduler"):
        return None
    name = cls.__name__
    if isinstance(err, ValueError):
        return ConfigError(f"{option}: {name}: {err}")
    if isinstance(err, ZeroDivisionError):
        given = dict(getattr(factory, "keywords", {}) or {})
        zeros = [k for k, v in given.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0]
        if zeros:
            return ConfigError(
                f"{option}.{zeros[0]}: {name} divides by it at its first step, so it cannot be 0; give a value >= 1"
            )
        return ConfigError(f"{option}: {name} divides by zero at its first step with these arguments ({err})")
    return None


def check_optimizer(optimizer: OptimizerCallable, lr_scheduler: Optional[LRSchedulerCallable]) -> None:
    """Build the optimiser and scheduler on a dummy parameter (and step the scheduler twice);
    ``ConfigError`` naming the option if torch refuses the values given. Anything else that
    goes wrong here is left to the real construction in ``configure_optimizers``."""
    try:
        opt = optimizer([torch.nn.Parameter(torch.zeros(2, 2))])
    except Exception as err:  # noqa: BLE001 - only the user's values are reported here
        problem = optimizer_error(err, optimizer)
        if problem is not None:
            raise problem from None
        return
    if lr_scheduler is None:
        return
    cls = _class_of(lr_scheduler)
    try:
        scheduler = lr_scheduler(opt)
    except Exception as err:  # noqa: BLE001
        problem = scheduler_error(err, lr_scheduler)
        if problem is not None:
            raise problem from None
        return
    step_size = getattr(scheduler, "step_size", None)
    if isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and (not isinstance(step_size, int) or step_size < 1):
        raise ConfigError(f"{SCHEDULER_OPTION}.step_size must be an integer >= 1 (epochs between decays) (got {step_size})")
    if not _from_torch(cls, "torch.optim.lr_scheduler") or isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
            scheduler.step()
            scheduler.step()
    except Exception as err:  # noqa: BLE001
        problem = scheduler_error(err, lr_scheduler, scheduler)
        if problem is not None:
            raise problem from None


def _build(factory: Any, argument: Any, explain: Any) -> Any:
    """``factory(argument)``; a ``ValueError`` that ``explain`` recognises as the user's becomes
    its :class:`ConfigError`, anything else keeps its traceback."""
    try:
        return factory(argument)
    except ValueError as err:
        problem = explain(err, factory)
        if problem is None:
            raise
        raise problem from None


def configure_optimizers(
    parameters: Iterable[torch.nn.Parameter],
    optimizer: OptimizerCallable,
    lr_scheduler: Optional[LRSchedulerCallable],
    monitor: str = "val/loss",
):
    """What ``LightningModule.configure_optimizers`` returns: the optimiser and, if configured,
    its scheduler stepped every epoch (``ReduceLROnPlateau`` watches ``monitor``)."""
    opt = _build(optimizer, parameters, optimizer_error)
    if lr_scheduler is None:
        return opt
    scheduler = _build(lr_scheduler, opt, scheduler_error)
    config = {"scheduler": scheduler, "interval": "epoch"}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = monitor
    return {"optimizer": opt, "lr_scheduler": config}
