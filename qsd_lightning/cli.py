"""``python -m qsd_lightning fit|validate|test|predict --config configs/<x>.yaml``.

A thin LightningCLI: models and data modules are chosen by class (``model: MLPClassifier``),
regularisers by registry name (``--model.regulariser qsd``) or class path, all validated while
parsing, so a bad value stops before anything is built.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.callbacks.progress import ProgressBar as ProgressBarBase
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from . import _lightning_compat as compat
from . import callbacks as _callbacks  # noqa: F401
from . import data as _data  # noqa: F401  (makes the data modules resolvable by class name)
from . import regularisers as _regularisers  # noqa: F401  (registry aliases)
from . import tasks as _tasks  # noqa: F401  (makes the models resolvable by class name)
from .callbacks import PredictionWriter, ProgressBar, RankNoiseSeed, RNGStateCheckpoint
from .cli_errors import ConciseArgumentParser, runtime_user_error
from . import resume
from .checkpointing import AtomicCheckpointIO, CheckpointError, check_checkpoint_fits, load_checkpoint
from .errors import ConfigError, UserError
from .tracking import CHECKPOINT_KEY, LoggerSaveConfigCallback, WandbLogger


__all__ = ["QSDLightningCLI", "cli_main", "main"]

#: errors that are the user's input, not a bug: reported in one line, exit status 1
USER_ERRORS = (UserError, FloatingPointError)


class QSDLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults (subclass mode, injected optimisers),
    one-line argument errors, safe checkpoint loading, checkpoints written atomically,
    ``--ckpt_path last`` that resumes this configuration's run, the resolved config beside
    each run's checkpoints and in W&B, and W&B runs that resume with ``--ckpt_path``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--ddp_timeout", type=float, default=DEFAULT_DDP_TIMEOUT,
            help="Seconds a DDP rank waits in a collective (or at start-up) for the others before it fails "
                 "with an error, instead of hanging when a peer is lost. Raise it when rank 0 downloads data "
                 "for longer than this while the others wait.",
        )

    # ------------------------------------------------------------------ parsing
    # Overrides a private LightningCLI method (listed in _lightning_compat.PRIVATE_API): Lightning
    # calls it right after parsing and loads --ckpt_path there with weights_only=True; no public
    # hook runs before that load.
    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path`` (``last`` included) to a file, load it safely, refuse another
        architecture, and rebuild the model from the checkpoint's hyper-parameters with one
        notice per value that differs from the command line or config (one rule for every
        ``--ckpt_path``)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("ddp_timeout") is not None and not config["ddp_timeout"] > 0:
            raise ConfigError(f"--ddp_timeout must be > 0 seconds (got {config['ddp_timeout']})")
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or ckpt_path in ("hpc", "registry") or "://" in str(ckpt_path):
            return
        trusted = config.get("weights_only") is False
        if ckpt_path == "last":
            ckpt_path, checkpoint = self._find_last(config, trusted)
            config["ckpt_path"] = ckpt_path
        else:
            checkpoint = load_checkpoint(ckpt_path, trusted)
        hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "_instantiator"}
        saved = hparams.get("_class_path")
        configured = config.get("model.class_path")
        if saved and configured and saved != configured:
            raise CheckpointError(
                f"checkpoint {ckpt_path} holds a {saved.rsplit('.', 1)[-1]} but the config builds a "
                f"{configured.rsplit('.', 1)[-1]}: use the config the checkpoint was trained with"
            )
        if not hparams:
            return
        before = _flat(config.get("model"))
        self.config = self._with_checkpoint_model(hparams)
        after = _flat(self.config[subcommand].get("model"))
        for key in sorted(set(before) | set(after)):
            if key in after and before.get(key, _MISSING) != after[key]:
                given = "unset" if key not in before else repr(before[key])
                _notice(f"--model.{key}: {given} replaced by {after[key]!r} from checkpoint {ckpt_path} "
                        "(the model is rebuilt as it was trained)")

    def _with_checkpoint_model(self, hparams: dict, base=None):
        """The config with the model replaced by a checkpoint's hyper-parameters (Lightning's rule)."""
        subcommand = self.config["subcommand"]
        hparams = dict(hparams)
        model = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams} if "_class_path" in hparams else hparams
        return self.parser.parse_object({subcommand: {"model": model}}, base if base is not None else self.config)

    def _find_last(self, config, trusted: bool) -> tuple[str, dict]:
        """``--ckpt_path last``: the newest ``last*.ckpt`` under the root whose run has this
        configuration's model (and data, when its config.yaml is beside it). An unreadable
        ``last.ckpt`` falls back to the newest readable checkpoint of its run."""
        root = Path(config.get("trainer.default_root_dir") or Path.cwd())
        found = resume.last_checkpoints(root)
        if not found:
            raise CheckpointError(f"--ckpt_path last: no last.ckpt under {root}; give the checkpoint's path instead")
        wanted_model = _flat(config.get("model"))
        wanted_data = config.get("data.class_path")
        others = []
        for path in found:
            usable, checkpoint, note = resume.newest_readable(path, trusted)
            if checkpoint is None:
                others.append(f"{path} (unreadable: {note})")
                continue
            hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "_instantiator"}
            try:
                model = _flat(self._with_checkpoint_model(hparams, base=self.config.clone())[self.config["subcommand"]].get("model")) if hparams else {}
            except (SystemExit, Exception):  # saved by another version or class: not this run
                model = {}
            data = resume.saved_data_config(usable)
            if model == wanted_model and (data is None or data == wanted_data):
                if note:
                    _notice(f"--ckpt_path last: {note}")
                _notice(f"--ckpt_path last: resuming {usable}")
                return str(usable), checkpoint
            others.append(f"{usable} ({hparams.get('_class_path', '?').rsplit('.', 1)[-1]}"
                          f"{', ' + _describe_regulariser(hparams) if hparams else ''})")
        listed = "; ".join(others[:5]) + (f"; +{len(others) - 5} more" if len(others) > 5 else "")
        raise CheckpointError(
            f"--ckpt_path last: no run under {root} was trained with this configuration (candidates: {listed}); "
            "give the checkpoint's path to use one of them"
        )

    def before_instantiate_classes(self) -> None:
        """Loggers without a ``save_dir`` write under ``trainer.default_root_dir`` (W&B runs are
        grouped by its folder name unless a group is given); the Trainer's
        counts that it divides by are checked here (Lightning fails later with ZeroDivisionError)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        for key in ("accumulate_grad_batches", "check_val_every_n_epoch", "log_every_n_steps"):
            value = config.get(f"trainer.{key}")
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ConfigError(f"--trainer.{key} must be an integer >= 1 (got {value})")
        root = config.get("trainer.default_root_dir") or str(Path.cwd())
        loggers = config.get("trainer.logger")
        for entry in loggers if isinstance(loggers, list) else [loggers]:
            init = getattr(entry, "init_args", None) if entry is not None and not isinstance(entry, bool) else None
            if init is not None and "save_dir" in init and init.get("save_dir") is None:
                init["save_dir"] = root
            if init is not None and str(getattr(entry, "class_path", "")).endswith("WandbLogger") and not init.get("group"):
                init["group"] = Path(root).name  # the experiment (runs/<experiment>) groups its W&B runs

    # ------------------------------------------------------------------ building
    #: callbacks every run gets, unless its config already has one of the same type; with
    #: ``predict`` a :class:`PredictionWriter` too (see :meth:`always_on_callbacks`)
    always_on = (RankNoiseSeed, RNGStateCheckpoint, ProgressBar)

    def always_on_callbacks(self, config) -> list:
        """The always-on callbacks this run needs, given the Trainer's ``config`` (callbacks
        instantiated): per-rank noise seeds, random states in checkpoints, the
        log-file-friendly :class:`ProgressBar` (unless bars are off or another progress bar is
        given), and for ``predict`` a :class:`PredictionWriter` unless another writer is given.
        The config's callbacks are all the callbacks here: this CLI adds no callback arguments
        (``parser.add_lightning_class_args(Callback, ...)``), whose instances Lightning adds too."""
        present = [*_as_list(config.get("callbacks")), *getattr(self, "_given_default_callbacks", [])]
        wanted = [cls for cls in self.always_on if not any(isinstance(cb, cls) for cb in present)]
        if config.get("enable_progress_bar") is False or any(isinstance(cb, ProgressBarBase) for cb in present):
            wanted = [cls for cls in wanted if not issubclass(cls, ProgressBarBase)]
        if self.subcommand == "predict" and not any(isinstance(cb, BasePredictionWriter) for cb in present):
            wanted.append(PredictionWriter)  # predict always writes its file, also with a user's callback list
        return [cls() for cls in wanted]

    def instantiate_trainer(self, **kwargs):
        """The Trainer, with the project's always-on pieces: the callbacks of
        :meth:`always_on_callbacks` through LightningCLI's ``trainer_defaults`` (persistent
        callbacks, added after the config's), atomic checkpoint writes (unless a CheckpointIO
        is given) and the DDP timeout.

        ``trainer_defaults["callbacks"]`` is set here, once the config's callbacks exist, not
        when the CLI is made: Lightning adds persistent callbacks unconditionally, and a config
        that lists e.g. a :class:`RankNoiseSeed` (stateful: two would clash in checkpoints)
        or turns progress bars off must not get a second one, and only ``predict`` gets a
        :class:`PredictionWriter`."""
        init = self.config_init[self.subcommand] if self.subcommand else self.config_init
        config = {**init.get("trainer", {}), **kwargs}
        if not hasattr(self, "_given_default_callbacks"):  # callbacks passed as trainer_defaults by a caller
            self._given_default_callbacks = _as_list(self.trainer_defaults.get("callbacks"))
        self.trainer_defaults = {
            **self.trainer_defaults,
            "callbacks": [*self.always_on_callbacks(config), *self._given_default_callbacks],
        }
        plugins = _as_list(config.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins) and compat.explicit_checkpoint_io(config.get("strategy")) is None:
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        timeout = init.get("ddp_timeout")
        if timeout:
            compat.set_ddp_timeout(trainer.strategy, timeout)  # read when the process group starts
        return trainer

    # ------------------------------------------------------------------ running
    def _before_run(self) -> None:
        """Checkpoints load safely unless ``--weights_only false``; the checkpoint must fit
        the model; a resumed fit writes into its run's checkpoint folder and W&B run."""
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None:
            config["weights_only"] = True
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or ckpt_path in ("hpc", "registry", "last") or "://" in str(ckpt_path):
            return
        checkpoint = load_checkpoint(ckpt_path, trusted=config["weights_only"] is False)
        check_checkpoint_fits(checkpoint, self.model, ckpt_path)
        folder = Path(ckpt_path).resolve().parent
        if self.subcommand == "fit" and Path(self.trainer.default_root_dir).resolve() in folder.parents:
            for cb in self.trainer.checkpoint_callbacks:  # a resumed run goes on in its own folder
                if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                    cb.dirpath = str(folder)
        run_id = checkpoint.get(CHECKPOINT_KEY)
        if run_id:
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.continue_run(run_id)

    def before_fit(self) -> None:
        self._before_run()

    def before_validate(self) -> None:
        self._before_run()

    def before_test(self) -> None:
        self._before_run()

    def before_predict(self) -> None:
        self._before_run()


class RunConfigCallback(LoggerSaveConfigCallback):
    """Each run keeps the config that made it beside its checkpoints (``config.yaml``; a
    resumed run adds ``config.1.yaml``, ...), written when training starts; ``validate``,
    ``test`` and ``predict`` write no config file, so they never overwrite a run's. The W&B run
    config gets it too (:class:`LoggerSaveConfigCallback`)."""

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        callback = trainer.checkpoint_callback
        if callback is None or not getattr(callback, "dirpath", None):
            return
        directory = Path(callback.dirpath)
        directory.mkdir(parents=True, exist_ok=True)
        target, n = directory / resume.RUN_CONFIG, 0
        while target.exists():
            n += 1
            target = directory / f"{Path(resume.RUN_CONFIG).stem}.{n}.yaml"
        self.parser.save(self.config, str(target), skip_none=False, overwrite=False, multifile=self.multifile)


#: default of ``--ddp_timeout`` in seconds (torch's own default is 30 minutes)
DEFAULT_DDP_TIMEOUT = 900.0

_MISSING = object()


def _flat(value, prefix: str = "") -> dict:
    """A config value as ``{"a.b.c": leaf}`` (``init_args`` dropped from the keys)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        out: dict = {}
        for key, item in value.items():
            if key in ("__path__", "_instantiator"):
                continue
            name = prefix if key in ("init_args", "dict_kwargs") else (f"{prefix}.{key}" if prefix else key)
            out.update(_flat(item, name))
        return out
    return {prefix: value}


def _describe_regulariser(hparams: dict) -> str:
    reg = hparams.get("regulariser")
    if isinstance(reg, dict):
        return "regulariser " + str(reg.get("class_path", "?")).rsplit(".", 1)[-1]
    return f"regulariser {reg}" if reg is not None else "no regulariser"


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@rank_zero_only
def _notice(message: str) -> None:
    print(f"notice: {message}", file=sys.stderr, flush=True)


def cli_main(args: list[str] | None = None, run: bool = True) -> QSDLightningCLI:
    """Build (and with ``run=True`` run) the CLI; returns the LightningCLI object.

    ``args`` as on the command line, e.g. ``["fit", "--config", "configs/mlp_digits.yaml"]``;
    with ``run=False`` pass no subcommand: the model, data and trainer are only built.
    """
    # regulariser plugins named on the command line or in its config files (or QSD_LIGHTNING_PLUGINS)
    _regularisers.registry.load_for_command_line(args)
    cli = QSDLightningCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_class=ConciseArgumentParser,
        save_config_callback=RunConfigCallback,
        save_config_kwargs={"save_to_log_dir": False},
        args=args,
        run=run,
    )
    if run:
        finish_wandb_runs(cli.trainer)
    return cli


def finish_wandb_runs(trainer) -> None:
    """Close W&B runs at the end of a command so the run files are complete (rank zero)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and compat.wandb_experiment_if_started(logger) is not None and trainer.is_global_zero:
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
        cause = _user_error_cause(err)
        message = str(cause) if cause is not None else runtime_user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def _user_error_cause(err: BaseException) -> UserError | None:
    """A user error wrapped by a library (jsonargparse wraps what a constructor raises)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None
