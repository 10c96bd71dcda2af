"""``last.ckpt`` that is what its name says: the end of every epoch and of training.

Lightning's ``ModelCheckpoint(monitor=..., save_last=True)`` writes ``last.ckpt`` only when a new
best is saved, so after a run whose best epoch is not the final one no file holds the final
weights and ``--ckpt_path last`` retrains epochs. This subclass keeps Lightning's top-k logic
and adds one rule: whenever a validation (or, without validation, a training epoch) ends and
when training ends, ``last.ckpt`` is written if it does not already hold the current step.

The Lightning internals it relies on are listed in :data:`LIGHTNING_INTERNALS`; a test fails
loudly when an upgrade removes one.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["ModelCheckpoint", "LIGHTNING_INTERNALS"]

#: private ModelCheckpoint methods this module calls (checked by the test suite)
LIGHTNING_INTERNALS = ("_save_last_checkpoint", "_monitor_candidates", "_should_save_on_train_epoch_end")


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest epoch end
    and the end of training (with ``save_last=True``); everything else is unchanged."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last_written_step: int | None = None

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
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._ensure_last(trainer)
