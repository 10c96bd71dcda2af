"""Checkpoints: safe loading, what ``last.ckpt`` holds, which run ``--ckpt_path last`` resumes,
one rule for checkpoint hyper-parameters, atomic writes on any filesystem, a full disk, and
where a run's outputs go."""

from __future__ import annotations

import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

from qsd_lightning.callbacks.checkpoint import LIGHTNING_INTERNALS
from qsd_lightning.checkpointing import AtomicCheckpointIO, CheckpointError, load_checkpoint
from qsd_lightning.cli import DEFAULT_DDP_TIMEOUT, cli_main, main

from .conftest import CONFIGS, REPO
from .helpers import cli_subprocess, final_val_loss, run_main

DIGITS = str(CONFIGS / "mlp_digits.yaml")
FAST = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def fit(root, *args, epochs=2):
    return cli_main(["fit", "--config", DIGITS, *FAST, f"--trainer.max_epochs={epochs}",
                     f"--trainer.default_root_dir={root}", *args])


class Payload:
    """Pickles to a call of ``os.system``: what a malicious checkpoint holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def plant_malicious_checkpoint(path: pathlib.Path, marker: pathlib.Path, template: dict | None = None) -> None:
    checkpoint = dict(template or {"state_dict": {}})
    checkpoint["payload"] = Payload(f"touch {marker}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


# ------------------------------------------------------------------------------ safe loading
@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_malicious_checkpoint_is_refused_not_run(subcommand, tmp_path, capsys):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.ckpt"
    plant_malicious_checkpoint(evil, marker)
    code, err = run_main([subcommand, "--config", DIGITS, *FAST, f"--ckpt_path={evil}", "--trainer.logger=false",
                          f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 1 and not marker.exists()
    assert "refusing to load checkpoint" in err and "evil.ckpt" in err and "--weights_only false" in err
    assert len(err.strip().splitlines()) == 1


def test_planted_last_checkpoint_is_not_run(tmp_path, capsys):
    """A file planted as ``last.ckpt`` in the run folder is never unpickled with code."""
    cli = fit(tmp_path, "--trainer.logger=false")
    real = pathlib.Path(cli.trainer.checkpoint_callback.last_model_path)
    marker = tmp_path / "pwned"
    plant_malicious_checkpoint(tmp_path / "planted" / "last.ckpt", marker, load_checkpoint(real))
    os.utime(tmp_path / "planted" / "last.ckpt")  # the newest last.ckpt under the root
    try:
        main(["fit", "--config", DIGITS, *FAST, "--trainer.max_epochs=3", "--ckpt_path=last", "--trainer.logger=false",
              f"--trainer.default_root_dir={tmp_path}"])
    except SystemExit:
        pass
    assert not marker.exists()
    assert f"resuming {real}" in capsys.readouterr().err  # the planted file was passed over


def test_own_checkpoints_load_weights_only_and_opt_in_for_trusted_legacy(tmp_path, capsys):
    cli = fit(tmp_path, "--trainer.logger=false")
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    plain = torch.load(ckpt, map_location="cpu", weights_only=True)  # RNG states included
    assert "rng_states" in plain and "state_dict" in plain
    legacy = tmp_path / "legacy.ckpt"
    torch.save({**plain, "origin": pathlib.PurePosixPath("/somewhere")}, legacy)  # not a weights-only type
    code, err = run_main(["test", "--config", DIGITS, *FAST, f"--ckpt_path={legacy}", "--trainer.logger=false",
                          f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 1 and "refusing to load" in err
    trusted = cli_main(["test", "--config", DIGITS, *FAST, f"--ckpt_path={legacy}", "--weights_only=false",
                        "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    assert "test/acc" in trusted.trainer.callback_metrics


def test_ckpt_path_directory_and_missing_file(tmp_path, capsys):
    code, err = run_main(["test", "--config", DIGITS, *FAST, f"--ckpt_path={tmp_path}", "--trainer.logger=false"], capsys)
    assert code == 1 and "is a directory" in err and ".ckpt" in err
    code, err = run_main(["test", "--config", DIGITS, *FAST, f"--ckpt_path={tmp_path / 'no.ckpt'}", "--trainer.logger=false"], capsys)
    assert code == 1 and "does not exist" in err


def test_checkpoint_whose_weights_do_not_fit(tmp_path, capsys):
    """A checkpoint of the right class whose tensors were changed (or came from elsewhere) is
    refused in one line naming what differs, never loaded half-way."""
    fit(tmp_path, "--trainer.logger=false", epochs=1)
    [last] = list(tmp_path.rglob("last.ckpt"))
    checkpoint = torch.load(last, weights_only=True)
    key = sorted(k for k in checkpoint["state_dict"] if k.endswith("weight"))[0]
    checkpoint["state_dict"][key] = torch.zeros(3, 3)
    checkpoint["state_dict"]["net.extra.weight"] = torch.zeros(1)
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    code, err = run_main(["validate", "--config", DIGITS, *FAST, f"--ckpt_path={edited}", "--trainer.logger=false",
                          f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "does not fit MLPClassifier as configured" in err and f"shape mismatch: {key}" in err and "unexpected: net.extra.weight" in err


# ------------------------------------------------------------------------------ last.ckpt
@pytest.mark.parametrize("preset", [None, *sorted((REPO / "callbacks").glob("*.yaml"))], ids=lambda p: getattr(p, "stem", "alone"))
def test_every_config_writes_last_at_each_epoch_end(preset, capsys):
    """Every config as composed (configs/defaults, with or without a callback preset) keeps the
    project's ModelCheckpoint (last.ckpt at every epoch end) and no other."""
    import yaml

    for path in CONFIGS.glob("*.yaml"):
        with pytest.raises(SystemExit):
            cli_main(["--config", str(path), *(["--config", str(preset)] if preset else []), "--print_config"], run=False)
        callbacks = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
        checkpoints = [cb["class_path"] for cb in callbacks if "Checkpoint" in cb["class_path"]]
        assert checkpoints == ["qsd_lightning.callbacks.ModelCheckpoint"], path.name


def test_lightning_internals_used_by_model_checkpoint_exist():
    """Fails loudly when a Lightning upgrade removes what ``last.ckpt`` relies on."""
    for name in LIGHTNING_INTERNALS:
        assert callable(getattr(LightningModelCheckpoint, name, None)), name


def test_last_checkpoint_is_the_end_of_training_not_the_best(tmp_path):
    """The monitored best is the first epoch (val/loss, mode max), yet last.ckpt is the end."""
    config = tmp_path / "ckpt.yaml"
    config.write_text(textwrap.dedent("""
        trainer:
          callbacks:
            - class_path: qsd_lightning.callbacks.ModelCheckpoint
              init_args: {monitor: val/loss, mode: max, save_last: true}
    """))
    cli = fit(tmp_path, "--config", str(config), "--trainer.logger=false", epochs=4)
    cb = cli.trainer.checkpoint_callback
    last = load_checkpoint(cb.last_model_path)
    best = load_checkpoint(cb.best_model_path)
    assert best["epoch"] < 3  # the best is not the final epoch ...
    assert last["epoch"] == 3 and last["global_step"] == cli.trainer.global_step  # ... last.ckpt is
    final = {k: v for k, v in cli.model.state_dict().items()}
    assert all(torch.equal(final[k], last["state_dict"][k]) for k in final)


def test_last_checkpoint_at_the_end_of_a_run_stopped_mid_epoch(tmp_path):
    cli = fit(tmp_path, "--trainer.logger=false", "--trainer.max_steps=4", "--trainer.limit_train_batches=3", epochs=5)
    last = load_checkpoint(cli.trainer.checkpoint_callback.last_model_path)
    assert last["global_step"] == 4 == cli.trainer.global_step


# ------------------------------------------------------------------------------ which run `last` resumes
def test_ckpt_path_last_resumes_this_configs_run_not_the_newest(tmp_path, capsys):
    dropout = fit(tmp_path, epochs=1)
    dropout_last = dropout.trainer.checkpoint_callback.last_model_path
    fit(tmp_path, "--model.regulariser=gaussian_dropout", epochs=1)  # newer, another configuration
    capsys.readouterr()
    resumed = fit(tmp_path, "--ckpt_path=last", epochs=2)
    err = capsys.readouterr().err
    assert f"resuming {dropout_last}" in err
    from qsd_lightning.regularisers import Dropout, GaussianDropout

    assert not any(isinstance(m, GaussianDropout) for m in resumed.model.modules())
    assert any(isinstance(m, Dropout) for m in resumed.model.modules())
    assert resumed.trainer.current_epoch == 2


def test_ckpt_path_last_with_no_run_of_this_config_refuses_listing_candidates(tmp_path, capsys):
    fit(tmp_path, "--trainer.logger=false", epochs=1)
    code, err = run_main(["test", "--config", DIGITS, *FAST, "--ckpt_path=last", "--model.regulariser=qsd",
                          "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 1 and "no run under" in err and "candidates:" in err and "regulariser dropout" in err
    code, err = run_main(["test", "--config", DIGITS, *FAST, "--ckpt_path=last", "--trainer.logger=false",
                          f"--trainer.default_root_dir={tmp_path / 'empty'}"], capsys)
    assert code == 1 and "no last.ckpt under" in err


def test_checkpoint_overrides_model_flags_with_a_notice(tmp_path, capsys):
    """One rule for every --ckpt_path: the model is rebuilt from the checkpoint, and each flag
    it overrides is named."""
    cli = fit(tmp_path, "--trainer.logger=false", "--model.hidden_rate=0.1", epochs=1)
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    capsys.readouterr()
    tested = cli_main(["test", "--config", DIGITS, *FAST, f"--ckpt_path={ckpt}", "--model.hidden_rate=0.4",
                       "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert "notice: --model.hidden_rate: 0.4 replaced by 0.1 from checkpoint" in err
    assert tested.model.hparams.hidden_rate == 0.1


def test_unreadable_last_falls_back_to_newest_readable_checkpoint_of_the_run(tmp_path, capsys):
    cli = fit(tmp_path, "--trainer.logger=false", epochs=2)
    cb = cli.trainer.checkpoint_callback
    pathlib.Path(cb.last_model_path).write_bytes(pathlib.Path(cb.last_model_path).read_bytes()[:1000])  # truncated
    capsys.readouterr()
    resumed = fit(tmp_path, "--trainer.logger=false", "--ckpt_path=last", epochs=3)
    err = capsys.readouterr().err
    assert "is unreadable" in err and f"resuming {cb.best_model_path}" in err
    assert resumed.trainer.current_epoch == 3


# ------------------------------------------------------------------------------ atomic writes, full disk
ATOMIC_SCRIPT = r"""
import os, shutil, signal, sys, torch
from qsd_lightning.checkpointing import AtomicCheckpointIO
from lightning.pytorch.plugins.io import TorchCheckpointIO

target = sys.argv[1]
io = AtomicCheckpointIO() if sys.argv[2] == "atomic" else TorchCheckpointIO()

def copy_half_then_die(*args, **kwargs):  # the kill lands while the file is copied across filesystems
    src, dst = args[0], args[1]
    data = open(src, "rb").read()
    with open(dst, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)

shutil.copyfile = copy_half_then_die
shutil.copy2 = copy_half_then_die
os.sendfile = lambda *a, **k: (_ for _ in ()).throw(OSError(38, "no sendfile"))
io.save_checkpoint({"state_dict": {"w": torch.arange(100000.0)}, "epoch": 1}, target)
"""


def test_kill_while_saving_across_filesystems_leaves_the_previous_checkpoint(tmp_path):
    """$TMPDIR on another filesystem (cluster scratch, NFS): a SIGKILL during the save never
    leaves a truncated checkpoint."""
    other_fs = pathlib.Path("/dev/shm")
    if not other_fs.is_dir() or os.stat(other_fs).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp dir")
    tmpdir = pathlib.Path(os.environ.get("QSD_TEST_SHM", other_fs)) / f"qsd-test-{os.getpid()}"
    tmpdir.mkdir(exist_ok=True)
    try:
        target = tmp_path / "ckpts" / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 0}, target)
        env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-c", ATOMIC_SCRIPT, str(target), "atomic"], env=env, timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL)
        assert load_checkpoint(target)["epoch"] in (0, 1)  # complete: the old one or the new one
        assert not list(target.parent.glob(".*.tmp"))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_failed_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 0}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(10**5)}, "x": Unpicklable()}, target)
    assert load_checkpoint(target)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))


def test_full_disk_gives_one_line_and_no_partial_checkpoint(tmp_path):
    """Writes beyond a file-size limit fail like a full disk (EFBIG): one line, exit 1."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "qsd_lightning", "fit", "--config", DIGITS, *FAST, "--trainer.max_epochs=2",
         "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"],
        env=env, capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot write checkpoint" in errors[0] and "Traceback" not in proc.stderr
    for ckpt in tmp_path.rglob("*.ckpt"):
        load_checkpoint(ckpt)  # whatever is there is complete
    assert not list(tmp_path.rglob(".*.tmp"))


def test_full_tmpfs_disk(tmp_path):
    """A real full filesystem (a 256 kB tmpfs, where this machine allows mounting one)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        target = mount / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(10)}, "epoch": 0}, target)
        with pytest.raises(CheckpointError, match="No space left on device"):
            AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(200_000)}, "epoch": 1}, target)
        assert load_checkpoint(target)["epoch"] == 0
        assert sorted(p.name for p in mount.iterdir()) == ["last.ckpt"]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# ------------------------------------------------------------------------------ where outputs go
def test_default_root_dir_moves_every_output_and_each_run_keeps_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = tmp_path / "elsewhere"
    cli = fit(root, "--seed_everything=7", epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]  # nothing in the working directory
    ckpt_dir = pathlib.Path(cli.trainer.checkpoint_callback.dirpath)
    assert root in ckpt_dir.parents and (ckpt_dir / "config.yaml").is_file()
    assert list(root.glob("csv/version_*/metrics.csv")) and list(root.glob("wandb/offline-run-*"))
    saved = (ckpt_dir / "config.yaml").read_text()
    assert "seed_everything: 7" in saved
    cli_main(["test", "--config", DIGITS, *FAST, f"--ckpt_path={cli.trainer.checkpoint_callback.last_model_path}",
              "--seed_everything=99", f"--trainer.default_root_dir={root}", "--trainer.logger=false"])
    try:
        main(["fit", "--config", DIGITS, *FAST, "--model.regulariser.rate=1.5", f"--trainer.default_root_dir={root}"])
    except SystemExit:
        pass
    assert (ckpt_dir / "config.yaml").read_text() == saved  # later commands never overwrite a run's config
    assert not (root / "config.yaml").exists()


# ------------------------------------------------------------------------------ DDP timeout
def test_ddp_timeout_is_a_visible_setting_that_reaches_the_strategy(tmp_path):
    args = ["--config", DIGITS, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
            "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    assert cli_main(args, run=False).trainer.strategy._timeout == timedelta(seconds=DEFAULT_DDP_TIMEOUT)
    assert cli_main([*args, "--ddp_timeout=42"], run=False).trainer.strategy._timeout == timedelta(seconds=42)
    assert DEFAULT_DDP_TIMEOUT < 1800  # shorter than torch's 30 minutes


# ------------------------------------------------------------------------------ mid-epoch resume
def test_resumable_loader_draws_exactly_what_the_shuffled_loader_draws():
    from torch.utils.data import DataLoader, TensorDataset

    from qsd_lightning.data.resumable import ResumableDataLoader, ResumableRandomSampler

    data = TensorDataset(torch.arange(100.0))
    seen = []
    for make in (lambda: DataLoader(data, batch_size=7, shuffle=True),
                 lambda: ResumableDataLoader(data, batch_size=7, sampler=ResumableRandomSampler(100))):
        torch.manual_seed(3)
        loader = make()
        seen.append(([b[0].tolist() for _ in range(3) for b in loader], torch.rand(1).item()))
    assert seen[0] == seen[1]


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path):
    """A checkpoint written in the middle of an epoch (every_n_train_steps) resumes the rest of
    that epoch's batches and random draws: the final metrics equal an uninterrupted run's."""
    steps = ["--trainer.callbacks+=qsd_lightning.callbacks.ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=5",
             "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.save_last=true", "--trainer.callbacks.dirpath=steps"]
    common = ["fit", "--config", DIGITS, "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=3",
              "--model.regulariser=qsd", "--trainer.max_epochs=3", *steps]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    cli_subprocess(common, straight)
    killed = cli_subprocess([*common, "--trainer.callbacks+=tests.helpers.KillAtStep", "--trainer.callbacks.step=15"],
                            broken, check=False)
    assert killed.returncode == -signal.SIGKILL
    mid = load_checkpoint(broken / "steps" / "last.ckpt")
    assert mid["global_step"] == 15 and mid["rng_mid_epoch"]  # 3 of the 6 batches of epoch 2
    resumed = cli_subprocess([*common, "--ckpt_path=steps/last.ckpt"], broken)
    assert "not resumable" not in resumed.stderr
    assert final_val_loss(straight)[-1] == final_val_loss(broken)[-1]
