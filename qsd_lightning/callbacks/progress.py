"""A progress bar that reads well in a terminal and in a log file."""

from __future__ import annotations

import sys
import time
from typing import Optional

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["ProgressBar"]


def _fmt(value) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.4g}"


class ProgressBar(TQDMProgressBar):
    """TQDM bars on a terminal; where output is not a terminal (a log file, CI), one plain
    line per epoch with its metrics, and one for the test results, instead of bars.

    Args:
        refresh_rate: batches between bar updates on a terminal.
        plain: force (True) or forbid (False) plain lines; default: plain unless stderr is a TTY.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, plain: Optional[bool] = None) -> None:
        self.plain = (not sys.stderr.isatty()) if plain is None else plain
        super().__init__(refresh_rate=0 if self.plain else refresh_rate, leave=leave)
        self._epoch_start = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.monotonic()
        if not self.plain:
            super().on_train_epoch_start(trainer, pl_module)

    @rank_zero_only
    def _line(self, head: str, metrics: dict) -> None:
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in sorted(metrics.items()) if k != "v_num" and "/" in k)
        print(f"{head}  {shown}", file=sys.stderr, flush=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.plain:
            return super().on_train_epoch_end(trainer, pl_module)
        metrics = {k: v for k, v in trainer.progress_bar_metrics.items()}
        took = time.monotonic() - self._epoch_start
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        self._line(f"epoch {trainer.current_epoch + 1}/{total} ({took:.1f} s)", metrics)

    def on_test_end(self, trainer, pl_module) -> None:
        if not self.plain:
            return super().on_test_end(trainer, pl_module)
        self._line("test", {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")})

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.plain:
            return super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == "validate":
            self._line("validate", {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
