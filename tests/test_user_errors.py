"""A new user's first-hour mistakes: one line naming the problem and the fix, exit status 2 (found
while parsing) or 1 (found later), never a traceback. Every case runs the real CLI entry point
(:func:`qsd_lightning.cli.main`)."""

from __future__ import annotations

import errno

import pytest
import torch
from torch import Tensor

from qsd_lightning.cli import main
from qsd_lightning.data import DigitsDataModule
from qsd_lightning.regularisers import Regulariser

from .conftest import CONFIGS, REPO

DIGITS = str(CONFIGS / "mlp_digits.yaml")
HINT = "(run with --help for the accepted options)"


# ----------------------------------------------------------------------------- helpers
class WideDigits(DigitsDataModule):
    """784 features per example (MNIST's size): the digits padded with zeros, for the mismatch test."""

    num_features = 784

    def load(self):
        splits = super().load()
        return {name: (torch.nn.functional.pad(x, (0, 784 - x.shape[1])), y) for name, (x, y) in splits.items()}


class Scale(Regulariser):
    """A user's regulariser outside the registry whose ``rate`` is typed as a plain float."""

    def __init__(self, rate: float = 0.5, factor: float = 1.0) -> None:
        super().__init__(rate)
        self.factor = factor

    def config(self):
        return {"rate": self.rate, "factor": self.factor}

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor if self.training else x


def fast(tmp_path) -> list[str]:
    return [f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.fast_dev_run=true",
            "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false"]


def one_line(capsys, args: list[str], code: int) -> str:
    """Run the CLI, expect exit ``code`` and one ``error:`` line on stderr; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, err
    after = lines[errors[0] + 1 :]
    assert after == ([HINT] if code == 2 else []), err
    if code == 2:  # found while parsing: nothing else printed
        assert len(lines) == 2, err
    return lines[errors[0]]


# ----------------------------------------------------------------------------- config files
def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "x.yaml"
    bad.write_text("trainer:\n  max_epochs: 1\n  devices 1: 2: 3\nmodel: 1\n")
    line = one_line(capsys, ["fit", "--config", str(bad)], 2)
    assert line.startswith(f"error: {bad} line 3") and "mapping values are not allowed" in line


def test_yaml_tab_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "tab.yaml"
    bad.write_text("model:\n  init_args:\n\tin_features: 64\n")
    line = one_line(capsys, ["fit", "--config", DIGITS, "--config", str(bad)], 2)
    assert line.startswith(f"error: {bad} line 3") and "'\\t'" in line


@pytest.mark.parametrize(
    "name,message",
    [
        ("nope.yaml", "no such file"),
        ("configs/mlp_digit.yaml", "did you mean"),
    ],
)
def test_missing_config(name, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    line = one_line(capsys, ["fit", "--config", name], 2)
    assert message in line and name in line
    if "did you mean" in message:
        assert "mlp_digits.yaml" in line


def test_config_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("seed_everything: 1\n")
    line = one_line(capsys, ["fit", "--config", str(tmp_path)], 2)
    assert "is a folder, not a config file" in line and "a.yaml" in line


@pytest.mark.parametrize("content,message", [("", "is empty"), ("- a\n- b\n", "holds a list")])
def test_config_that_is_not_a_mapping(content, message, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    line = one_line(capsys, ["fit", "--config", str(path)], 2)
    assert message in line and "trainer:, model:, data:" in line


# ----------------------------------------------------------------------------- parse time (exit 2)
PARSE = [
    # the command line as a whole
    (["--config", DIGITS, "fit"], "must come after the subcommand: python -m qsd_lightning fit --config"),
    (["--trainer.max_epochs", "3", "fit", "--config", DIGITS], "options must come after the subcommand"),
    (["--config", DIGITS], "no subcommand: start with one of fit, validate, test, predict"),
    (["fitt", "--config", DIGITS], "unknown subcommand 'fitt'; use one of fit, validate, test, predict; did you mean 'fit'?"),
    (["fit"], "fit needs --data, --model: give a config"),
    (["fit", "--config", DIGITS, "--trainr.max_epochs", "3"], "did you mean --trainer.max_epochs?"),
    # regulariser arguments
    (["fit", "--config", DIGITS, "--model.regulariser.gamma", "8"],
     "error: --model.regulariser.gamma: dropout has no argument 'gamma'; add --model.regulariser qsd before it "
     "(or use a regulariser that takes gamma: qsd)"),
    (["fit", "--config", DIGITS, "--model.regulariser.mode", "foo"],
     "--model.regulariser.mode: dropout has no argument 'mode'; add --model.regulariser qsd before it"),
    (["fit", "--config", DIGITS, "--model.regulariser", "weight_drop", "--model.regulariser.locked_dims", "[1]"],
     "weight_drop has no argument 'locked_dims'; add --model.regulariser dropout before it (or use a regulariser that "
     "takes locked_dims: dropout, gaussian_dropout, qsd); weight_drop takes rate"),
    (["fit", "--config", DIGITS, "--model.regulariser", "qsd", "--model.regulariser.gama", "8"],
     "--model.regulariser.gama: no registered regulariser has an argument 'gama'"),
    (["fit", "--config", DIGITS, "--model.regulariser.locked_dims", "[0]"],
     "--model.regulariser.locked_dims must name non-batch dims"),
    (["fit", "--config", DIGITS, "--model.regulariser.locked_dims", "1"], "expected a list, e.g. --model.regulariser.locked_dims [1]"),
    (["fit", "--config", DIGITS, "--model.regulariser.rate", "abc"], "--model.regulariser.rate must be in [0, 1) (got 'abc', not a number)"),
    # model arguments
    (["fit", "--config", DIGITS, "--model.hidden_sizes", "0"], "--model.hidden_sizes: expected a list, e.g. --model.hidden_sizes [0]"),
    (["fit", "--config", DIGITS, "--model.hidden_sizes", "[100, 0]"], "--model.hidden_sizes must be an integer > 0 (got 0)"),
    (["fit", "--config", DIGITS, "--model.num_classes", "0"], "--model.num_classes must be an integer >= 2"),
    (["fit", "--config", DIGITS, "--model.in_features", "0"], "--model.in_features must be an integer > 0 (got 0)"),
    (["fit", "--config", DIGITS, "--model", "MLPClassifer"], "did you mean MLPClassifier?"),
    (["fit", "--config", DIGITS, "--model.optimizer", "torch.optim.Foo"], "any class in torch.optim works, e.g."),
    (["fit", "--config", DIGITS, "--model.optimizer", "torch.optim.adam"], "did you mean torch.optim.Adam?"),
    (["fit", "--config", DIGITS, "--model.optimizer.lrr", "0.1"],
     "--model.optimizer.lrr: no such option (misspelt key?); Adam takes lr, betas"),
    # trainer and top-level values
    (["fit", "--config", DIGITS, "--seed_everything", "abc"], "--seed_everything: expected true/false or an integer (got abc)"),
    (["fit", "--config", DIGITS, "--trainer.max_epochs", "1.5"], "--trainer.max_epochs: expected an integer or null (got 1.5)"),
    (["fit", "--config", DIGITS, "--trainer.precision", "15"], "--trainer.precision: expected one of 64, 32, 16, 'transformer-engine'"),
]


@pytest.mark.parametrize("args,message", PARSE, ids=[" ".join(a).replace(DIGITS, "DIGITS") for a, _ in PARSE])
def test_parse_time_mistakes(args, message, capsys):
    line = one_line(capsys, args, 2)
    assert message in line, line


def test_misspelt_key_suggests_the_option(capsys):
    line = one_line(capsys, ["fit", "--config", DIGITS, "--model.regulariserr", "qsd"], 2)
    assert line.startswith("error: --model.regulariserr: no such option (misspelt key?)")  # README's message
    assert line.endswith("did you mean --model.regulariser?")


def test_gamma_in_config_while_dropout(tmp_path, capsys):
    config = tmp_path / "gamma.yaml"
    config.write_text("model:\n  init_args:\n    regulariser:\n      class_path: dropout\n      init_args:\n        gamma: 8\n")
    line = one_line(capsys, ["fit", "--config", DIGITS, "--config", str(config)], 2)
    assert "--model.regulariser.gamma: dropout has no argument 'gamma'; add --model.regulariser qsd" in line


# ----------------------------------------------------------------------------- after parsing (exit 1)
RUNTIME = [
    # optimiser and scheduler values torch refuses
    (["--model.optimizer.lr", "-1"], "error: --model.optimizer.lr must be >= 0 for Adam (got -1.0)"),
    (["--model.optimizer.betas", "[1.5, 0.9]"], "--model.optimizer.betas must be in [0, 1) (each of the two) for Adam (got 1.5 at index 0)"),
    (["--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.1", "--model.optimizer.momentum", "-1"],
     "--model.optimizer.momentum must be >= 0 for SGD (got -1.0)"),
    (["--model.lr_scheduler.step_size", "0"], "--model.lr_scheduler.step_size must be an integer >= 1"),
    (["--model.lr_scheduler", "torch.optim.lr_scheduler.CosineAnnealingLR", "--model.lr_scheduler.T_max", "0"],
     "--model.lr_scheduler.T_max: CosineAnnealingLR divides by it at its first step, so it cannot be 0"),
    (["--model.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau", "--model.lr_scheduler.factor", "2"],
     "--model.lr_scheduler: ReduceLROnPlateau: Factor should be < 1.0."),
    # regulariser dims that do not fit the network
    (["--model.regulariser.locked_dims", "[5]"],
     "--model.regulariser.locked_dims [5] does not fit the inputs of the MLP's regulariser sites: they are [batch, "
     "features], so a dim can be only 1 (features)"),
    (["--model.regulariser.locked_dims", "[1]", "--model.regulariser.unit_dims", "[-1]"],
     "--model.regulariser.unit_dims [-1] and --model.regulariser.locked_dims [1] both name dim 1 (features)"),
    (["--model.regulariser.locked_dims", "[1]", "--model.regulariser.unit_dims", "[1]"], "unit_dims [1] and locked_dims [1] overlap"),
    # model and data that do not fit
    (["--model.in_features", "784"], "error: the data has 64 features, the model expects 784: set --model.in_features 64"),
    (["--data", "tests.test_user_errors.WideDigits"], "error: the data has 784 features, the model expects 64: set --model.in_features 784"),
    (["--model.num_classes", "5"], "error: the data has 10 classes, the model has 5 outputs: set --model.num_classes 10"),
    (["--model.hidden_sizes", "[]"], "--model.hidden_sizes is empty: give at least one, e.g. --model.hidden_sizes [100, 100]"),
    (["--model", "CNNClassifier"], "the data's inputs have shape [64] per example, not images [channels, height, width]"),
    # trainer values Lightning refuses
    (["--trainer.max_epochs", "-5"], "--trainer.max_epochs must be an integer >= 0, or -1 for no limit (got -5)"),
    (["--trainer.devices", "0"], "--trainer.devices 0: not a valid number of cpu devices; use an integer >= 1 or auto"),
    (["--trainer.strategy", "ddpp"], "--trainer.strategy: unknown strategy 'ddpp'"),
    (["--trainer.accelerator", "tpu"], "--trainer.accelerator tpu: no TPU here"),
    (["--trainer.accumulate_grad_batches", "0"], "--trainer.accumulate_grad_batches must be an integer >= 1 (got 0)"),
    (["--trainer.check_val_every_n_epoch", "0"], "--trainer.check_val_every_n_epoch must be an integer >= 1 (got 0)"),
    (["--trainer.log_every_n_steps", "-1"], "--trainer.log_every_n_steps must be an integer >= 1 (got -1)"),
]


@pytest.mark.parametrize("args,message", RUNTIME, ids=[" ".join(a) for a, _ in RUNTIME])
def test_mistakes_found_after_parsing(args, message, tmp_path, capsys):
    line = one_line(capsys, ["fit", "--config", DIGITS, *args, *fast(tmp_path)], 1)
    assert message in line, line


def test_limit_batches_out_of_range(tmp_path, capsys):
    args = ["fit", "--config", DIGITS, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=1.5"]
    line = one_line(capsys, args, 1)
    assert "--trainer.limit_train_batches must be a fraction in [0.0, 1.0] or a number of batches" in line


@pytest.mark.parametrize(
    "accelerator,available",
    [("gpu", torch.cuda.is_available()), ("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())],
)
def test_gpu_accelerator_without_a_gpu(accelerator, available, tmp_path, capsys):
    if available:
        pytest.skip(f"{accelerator} is available here")
    line = one_line(capsys, ["fit", "--config", DIGITS, "--trainer.accelerator", accelerator, *fast(tmp_path)], 1)
    assert f"--trainer.accelerator {accelerator}: no" in line and "use --trainer.accelerator cpu or auto" in line


# ----------------------------------------------------------------------------- a user class path
def test_user_regulariser_class_path_keeps_the_config_rate(tmp_path, capsys):
    """``--model.regulariser <user class>`` takes ``rate: 0.3`` from the config; saving that
    configuration failed with a 175-line RepresenterError (a ``Rate`` value under a ``float``)."""
    main([
        "fit", "--config", DIGITS, "--model.regulariser", "tests.test_user_errors.Scale",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
    ])
    saved = sorted(tmp_path.rglob("config*.yaml"))
    assert saved, list(tmp_path.rglob("*"))
    text = saved[0].read_text()
    assert "class_path: tests.test_user_errors.Scale" in text and "rate: 0.3" in text


# ----------------------------------------------------------------------------- the helpers themselves
def test_condense_falls_back_to_the_raw_message():
    from qsd_lightning.cli_errors import condense

    assert condense("something nobody anticipated") == "something nobody anticipated"
    assert condense('Parser key "trainer.foo":\n  something odd') == "--trainer.foo: something odd"


def test_runtime_user_error_leaves_bugs_alone():
    from qsd_lightning.cli_errors import runtime_user_error
    from qsd_lightning.errors import ConfigError

    assert runtime_user_error(RuntimeError("boom")) is None
    assert runtime_user_error(ValueError("Invalid learning rate: -1")) is None  # not wrapped, not ours to judge
    wrapper = ValueError("Does not validate against any of the Union subtypes\nSubtypes: ...")
    wrapper.__cause__ = KeyError("a bug in a constructor")
    assert runtime_user_error(wrapper) is None
    wrapped = ValueError("Does not validate against any of the Union subtypes\nSubtypes: ...")
    wrapped.__cause__ = ConfigError("--model.hidden_sizes is empty")
    assert runtime_user_error(wrapped) == "--model.hidden_sizes is empty"


def test_runtime_user_error_resources_and_gpu_count():
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from qsd_lightning.cli_errors import runtime_user_error

    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/last.ckpt")
    assert "no space left on the device writing /runs/x/last.ckpt" in runtime_user_error(full)
    assert runtime_user_error(OSError(errno.EIO, "I/O error")) is None
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ...")
    assert runtime_user_error(oom).startswith("out of GPU memory (CUDA out of memory): lower --data.batch_size")
    many = MisconfigurationException("You requested gpu: [0, 1]\n But your machine only has: [0]")
    assert runtime_user_error(many) == (
        "--trainer.devices asks for GPUs [0, 1] but this machine has [0]: lower --trainer.devices (or set it to auto)"
    )
    assert runtime_user_error(MisconfigurationException("something else entirely")) is None


def test_condense_gives_an_unrecognised_report_unchanged_even_over_several_lines():
    """Nothing recognised (no parser key, no known wrapper line): the raw message, not its
    first line dressed up as ``configuration: ...``."""
    from qsd_lightning.cli_errors import condense

    raw = "first line nobody anticipated\nsecond line with the detail"
    assert condense(raw, []) == raw
    assert condense(f"  {raw}\n", []) == raw
    assert condense("", []) == ""
