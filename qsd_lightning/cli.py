"""``python -m qsd_lightning fit|validate|test|predict --config configs/<x>.yaml``.

A thin LightningCLI: models and data modules are chosen by class (``model: MLPClassifier``),
regularisers by registry name (``--model.regulariser qsd``) or class path, all validated while
parsing, so a bad value stops before anything is built.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks.progress import ProgressBar as ProgressBarBase

from . import callbacks as _callbacks  # noqa: F401
from . import data as _data  # noqa: F401  (makes the data modules resolvable by class name)
from . import regularisers as _regularisers  # noqa: F401  (registry aliases)
from . import tasks as _tasks  # noqa: F401  (makes the models resolvable by class name)
from .callbacks import ProgressBar, RankNoiseSeed, RNGStateCheckpoint
from .cli_errors import ConciseArgumentParser, runtime_user_error
from .checkpointing import CheckpointError, check_checkpoint_fits, load_checkpoint
from .errors import UserError
from .tracking import CHECKPOINT_KEY, LoggerSaveConfigCallback, WandbLogger


__all__ = ["QSDLightningCLI", "cli_main", "main"]

#: errors that are the user's input, not a bug: reported in one line, exit status 1
USER_ERRORS = (UserError, FloatingPointError)


class QSDLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults (subclass mode, injected optimisers),
    one-line argument errors, the resolved config in W&B, and W&B runs that resume with
    ``--ckpt_path``."""

    def _parse_ckpt_path(self) -> None:
        """Refuse a checkpoint of another architecture before Lightning applies its hparams.

        For the same class, Lightning rebuilds the model with the hyper-parameters saved in
        the checkpoint (regulariser included), so a resumed run continues the same model.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path != "last" and Path(ckpt_path).is_file():
            saved = load_checkpoint(ckpt_path).get("hyper_parameters", {}).get("_class_path")
            configured = self.config[subcommand].get("model.class_path")
            if saved and configured and saved != configured:
                raise CheckpointError(
                    f"checkpoint {ckpt_path} holds a {saved.rsplit('.', 1)[-1]} but the config builds a "
                    f"{configured.rsplit('.', 1)[-1]}: use the config the checkpoint was trained with"
                )
        super()._parse_ckpt_path()

    def _resume_tracking(self) -> None:
        """Resolve ``--ckpt_path last`` to a file and continue the W&B run stored in it."""
        config = self.config_init[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path == "last":
            roots = {Path(self.trainer.default_root_dir)}
            roots |= {Path(lg.save_dir) for lg in self.trainer.loggers if getattr(lg, "save_dir", None)}
            found = sorted((p for root in roots for p in root.rglob("last*.ckpt")), key=lambda p: p.stat().st_mtime)
            if not found:
                raise CheckpointError(
                    f"--ckpt_path last: no last.ckpt under {', '.join(sorted(map(str, roots)))}; "
                    "give the checkpoint's path instead"
                )
            ckpt_path = config["ckpt_path"] = str(found[-1])
        if not Path(ckpt_path).is_file():
            raise CheckpointError(f"checkpoint {ckpt_path} does not exist")
        checkpoint = load_checkpoint(ckpt_path)
        check_checkpoint_fits(checkpoint, self.model, ckpt_path)
        run_id = checkpoint.get(CHECKPOINT_KEY)
        if run_id:
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.continue_run(run_id)

    def _instantiate_trainer(self, config: dict, callbacks: list):
        """Add the project's always-on callbacks: per-rank noise seeds, random states in
        checkpoints, and the log-file-friendly :class:`ProgressBar` (unless bars are off or
        another progress bar is given)."""
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        present = [*given, *callbacks]
        extra = [cls() for cls in (RankNoiseSeed, RNGStateCheckpoint) if not any(isinstance(cb, cls) for cb in present)]
        if config.get("enable_progress_bar") is not False and not any(isinstance(cb, ProgressBarBase) for cb in present):
            extra.append(ProgressBar())
        return super()._instantiate_trainer(config, [*callbacks, *extra])

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
    """Console entry point: the user's errors become one line on stderr and exit status 1;
    bugs keep their traceback."""
    try:
        cli_main(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as err:
        message = runtime_user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
