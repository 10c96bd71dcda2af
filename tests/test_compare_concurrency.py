"""``python -m qsd_lightning.compare`` with more than one process on one ``--out``: the grid lock,
the run locks, runs that die with their runner, logs checked before a run counts, checkpoints
read for the report without running code, and one-line errors for a bad ``--out``.

The real-subprocess tests keep a run in training with :class:`Hold` (a callback the runs load
from this module) while the file named by ``$QSD_TEST_HOLD`` exists.
"""

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
import torch
from lightning.pytorch.callbacks import Callback

from qsd_lightning import compare as C
from qsd_lightning.compare import runner

pytestmark = pytest.mark.slow  # subprocesses and process groups

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "mlp_digits.yaml")
TINY = ["trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
HOLD_ENV = "QSD_TEST_HOLD"

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file() or os.name != "posix", reason="needs Linux /proc")

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None



@pytest.fixture(autouse=True)
def _fresh_start_method(monkeypatch):
    """These tests stand in for a run's process (``runner.run_child``, ``runner.run_command``),
    which only ``--start-method fresh`` goes through: make it the default here. The forkserver
    path is tested in test_compare_workers.py."""
    from qsd_lightning.compare import spec

    monkeypatch.setattr(spec, "_can_forkserver", lambda: False)

class Hold(Callback):
    """Keeps the run at the start of training while ``$QSD_TEST_HOLD`` exists (at most 120 s);
    touches ``$QSD_TEST_HOLD.<pid>`` when it gets there."""

    def on_train_start(self, trainer, pl_module):
        hold = os.environ.get(HOLD_ENV)
        if not hold:
            return
        Path(f"{hold}.{os.getpid()}").touch()
        deadline = time.monotonic() + 120
        while os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.1)


# --------------------------------------------------------------------------- helpers


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _wait_for(predicate, seconds: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _held(hold: Path) -> list[int]:
    """Pids of the runs waiting in :class:`Hold`."""
    return [int(p.name.rpartition(".")[2]) for p in hold.parent.glob(hold.name + ".*")]


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _runner_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qsd_lightning.compare", "--config", DIGITS, "-r", "none", *extra,
            "--override", *TINY, f"trainer.callbacks+={__name__}.Hold", "--out", str(out)]


def _env(hold: Path) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONWARNINGS="ignore", **{HOLD_ENV: str(hold)})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hold(tmp_path):
    path = tmp_path / "hold"
    path.touch()
    yield path
    path.unlink(missing_ok=True)  # let any held run go
    _kill(pid for pid in _held(path) if _alive(pid))


def _hold_lock(path: Path, text: str) -> int:
    """Hold ``path``'s lock as another process would (its own open file description)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, text.encode())
    return fd


def _release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


# --------------------------------------------------------------------------- two runners, one folder


@needs_proc
def test_second_runner_on_the_same_out_refuses_and_touches_nothing(tmp_path, hold):
    out = tmp_path / "grid"
    env = _env(hold)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(_runner_cmd(out, "--seeds", "0"), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _wait_for(lambda: _held(hold), 180), (tmp_path / "first.log").read_text()[-2000:]
        [child] = _held(hold)
        run_dir = out / "runs" / "none" / "seed0"
        before = _snapshot(run_dir)
        second = subprocess.run(_runner_cmd(out, "--seeds", "0"), cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
        assert second.returncode == 1, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert str(out) in lines[0] and f"pid {first.pid} " in lines[0] and "--wait" in lines[0]
        assert _alive(child) and _snapshot(run_dir) == before  # the first runner's run untouched
        assert _held(hold) == [child]  # and no second run started

        first.send_signal(signal.SIGTERM)  # stops as on Ctrl-C: its run is killed with it
        assert first.wait(timeout=60) == 130
        assert _wait_for(lambda: not _alive(child), 20), "the run outlived its runner's SIGTERM"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


@needs_proc
def test_killed_runner_takes_its_runs_with_it_and_a_rerun_completes_the_grid(tmp_path, hold):
    out = tmp_path / "grid"
    env = _env(hold)
    cmd = _runner_cmd(out, "--seeds", "0", "1", "--jobs", "2")
    with open(tmp_path / "first.log", "w") as log:
        runner = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _wait_for(lambda: len(_held(hold)) == 2, 240), (tmp_path / "first.log").read_text()[-2000:]
        children = _held(hold)
        os.kill(runner.pid, signal.SIGKILL)  # the runner alone
        runner.wait(timeout=30)
        assert _wait_for(lambda: not any(_alive(pid) for pid in children), 20), "a run outlived its SIGKILLed runner"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    hold.unlink()
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    import pandas as pd

    frame = pd.read_csv(out / "results.csv")
    assert list(frame["status"]) == ["ok", "ok"]
    assert list(frame["epochs"]) == [2, 2] and frame["val/acc"].notna().all()
    grid = C.parse_args(cmd[3:])
    for run in C.plan(grid):
        result = json.loads(run.result_file.read_text())
        assert result["epochs"] == 2 and C.inspect_run(run).status == "ok"
        assert all(Path(p).resolve().is_relative_to(run.dir.resolve()) for p in (result["checkpoint"], result["metrics_csv"]))
    assert "| `none` | 2/2 |" in (out / "results.md").read_text()


def test_run_folder_held_by_another_process_is_not_deleted(tmp_path, monkeypatch, capsys):
    argv = ["--config", DIGITS, "-r", "none", "--seeds", "0", "1", "--out", str(tmp_path)]
    busy = tmp_path / "runs" / "none" / "seed1"
    busy.mkdir(parents=True)
    (busy / "log.txt").write_text("a run left over from a runner that was killed\n")
    fd = _hold_lock(busy / ".run.lock", "pid 424242 on elsewhere since then\n")
    calls: list[Path] = []

    def fake(cmd, stdout=None, stderr=None, env=None, timeout=None):
        run_dir = Path(cmd[4])
        calls.append(run_dir)
        csv = run_dir / "csv" / "version_0" / "metrics.csv"
        csv.parent.mkdir(parents=True)
        csv.write_text("epoch,step,val/acc,test/acc\n0,1,0.5,\n0,1,,0.5\n")
        (run_dir / "result.json").write_text(json.dumps({"test": {"test/acc": 0.5}, "metrics_csv": str(csv)}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner, "run_child", fake)
    try:
        assert C.main(argv) == 1
    finally:
        _release(fd)
    assert calls == [tmp_path / "runs" / "none" / "seed0"]
    assert (busy / "log.txt").read_text().startswith("a run left over")  # not deleted, not reused
    err = capsys.readouterr().err
    assert "FAILED none seed 1" in err and "in use by pid 424242 on elsewhere" in err and "not deleted" in err
    assert "| `none` | 1/2 |" in (tmp_path / "results.md").read_text()


@pytest.mark.skipif(fcntl is None, reason="POSIX locks")
def test_report_only_refuses_while_a_runner_holds_the_folder_or_waits_for_it(tmp_path, monkeypatch, capsys):
    argv = ["--config", DIGITS, "-r", "none", "--seeds", "0", "--out", str(tmp_path), "--report-only"]
    fd = _hold_lock(tmp_path / ".grid.lock", "pid 31337 on otherhost since now\n")
    try:
        assert C.main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(tmp_path) in err[0] and "pid 31337 on otherhost" in err[0]
        assert not (tmp_path / "results.md").exists()

        timer = threading.Timer(1.0, _release, [fd])
        timer.start()
        fd = None
        assert C.main([*argv, "--wait"]) == 0
        timer.join()
        assert "waiting for it to finish" in capsys.readouterr().err
        assert (tmp_path / "results.md").is_file()
        assert "--wait" not in (tmp_path / "results.md").read_text()  # not part of the grid's command
    finally:
        if fd is not None:
            _release(fd)


# --------------------------------------------------------------------------- incomplete logs


def _in_process(cmd, stdout=None, stderr=None, env=None, timeout=None):
    """Run the ``_run`` worker in this process (saves the interpreter start-up)."""
    assert cmd[1:4] == ["-m", "qsd_lightning.compare", "_run"]
    return subprocess.CompletedProcess(cmd, C.main(cmd[3:]))


def test_truncated_metrics_csv_is_not_counted_ok_and_is_run_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "run_child", _in_process)
    argv = ["--config", DIGITS, "-r", "none", "--seeds", "0", "--override", *TINY, "--out", str(tmp_path)]
    assert C.main(argv) == 0
    grid = C.parse_args(argv)
    [run] = C.plan(grid)
    csv = run.dir / "csv" / "version_0" / "metrics.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:2]) + "\n")  # another writer cut it to the first epoch

    frame = C.collect(grid)
    assert list(frame["status"]) == ["incomplete"] and "metrics.csv" in frame["problem"][0]
    C.write_report(frame, grid)
    assert "- `none` seed 0: incomplete:" in (tmp_path / "results.md").read_text()

    capsys.readouterr()
    assert C.main(argv) == 0  # run again, not skipped
    assert "running it again" in capsys.readouterr().err
    frame = C.collect(grid)
    assert list(frame["status"]) == ["ok"] and list(frame["epochs"]) == [2] and frame["val/acc"].notna().all()


@pytest.mark.parametrize("keep", [2, 3], ids=["first-epoch-only", "no-test-row"])
def test_result_json_without_checksum_needs_every_epoch_and_the_test_row(tmp_path, keep):
    """A result.json written before the checksum: the CSV must match its epoch count and hold the test row."""
    grid = C.parse_args(["--config", DIGITS, "-r", "none", "--seeds", "0", "--out", str(tmp_path)])
    [run] = C.plan(grid)
    csv = run.dir / "csv" / "version_0" / "metrics.csv"
    csv.parent.mkdir(parents=True)
    full = ["epoch,step,val/acc,test/acc", "0,1,0.5,", "1,3,0.6,", "1,3,,0.55"]
    (run.dir / "result.json").write_text(json.dumps({"test": {"test/acc": 0.55}, "metrics_csv": str(csv), "epochs": 2}))
    csv.write_text("\n".join(full) + "\n")
    assert C.collect(grid).iloc[0]["status"] == "ok"
    csv.write_text("\n".join(full[:keep]) + "\n")
    state = C.collect(grid).iloc[0]
    assert state["status"] == "incomplete" and str(csv) in state["problem"]


# --------------------------------------------------------------------------- checkpoints in the report


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_report_never_runs_code_from_a_checkpoint(tmp_path, capsys):
    argv = ["--config", DIGITS, "-r", "none", "--seeds", "0", "1", "--out", str(tmp_path)]
    marker = tmp_path / "MARKER"
    grid = C.parse_args(argv)
    for run in C.plan(grid):
        csv = run.dir / "csv" / "version_0" / "metrics.csv"
        csv.parent.mkdir(parents=True)
        csv.write_text("epoch,step,val/acc,test/acc\n0,1,0.5,\n0,1,,0.5\n")
        ckpt = run.dir / "best.ckpt"
        state = {"state_dict": {"net.output.weight": torch.randn(4, 3), "net.output.bias": torch.randn(4)}}
        if run.seed == 1:
            state["payload"] = _RunsCode(marker)  # runs `touch MARKER` when unpickled
        torch.save(state, ckpt)
        (run.dir / "result.json").write_text(json.dumps({"test": {"test/acc": 0.5}, "metrics_csv": str(csv), "checkpoint": str(ckpt)}))
    evil = C.plan(grid)[1].dir / "best.ckpt"

    assert C.main([*argv, "--report-only"]) == 0
    assert not marker.exists(), "the report ran code from a checkpoint"
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(err) == 1 and str(evil) in err[0] and "refusing to load checkpoint" in err[0]
    md = (tmp_path / "results.md").read_text()
    assert "## Checkpoints not read" in md and str(evil) in md.split("## Checkpoints not read")[1]
    assert (tmp_path / "weights.png").is_file()  # the other run's checkpoint is still plotted
    assert "| `none` | 2/2 |" in md  # the run's metrics still count


# --------------------------------------------------------------------------- timeouts and one-line errors


@needs_proc
def test_timeout_kills_the_run_and_what_it_started(tmp_path, monkeypatch):
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    monkeypatch.setattr(runner, "run_command", lambda grid, run: [sys.executable, "-c", script])
    grid = C.parse_args(["--config", DIGITS, "-r", "none", "--timeout", "5", "--out", str(tmp_path)])
    [run] = C.plan(grid)
    try:
        _, ok, message = runner.execute(grid, run)
        assert not ok and message.startswith("timed out after 5 s")
        grandchild = int(pid_file.read_text())
        assert _wait_for(lambda: not _alive(grandchild), 10), "the run's own subprocess outlived the timeout"
    finally:
        if pid_file.is_file():
            _kill([int(pid_file.read_text())])


def test_bad_config_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        C.main(["--config", str(tmp_path / "no.yaml"), "-r", "none", "--out", str(tmp_path / "out")])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no such file" in lines[0] and "no.yaml" in lines[0]


def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    if Path("/sys/kernel").is_dir():
        return Path("/sys/kernel/qsd-compare-test")  # sysfs: not writable even by root
    pytest.skip("no folder this user cannot write to")


@pytest.mark.parametrize("kind", ["a file", "not writable", "below a file"])
def test_unusable_out_is_one_line(tmp_path, capsys, kind):
    if kind == "a file":
        out = tmp_path / "out"
        out.write_text("not a folder")
    elif kind == "below a file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out"
    else:
        out = _unwritable(tmp_path)
    assert C.main(["--config", DIGITS, "-r", "none", "--out", str(out)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --out {out}:"), lines
