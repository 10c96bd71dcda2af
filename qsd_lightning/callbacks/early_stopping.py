"""Early stopping on what the run's checkpoint selects by, unless told otherwise."""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

from ..errors import ConfigError


class EarlyStopping(LightningEarlyStopping):
    """Lightning's :class:`~lightning.pytorch.callbacks.EarlyStopping` whose ``monitor`` and
    ``mode`` default to those of the trainer's :class:`ModelCheckpoint` (``val/acc`` max for the
    classifier configs, ``val/ppl`` min for the language models), read when the run is set up. So
    ``callbacks/early_stopping.yaml`` stops every config on the metric its checkpoint keeps the best
    of. Give ``monitor`` (and ``mode``) to stop on something else."""

    def __init__(self, monitor: Optional[str] = None, mode: Optional[str] = None, patience: int = 5, **kwargs) -> None:
        self._from_checkpoint = monitor is None
        super().__init__(monitor=monitor or "", mode=mode or "min", patience=patience, **kwargs)
        self._mode_given = mode is not None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._from_checkpoint:
            checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, LightningModelCheckpoint) and cb.monitor]
            if not checkpoints:
                raise ConfigError(
                    "EarlyStopping without a monitor stops on what the ModelCheckpoint monitors, but no "
                    "ModelCheckpoint monitors a metric: give EarlyStopping its monitor"
                )
            self._set_monitor(checkpoints[0].monitor, self.mode if self._mode_given else checkpoints[0].mode)
            self._from_checkpoint = False
        super().setup(trainer, pl_module, stage)

    def _set_monitor(self, monitor: str, mode: str) -> None:
        if mode not in self.mode_dict:
            raise ConfigError(f"EarlyStopping: mode must be one of {', '.join(self.mode_dict)} (got {mode!r})")
        self.monitor, self.mode = monitor, mode
        self.min_delta = abs(self.min_delta) * (1 if self.monitor_op == torch.gt else -1)
        self.best_score = torch.tensor(torch.inf) if self.monitor_op == torch.lt else -torch.tensor(torch.inf)
