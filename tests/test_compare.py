"""``python -m qsd_lightning.compare``: arguments, statistics, log collection, resuming, a tiny grid,
and the W&B sweep files in configs/sweeps (every parameter must be accepted by the CLI)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qsd_lightning import compare as C
from qsd_lightning.compare import metrics_csv, runner

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "mlp_digits.yaml")
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


# --------------------------------------------------------------------------- arguments



@pytest.fixture(autouse=True)
def _fresh_start_method(monkeypatch):
    """These tests stand in for a run's process (``runner.run_child``, ``runner.run_command``),
    which only ``--start-method fresh`` goes through: make it the default here. The forkserver
    path is tested in test_compare_workers.py."""
    from qsd_lightning.compare import spec

    monkeypatch.setattr(spec, "_can_forkserver", lambda: False)

def test_parse_args_builds_the_grid(tmp_path):
    grid = C.parse_args([
        "--config", DIGITS, "--regulariser", "dropout", "--regulariser", "qsd:gamma=4,mode=coupled",
        "qsd:gamma=16,mode=release,rate=0.5", "-r", "none", "--seeds", "0", "1", "2",
        "--override", "trainer.max_epochs=10", "--override", "data.batch_size=32", "--out", str(tmp_path),
    ])
    assert [s.label for s in grid.regularisers] == [
        "dropout", "qsd:gamma=4,mode=coupled", "qsd:gamma=16,mode=release,rate=0.5", "none"
    ]
    assert grid.seeds == [0, 1, 2]
    assert grid.overrides == ["--trainer.max_epochs=10", "--data.batch_size=32"]
    assert grid.baseline == "dropout"
    qsd = grid.regularisers[1]
    assert qsd.cli_args() == ["--model.regulariser", "qsd", "--model.regulariser.gamma=4", "--model.regulariser.mode=coupled"]
    assert qsd.slug == "qsd_gamma-4_mode-coupled"
    runs = C.plan(grid)
    assert len(runs) == 12 and len({r.dir for r in runs}) == 12
    args = C.run_cli_args(grid, runs[4])
    assert "--seed_everything=1" in args and "--trainer.max_epochs=10" in args
    loggers = json.loads(next(a for a in args if a.startswith("--trainer.logger="))
                         .split("=", 1)[1])
    assert loggers[0]["class_path"].endswith("CSVLogger")
    assert all(lg["init_args"]["save_dir"] == str(runs[4].dir.resolve()) for lg in loggers)


def test_list_valued_regulariser_arguments():
    spec = C.parse_regulariser("qsd:locked_dims=[1],gamma=2")
    assert spec.args == (("locked_dims", "[1]"), ("gamma", "2"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "no/such.yaml", "-r", "dropout"], "no such file"),
        (["--config", DIGITS, "-r", "qsdd"], "unknown regulariser 'qsdd'"),
        (["--config", DIGITS, "-r", "qsd:gama=4"], "takes no argument 'gama'"),
        (["--config", DIGITS, "-r", "qsd:rate=1.5"], "rate must be in [0, 1)"),
        (["--config", DIGITS, "-r", "qsd:mode=sometimes"], "unknown QSD mode"),
        (["--config", DIGITS, "-r", "qsd:gamma"], "expected ARG=VALUE"),
        (["--config", DIGITS, "-r", "dropout", "dropout"], "given twice"),
        (["--config", DIGITS, "-r", "dropout", "--override", "trainer.max_epochs"], "expected KEY=VALUE"),
    ],
)
def test_bad_arguments_stop_with_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        C.parse_args([*argv, "--out", str(tmp_path)])
    assert err.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- statistics


def test_paired_t_test_on_known_numbers():
    # scipy.stats.ttest_rel([.1, .3, .2, .5, .4], [.2, .2, .4, .6, .6]): t = -1.8257418583505542, p = 0.14192744777405542
    r = C.paired_t_test([0.1, 0.3, 0.2, 0.5, 0.4], [0.2, 0.2, 0.4, 0.6, 0.6])
    assert r.n == 5 and r.df == 4
    assert r.mean_diff == pytest.approx(-0.1)
    assert r.t == pytest.approx(-1.8257418583505542, rel=1e-10)
    assert r.p == pytest.approx(0.14192744777405542, rel=1e-9)
    # signs of d = (-.1, .1, -.2, -.1, -.2): |sum| >= .5 for the observed pattern and its mirror
    assert r.p_sign_flip == pytest.approx(sum(
        abs(sum(s * x for s, x in zip(signs, [-0.1, 0.1, -0.2, -0.1, -0.2]))) >= 0.5 - 1e-9
        for signs in __import__("itertools").product((1, -1), repeat=5)
    ) / 32)


@pytest.mark.parametrize("t, df, p", [(2.0, 4, 0.11611652351681556), (0.5, 1, 0.7048327646991335), (-3.2, 9, 0.010831302589901321), (10.0, 2, 0.00985245702332569)])
def test_student_t_two_sided_p(t, df, p):
    assert C.student_t_sf(t, df) == pytest.approx(p, rel=1e-9)


def test_degenerate_paired_tests():
    same = C.paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.t == 0 and same.p == 1.0 and same.p_sign_flip == 1.0
    shifted = C.paired_t_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert math.isinf(shifted.t) and shifted.p == 0.0 and shifted.p_sign_flip == pytest.approx(2 / 8)
    one = C.paired_t_test([1.0], [2.0])
    assert one.n == 1 and math.isnan(one.t)
    with pytest.raises(ValueError):
        C.paired_t_test([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- collection

SYNTHETIC_CSV = """epoch,step,train/loss_step,val/acc,val/loss,sparsity/hidden.0.act/population,sparsity/hidden.0.act/hoyer,weights/output.weight/mean,weights/output.weight/std,test/acc,test/loss
0,9,0.5,,,,,,,,
0,16,,0.90,0.40,0.50,0.45,0.01,0.10,,
1,33,,0.95,0.20,0.60,0.55,0.02,0.20,,
2,50,,0.93,0.25,0.65,0.58,0.03,0.30,,
2,51,,,,0.70,0.61,,,0.94,0.22
"""


def test_read_validation_curve_takes_the_last_value_per_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/ppl,test/ppl\n0,9,5.0,,\n0,9,,300.0,\n1,19,,250.0,\n1,19,,240.0,\n1,19,,,260.0\n")
    curve = metrics_csv.validation_curve(path, "val/ppl")
    assert curve.to_dict() == {0: 300.0, 1: 240.0}
    assert metrics_csv.validation_curve(path, "val/acc").empty


def test_read_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(SYNTHETIC_CSV)
    m = metrics_csv.summarise(path)
    assert m["test/acc"] == pytest.approx(0.94) and m["test/loss"] == pytest.approx(0.22)
    assert m["test_sparsity/hidden.0.act/population"] == pytest.approx(0.70)  # measured at test time
    assert m["sparsity/hidden.0.act/population"] == pytest.approx(0.65)  # final validation, not the test row
    assert m["sparsity/hidden.0.act/hoyer"] == pytest.approx(0.58)
    assert m["weights/output.weight/std"] == pytest.approx(0.30)
    assert m["val/acc"] == pytest.approx(0.93) and m["best_val/acc"] == pytest.approx(0.95)
    assert m["best_val/loss"] == pytest.approx(0.20)
    assert m["epochs"] == 3


def test_metrics_csv_series_values_and_newest(tmp_path):
    """The one metrics.csv reader: series over steps (scripts/plot_run.py), a column's values, the newest log."""
    old = tmp_path / "a" / "metrics.csv"
    old.parent.mkdir()
    old.write_text("epoch,step,val/acc\n0,1,0.1\n")
    path = tmp_path / "b" / "metrics.csv"
    path.parent.mkdir()
    path.write_text(SYNTHETIC_CSV)
    os.utime(old, (1, 1))
    assert metrics_csv.newest(tmp_path) == path
    series = metrics_csv.series(path)
    assert series["val/acc"] == [(16.0, 0.90), (33.0, 0.95), (50.0, 0.93)]
    assert series["train/loss_step"] == [(9.0, 0.5)] and "epoch" not in series and "step" not in series
    assert metrics_csv.values(path, "val/loss") == [0.40, 0.20, 0.25]
    assert metrics_csv.values(path, "no/such") == []
    assert metrics_csv.sha256(path) == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


def test_sign_flip_is_exact_with_ties():
    """scipy's permutation test enumerates every sign pattern; ties (equal |sums|) count as extreme."""
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(50):
        d = [rng.choice([-0.2, -0.1, 0.0, 0.1, 0.3]) for _ in range(rng.randint(2, 9))]
        observed = abs(sum(d))
        expected = sum(abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-9
                       for signs in itertools.product((1, -1), repeat=len(d))) / 2 ** len(d)
        assert C.sign_flip_test(d) == pytest.approx(expected), d
    assert C.sign_flip_test([0.5]) == 1.0 and math.isnan(C.sign_flip_test([]))
    with pytest.raises(ValueError):
        C.sign_flip_test([1.0] * 21)


# --------------------------------------------------------------------------- resuming and failures


def _fake_subprocess(calls, fail=()):
    """Stand-in for runner.run_child (as subprocess.run): writes a finished run (result.json + metrics.csv)."""

    def run(cmd, stdout=None, stderr=None, env=None, timeout=None):
        run_dir = Path(cmd[4])
        calls.append(run_dir)
        assert env["WANDB_MODE"] == "disabled"
        if run_dir.name in fail or run_dir.parent.name in fail:
            stdout.write("Traceback ...\nRuntimeError: boom\n")
            return subprocess.CompletedProcess(cmd, 1)
        seed = int(run_dir.name.removeprefix("seed"))
        acc = 0.9 + 0.01 * seed + (0.005 if "qsd" in run_dir.parent.name else 0.0)
        csv = run_dir / "csv" / "version_0" / "metrics.csv"
        csv.parent.mkdir(parents=True)
        csv.write_text(SYNTHETIC_CSV.replace("0.94,0.22", f"{acc},0.22"))
        (run_dir / "result.json").write_text(json.dumps({"test": {"test/acc": acc}, "metrics_csv": str(csv), "checkpoint": None, "seconds": 1.0}))
        return subprocess.CompletedProcess(cmd, 0)

    return run


def test_finished_runs_are_skipped_and_failures_reported(tmp_path, monkeypatch, capsys):
    argv = ["--config", DIGITS, "-r", "dropout", "qsd:gamma=4", "--seeds", "0", "1", "2", "--out", str(tmp_path)]
    calls: list[Path] = []
    monkeypatch.setattr(runner, "run_child", _fake_subprocess(calls, fail={"seed2"}))
    assert C.main(argv) == 1  # two runs failed, the grid went on
    assert len(calls) == 6
    err = capsys.readouterr().err
    assert "FAILED dropout seed 2" in err and "RuntimeError: boom" in err
    frame = C.collect(C.parse_args(argv))
    assert list(frame["status"]) == ["ok", "ok", "failed"] * 2

    calls.clear()
    monkeypatch.setattr(runner, "run_child", _fake_subprocess(calls))
    assert C.main(argv) == 0
    assert sorted(p.name for p in calls) == ["seed2", "seed2"]  # only the unfinished runs ran again
    md = (tmp_path / "results.md").read_text()
    assert "| `qsd:gamma=4` | 3/3 |" in md
    row = next(line for line in md.splitlines() if line.startswith("| `qsd:gamma=4` | 3 |"))
    assert row.split(" | ")[2] == "-0.500" and row.endswith("| 0.250 |")  # error 0.5 points lower on every seed
    assert (tmp_path / "test_error.png").is_file() and (tmp_path / "sparsity.png").is_file()
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 7

    recorded = (tmp_path / "grid.json").read_text()
    assert C.main([*argv[:4], "--seeds", "0", "--out", str(tmp_path), "--report-only"]) == 0
    assert (tmp_path / "grid.json").read_text() == recorded  # a report-only view does not rewrite the record
    assert "| `dropout` | 1/1 |" in (tmp_path / "results.md").read_text()


def test_several_baselines_each_get_a_paired_table(tmp_path, monkeypatch):
    argv = ["--config", DIGITS, "-r", "dropout", "dropout:rate=0.6", "qsd:gamma=4", "--seeds", "0", "1", "2",
            "--baseline", "dropout", "dropout:rate=0.6", "--out", str(tmp_path)]
    grid = C.parse_args(argv)
    assert grid.baselines == ["dropout", "dropout:rate=0.6"] and grid.baseline == "dropout"
    monkeypatch.setattr(runner, "run_child", _fake_subprocess([]))
    assert C.main(argv) == 0
    md = (tmp_path / "results.md").read_text()
    first, second = md.split("## Paired against `dropout:rate=0.6` (same seeds)")
    assert "## Paired against `dropout` (same seeds)" in first and "| `dropout:rate=0.6` | 3 |" in first
    assert "| `dropout` | 3 |" in second and "| `qsd:gamma=4` | 3 | -0.500 |" in second
    assert "## Sparsity and weight spread paired against `dropout`" in second  # the first baseline's

@pytest.mark.parametrize("baselines, message", [(["dropout", "dropout"], "--baseline given twice"), (["none"], "not one of this grid's")])
def test_bad_baselines_stop_with_one_line(baselines, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        C.parse_args(["--config", DIGITS, "-r", "dropout", "qsd", "--baseline", *baselines, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err


def test_default_baseline_may_be_absent(tmp_path):
    assert C.parse_args(["--config", DIGITS, "-r", "none", "--out", str(tmp_path)]).baseline == "dropout"


def test_validation_table_marks_epochs_not_every_seed_reached(tmp_path, monkeypatch):
    argv = ["--config", DIGITS, "-r", "dropout", "--seeds", "0", "1", "--out", str(tmp_path)]
    monkeypatch.setattr(runner, "run_child", _fake_subprocess([]))
    assert C.main(argv) == 0
    stopped = tmp_path / "runs" / "dropout" / "seed1" / "csv" / "version_0" / "metrics.csv"
    text = stopped.read_text().splitlines()
    stopped.write_text("\n".join(line for line in text if not line.startswith("2,")) + "\n")  # seed 1 stopped after epoch 1
    frame = C.collect(C.parse_args(argv))
    desc, curves = C.validation_curves(frame)
    assert curves["dropout"].shape == (3, 2)
    C.write_report(frame, C.parse_args(argv))
    md = (tmp_path / "results.md").read_text()
    assert "| 2 | " in md and "(n=1) |" in md.split("| 2 | ")[1].splitlines()[0]
    assert "| 0 | " in md and "(n=" not in md.split("| 0 | ")[1].splitlines()[0]


# --------------------------------------------------------------------------- a tiny real grid


def _in_process(cmd, stdout=None, stderr=None, env=None, timeout=None):
    """Run the ``_run`` worker in this process (saves the interpreter start-up per run)."""
    assert cmd[1:4] == ["-m", "qsd_lightning.compare", "_run"]
    return subprocess.CompletedProcess(cmd, C.main(cmd[3:]))


def test_tiny_real_grid_on_digits(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_child", _in_process)
    out = tmp_path / "grid"
    argv = [
        "--config", DIGITS, "-r", "dropout", "qsd:gamma=4,mode=coupled", "--seeds", "0", "1",
        "--override", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "--out", str(out),
    ]
    assert C.main(argv) == 0
    for name in ("results.csv", "results.md", "test_error.png", "validation.png", "sparsity.png", "weights.png"):
        assert (out / name).stat().st_size > 0, name
    import pandas as pd

    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 4 and set(frame["status"]) == {"ok"}
    assert frame["test/acc"].between(0, 1).all()
    assert any(c.startswith("sparsity/") and c.endswith("/population") for c in frame.columns)
    assert any(c.startswith("weights/") and c.endswith("/std") for c in frame.columns)
    md = (out / "results.md").read_text()
    assert "python -m qsd_lightning.compare --config" in md and "Paired against `dropout`" in md
    assert "## Validation error (%) per epoch" in md and "![validation.png](validation.png)" in md
    epoch_row = next(line for line in md.splitlines() if line.startswith("| 0 | "))
    desc, curves = C.validation_curves(frame)  # results.csv keeps each run's metrics.csv path
    assert desc == "validation error (%)" and set(curves) == {"dropout", "qsd:gamma=4,mode=coupled"}
    assert float(epoch_row.split(" | ")[1]) == pytest.approx(curves["dropout"].loc[0].mean(), abs=1e-3)
    for run in C.plan(C.parse_args(argv)):
        assert (run.dir / "csv" / "version_0" / "metrics.csv").is_file()


def test_runs_record_their_backend_and_the_report_refuses_to_pool_different_ones(tmp_path, monkeypatch, capsys):
    """Each result.json records the fast-path backend; a grid whose runs used different backends
    (a seed would not mean the same masks) is refused in one line, naming the runs."""
    import json

    from qsd_lightning.regularisers.backend import describe

    monkeypatch.setattr(runner, "run_child", _in_process)
    out = tmp_path / "grid"
    argv = ["--config", DIGITS, "-r", "dropout", "--seeds", "0", "1", "--override", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "--out", str(out)]
    assert C.main(argv) == 0
    runs = list(C.plan(C.parse_args(argv)))
    results = [json.loads((run.dir / "result.json").read_text()) for run in runs]
    assert all(r["backend"] == describe() for r in results)
    odd = dict(results[1], backend=dict(results[1]["backend"], cpu="torch", stream="numpy"))
    (runs[1].dir / "result.json").write_text(json.dumps(odd))
    capsys.readouterr()
    assert C.main([*argv, "--report-only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different fast-path backends" in err[0] and "dropout seed 1" in err[0], err


@pytest.mark.skipif(not os.environ.get("QSD_SLOW_TESTS"), reason="real subprocesses (~30 s each); set QSD_SLOW_TESTS=1")
def test_tiny_grid_in_subprocesses(tmp_path):
    cmd = [sys.executable, "-m", "qsd_lightning.compare", "--config", DIGITS, "-r", "none", "--seeds", "0",
           "--override", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "--out", str(tmp_path)]
    assert subprocess.run(cmd, cwd=REPO).returncode == 0
    assert (tmp_path / "results.md").is_file()


# --------------------------------------------------------------------------- W&B sweep files


def _sweep_args(sweep: dict, pick: int) -> list[str]:
    """The CLI arguments the agent would pass, with each parameter's ``pick``-th value."""
    args: list[str] = []
    for name, spec in sweep["parameters"].items():
        values = spec["values"] if "values" in spec else [spec["value"]]
        args.append(f"--{name}={values[pick % len(values)]}")
    command = [c for c in sweep["command"] if c not in ("${env}", "python", "-m", "${program}", "qsd_lightning")]
    assert command[0] == "fit", "sweeps run `python -m qsd_lightning fit`"
    expanded: list[str] = []
    for c in command[1:]:
        expanded.extend(args if c == "${args}" else [c])
    return expanded


def test_sweep_files_exist():
    names = {p.stem for p in SWEEPS}
    assert {"mlp_digits_qsd", "mlp_mnist_qsd"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_parameter_is_accepted_by_the_cli(path, monkeypatch):
    from qsd_lightning.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(REPO)
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["name"] and sweep["metric"]["goal"] in ("minimize", "maximize")
    assert "${args}" in sweep["command"]
    if "model.regulariser.gamma" in sweep["parameters"]:
        assert sweep["parameters"]["model.regulariser.gamma"]["values"] == [1, 2, 4, 8, 16]
        assert sweep["parameters"]["model.regulariser.mode"]["values"] == ["release", "size", "independent", "coupled"]
    for pick in (0, -1):  # first and last value of every parameter
        args = _sweep_args(sweep, pick)
        cli = cli_main([*args, "--trainer.logger=false"], run=False)
        for name, spec in sweep["parameters"].items():
            values = spec["values"] if "values" in spec else [spec["value"]]
            value = values[pick % len(values)]
            node = cli.config
            for key in name.split("."):
                node = node[key] if key in node else node["init_args"][key]
            got = node.class_path.rsplit(".", 1)[-1] if hasattr(node, "class_path") else node
            assert got == value, (name, got, value)
