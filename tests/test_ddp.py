"""Two-process DDP on CPU (gloo), launched the way users launch it: ``python -m qsd_lightning``."""

from __future__ import annotations

import math

import lightning as L
import pytest

from qsd_lightning.compare import metrics_csv

from .conftest import CONFIGS
from .data_builders import build_tiny_data
from .helpers import architecture_args, cli_subprocess

pytestmark = pytest.mark.slow  # subprocesses and process groups

DIGITS = str(CONFIGS / "mlp_digits.yaml")
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]


def last_csv_row(root, key) -> float:
    return metrics_csv.values(metrics_csv.newest(root), key)[-1]


def test_ddp_validation_matches_single_process(run_cli, tmp_path):
    # val_fraction 0.1 -> 180 images, an even split over 2 ranks (no padded duplicates)
    args = ["--config", DIGITS, "--data.val_fraction=0.1", "--model.regulariser=qsd"]
    cli = run_cli("fit", *args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.logger=false")
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    single = run_cli("validate", *args, "--trainer.logger=false", f"--ckpt_path={ckpt}").trainer.callback_metrics
    cli_subprocess(["validate", *args, *DDP, f"--ckpt_path={ckpt}"], tmp_path)
    assert float(last_csv_row(tmp_path, "val/acc")) == pytest.approx(single["val/acc"].item(), abs=1e-6)
    assert float(last_csv_row(tmp_path, "val/loss")) == pytest.approx(single["val/loss"].item(), rel=1e-5)
    population = float(last_csv_row(tmp_path, "sparsity/hidden.0.act/population"))
    assert 0 < population < 1


def test_ddp_fit_mlp_two_epochs(tmp_path):
    cli_subprocess(["fit", "--config", DIGITS, *DDP, "--model.regulariser=qsd", "--trainer.max_epochs=2",
                    "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2"], tmp_path)
    assert float(last_csv_row(tmp_path, "val/acc")) > 0.1
    assert float(last_csv_row(tmp_path, "quantal/hidden.1.reg/release_fraction")) > 0


@pytest.mark.parametrize("arch", ["cnn", "lstm_lm", "transformer_lm", "sentiment"])
def test_ddp_fit_other_architectures(arch, tmp_path):
    data = build_tiny_data(tmp_path / "data")
    cli_subprocess(["fit", *architecture_args(arch, data), *DDP, "--model.regulariser=qsd", "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"], tmp_path)
    loss = last_csv_row(tmp_path, "val/loss")
    assert math.isfinite(loss)  # logged, finite


class StopRankOneAtStep(L.Callback):
    """Test helper (a callback, importable by class path): rank 1 stops itself (SIGSTOP, like a
    frozen node) at training step ``step``."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import os
        import signal

        if trainer.global_rank == 1 and trainer.global_step == self.step:
            with open(os.environ["QSD_TEST_PIDFILE"], "w") as fh:
                fh.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)


def test_lost_ddp_peer_ends_the_run_within_the_timeout(tmp_path):
    """A rank that stops makes the other fail after --ddp_timeout with one line, not hang 30 min."""
    import os
    import signal
    import subprocess
    import sys

    from .conftest import REPO

    pidfile = tmp_path / "rank1.pid"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "QSD_TEST_PIDFILE": str(pidfile)}
    cmd = [sys.executable, "-m", "qsd_lightning", "fit", "--config", DIGITS, *DDP, "--ddp_timeout=30",
           "--trainer.max_epochs=1", "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=1",
           "--trainer.logger=false", "--trainer.enable_progress_bar=false",
           "--trainer.callbacks+=tests.test_ddp.StopRankOneAtStep"]
    # Output goes to files: the stopped rank inherits the pipes and would hold them open.
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as errf:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=errf, start_new_session=True)
        try:
            proc.wait(timeout=240)
        finally:
            if pidfile.exists():  # never leave the stopped rank behind
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    err = err_path.read_text()
    assert pidfile.exists(), err[-2000:]
    assert proc.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "--ddp_timeout" in errors[0], errors[0]


@pytest.mark.parametrize("make, kind", [
    (lambda dist: dist.DistStoreError("Timed out after 11 seconds waiting for clients. 1/2 clients joined."), "not every rank joined"),
    (lambda dist: RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] "
                               "Timed out waiting 30000ms for recv operation to complete"), "stopped answering"),
    (lambda dist: RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"),
     "left the run"),
])
def test_ddp_failures_are_one_line(make, kind):
    import torch.distributed as dist

    from qsd_lightning.cli_errors import runtime_user_error

    message = runtime_user_error(make(dist))
    assert message is not None and kind in message and "--ddp_timeout" in message and "\n" not in message
    assert "unbound_buffer.cc" not in message


def test_a_bug_is_not_taken_for_a_ddp_failure():
    from qsd_lightning.cli_errors import runtime_user_error

    assert runtime_user_error(RuntimeError("shape mismatch: timed out tensor")) is None
