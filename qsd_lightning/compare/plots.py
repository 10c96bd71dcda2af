"""The report's figures: the test metric per regulariser (seeds as points), validation curves
(mean +- sd over seeds), sparsity per layer, and histograms of the tested checkpoints' weights
(read without running code in them)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ..errors import CheckpointError
from .collect import primary_metric, validation_curves
from .report import SPARSITY_MEASURES, _layers, metric_slug
from .spec import GridArgs

__all__ = ["plot"]


def _save(fig, path: Path, plt, dpi: int = 120) -> Path:
    """Lay out, write and close one figure; its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

def _test_metric_figure(frame, ok, grid: GridArgs, labels: list[str], colors: dict, rng, plt) -> Path | None:
    """The primary test metric per regulariser: seeds as points, mean +- sd as a bar."""
    out = grid.out
    metric, metric_desc, _ = primary_metric(frame)
    if metric in ok.columns:
        fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 1.3 * len(labels)), 4.2))
        for i, label in enumerate(labels):
            v = ok[ok["regulariser"] == label][metric].dropna().to_numpy()
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, color=colors[label], alpha=0.8, zorder=3)
            if len(v):
                ax.errorbar(i + 0.28, v.mean(), yerr=v.std(ddof=1) if len(v) > 1 else 0, fmt="_", color="k", capsize=4, ms=14)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(metric_desc)
        ax.set_title(f"{grid.config.stem}: {metric_desc}\nseeds as points, bar = mean ± sd", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        return _save(fig, out / f"{metric_slug(metric)}.png", plt, dpi=120)
    return None


def _validation_figure(frame, curves, ok, grid: GridArgs, labels: list[str], colors: dict, rng, plt) -> Path | None:
    """Validation curves per regulariser, mean +- sd over seeds."""
    out = grid.out
    curve_desc, curves = validation_curves(frame) if curves is None else curves
    if any(label in curves for label in labels):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for label in labels:
            if label not in curves:
                continue
            c = curves[label].sort_index()
            mean, sd = c.mean(axis=1), c.std(axis=1, ddof=1).fillna(0.0)  # 0 where one seed reached the epoch
            ax.plot(c.index, mean, marker="o", ms=3, color=colors[label], label=f"{label} (n={c.shape[1]})")
            ax.fill_between(c.index, mean - sd, mean + sd, color=colors[label], alpha=0.15, lw=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(curve_desc)
        if curve_desc.endswith("perplexity"):
            ax.set_yscale("log")
        ax.set_title(f"{grid.config.stem}: {curve_desc} per epoch (mean ± sd over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        return _save(fig, out / "validation.png", plt, dpi=120)
    return None


def _sparsity_figure(ok, grid: GridArgs, labels: list[str], colors: dict, rng, plt) -> Path | None:
    """Final validation sparsity per layer and measure (bars: mean, points: seeds)."""
    import numpy as np

    out = grid.out
    layers, measures = _layers(ok, "sparsity/")
    measures = [m for m in SPARSITY_MEASURES if m in measures]
    if layers and measures:
        fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.8), squeeze=False)
        width = 0.8 / len(labels)
        for ax, measure in zip(axes[0], measures):
            for j, label in enumerate(labels):
                g = ok[ok["regulariser"] == label]
                for i, layer in enumerate(layers):
                    v = g.get(f"sparsity/{layer}/{measure}")
                    v = v.dropna().to_numpy() if v is not None else np.array([])
                    x = i - 0.4 + width * (j + 0.5)
                    if len(v):
                        ax.bar(x, v.mean(), width * 0.9, color=colors[label], alpha=0.45, label=label if i == 0 else None)
                        ax.scatter(x + rng.uniform(-width / 5, width / 5, len(v)), v, color=colors[label], s=10, zorder=3)
            ax.set_xticks(range(len(layers)), layers, fontsize=8)
            ax.set_title(measure)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel("final validation sparsity")
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{grid.config.stem}: sparsity of hidden codes per layer (bars: mean, points: seeds)", fontsize=9)
        return _save(fig, out / "sparsity.png", plt, dpi=120)
    return None


def _weights_figure(ok, grid: GridArgs, labels: list[str], colors: dict, rng, plt, notes) -> Path | None:
    """Histograms of the tested checkpoints' weights and biases, loaded without running code."""
    import numpy as np

    out = grid.out
    tensors: dict[str, dict[str, list]] = {}
    import torch

    from ..checkpointing import load_checkpoint

    for _, row in ok.iterrows():
        ckpt = row.get("checkpoint")
        if not isinstance(ckpt, str) or not Path(ckpt).is_file():
            continue
        try:
            state = load_checkpoint(ckpt).get("state_dict")
        except CheckpointError as err:
            left_out = f"seed {row['seed']}: left out of weights.png: {err}"
            note = f"`{row['regulariser']}` {left_out}"
            print(f"warning: {row['regulariser']} {left_out}", file=sys.stderr)
            if notes is not None:
                notes.append(note)
            continue
        for key, value in (state if isinstance(state, dict) else {}).items():
            if key.endswith((".weight", ".bias")) and torch.is_tensor(value) and value.is_floating_point() and value.numel() > 1:
                tensors.setdefault(key, {}).setdefault(row["regulariser"], []).append(value.flatten().double().numpy())
    if tensors:
        keys = list(tensors)
        cols = min(4, len(keys))
        rows_n = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 2.8 * rows_n), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            pooled = np.concatenate([np.concatenate(v) for v in tensors[key].values()])
            lo, hi = np.percentile(pooled, [0.5, 99.5])
            bins = np.linspace(lo, hi, 60) if hi > lo else 30
            for label in labels:
                if label in tensors[key]:
                    ax.hist(np.concatenate(tensors[key][label]), bins=bins, histtype="step", density=True, color=colors[label], label=label)
            ax.set_title(key.removeprefix("net."), fontsize=8)
            ax.tick_params(labelsize=7)
        spare = list(axes.flat)[len(keys):]
        for ax in spare:
            ax.axis("off")
        handles, names = axes.flat[0].get_legend_handles_labels()
        if spare:
            spare[-1].legend(handles, names, fontsize=8, loc="center", frameon=False)
        else:
            fig.legend(handles, names, fontsize=7, loc="lower center", ncol=min(4, len(names)))
        fig.suptitle(f"{grid.config.stem}: weights and biases of the tested checkpoints (all seeds pooled, central 99%)", fontsize=9)
        return _save(fig, out / "weights.png", plt, dpi=110)
    return None


def plot(frame, grid: GridArgs, curves: tuple[str, dict] | None = None, notes: list[str] | None = None) -> list[Path]:
    """Test metric per regulariser (seeds as points), validation curves, sparsity per layer, weight histograms.

    The histograms read each run's tested checkpoint without running code in it
    (:func:`~qsd_lightning.checkpointing.load_checkpoint`); one it refuses is left out, named
    in one line on stderr and appended to ``notes``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = frame[frame["status"] == "ok"]
    labels = [s.label for s in grid.regularisers if (ok["regulariser"] == s.label).any()]
    written: list[Path] = []
    if not labels:
        return written
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    rng = np.random.default_rng(0)

    args = (ok, grid, labels, colors, rng, plt)
    figures = [
        _test_metric_figure(frame, *args),
        _validation_figure(frame, curves, *args),
        _sparsity_figure(*args),
        _weights_figure(*args, notes),
    ]
    written.extend(f for f in figures if f is not None)
    return written
