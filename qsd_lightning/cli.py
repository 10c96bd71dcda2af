"""``python -m qsd_lightning fit|validate|test|predict --config configs/<x>.yaml``.

A thin LightningCLI: models and data modules are chosen by class (``model: MLPClassifier``),
regularisers by registry name (``--model.regulariser qsd``) or class path, all validated while
parsing, so a bad value stops before anything is built.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks.progress import ProgressBar as ProgressBarBase

from . import callbacks as _callbacks  # noqa: F401
from . import data as _data  # noqa: F401  (makes the data modules resolvable by class name)
from . import regularisers as _regularisers  # noqa: F401  (registry aliases)
from . import tasks as _tasks  # noqa: F401  (makes the models resolvable by class name)
from .callbacks import ProgressBar
from .cli_errors import ConciseArgumentParser
from .data import CorruptDataError, DataNotFoundError
from .tracking import LoggerSaveConfigCallback, WandbLogger, run_id_from_checkpoint


class CheckpointError(ValueError):
    """A checkpoint that does not exist or does not fit the model."""

__all__ = ["QSDLightningCLI", "cli_main", "main"]

#: errors that are the user's input, not a bug: reported in one line, exit status 1
USER_ERRORS = (DataNotFoundError, CorruptDataError, FloatingPointError, CheckpointError)


class QSDLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults (subclass mode, injected optimisers),
    one-line argument errors, the resolved config in W&B, and W&B runs that resume with
    ``--ckpt_path``."""

    def _resume_tracking(self) -> None:
        """Resolve ``--ckpt_path last`` to a file and continue the W&B run stored in it."""
        config = self.config_init[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path == "last":
            found = sorted(
                Path(self.trainer.default_root_dir).rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime
            )
            if not found:
                return  # let Lightning report it
            ckpt_path = config["ckpt_path"] = str(found[-1])
        if not Path(ckpt_path).is_file():
            raise CheckpointError(f"checkpoint {ckpt_path} does not exist")
        run_id = run_id_from_checkpoint(ckpt_path)
        if run_id:
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.continue_run(run_id)

    def _instantiate_trainer(self, config: dict, callbacks: list):
        """Add the log-file-friendly :class:`ProgressBar` unless bars are off or one is given."""
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(cb, ProgressBarBase) for cb in [*given, *callbacks]
        ):
            callbacks = [*callbacks, ProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        self._resume_tracking()

    def before_validate(self) -> None:
        self._resume_tracking()

    def before_test(self) -> None:
        self._resume_tracking()

    def before_predict(self) -> None:
        self._resume_tracking()


def cli_main(args: list[str] | None = None, run: bool = True) -> QSDLightningCLI:
    """Build (and with ``run=True`` run) the CLI; returns the LightningCLI object.

    ``args`` as on the command line, e.g. ``["fit", "--config", "configs/mlp_digits.yaml"]``;
    with ``run=False`` pass no subcommand: the model, data and trainer are only built.
    """
    cli = QSDLightningCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_class=ConciseArgumentParser,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
    if run:
        finish_wandb_runs(cli.trainer)
    return cli


def finish_wandb_runs(trainer) -> None:
    """Close W&B runs at the end of a command so the run files are complete (rank zero)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None and trainer.is_global_zero:
            logger.experiment.finish()


def main(args: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit status 1."""
    try:
        cli_main(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
