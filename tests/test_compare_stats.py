"""The paired comparison's interval, power and multiple-comparison correction (issue 16 §2),
checked against their definitions: the interval against the t formula, the detectable
difference against the noncentral t and against a seeded simulation (tolerance from the number
of simulated designs), Holm against a worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from qsd_lightning.compare.stats import ALPHA, POWER, detectable_difference, holm, paired_t_test


def test_interval_is_the_t_interval_of_the_mean_difference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 10), rng.normal(0.5, 1.0, 10)
    t = paired_t_test(a, b)
    d = a - b
    half = stats.t.ppf(0.975, 9) * d.std(ddof=1) / math.sqrt(10)
    assert t.ci_low == pytest.approx(d.mean() - half, rel=1e-12) and t.ci_high == pytest.approx(d.mean() + half, rel=1e-12)
    assert (t.ci_low > 0) == (t.p < ALPHA and t.mean_diff > 0)  # the interval excludes 0 exactly when p < 0.05


def test_detectable_difference_has_the_stated_power():
    for n, sd in [(5, 1.0), (10, 0.3), (25, 2.0)]:
        delta = detectable_difference(sd, n)
        crit = stats.t.ppf(1 - ALPHA / 2, n - 1)
        nc = delta * math.sqrt(n) / sd
        assert stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) == pytest.approx(POWER, abs=1e-9)
    assert detectable_difference(1.0, 20) < detectable_difference(1.0, 10) < detectable_difference(1.0, 5)
    assert math.isnan(detectable_difference(1.0, 1)) and math.isnan(detectable_difference(0.0, 10))


def test_detectable_difference_is_detected_that_often_in_simulation():
    """10 pairs, differences ~ N(delta, 1) with delta the detectable difference: the paired
    t-test rejects in 80 % of 4000 simulated designs, within 4 binomial standard errors."""
    rng = np.random.default_rng(12345)
    n, designs = 10, 4000
    delta = detectable_difference(1.0, n)  # sd 1: the sd the simulation draws from
    d = rng.normal(delta, 1.0, size=(designs, n))
    p = stats.ttest_1samp(d, 0.0, axis=1).pvalue
    rate = float(np.mean(p < ALPHA))
    assert abs(rate - POWER) < 4 * math.sqrt(POWER * (1 - POWER) / designs), rate


def test_holm_step_down():
    # worked example: p = .01, .04, .03, .005 -> sorted .005 (x4), .01 (x3), .03 (x2), .04 (x1), monotone
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan"), 0.9])[1] != holm([0.5, float("nan"), 0.9])[1]  # NaN stays NaN
    assert holm([0.5, float("nan"), 0.9])[0] == pytest.approx(1.0) and holm([0.9]) == [0.9]
    assert holm([]) == []
