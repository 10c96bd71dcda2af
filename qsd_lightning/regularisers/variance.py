"""Multiplier variance of QSD and dropout, and the dropout rate that matches it.

Each regulariser multiplies an activation by a random factor ``m c`` with mean 1. Its variance
per element (docs/method.md, "Properties") is

- dropout and ``release`` mode: ``r / k``
- ``size`` and ``independent`` modes: ``(1 / k)(1 + 1 / gamma) - 1``
- ``coupled`` mode: ``(gamma + 1)(gamma + r)^2 / (k gamma^2 (gamma + 2 r)) - 1``

with ``r`` the rate and ``k = 1 - r``. At the same rate QSD adds more noise than dropout (except
in ``release`` mode), and dropout at rate ``v / (1 + v)`` has the same variance ``v``: the rate to
compare QSD against when asking whether its heterogeneity does more than its extra noise.

    python -m qsd_lightning.regularisers.variance --rate 0.5 --gamma 4 16
"""

from __future__ import annotations

import argparse
from typing import Sequence

from .functional import MODES


def multiplier_variance(mode: str | None, rate: float, gamma: float | None) -> float:
    """Variance of the per-element multiplier; ``mode=None`` or ``gamma=None`` is dropout."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown QSD mode {mode!r}; choose from {', '.join(MODES)}")
    if gamma is not None and gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    r, k = rate, 1.0 - rate
    if mode in (None, "release") or gamma is None:
        return r / k
    if mode in ("size", "independent"):
        return (1.0 / k) * (1.0 + 1.0 / gamma) - 1.0
    g = gamma
    return (g + 1.0) * (g + r) ** 2 / (k * g**2 * (g + 2.0 * r)) - 1.0


def matched_dropout_rate(mode: str | None, rate: float, gamma: float | None) -> float:
    """The dropout rate whose multiplier variance equals this setting's: ``v / (1 + v)``."""
    v = multiplier_variance(mode, rate, gamma)
    return v / (1.0 + v)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="QSD multiplier variance and the dropout rate that matches it")
    p.add_argument("--rate", type=float, nargs="+", required=True)
    p.add_argument("--gamma", type=float, nargs="+", required=True)
    p.add_argument("--mode", nargs="+", default=["coupled"], choices=MODES)
    args = p.parse_args(argv)
    rows = []
    try:
        for mode in args.mode:
            for rate in args.rate:
                for gamma in args.gamma:
                    v, matched = multiplier_variance(mode, rate, gamma), matched_dropout_rate(mode, rate, gamma)
                    rows.append(f"| {mode} | {rate:g} | {gamma:g} | {v:.3f} | {multiplier_variance(None, rate, None):.3f} | {matched:.3f} |")
    except ValueError as err:
        p.error(str(err))
    print("| mode | rate | gamma | QSD variance | dropout variance | matched dropout rate |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
