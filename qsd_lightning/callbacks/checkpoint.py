"""``last.ckpt`` that is what its name says: the end of every epoch and of training.

Lightning's ``ModelCheckpoint(monitor=..., save_last=True)`` writes ``last.ckpt`` only when a new
best is saved, so after a run whose best epoch is not the final one no file holds the final
weights and ``--ckpt_path last`` retrains epochs. This subclass keeps Lightning's top-k logic
and adds one rule: whenever a validation (or, without validation, a training epoch) ends and
when training ends, ``last.ckpt`` is written if it does not already hold the current step.

The Lightning internals it relies on are reached through :mod:`qsd_lightning._lightning_compat`
(listed in its ``PRIVATE_API``; :data:`LIGHTNING_INTERNALS` are the ModelCheckpoint ones); a
test fails loudly when an upgrade removes one.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from .. import _lightning_compat as compat

__all__ = ["ModelCheckpoint", "LIGHTNING_INTERNALS"]

#: private ModelCheckpoint methods this module relies on (from ``_lightning_compat.PRIVATE_API``)
LIGHTNING_INTERNALS = tuple(use.name for use in compat.PRIVATE_API if use.owner is _LightningModelCheckpoint)


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest epoch end
    and the end of training (with ``save_last=True``); everything else is unchanged."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last_written_step: int | None = None

    # Overrides a private Lightning method: listed in _lightning_compat.PRIVATE_API (no public
    # hook says that last.ckpt was just written).
    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_step = trainer.global_step

    def _ensure_last(self, trainer) -> None:
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or trainer.global_step == 0
            or self._last_written_step == trainer.global_step
        ):
            return
        compat.save_last_checkpoint(self, trainer, compat.monitor_candidates(self, trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if compat.saves_on_train_epoch_end(self, trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not compat.saves_on_train_epoch_end(self, trainer):
            self._ensure_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._ensure_last(trainer)
