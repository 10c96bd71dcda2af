"""Paired tests of one regulariser against a baseline on the same seeds, from ``scipy.stats``:
the paired t-test (:func:`scipy.stats.ttest_rel`) and the exact sign-flip test, a permutation
test of the mean paired difference (:func:`scipy.stats.permutation_test` with
``permutation_type="samples"`` on the differences, every one of the 2^n sign patterns
enumerated; two-sided: the fraction of patterns whose mean is at least as far from 0); the 95 %
confidence interval of the mean difference (Student's t); the smallest true difference the
design would detect (:func:`detectable_difference`); and Holm's correction over a table's
comparisons (:func:`holm`)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["PairedTest", "paired_t_test", "sign_flip_test", "student_t_sf", "detectable_difference", "holm",
           "MAX_SIGN_FLIP_N", "ALPHA", "POWER"]

MAX_SIGN_FLIP_N = 20  # 2^20 sign patterns
ALPHA = 0.05  # two-sided level of the tests, the intervals (95 %) and the detectable difference
POWER = 0.8  # power at which a difference counts as detectable


@dataclass
class PairedTest:
    n: int
    mean_diff: float
    sd_diff: float
    t: float
    df: int
    p: float
    p_sign_flip: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    detectable: float = float("nan")


def student_t_sf(t: float, df: float) -> float:
    """Two-sided p-value P(|T| >= |t|) of Student's t with ``df`` degrees of freedom."""
    if math.isnan(t) or df <= 0:
        return float("nan")
    return float(2.0 * stats.t.sf(abs(t), df))


def detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean paired difference that a two-sided paired t-test at level ``alpha``
    on ``n`` pairs rejects with probability ``power``, if the differences have standard deviation
    ``sd`` (the observed one): the ``delta`` at which the noncentral t with ``n - 1`` degrees of
    freedom and noncentrality ``delta * sqrt(n) / sd`` falls outside +-t_crit with probability
    ``power``. A "no difference" result is then "no difference as large as this"."""
    if n < 2 or not sd > 0 or math.isnan(sd):
        return float("nan")
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc: float) -> float:  # power at noncentrality nc, minus the power wanted
        if nc == 0:
            return alpha - power
        lower = float(stats.nct.cdf(-crit, df, nc))  # negligible for nc > 0; scipy gives NaN when it underflows
        return float(stats.nct.sf(crit, df, nc)) + (0.0 if math.isnan(lower) else lower) - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    from scipy.optimize import brentq

    nc = brentq(shortfall, 0.0, high, xtol=1e-12)  # solved in units of sd / sqrt(n): scale-free
    return float(nc * sd / math.sqrt(n))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over the comparisons given; NaN
    entries are left out of the family and stay NaN). Five lines, so written here: scipy has only
    the false-discovery-rate adjustment, and statsmodels is not a dependency."""
    p = np.asarray(pvalues, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    adjusted = np.full(len(p), np.nan)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def sign_flip_test(diffs: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation p-value of the mean paired difference (n <= 20)."""
    d = np.asarray([float(x) for x in diffs], dtype=float)
    n = len(d)
    if n == 0:
        return float("nan")
    if n > MAX_SIGN_FLIP_N:
        raise ValueError(f"exact sign-flip test enumerates 2^n sign patterns; n must be <= {MAX_SIGN_FLIP_N}")
    if n == 1:  # both sign patterns are as extreme as the observed one (scipy needs n >= 2)
        return 1.0
    result = stats.permutation_test((d,), _mean, permutation_type="samples", vectorized=True, n_resamples=np.inf)
    # The p-value from scipy's null distribution (the means under all 2^n sign patterns), with
    # ties counted by an absolute tolerance: sums of the same magnitudes in another order differ
    # by rounding, and scipy's tolerance, relative to the observed mean, misses that when the
    # observed mean is near zero.
    tol = 1e-12 * (1 + float(np.abs(d).sum())) / n
    return float(np.mean(np.abs(result.null_distribution) >= abs(float(result.statistic)) - tol))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test of ``a - b`` (same seeds, same order): mean difference, t, two-sided p,
    and the exact sign-flip p. With no spread in the differences, t is 0 (p = 1) when they are
    all zero and +-inf (p = 0) otherwise."""
    if len(a) != len(b):
        raise ValueError("paired test needs equally long samples")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    p_flip = sign_flip_test(d)
    if n < 2:
        return PairedTest(n, mean, float("nan"), float("nan"), max(n - 1, 0), float("nan"), p_flip)
    sd = float(d.std(ddof=1))
    if sd == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p = 1.0 if t == 0 else 0.0
        low = high = mean
    else:
        with warnings.catch_warnings():  # nearly equal differences: t is large and p tiny, as it should be
            warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
            result = stats.ttest_rel(x, y)
            interval = result.confidence_interval(1 - ALPHA)
        t, p = float(result.statistic), float(result.pvalue)
        low, high = float(interval.low), float(interval.high)
    return PairedTest(n, mean, sd, t, n - 1, p, p_flip, low, high, detectable_difference(sd, n))
