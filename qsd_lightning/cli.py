"""``python -m qsd_lightning fit|validate|test|predict --config configs/<x>.yaml``.

A thin LightningCLI: models and data modules are chosen by class (``model: MLPClassifier``),
regularisers by registry name (``--model.regulariser qsd``) or class path, all validated while
parsing, so a bad value stops before anything is built.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch import LightningDataModule, LightningModule

from . import callbacks as _callbacks  # noqa: F401
from . import data as _data  # noqa: F401  (makes the data modules resolvable by class name)
from . import regularisers as _regularisers  # noqa: F401  (registry aliases)
from . import tasks as _tasks  # noqa: F401  (makes the models resolvable by class name)
from .cli_errors import ConciseArgumentParser
from .data import CorruptDataError, DataNotFoundError

__all__ = ["QSDLightningCLI", "cli_main", "main"]

#: errors that are the user's input, not a bug: reported in one line, exit status 1
USER_ERRORS = (DataNotFoundError, CorruptDataError, FloatingPointError)


class QSDLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults (subclass mode, injected optimisers) and
    one-line argument errors."""


def cli_main(args: list[str] | None = None, run: bool = True) -> QSDLightningCLI:
    """Build (and with ``run=True`` run) the CLI; returns the LightningCLI object.

    ``args`` as on the command line, e.g. ``["fit", "--config", "configs/mlp_digits.yaml"]``;
    with ``run=False`` pass no subcommand: the model, data and trainer are only built.
    """
    return QSDLightningCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_class=ConciseArgumentParser,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit status 1."""
    try:
        cli_main(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
