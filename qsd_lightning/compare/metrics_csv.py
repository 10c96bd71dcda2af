"""The one reader of Lightning's ``CSVLogger`` log, ``<save_dir>/<name>/version_N/metrics.csv``.

Lightning writes one row per logging call with every metric seen so far as a column (empty
where that row did not log it) plus ``epoch`` and ``step``. Everything in this project that
reads such a file goes through here: the comparison runner (summaries, validation curves, the
log's checksum), ``scripts/plot_run.py`` (series over steps) and the tests (:func:`newest`,
:func:`values`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["FILE", "read", "newest", "values", "series", "summarise", "validation_curve", "sha256"]

FILE = "metrics.csv"


def read(path: str | Path):
    """The log as a pandas ``DataFrame`` (NaN where a row did not log a column)."""
    import pandas as pd

    return pd.read_csv(path)


def newest(root: str | Path) -> Path:
    """The most recently written ``metrics.csv`` anywhere under ``root``."""
    found = list(Path(root).rglob(FILE))
    if not found:
        raise FileNotFoundError(f"no {FILE} under {root}")
    return max(found, key=lambda p: p.stat().st_mtime)


def values(path: str | Path, column: str) -> list[float]:
    """Every value logged for ``column``, in order (rows that did not log it left out); ``[]``
    when the column is absent."""
    df = read(path)
    return [float(v) for v in df[column].dropna()] if column in df.columns else []


def series(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``{metric: [(step, value), ...]}`` for every column but ``epoch`` and ``step``."""
    df = read(path)
    steps = df["step"].fillna(0).astype(float) if "step" in df.columns else None
    out: dict[str, list[tuple[float, float]]] = {}
    for column in df.columns:
        if column in ("epoch", "step"):
            continue
        logged = df[column].dropna()
        if len(logged):
            at = steps[logged.index] if steps is not None else [0.0] * len(logged)
            out[column] = [(float(s), float(v)) for s, v in zip(at, logged)]
    return out


def summarise(path: str | Path) -> dict[str, float]:
    """Summarise one run's log.

    - ``test/*``: the last test row; the sparsity measured there becomes ``test_sparsity/*``.
    - ``val/*``, ``sparsity/*``, ``weights/*``: the last value logged during fit (the final
      validation), and ``best_val/<metric>`` the best over epochs (max of acc, min otherwise).
    - ``epochs``: the number of epochs fit logged.
    """
    import pandas as pd

    df = read(path)
    out: dict[str, float] = {}
    test_cols = [c for c in df.columns if c.startswith("test/")]
    is_test = df[test_cols].notna().any(axis=1) if test_cols else pd.Series(False, index=df.index)
    test_rows, fit_rows = df[is_test], df[~is_test]
    if len(test_rows):
        last = test_rows.iloc[-1]
        for c in df.columns:
            if pd.isna(last[c]):
                continue
            if c.startswith("test/"):
                out[c] = float(last[c])
            elif c.startswith("sparsity/"):
                out["test_" + c] = float(last[c])
    for c in fit_rows.columns:
        if c.startswith(("val/", "sparsity/", "weights/")):
            logged = fit_rows[c].dropna()
            if len(logged):
                out[c] = float(logged.iloc[-1])
                if c.startswith("val/"):
                    best = logged.max() if c.endswith("acc") else logged.min()
                    out["best_" + c] = float(best)
    if "epoch" in fit_rows and fit_rows["epoch"].notna().any():
        out["epochs"] = float(fit_rows["epoch"].max() + 1)
    return out


def validation_curve(path: str | Path, column: str):
    """``column`` at each validation during fit, indexed by epoch (the last value per epoch)."""
    import pandas as pd

    df = read(path)
    if column not in df.columns or "epoch" not in df.columns:
        return pd.Series(dtype=float)
    logged = df[["epoch", column]].dropna()
    return logged.groupby(logged["epoch"].astype(int))[column].last()


def sha256(path: str | Path) -> str:
    """The file's SHA-256 (hex): ``result.json`` records it so a log changed later is caught."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
