"""The one place that touches Lightning's private API.

Everything else in :mod:`qsd_lightning` goes through the small functions here, or through
Lightning's public hooks. Private names are used only where no public hook gives the same
behaviour; each one is listed in :data:`PRIVATE_API` with what it is for, and
``tests/test_lightning_internals.py`` checks every entry against the installed Lightning, so an
upgrade that removes or renames one fails loudly there rather than changing behaviour quietly.

Two entries are methods that a project subclass *overrides* (Python gives no other way to
change what they do); those overrides stay in their subclass, with a comment pointing here:

* ``LightningCLI._parse_ckpt_path`` (:class:`qsd_lightning.cli.QSDLightningCLI`): Lightning
  calls it right after parsing and loads ``--ckpt_path`` with ``weights_only=True`` there;
  the override loads it safely or trusted (``--weights_only false``), resolves
  ``--ckpt_path last`` and refuses another architecture. A public hook that runs later
  (``before_instantiate_classes``) would come after Lightning's own load.
* ``ModelCheckpoint._save_last_checkpoint`` (:class:`qsd_lightning.callbacks.ModelCheckpoint`):
  the only place that knows ``last.ckpt`` was just written (``last_model_path`` keeps the same
  value from one write to the next).

Replaced by public hooks (so not listed): ``LightningCLI._instantiate_trainer`` — the always-on
callbacks come through ``trainer_defaults`` and the checkpoint plugin and DDP timeout through
the public ``instantiate_trainer``; ``LightningModule._trainer`` — :func:`attached_trainer`
uses the public ``trainer`` property.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy

__all__ = [
    "PrivateUse",
    "PRIVATE_API",
    "set_ddp_timeout",
    "explicit_checkpoint_io",
    "wandb_experiment_if_started",
    "wandb_init_kwargs",
    "set_wandb_run_id",
    "monitor_candidates",
    "saves_on_train_epoch_end",
    "save_last_checkpoint",
    "attached_trainer",
]


@dataclass(frozen=True)
class PrivateUse:
    """One private Lightning name this project relies on.

    ``kind`` is ``"method"`` (looked up on ``owner``) or ``"attribute"`` (set on instances by
    ``owner``'s code); ``overridden_in`` names the project class that overrides the method
    (``module.Class``), None when it is only called or read here."""

    owner: type
    name: str
    kind: str
    why: str
    overridden_in: Optional[str] = None


#: every private Lightning name the project uses (checked by tests/test_lightning_internals.py)
PRIVATE_API: tuple[PrivateUse, ...] = (
    PrivateUse(
        LightningCLI, "_parse_ckpt_path", "method",
        "safe/trusted loading of --ckpt_path, --ckpt_path last, architecture check; runs right after parsing",
        overridden_in="qsd_lightning.cli.QSDLightningCLI",
    ),
    PrivateUse(
        ModelCheckpoint, "_save_last_checkpoint", "method",
        "records the step last.ckpt holds, writes last.ckpt at every epoch end and at the end of training",
        overridden_in="qsd_lightning.callbacks.checkpoint.ModelCheckpoint",
    ),
    PrivateUse(ModelCheckpoint, "_monitor_candidates", "method", "the metrics a last.ckpt write is given"),
    PrivateUse(ModelCheckpoint, "_should_save_on_train_epoch_end", "method",
               "whether checkpoints are written at train-epoch end or at validation end"),
    PrivateUse(DDPStrategy, "_timeout", "attribute",
               "--ddp_timeout: no public setter, and the strategy is often resolved by the Trainer (ddp, auto)"),
    PrivateUse(Strategy, "_checkpoint_io", "attribute",
               "whether a strategy instance brings its own CheckpointIO (the public property creates one)"),
    PrivateUse(WandbLogger, "_experiment", "attribute",
               "whether the W&B run started (the public `experiment` property starts it)"),
    PrivateUse(WandbLogger, "_wandb_init", "attribute",
               "the keyword arguments of wandb.init (offline fallback, resume of a run, deprecated `anonymous`)"),
    PrivateUse(WandbLogger, "_id", "attribute", "the run id `version` reports before the run starts (resume)"),
)


# ----------------------------------------------------------------------------- strategies
def set_ddp_timeout(strategy: Any, seconds: float) -> bool:
    """Make a DDP ``strategy`` wait ``seconds`` in a collective (and at start-up) before it
    fails; read when the process group starts. False (nothing set) for other strategies."""
    if not isinstance(strategy, DDPStrategy):
        return False
    strategy._timeout = timedelta(seconds=float(seconds))
    return True


def explicit_checkpoint_io(strategy: Any) -> Any:
    """The CheckpointIO a strategy *instance* was given, None when it has none of its own (or
    ``strategy`` is a name such as ``"ddp"``). Unlike ``strategy.checkpoint_io`` this creates
    nothing."""
    return getattr(strategy, "_checkpoint_io", None)


# ----------------------------------------------------------------------------- W&B logger
def wandb_experiment_if_started(logger: WandbLogger) -> Any:
    """The logger's W&B run when it has started, else None; never starts one (the public
    ``logger.experiment`` would)."""
    return logger._experiment


def wandb_init_kwargs(logger: WandbLogger) -> dict[str, Any]:
    """The keyword arguments Lightning passes to ``wandb.init`` (the live dict: changes made
    before the run starts take effect)."""
    return logger._wandb_init


def set_wandb_run_id(logger: WandbLogger, run_id: str) -> None:
    """The id ``logger.version`` reports before the run starts (``wandb.init``'s ``id`` is
    set separately through :func:`wandb_init_kwargs`)."""
    logger._id = run_id


# ----------------------------------------------------------------------------- ModelCheckpoint
def monitor_candidates(callback: ModelCheckpoint, trainer: Any) -> dict[str, Any]:
    """The metrics Lightning gives a checkpoint write (callback metrics, epoch and step)."""
    return callback._monitor_candidates(trainer)


def saves_on_train_epoch_end(callback: ModelCheckpoint, trainer: Any) -> bool:
    """Whether ``callback`` writes at the end of training epochs (else after validation)."""
    return callback._should_save_on_train_epoch_end(trainer)


def save_last_checkpoint(callback: ModelCheckpoint, trainer: Any, candidates: dict[str, Any]) -> None:
    """Write ``last.ckpt`` now (through the callback's, possibly overridden, method)."""
    callback._save_last_checkpoint(trainer, candidates)


# ----------------------------------------------------------------------------- public helpers
def attached_trainer(module: Any) -> Any:
    """The Trainer ``module`` is attached to, None when it is not attached (or has no
    ``trainer``). Uses the public ``trainer`` property, which raises when unattached, instead
    of reading ``LightningModule._trainer``."""
    try:
        return module.trainer
    except (AttributeError, RuntimeError):
        return None
