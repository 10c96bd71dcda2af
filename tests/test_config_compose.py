"""Configs compose: every experiment config takes its trainer, loggers and callbacks from
configs/defaults, and every callback preset in callbacks/ adds to a config's callbacks without
changing what it checkpoints on (issue 14, "Configs that compose")."""

from __future__ import annotations

import pytest
import yaml

from qsd_lightning.callbacks import AnalysisOff, EarlyStopping, ModelCheckpoint
from qsd_lightning.callbacks.analysis_off import ANALYSIS_CALLBACKS
from qsd_lightning.cli import cli_main

from .conftest import CONFIGS, REPO

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
PRESETS = sorted((REPO / "callbacks").glob("*.yaml"))
LANGUAGE_MODELS = {"lstm_ptb", "transformer_ptb"}
ANALYSIS = ["QuantalStatistics", "ActivationSparsity", "WeightDistributions"]


def composed(capsys, *files) -> dict:
    """The config the CLI builds from ``--config`` files, in order (``--print_config``)."""
    args = [a for f in files for a in ("--config", str(f))]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"], run=False)
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def names(config: dict) -> list[str]:
    return [cb["class_path"].rsplit(".", 1)[-1] for cb in config["trainer"]["callbacks"] or []]


def checkpoint_of(config: dict) -> dict:
    (cb,) = [cb for cb in config["trainer"]["callbacks"] if cb["class_path"].endswith("ModelCheckpoint")]
    assert cb["class_path"] == "qsd_lightning.callbacks.ModelCheckpoint"  # last.ckpt at every epoch end
    return cb["init_args"]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.stem)
def test_every_config_takes_the_shared_defaults(config, capsys):
    raw = yaml.safe_load(config.read_text())
    kind = "language_model" if config.stem in LANGUAGE_MODELS else "classifier"
    assert raw["config"] == f"defaults/{kind}.yaml"
    assert "trainer" not in raw and "trainer.logger" not in raw  # trainer settings: dotted keys over the defaults
    if config.stem not in ("mlp_mnist", "mlp_digits"):  # the two that change the shared callback list
        assert "trainer.callbacks" not in raw
    cfg = composed(capsys, config)
    assert [lg["class_path"] for lg in cfg["trainer"]["logger"]] == [
        "qsd_lightning.tracking.WandbLogger", "qsd_lightning.tracking.CSVLogger"]
    assert cfg["trainer"]["default_root_dir"] == f"runs/{config.stem}"
    assert cfg["trainer"]["max_epochs"] == raw["trainer.max_epochs"]
    monitor = ("val/ppl", "min") if kind == "language_model" else ("val/acc", "max")
    ckpt = checkpoint_of(cfg)
    assert (ckpt["monitor"], ckpt["mode"], ckpt["save_last"]) == (*monitor, True)
    assert set(ANALYSIS) < set(names(cfg)) and names(cfg).count("PredictionWriter") == 1
    if config.stem == "mlp_mnist":  # the author's recipe: regularisers off for the last 5 epochs
        switch = next(cb for cb in cfg["trainer"]["callbacks"] if cb["class_path"].endswith("RegulariserSwitch"))
        assert switch["init_args"]["off_from_epoch"] == 15


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.stem)
def test_every_preset_adds_to_every_config(config, preset, capsys):
    alone, both = composed(capsys, config), composed(capsys, config, preset)
    before, after = alone["trainer"]["callbacks"], both["trainer"]["callbacks"]
    assert after[: len(before)] == before  # the config's callbacks stay, in order, with their arguments
    added = names(both)[len(before):]
    assert added == {"early_stopping": ["EarlyStopping"], "minimal": ["AnalysisOff"]}[preset.stem]
    assert checkpoint_of(both) == checkpoint_of(alone)  # what the config monitors never changes
    assert {k: v for k, v in both.items() if k != "trainer"} == {k: v for k, v in alone.items() if k != "trainer"}
    assert {k: v for k, v in both["trainer"].items() if k != "callbacks"} == {
        k: v for k, v in alone["trainer"].items() if k != "callbacks"}


def test_presets_compose_with_each_other(capsys):
    mnist = CONFIGS / "mlp_mnist.yaml"
    cfg = composed(capsys, mnist, REPO / "callbacks" / "early_stopping.yaml", REPO / "callbacks" / "minimal.yaml")
    assert names(cfg)[-2:] == ["EarlyStopping", "AnalysisOff"] and "RegulariserSwitch" in names(cfg)
    assert checkpoint_of(cfg)["monitor"] == "val/acc"


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.stem)
def test_early_stopping_stops_on_what_the_checkpoint_monitors(config):
    cli = cli_main(["--config", str(config), "--config", str(REPO / "callbacks" / "early_stopping.yaml"),
                    "--trainer.logger=false", "--trainer.accelerator=cpu"], run=False)
    (stopper,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, EarlyStopping)]
    (checkpoint,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    stopper.setup(cli.trainer, cli.model, "fit")
    assert (stopper.monitor, stopper.mode, stopper.patience) == (checkpoint.monitor, checkpoint.mode, 5)
    assert checkpoint.monitor == ("val/ppl" if config.stem in LANGUAGE_MODELS else "val/acc")
    improves = -1.0 if checkpoint.mode == "min" else 1.0  # a later better value resets the wait count
    assert stopper.best_score.item() == -improves * float("inf") and stopper.min_delta == 0.0


def test_early_stopping_with_its_own_monitor_and_without_a_checkpoint():
    own = EarlyStopping(monitor="val/loss", mode="min")
    assert (own.monitor, own.mode) == ("val/loss", "min")

    class Trainer:
        callbacks: list = []
        val_check_interval, check_val_every_n_epoch = 1.0, 1

    from qsd_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="no ModelCheckpoint monitors a metric"):
        EarlyStopping().setup(Trainer(), None, "fit")


def test_fit_with_both_presets_keeps_the_checkpoint_and_drops_the_analysis(run_cli, tmp_path):
    cli = run_cli("fit", "--config", str(CONFIGS / "mlp_digits.yaml"),
                  "--config", str(REPO / "callbacks" / "early_stopping.yaml"),
                  "--config", str(REPO / "callbacks" / "minimal.yaml"),
                  "--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.logger=false")
    callbacks = cli.trainer.callbacks
    assert not any(isinstance(cb, ANALYSIS_CALLBACKS) for cb in callbacks)
    assert any(isinstance(cb, AnalysisOff) for cb in callbacks)
    stopper = next(cb for cb in callbacks if isinstance(cb, EarlyStopping))
    assert (stopper.monitor, stopper.mode) == ("val/acc", "max") and stopper.best_score.isfinite()
    assert cli.trainer.checkpoint_callback.monitor == "val/acc"
    assert [p.name for p in tmp_path.rglob("last.ckpt")] == ["last.ckpt"]


def test_the_comparison_runner_reads_the_composed_config(tmp_path):
    """The runner keeps the config's loggers (W&B with its run folder) and adds no second
    sparsity or weight callback to configs that have them through configs/defaults."""
    import json

    from qsd_lightning import compare as C

    grid = C.parse_args(["--config", str(CONFIGS / "mlp_digits.yaml"), "-r", "dropout", "--out", str(tmp_path)])
    args = C.run_cli_args(grid, C.plan(grid)[0])
    loggers = json.loads(next(a for a in args if a.startswith("--trainer.logger=")).split("=", 1)[1])
    assert [lg["class_path"].rsplit(".", 1)[-1] for lg in loggers] == ["CSVLogger", "WandbLogger"]
    assert not [a for a in args if a.startswith("--trainer.callbacks+=")]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.stem)
def test_runner_composes_configs_as_the_cli_does(config, capsys):
    """The runner's reader of the ``config:`` include gives the CLI's trainer callbacks and loggers."""
    from qsd_lightning.compare.plan import composed_config

    ours, cli = composed_config(config)["trainer"], composed(capsys, config)["trainer"]
    assert [cb["class_path"] for cb in ours["callbacks"]] == [cb["class_path"] for cb in cli["callbacks"]]
    assert [lg["class_path"] for lg in ours["logger"]] == [lg["class_path"] for lg in cli["logger"]]
    assert ours["max_epochs"] == cli["max_epochs"] and ours["default_root_dir"] == cli["default_root_dir"]


def test_wandb_runs_are_grouped_by_experiment(tmp_path, monkeypatch):
    """The shared logger sets no group: each run is grouped by its root folder's name."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = tmp_path / "runs" / "mlp_digits"
    cli = cli_main(["--config", str(CONFIGS / "mlp_digits.yaml"), f"--trainer.default_root_dir={root}"], run=False)
    [wandb] = [lg for lg in cli.trainer.loggers if type(lg).__name__ == "WandbLogger"]
    assert wandb._wandb_init["group"] == "mlp_digits"
