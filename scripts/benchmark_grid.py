#!/usr/bin/env python
"""What does a grid run cost beyond its training? Fresh processes against forked runs (issue 15).

Runs the same digits grid (``python -m qsd_lightning.compare``, regularisers x seeds) once per
start method, ``--start-method fresh`` (a new Python per run: imports torch, Lightning and this
package every time) and ``--start-method forkserver`` (each run forked from one process that
imported them once), alternating the order over ``--repeats`` rounds so that machine load hits
both alike, each in a new output folder, and prints per method:

- wall time per run: the runner's whole wall time (start of the command to its exit, the report
  included) divided by the number of runs;
- in-run seconds: the mean over runs of ``result.json``'s ``seconds`` (the run's own work: CLI
  parsing, data, fit, test);
- run overhead: the mean over runs of the time from the runner starting the run's process to its
  exit (the runner prints it, "done in N s") minus the run's in-run seconds: interpreter start
  and imports for a fresh process, the fork for a forked one;
- fixed cost per grid: the rest of the runner's wall time (its own start-up, the forkserver's
  one-time imports, the report and plots), the same for any number of runs.

Every run's ``metrics.csv`` is compared between the methods too (they must be byte-identical).

    python scripts/benchmark_grid.py                     # 3 regularisers x 4 seeds, 3 epochs
    python scripts/benchmark_grid.py --seeds 0 1 --epochs 1 --repeats 1   # quick
    python scripts/benchmark_grid.py --jobs 2            # two runs at a time (the threads split)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("fresh", "forkserver")


def run_grid(out: Path, method: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, "-m", "qsd_lightning.compare", "--config", str(REPO / "configs" / "mlp_digits.yaml"),
        "-r", *args.regularisers, "--seeds", *map(str, args.seeds), "--override", f"trainer.max_epochs={args.epochs}",
        "--jobs", str(args.jobs), "--start-method", method, "--out", str(out),
    ]
    env = dict(os.environ, WANDB_MODE="disabled")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the {method} grid failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    launched = [float(x) for x in re.findall(r"seed \d+: done in ([\d.]+) s", proc.stdout)]
    results = sorted(out.glob("runs/*/seed*/result.json"))
    seconds = [json.loads(p.read_text())["seconds"] for p in results]
    csvs = {str(p.parent.relative_to(out)): (p.parent / "csv" / "version_0" / "metrics.csv").read_bytes() for p in results}
    if len(launched) != len(results):
        raise SystemExit(f"the {method} grid reported {len(launched)} run times for {len(results)} runs")
    return {"wall": wall, "runs": len(results), "in_run": statistics.mean(seconds), "launched": statistics.mean(launched),
            "csvs": csvs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regularisers", nargs="+", default=["dropout", "qsd:gamma=4,mode=coupled", "none"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="rounds, each running both methods (order alternates)")
    args = p.parse_args(argv)

    print(f"# grid start-up benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"# digits MLP, {len(args.regularisers)} regularisers x {len(args.seeds)} seeds, {args.epochs} epoch(s), "
          f"--jobs {args.jobs}, {args.repeats} round(s)\n")
    measured: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="qsd-grid-bench-") as tmp:
        for round_ in range(args.repeats):
            order = METHODS if round_ % 2 == 0 else METHODS[::-1]
            for method in order:
                result = run_grid(Path(tmp) / f"{method}-{round_}", method, args)
                measured[method].append(result)
                print(f"round {round_ + 1} {method:10s}: {result['wall']:7.1f} s for {result['runs']} runs", flush=True)
    identical = all(r["csvs"] == measured["fresh"][0]["csvs"] for m in METHODS for r in measured[m])
    print()
    print("| start method | grid wall s | wall s / run | run: launch to exit s | in-run s | run overhead s | fixed s / grid |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for method in METHODS:
        runs = measured[method]
        wall = statistics.median(r["wall"] for r in runs)
        per_run = statistics.median(r["wall"] / r["runs"] for r in runs)
        launched = statistics.median(r["launched"] for r in runs)
        in_run = statistics.median(r["in_run"] for r in runs)
        fixed = statistics.median(r["wall"] - r["runs"] * r["launched"] / args.jobs for r in runs)
        rows[method] = per_run
        print(f"| {method} | {wall:.1f} | {per_run:.2f} | {launched:.2f} | {in_run:.2f} | {launched - in_run:.2f} | {fixed:.1f} |")
    print(f"\nforkserver grid speed-up: {rows['fresh'] / rows['forkserver']:.2f}x; metrics.csv of every run "
          f"byte-identical across methods and rounds: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
