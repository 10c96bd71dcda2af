"""The local executor: runs forked from one pre-imported process (``--start-method
forkserver``) give results bit-identical to fresh processes; a crashed or hung run takes only
itself down; runs die with the runner; GPUs are handed out one set per run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import qsd_lightning.compare as C
from qsd_lightning.compare import runner
from qsd_lightning.compare.runner import GpuSlots, local_jobs
from qsd_lightning.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "mlp_digits.yaml")
TINY = ["--override", "trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2"]
FAULT = ["--override", "trainer.callbacks+=tests._grid_faults.Fault"]


def _argv(out: Path, *extra: str, regs=("dropout", "qsd:gamma=4"), seeds=("0",)) -> list[str]:
    return ["--config", DIGITS, "-r", *regs, "--seeds", *seeds, *TINY, "--out", str(out), *extra]


def _pid_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_forkserver_is_the_default_on_linux(tmp_path):
    grid = C.parse_args(_argv(tmp_path))
    assert grid.start_method == ("forkserver" if sys.platform.startswith("linux") else grid.start_method)
    assert C.parse_args(_argv(tmp_path, "--start-method", "fresh")).start_method == "fresh"


@pytest.mark.slow
def test_forked_runs_are_bit_identical_to_fresh_processes(tmp_path, monkeypatch):
    """Same metrics.csv byte for byte, same test metrics, epochs and backends in result.json."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    results = {}
    for method in ("forkserver", "fresh"):
        out = tmp_path / method
        assert C.main(_argv(out, "--start-method", method)) == 0
        results[method] = {run.dir.relative_to(out): run for run in C.plan(C.parse_args(_argv(out)))}
    assert results["forkserver"].keys() == results["fresh"].keys()
    for key, forked in results["forkserver"].items():
        fresh = results["fresh"][key]
        a = (forked.dir / "csv" / "version_0" / "metrics.csv").read_bytes()
        b = (fresh.dir / "csv" / "version_0" / "metrics.csv").read_bytes()
        assert a == b and len(a.splitlines()) > 3, key
        ra, rb = (json.loads(r.result_file.read_text()) for r in (forked, fresh))
        for field in ("test", "epochs", "backend", "metrics_sha256"):
            assert ra[field] == rb[field], (key, field)
        assert ra["test"]["test/acc"] > 0


@pytest.mark.slow
def test_a_crashed_or_hung_run_takes_only_itself_down(tmp_path, monkeypatch, capsys):
    """Seed 0 SIGKILLs itself, seed 1 hangs until --timeout kills its process group; seed 2 and
    the runs after them finish, each in a fresh fork."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("QSD_TEST_FAULT", "0:kill,1:hang")
    argv = _argv(tmp_path, *FAULT, "--timeout", "60", "--start-method", "forkserver", regs=("dropout",), seeds=("0", "1", "2"))
    assert C.main(argv) == 1
    err = capsys.readouterr().err
    assert "FAILED dropout seed 0: exit status -9" in err, err
    assert "FAILED dropout seed 1: timed out after 60 s" in err, err
    frame = C.collect(C.parse_args(argv))
    assert list(frame["status"]) == ["failed", "failed", "ok"]
    hung = tmp_path / "runs" / "dropout" / "seed1" / ".run.lock"
    assert runner.lock_holder(hung) is None if hasattr(runner, "lock_holder") else True
    from qsd_lightning.compare.locks import lock_holder

    assert lock_holder(hung) is None  # the hung run's process is gone: its lock is free


@pytest.mark.slow
def test_forked_runs_die_with_a_killed_runner(tmp_path):
    """SIGKILL the runner while a forked run hangs: the forkserver sees its runner gone and
    exits, and the run (PR_SET_PDEATHSIG) dies with it."""
    from qsd_lightning.compare.locks import lock_holder

    env = dict(os.environ, WANDB_MODE="disabled", QSD_TEST_FAULT="0:hang", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "qsd_lightning.compare", *_argv(tmp_path, *FAULT, "--start-method", "forkserver",
                                                                 regs=("dropout",))]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / "runs" / "dropout" / "seed0" / ".run.lock"
    log = tmp_path / "runs" / "dropout" / "seed0" / "log.txt"
    try:
        deadline = time.monotonic() + 120
        while not (log.is_file() and "Restoring" not in log.read_text(errors="replace") and lock_holder(lock)
                   and (lock.parent / "csv").exists()):
            assert time.monotonic() < deadline, "the run did not start"
            assert proc.poll() is None, "the runner exited"
            time.sleep(0.5)
        pid = int(lock_holder(lock).split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _pid_gone(pid, within=20), f"the forked run {pid} outlived its runner"
        assert lock_holder(lock) is None
    finally:
        if proc.poll() is None:
            proc.kill()


# --------------------------------------------------------------------------- GPUs and threads


def test_gpu_sets_are_disjoint_and_jobs_capped(tmp_path):
    gpus = ["0", "1", "2", "3"]
    grid = C.parse_args(_argv(tmp_path, "--jobs", "4", "--gpus-per-run", "2"))
    jobs, slots = local_jobs(grid, gpus)
    assert jobs == 2 and slots.count == 2
    with slots.take() as a, slots.take() as b:
        assert sorted(a + b) == gpus and not set(a) & set(b)
    jobs, slots = local_jobs(C.parse_args(_argv(tmp_path, "--jobs", "8")), gpus)  # default: one GPU per run
    assert jobs == 4 and slots.per_run == 1
    assert local_jobs(C.parse_args(_argv(tmp_path, "--jobs", "3")), []) == (3, None)  # no GPUs: CPU runs
    with pytest.raises(UserError, match="--gpus-per-run 3: this machine shows 2 GPU"):
        local_jobs(C.parse_args(_argv(tmp_path, "--gpus-per-run", "3")), ["0", "1"])


def test_each_run_sees_its_own_gpus_and_a_share_of_the_cores(tmp_path, monkeypatch):
    """Two runs at once on a 2-GPU machine: each sees one GPU (CUDA_VISIBLE_DEVICES), not the
    other's, and cores / 2 threads."""
    monkeypatch.setattr(runner, "visible_gpus", lambda: ["0", "1"])
    seen: list[dict] = []
    both_started = threading.Barrier(2, timeout=30)

    def launch(grid, run, log, env, jobs):
        seen.append(env)
        both_started.wait()  # both runs hold their GPU at the same time
        return subprocess.CompletedProcess([], 1)

    monkeypatch.setattr(runner, "_launch", launch)
    grid = C.parse_args(_argv(tmp_path, "--jobs", "4", "--seeds", "0", "1"))
    failures = runner.run_grid(grid)
    assert len(failures) == 4 and len(seen) == 4
    assert {e["CUDA_VISIBLE_DEVICES"] for e in seen[:2]} == {"0", "1"}
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert all(e["OMP_NUM_THREADS"] == threads for e in seen)

    seen.clear()
    monkeypatch.setattr(runner, "_launch", lambda grid, run, log, env, jobs: seen.append(env) or subprocess.CompletedProcess([], 1))
    runner.run_grid(C.parse_args(_argv(tmp_path, "--gpus-per-run", "0")))
    assert seen and all(e["CUDA_VISIBLE_DEVICES"] == "" for e in seen)  # CPU runs on a GPU machine see no GPU
