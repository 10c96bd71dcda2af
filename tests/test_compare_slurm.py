"""``--executor slurm``: the grid as submitit jobs, run end to end through submitit's own local
executor (real pickling, real job folders, real processes), and the SLURM submission itself
through submitit's SLURM executor against stand-in ``sbatch``/``sacct`` commands that record
what they are given."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

import qsd_lightning.compare as C
from qsd_lightning.compare.slurm import submitit_parameters

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "mlp_digits.yaml")
TINY = ["--override", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2"]


def _argv(out: Path, *extra: str, seeds=("0", "1")) -> list[str]:
    return ["--config", DIGITS, "-r", "dropout", "--seeds", *seeds, *TINY, "--out", str(out), *extra]


@pytest.mark.slow
def test_a_real_grid_through_submitits_local_executor(tmp_path, monkeypatch, capsys):
    """Two runs as submitit jobs; the report is written when they are done; run again, nothing
    is submitted; a failed job is reported and only its run is submitted again next time."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("QSD_TEST_FAULT", "1:exit")
    argv = _argv(tmp_path, "--override", "trainer.callbacks+=tests._grid_faults.Fault", "--executor", "submitit-local")
    assert C.main(argv) == 1
    err = capsys.readouterr().err
    assert "FAILED dropout seed 1: job" in err and "no result.json" in err, err
    jobs = json.loads((tmp_path / "slurm" / "jobs.json").read_text())
    assert set(jobs) == {"dropout/seed0", "dropout/seed1"} and all(j["cluster"] == "local" for j in jobs.values())
    for key, record in jobs.items():  # submitit's own job folders: the pickled job, its logs, and a result if it returned
        names = {p.name for p in (tmp_path / "slurm" / record["job_id"]).iterdir()}
        assert any(n.endswith("_submitted.pkl") for n in names) and any(n.endswith("_log.err") for n in names), names
        assert any(n.endswith("_result.pkl") for n in names) == (key == "dropout/seed0"), names
    assert (tmp_path / "results.md").is_file()
    assert list(C.collect(C.parse_args(argv))["status"]) == ["ok", "failed"]
    first = jobs["dropout/seed0"]["job_id"]

    monkeypatch.delenv("QSD_TEST_FAULT")
    assert C.main(argv) == 0
    out = capsys.readouterr()
    assert "1 finished run(s) skipped" in out.out
    assert "ended" in out.err and "submitting it again" in out.err
    again = json.loads((tmp_path / "slurm" / "jobs.json").read_text())
    assert again["dropout/seed0"]["job_id"] == first and again["dropout/seed1"]["job_id"] != jobs["dropout/seed1"]["job_id"]
    assert list(C.collect(C.parse_args(argv))["status"]) == ["ok", "ok"]
    assert "| `dropout` | 2/2 |" in (tmp_path / "results.md").read_text()

    assert C.main(argv) == 0  # all finished: nothing submitted
    assert json.loads((tmp_path / "slurm" / "jobs.json").read_text()) == again


# --------------------------------------------------------------------------- the SLURM submission


def _fake_slurm(bin_dir: Path, state: str) -> Path:
    """``sbatch`` that records the script it is given and answers with job 4242, 4243, ...;
    ``sacct`` that reports every task of the asked jobs in ``state``."""
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / "sbatch_calls"
    log.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(f"""#!{sys.executable}
import pathlib, shutil, sys
log = pathlib.Path({str(log)!r})
n = len(list(log.iterdir()))
shutil.copy(sys.argv[-1], log / f"{{n}}.sh")
print(f"Submitted batch job {{4242 + n}}")
""")
    (bin_dir / "sacct").write_text(f"""#!{sys.executable}
import sys
ids = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
print("JobID|State|NodeList")
for i in ids:
    for task in range(2):
        print(f"{{i}}_{{task}}|{state}|node1")
""")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit looks for srun to detect SLURM
    for name in ("sbatch", "sacct", "srun"):
        path = bin_dir / name
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return log


def test_slurm_submission_script_and_no_second_submission_while_queued(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    calls = _fake_slurm(bin_dir, "PENDING")
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text("partition: cpu\nmem_gb: 8\nparallelism: 1\noptions:\n  qos: short\n")
    out = tmp_path / "grid"
    argv = _argv(out, "--executor", "slurm", "--slurm-config", str(cfg), "--slurm-partition", "gpu", "--slurm-time", "30",
                 "--gpus-per-run", "2", "--slurm-option", "account=proj", "--detach")
    assert C.main(argv) == 0
    scripts = sorted(calls.iterdir())
    assert len(scripts) == 1  # one job array for the grid
    script = scripts[0].read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --mem=8GB", "#SBATCH --account=proj", "#SBATCH --qos=short", "#SBATCH --array=0-1%1"):
        assert line in script, (line, script)
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert {j["job_id"] for j in jobs.values()} == {"4242_0", "4242_1"}
    assert not (out / "results.md").exists()  # detached: the report comes when the runs are done

    capsys.readouterr()
    assert C.main(argv) == 0  # the scheduler says PENDING: nothing submitted again
    assert len(list(calls.iterdir())) == 1
    assert "is PENDING; not submitted again" in capsys.readouterr().out

    _fake_slurm(bin_dir, "FAILED")  # the jobs ended without finishing their runs: submitted again
    assert C.main(argv) == 0
    assert len(list(calls.iterdir())) == 2
    assert "ended (FAILED)" in capsys.readouterr().err
    assert {j["job_id"] for j in json.loads((out / "slurm" / "jobs.json").read_text()).values()} == {"4243_0", "4243_1"}


def test_slurm_without_slurm_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    assert C.main(_argv(tmp_path / "grid", "--executor", "slurm")) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: --executor slurm: no SLURM on this machine") and "submitit-local" in lines[-1]


def test_submitit_parameters_follow_the_grid(tmp_path):
    grid = C.parse_args(_argv(tmp_path, "--executor", "slurm", "--timeout", "125", "--threads", "4"))
    params = submitit_parameters(grid, "slurm")
    assert params["timeout_min"] == 3 and params["cpus_per_task"] == 4 and params["tasks_per_node"] == 1
    assert "gpus_per_node" not in params
    local = submitit_parameters(C.parse_args(_argv(tmp_path, "--executor", "submitit-local", "--gpus-per-run", "2")), "local")
    assert local["tasks_per_node"] == 1 and local["gpus_per_node"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--slurm-partition", "gpu"], "--slurm-* and --detach are for --executor slurm"),
    (["--executor", "slurm", "--slurm-option", "account"], "expected KEY=VALUE"),
    (["--executor", "slurm", "--slurm-time", "0"], "--slurm-time must be >= 1"),
])
def test_bad_slurm_arguments_stop_with_one_line(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        C.parse_args(_argv(tmp_path, *extra))
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_bad_slurm_config_stops_with_one_line(tmp_path, capsys):
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text("partition: gpu\nnodes: 2\n")
    with pytest.raises(SystemExit):
        C.parse_args(_argv(tmp_path, "--executor", "slurm", "--slurm-config", str(cfg)))
    assert "unknown key 'nodes'" in capsys.readouterr().err


# --------------------------------------------------------------------------- one grid folder, several machines


def test_the_lock_is_the_filesystems_not_the_paths(tmp_path):
    """A runner on another machine sees the grid folder under another mount path: the lock is
    on the file, so a holder is seen through any path to it."""
    import subprocess

    from qsd_lightning.compare.locks import GRID_LOCK, lock_holder

    folder = tmp_path / "grid"
    folder.mkdir()
    other_path = tmp_path / "mnt"
    other_path.symlink_to(folder)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from qsd_lightning.compare.locks import FolderLock; "
         f"FolderLock(__import__('pathlib').Path({str(folder / GRID_LOCK)!r}), 'grid').acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"pid {holder.pid} on " in lock_holder(other_path / GRID_LOCK)
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(other_path / GRID_LOCK) is None


def test_a_filesystem_without_locks_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from qsd_lightning.compare import locks

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    assert C.main(_argv(tmp_path / "grid")) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "does not support file locks (ENOLCK" in lines[0] and "-o flock" in lines[0], lines
