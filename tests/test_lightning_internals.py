"""Lightning's private API that this project relies on (issue 14, section 5).

:mod:`qsd_lightning._lightning_compat` is the one module that touches it, and lists every name in
``PRIVATE_API``. Here each entry is checked against the installed Lightning, so an upgrade that
removes or renames one fails loudly in one place, not as a subtle change of behaviour; and the
rest of the package is checked not to reach for Lightning's private names itself. Where a public
hook exists the code uses it instead (pinned at the end of this file).
"""

from __future__ import annotations

import ast
import inspect
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy

from qsd_lightning import _lightning_compat as compat
from qsd_lightning.callbacks.checkpoint import LIGHTNING_INTERNALS

PACKAGE = Path(compat.__file__).resolve().parent
ROOT = PACKAGE.parent

#: Lightning private names looked for in the package's code: every name of the registry plus
#: others a change could be tempted to use (names the project also uses for its own attributes,
#: such as ``_metrics``, are left out: the check would not tell them apart)
KNOWN_PRIVATE_NAMES = {use.name for use in compat.PRIVATE_API} | {
    "_trainer", "_fabric", "_instantiate_trainer", "_get", "_parser", "_subcommand_parsers",
    "_add_configure_optimizers_method_to_model", "_run_subcommand", "_set_seed", "_dump_config",
    "_accelerator_connector", "_callback_connector", "_checkpoint_connector", "_data_connector",
    "_logger_connector", "_results", "_run_stage", "_attach_id", "_save_topk_checkpoint",
    "_save_none_monitor_checkpoint", "_save_checkpoint", "_last_global_step_saved", "_process_group_backend",
}

#: uses outside the compatibility module that belong to files owned elsewhere and still have to
#: move; remove an entry when its file switches. ``LightningModule._trainer`` has a public
#: replacement: ``_lightning_compat.attached_trainer(module)`` (the ``trainer`` property).
NOT_YET_MOVED: set = set()  # files still reading a private name directly (none now)


def _label(use: compat.PrivateUse) -> str:
    return f"{use.owner.__name__}.{use.name}"


def _class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    __import__(module)
    return getattr(sys.modules[module], name)


# ----------------------------------------------------------------------------- the registry
@pytest.mark.parametrize("use", compat.PRIVATE_API, ids=_label)
def test_private_name_exists_in_the_installed_lightning(use):
    where = f"{use.owner.__module__}.{use.owner.__qualname__}.{use.name} ({use.why})"
    if use.kind == "method":
        assert callable(getattr(use.owner, use.name, None)), f"Lightning removed {where}"
    else:
        assert use.kind == "attribute", use
        source = inspect.getsource(use.owner)
        assert f"self.{use.name} =" in source or f"self.{use.name}:" in source, f"Lightning no longer sets {where}"


@pytest.mark.parametrize("use", [u for u in compat.PRIVATE_API if u.overridden_in], ids=_label)
def test_overrides_match_lightnings_signature(use):
    ours = _class(use.overridden_in)
    assert issubclass(ours, use.owner) and use.name in vars(ours), f"{use.overridden_in} no longer overrides {use.name}"
    theirs = list(inspect.signature(getattr(use.owner, use.name)).parameters)
    mine = list(inspect.signature(vars(ours)[use.name]).parameters)
    assert mine == theirs, f"Lightning changed the signature of {_label(use)}: {theirs} (ours: {mine})"


def test_model_checkpoint_internals_come_from_the_registry():
    assert set(LIGHTNING_INTERNALS) == {u.name for u in compat.PRIVATE_API if u.owner is ModelCheckpoint}
    assert {"_save_last_checkpoint", "_monitor_candidates", "_should_save_on_train_epoch_end"} <= set(LIGHTNING_INTERNALS)


# ----------------------------------------------------------------------------- how Lightning uses them
def test_parse_ckpt_path_runs_right_after_parsing():
    """LightningCLI.__init__ calls it right after parsing, before any public hook: our override
    loads the checkpoint there, before Lightning's own weights_only load would."""
    source = inspect.getsource(LightningCLI.__init__)
    parse, ckpt = source.index("self.parse_arguments("), source.index("self._parse_ckpt_path()")
    assert parse < ckpt < source.index("self.before_instantiate_classes()")


def test_ddp_strategy_reads_its_timeout_attribute():
    """--ddp_timeout sets ``strategy._timeout``, read when the process group starts."""
    strategy = DDPStrategy(timeout=timedelta(seconds=5))
    assert compat.set_ddp_timeout(strategy, 7)
    assert strategy._timeout == timedelta(seconds=7)
    assert "self._timeout" in inspect.getsource(DDPStrategy.setup_distributed)
    assert not compat.set_ddp_timeout(object(), 7)


def test_explicit_checkpoint_io_creates_nothing():
    strategy = DDPStrategy()
    assert compat.explicit_checkpoint_io(strategy) is None
    assert compat.explicit_checkpoint_io("ddp") is None
    assert compat.explicit_checkpoint_io(strategy) is None  # the public property would have made one


def test_wandb_logger_private_state(tmp_path):
    """The run not yet started, wandb.init's keyword arguments, and the id ``version`` reports."""
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, mode="disabled", group="g")
    assert compat.wandb_experiment_if_started(logger) is None
    assert compat.wandb_init_kwargs(logger)["group"] == "g"
    compat.set_wandb_run_id(logger, "abc123")
    assert logger.version == "abc123"
    assert compat.wandb_experiment_if_started(logger) is None  # reading version started nothing
    assert "self._wandb_init" in inspect.getsource(type(logger).experiment.fget)


# ----------------------------------------------------------------------------- nothing else touches them
def _private_uses(path: Path) -> set[tuple[str, int]]:
    """(name, line) of every known private name ``path`` reads or writes as an attribute,
    directly or through getattr/hasattr/setattr/delattr with a literal name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in KNOWN_PRIVATE_NAMES:
            found.add((node.attr, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in KNOWN_PRIVATE_NAMES
        ):
            found.add((node.args[1].value, node.lineno))
    return found


def test_no_module_but_the_compat_module_touches_lightning_private_names():
    overrides = {
        (str(Path(*u.overridden_in.split(".")[:-1]).with_suffix(".py")), u.name)
        for u in compat.PRIVATE_API if u.overridden_in
    }
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if path.name == "_lightning_compat.py":
            continue
        for name, line in sorted(_private_uses(path)):
            if (relative, name) in overrides or (relative, name) in NOT_YET_MOVED:
                continue  # a listed override calling its base class, or a file still to move
            offences.append(f"{relative}:{line}: {name}")
    assert not offences, (
        "Lightning private names used outside qsd_lightning/_lightning_compat.py (add a function there "
        "and list the name in PRIVATE_API): " + "; ".join(offences)
    )


def test_every_override_of_a_lightning_private_method_is_listed():
    """A project class that overrides a private method of its Lightning base must be in the
    registry, so that the upgrade check above covers it."""
    import qsd_lightning.cli  # noqa: F401  (imports the callbacks, loggers, tasks and data modules)

    listed = {(u.overridden_in, u.name) for u in compat.PRIVATE_API if u.overridden_in}
    unlisted = []
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("qsd_lightning") or module is None:
            continue
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module_name:
                continue
            bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in ("lightning", "pytorch_lightning")]
            for name in vars(cls):
                if not name.startswith("_") or name.startswith("__") or name == "_abc_impl":
                    continue
                if any(name in vars(base) for base in bases) and (f"{module_name}.{cls.__qualname__}", name) not in listed:
                    unlisted.append(f"{module_name}.{cls.__qualname__}.{name}")
    assert not unlisted, f"overrides of Lightning private methods missing from _lightning_compat.PRIVATE_API: {unlisted}"


def test_attached_trainer_uses_the_public_property():
    from lightning.pytorch.demos.boring_classes import BoringModel

    assert compat.attached_trainer(BoringModel()) is None
    assert compat.attached_trainer(object()) is None


# ----------------------------------------------------------------------------- public hooks relied on
def test_public_instantiate_trainer_merges_its_keyword_arguments():
    """QSDLightningCLI passes the checkpoint plugin to the public ``instantiate_trainer``."""
    params = inspect.signature(LightningCLI.instantiate_trainer).parameters
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_trainer_defaults_callbacks_are_added_to_the_configs_when_the_trainer_is_built(tmp_path):
    """The always-on callbacks travel in ``trainer_defaults``, set in ``instantiate_trainer``
    (after the config's callbacks exist): Lightning must read them when it builds the Trainer
    and add them after the config's callbacks, which it keeps."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

    class Marker(Callback):
        pass

    class CLI(LightningCLI):
        def instantiate_trainer(self, **kwargs):
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [Marker()]}
            return super().instantiate_trainer(**kwargs)

    cli = CLI(
        BoringModel, BoringDataModule, run=False, save_config_callback=None,
        args=["--trainer.callbacks=LearningRateMonitor", f"--trainer.default_root_dir={tmp_path}",
              "--trainer.logger=false", "--trainer.enable_progress_bar=false"],
    )
    kinds = [type(cb) for cb in cli.trainer.callbacks]
    assert LearningRateMonitor in kinds and Marker in kinds
    assert kinds.index(LearningRateMonitor) < kinds.index(Marker)
