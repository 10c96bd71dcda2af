#!/usr/bin/env python
"""Plot the quantal-release and test-time sparsity series of one run from its CSV log.

    python -m qsd_lightning fit --config configs/mlp_digits.yaml --model.regulariser qsd
    python scripts/plot_run.py runs/mlp_digits/csv/version_0/metrics.csv --out docs/figures/digits_qsd_run.png

Reads the CSVLogger's metrics.csv (the same series go to W&B); writes one PNG with three panels:
release statistics per QSD layer over training steps, validation sparsity per hidden layer
over epochs, and validation accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qsd_lightning.compare import metrics_csv  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path, help="metrics.csv written by the CSVLogger")
    parser.add_argument("--out", type=Path, default=Path("run.png"))
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        parser.error(f"{args.csv} does not exist")
    series = metrics_csv.series(args.csv)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))

    ax = axes[0]
    for key in sorted(k for k in series if k.startswith("quantal/") and k.endswith(("/p_cv", "/c_cv", "/multiplier_var"))):
        steps, values = zip(*series[key])
        ax.plot(steps, values, label=key.removeprefix("quantal/"))
    ax.set(title="quantal release (training)", xlabel="step")
    ax.legend(fontsize=7)

    ax = axes[1]
    for key in sorted(k for k in series if k.startswith("sparsity/") and k.endswith(("/population", "/hoyer"))):
        steps, values = zip(*series[key])
        ax.plot(steps, values, marker="o", ms=3, label=key.removeprefix("sparsity/"))
    ax.set(title="test-time sparsity (validation, masks off)", xlabel="step", ylim=(0, 1))
    ax.legend(fontsize=7)

    ax = axes[2]
    for key in ("val/acc", "train/acc"):
        if key in series:
            steps, values = zip(*series[key])
            ax.plot(steps, values, marker="o", ms=3, label=key)
    ax.set(title="accuracy", xlabel="step")
    ax.legend(fontsize=7)

    fig.suptitle(str(args.csv))
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
