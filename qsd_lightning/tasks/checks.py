"""Checks of a task's settings against each other and against the data.

Each failure is a :class:`~qsd_lightning.errors.ConfigError` whose message names the option
to change (``--model.in_features 64``): the CLI prints it as one line.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from jsonargparse.typing import restricted_number_type

from ..errors import ConfigError
from ..regularisers.quantal import check_site_dims
from .._lightning_compat import attached_trainer

__all__ = ["NumClasses", "datamodule_of", "check_sites", "check_num_classes", "check_not_empty"]

#: a classifier's number of classes (cross-entropy and the accuracy metric need two or more)
NumClasses = restricted_number_type("NumClasses", int, [(">=", 2)], docstring="a number of classes (>= 2)")

REGULARISER_OPTION = "--model.regulariser"


def datamodule_of(module) -> Any:
    """The data module of the trainer ``module`` is attached to (None when there is none)."""
    trainer = attached_trainer(module)
    return getattr(trainer, "datamodule", None) if trainer is not None else None


def check_sites(
    factory: Callable[[float], Any], rate: Optional[float], dims: Sequence[str], where: str, option: str = REGULARISER_OPTION
) -> None:
    """Build the regulariser of a site whose inputs have dims ``dims`` (``("batch",
    "features")``) and check its ``unit_dims`` / ``locked_dims`` fit them; sites at rate 0
    (no regulariser) pass."""
    if rate:
        check_site_dims(factory(rate), dims, where, option)


def check_finite_loss(module, loss, fix: str) -> None:
    """Stop a run whose training loss is NaN or infinite, naming the step and what to try (``fix``)
    (a :class:`FloatingPointError`, which ``cli.main`` prints in one line)."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite training loss ({loss.item()}) at global step {module.global_step}, "
            f"epoch {module.current_epoch}: stopping instead of training on. {fix}; earlier "
            "checkpoints are untouched."
        )


def check_num_classes(datamodule: Any, num_classes: int, option: str = "--model.num_classes") -> None:
    """The model must have one output per class of the data (``num_classes`` of the data module)."""
    data_classes = getattr(datamodule, "num_classes", None)
    if isinstance(data_classes, bool) or not isinstance(data_classes, int) or data_classes < 1:
        return
    if data_classes != num_classes:
        raise ConfigError(
            f"the data has {data_classes} classes, the model has {num_classes} outputs: set {option} {data_classes}"
        )


def check_not_empty(values: Sequence[Any], option: str, example: str) -> None:
    if len(values) == 0:
        raise ConfigError(f"{option} is empty: give at least one, e.g. {option} {example}")

