"""The report: ``results.csv`` (the collected frame as it is) and ``results.md``, whose tables are
all cut from that frame and rendered by :func:`markdown_table`.

``results.md``: the command that made it, the primary test metric per regulariser (mean +- sd
over seeds), the paired tests against each baseline, sparsity and weight statistics, the
validation metric per epoch, the figures, and what did not finish or was not read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from .collect import primary_metric, validation_curves
from .plan import Run
from .spec import GridArgs
from .stats import POWER, holm, paired_t_test

__all__ = ["markdown_table", "paired_table", "write_report", "metric_slug", "SPARSITY_MEASURES"]

SPARSITY_MEASURES = ("population", "hoyer", "dead_units")


# --------------------------------------------------------------------------- formatting


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}" if (abs(x) < 1e-3 and x != 0) or abs(x) >= 1e5 else f"{x:.{digits}f}"


def _mean_sd(values, digits: int = 3) -> str:
    v = [float(x) for x in values if x == x]
    if not v:
        return "–"
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if len(v) > 1 else f"{mean:.{digits}f}"


def _code(text) -> str:
    return f"`{text}`"


def markdown_table(table: pd.DataFrame) -> list[str]:
    """A frame of cells as a markdown table: header, rule, one line per row."""
    return [
        "| " + " | ".join(map(str, table.columns)) + " |",
        "|" + "---|" * len(table.columns),
        *("| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)),
    ]


def metric_slug(metric: str) -> str:
    return metric.replace("/", "_")


def _layers(frame, prefix: str) -> tuple[list[str], list[str]]:
    """Layers (or parameters) and measures of the columns ``<prefix><layer>/<measure>``."""
    layers, measures = [], []
    for c in frame.columns:
        if c.startswith(prefix):
            layer, _, measure = c[len(prefix):].rpartition("/")
            if layer not in layers:
                layers.append(layer)
            if measure not in measures:
                measures.append(measure)
    return layers, measures


# --------------------------------------------------------------------------- tables


def paired_table(frame, grid: GridArgs, metric: str, baseline: str | None = None) -> list[dict]:
    """Each regulariser against ``baseline`` (default: the grid's first) on the seeds both finished."""
    baseline = grid.baseline if baseline is None else baseline
    ok = frame[frame["status"] == "ok"]
    if metric not in ok.columns:
        return []
    base = ok[ok["regulariser"] == baseline].set_index("seed")[metric].dropna()
    out = []
    for spec in grid.regularisers:
        if spec.label == baseline:
            continue
        other = ok[ok["regulariser"] == spec.label].set_index("seed")[metric].dropna()
        seeds = [s for s in grid.seeds if s in base.index and s in other.index]
        test = paired_t_test([other[s] for s in seeds], [base[s] for s in seeds])
        out.append({"regulariser": spec.label, "seeds": seeds, "test": test})
    return out


def _summary_table(frame, ok, labels: list[str], metric: str, metric_desc: str) -> pd.DataFrame:
    """Primary metric (and test loss, best validation accuracy, seconds) per regulariser."""
    has_loss, has_best = "test/loss" in ok.columns, "best_val/acc" in ok.columns
    rows = []
    for label in labels:
        g = ok[ok["regulariser"] == label]
        n_all = int((frame["regulariser"] == label).sum())
        row = {"regulariser": _code(label), "n": f"{len(g)}/{n_all}", metric_desc: _mean_sd(g[metric]) if metric in g else "–"}
        if has_loss:
            row["test loss"] = _mean_sd(g["test/loss"], 4)
        if has_best:
            row["best val acc"] = _mean_sd(g["best_val/acc"], 4)
        row["s / run"] = _fmt(float(g["seconds"].mean()), 0) if "seconds" in g and len(g) else "–"
        rows.append(row)
    columns = ["regulariser", "n", metric_desc] + ["test loss"] * has_loss + ["best val acc"] * has_best + ["s / run"]
    return pd.DataFrame(rows, columns=columns)


def _paired_section(frame, grid: GridArgs, metric: str, metric_desc: str, baseline: str) -> list[list[str]]:
    pairs = paired_table(frame, grid, metric, baseline)
    heading = [f"## Paired against `{baseline}` (same seeds)"]
    if not pairs or all(p["test"].n == 0 for p in pairs):
        return [heading, [f"No paired comparison: `{baseline}` has no finished runs in this grid."]]
    smallest = _fmt(2 / 2 ** max(p["test"].n for p in pairs))
    intro = (
        f"Difference = regulariser − `{baseline}` in {metric_desc} (negative: lower than the baseline), "
        "with its 95 % confidence interval. t: paired t-test, two-sided; p (Holm): the t-test's p corrected "
        f"for the {len(pairs)} comparison(s) of this table (Holm); detectable: the smallest true difference "
        f"this design detects with {POWER:.0%} power at the 5 % level, given the observed sd of the differences "
        "(a difference not found is one smaller than this, or none); sign-flip: exact two-sided permutation "
        f"test of the mean difference (with n pairs its smallest possible p is 2 / 2^n, here {smallest})."
    )
    p_holm = holm([p["test"].p for p in pairs])
    table = pd.DataFrame(
        [
            [_code(p["regulariser"]), t.n, _fmt(t.mean_diff), f"[{_fmt(t.ci_low)}, {_fmt(t.ci_high)}]", _fmt(t.sd_diff),
             _fmt(t.detectable), _fmt(t.t, 2), t.df, _fmt(t.p), _fmt(ph), _fmt(t.p_sign_flip)]
            for p, ph in zip(pairs, p_holm)
            for t in [p["test"]]
        ],
        columns=["regulariser", "n pairs", "mean diff", "95 % CI", "sd diff", "detectable", "t", "df", "p (t)",
                 "p (Holm)", "p (sign-flip)"],
    )
    return [heading, [intro], markdown_table(table)]


def _sparsity_section(ok, labels: list[str]) -> list[list[str]]:
    layers, measures = _layers(ok, "sparsity/")
    if not layers:
        return []
    blocks = [
        ["## Sparsity of the hidden codes (final validation, mean ± sd)"],
        [
            "population: mean fraction of exact zeros per sample (equal to lifetime sparsity, the mean over units "
            "of the fraction of samples where the unit is zero, so lifetime is not repeated); hoyer: Hoyer sparsity "
            "per sample; dead_units: fraction of units zero on every sample."
        ],
    ]
    for measure in [m for m in SPARSITY_MEASURES if m in measures]:
        table = pd.DataFrame(
            [
                [_code(label)] + [_mean_sd(ok[ok["regulariser"] == label].get(f"sparsity/{x}/{measure}", [])) for x in layers]
                for label in labels
            ],
            columns=["regulariser"] + [_code(x) for x in layers],
        )
        blocks += [[f"**{measure}**"], markdown_table(table)]
    return blocks


def _weights_section(ok, labels: list[str]) -> list[list[str]]:
    params, _ = _layers(ok, "weights/")
    if not params:
        return []

    def cell(g, x: str) -> str:
        m, s = g.get(f"weights/{x}/mean"), g.get(f"weights/{x}/std")
        return f"{_fmt(float(m.mean()), 4) if m is not None else '–'} / {_fmt(float(s.mean()), 4) if s is not None else '–'}"

    table = pd.DataFrame(
        [[_code(x)] + [cell(ok[ok["regulariser"] == label], x) for label in labels] for x in params],
        columns=["parameter"] + [_code(label) for label in labels],
    )
    return [
        ["## Weights and biases (final validation)"],
        ["Each cell: mean over seeds of the parameter's mean / of its standard deviation."],
        markdown_table(table),
    ]


def _spread_section(frame, grid: GridArgs, ok) -> list[list[str]]:
    """Sparsity and weight spread, each paired against the first baseline."""
    layers, _ = _layers(ok, "sparsity/")
    params, _ = _layers(ok, "weights/")
    columns = [f"sparsity/{x}/{m}" for m in ("population", "hoyer") for x in layers if f"sparsity/{x}/{m}" in ok.columns]
    columns += [
        f"weights/{x}/std" for x in params if x.rpartition(".")[2].startswith("weight") and f"weights/{x}/std" in ok.columns
    ]
    rows = [(col, paired_table(frame, grid, col)) for col in columns]
    if not rows or not any(t["test"].n > 1 for _, pairs in rows for t in pairs):
        return []
    others = [p["regulariser"] for p in rows[0][1]]
    table = pd.DataFrame(
        [[_code(col)] + [f"{q['test'].mean_diff:+.4f} (p {q['test'].p:.2g})" for q in pairs] for col, pairs in rows],
        columns=["measure"] + [_code(o) for o in others],
    )
    return [
        [f"## Sparsity and weight spread paired against `{grid.baseline}`"],
        [
            f"Each cell: mean difference regulariser − `{grid.baseline}` over the same seeds (paired t-test p). "
            "Positive sparsity: sparser code; positive weight std: wider weights."
        ],
        markdown_table(table),
    ]


def _curves_section(labels: list[str], curves: tuple[str, dict]) -> list[list[str]]:
    curve_desc, by_label = curves
    curve_labels = [label for label in labels if label in by_label]
    if not curve_labels:
        return []
    epochs = sorted(set().union(*(by_label[label].index for label in curve_labels)))

    def cell(c, epoch) -> str:
        if epoch not in c.index:
            return "–"
        values = c.loc[epoch].dropna()
        return _fmt(float(values.mean()), 3) + ("" if len(values) == c.shape[1] else f" (n={len(values)})")

    table = pd.DataFrame(
        [[epoch] + [cell(by_label[label], epoch) for label in curve_labels] for epoch in epochs],
        columns=["epoch"] + [_code(label) for label in curve_labels],
    )
    return [
        [f"## {curve_desc.capitalize()} per epoch"],
        [
            f"Mean over seeds of the {curve_desc} at the end of each epoch (regularisers off). Each run's "
            "test metric above is from the epoch its config's ModelCheckpoint kept. `(n=k)`: only k seeds "
            "reached that epoch (early stopping)."
        ],
        markdown_table(table),
    ]


# --------------------------------------------------------------------------- the report


def write_report(frame, grid: GridArgs, failures: Iterable[tuple[Run, str]] = (), curves: tuple[str, dict] | None = None,
                 notes: Sequence[str] = ()) -> Path:
    """``results.csv`` and ``results.md`` in ``grid.out``; returns the markdown path. ``notes``:
    what the plots skipped (checkpoints refused), listed at the end."""
    out = grid.out
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "results.csv", index=False)
    metric, metric_desc, _ = primary_metric(frame)
    ok = frame[frame["status"] == "ok"]
    labels = [s.label for s in grid.regularisers]
    blocks: list[list[str]] = [
        [f"# {grid.config.stem}: regulariser comparison"],
        ["Made by:"],
        ["```bash", grid.command, "```"],
        [
            f"Config `{grid.config}`, seeds {' '.join(map(str, grid.seeds))}, overrides "
            f"{' '.join('`' + o[2:] + '`' for o in grid.overrides) or 'none'}. Test metrics are from the best "
            "checkpoint (the config's ModelCheckpoint); sparsity and weight statistics from the final validation "
            "(regularisers off). mean ± sd over seeds (sd with n - 1)."
        ],
        [f"## {metric_desc}"],
        markdown_table(_summary_table(frame, ok, labels, metric, metric_desc)),
    ]
    for baseline in grid.baselines:
        blocks += _paired_section(frame, grid, metric, metric_desc, baseline)
    blocks += _sparsity_section(ok, labels)
    blocks += _weights_section(ok, labels)
    blocks += _spread_section(frame, grid, ok)
    blocks += _curves_section(labels, validation_curves(frame) if curves is None else curves)
    figures = [f for f in (f"{metric_slug(metric)}.png", "validation.png", "sparsity.png", "weights.png") if (out / f).is_file()]
    if figures:
        blocks += [["## Figures"], [f"![{f}]({f})" for f in figures]]
    bad = frame[frame["status"] != "ok"]
    if len(bad):
        messages = {(r.spec.label, r.seed): m.splitlines()[0] for r, m in failures}
        items = []
        for _, r in bad.iterrows():
            problem = r.get("problem")
            why = messages.get((r["regulariser"], r["seed"]), r["status"] + (f": {problem}" if isinstance(problem, str) and problem else ""))
            items.append(f"- `{r['regulariser']}` seed {r['seed']}: {why} (see `{Path(r['run_dir']) / 'log.txt'}`)")
        blocks += [["## Runs not finished"], items]
    if notes:
        blocks += [["## Checkpoints not read"], [f"- {note}" for note in notes]]
    path = out / "results.md"
    path.write_text("\n\n".join("\n".join(block) for block in blocks) + "\n\n")
    return path
