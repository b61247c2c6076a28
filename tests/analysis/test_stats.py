"""Known answers for the statistics of every table, judge and study (normbench/analysis/stats.py):
the bootstrap intervals cover the truth at about their nominal rate on synthetic data, the
expanded interval corrects the plain percentile interval's undercoverage at small n, the
decisions judge intervals (not point estimates) against thresholds, TOST decides constructed
cases and keeps its error rate at the margin, and too little data is undecided."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sp

from normbench.analysis.stats import (
    FAILS,
    HOLDS,
    UNDECIDED,
    Interval,
    above,
    all_hold,
    bootstrap,
    bootstrap_diff,
    bootstrap_samples,
    diff_interval,
    exceeds,
    expanded_alpha,
    falls_below,
    growth_ratio,
    mean_interval,
    ratio_of_means,
    slope,
    tost,
)


def test_expanded_alpha():
    """Hesterberg's formula by hand at n = 5, and alpha itself in the large-n limit."""
    z = math.sqrt(5 / 4) * sp.t.ppf(0.975, 4)
    assert expanded_alpha(0.05, 5) == pytest.approx(2 * sp.norm.cdf(-z))
    assert expanded_alpha(0.05, 10_000) == pytest.approx(0.05, rel=1e-3)
    assert expanded_alpha(0.05, 3) < 1e-6  # n = 3: the range of the bootstrap distribution


def test_three_seeds_give_the_range_of_the_bootstrap_means():
    """With n = 3 the interval is the range of the resampled means: the smallest and largest
    values (each is the mean of the resample that draws it three times)."""
    ci = mean_interval([1.0, 2.0, 3.0])
    assert (ci.estimate, ci.lo, ci.hi, ci.n) == (2.0, 1.0, 3.0, 3)


def test_bootstrap_is_reproducible():
    values = list(np.random.default_rng(5).normal(size=8))
    assert mean_interval(values) == mean_interval(values)
    assert mean_interval(values, seed=1) != mean_interval(values, seed=2)


def _coverage(n: int, trials: int, expanded: bool) -> float:
    rng = np.random.default_rng(123)
    hits = 0
    for i in range(trials):
        x = list(rng.normal(0.0, 1.0, n))
        ci = bootstrap(x, statistics.fmean, n_boot=400, seed=i, expanded=expanded)
        hits += ci.lo <= 0.0 <= ci.hi
    return hits / trials


def test_intervals_cover_the_truth_at_the_nominal_rate():
    """95 % intervals for the mean of N(0, 1) samples: the expanded interval covers 0 in about
    95 % of 300 trials at n = 5 and n = 20 (binomial SE 1.3 %); the plain percentile interval
    undercovers at n = 5 (about 88 % in theory), which is why the expanded one is used."""
    expanded5, expanded20 = _coverage(5, 300, True), _coverage(20, 300, True)
    plain5 = _coverage(5, 300, False)
    assert 0.91 <= expanded5 <= 0.99, expanded5
    assert 0.91 <= expanded20 <= 0.99, expanded20
    assert plain5 < 0.92 and plain5 < expanded5, (plain5, expanded5)


def test_three_seeds_cover_at_most_three_quarters():
    """The known ceiling: with n = 3 the interval is the sample's range, which holds the
    median of a symmetric distribution with probability 1 - 2 (1/2)^3 = 0.75; the label
    says so."""
    assert _coverage(3, 300, True) == pytest.approx(0.75, abs=0.075)
    assert "coverage ≤ 75%" in mean_interval([1.0, 2.0, 3.0]).text()
    assert "coverage" not in mean_interval(list(range(8))).text()


def test_difference_interval_covers_the_true_difference():
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(200):
        a, b = rng.normal(0.3, 1.0, 8), rng.normal(0.0, 0.5, 8)
        ci = diff_interval(list(a), list(b), n_boot=400, seed=i)
        hits += ci.lo <= 0.3 <= ci.hi
    assert 0.9 <= hits / 200 <= 1.0, hits


def test_several_samples_resample_each_on_its_own():
    """bootstrap_samples with two samples is bootstrap_diff (the same draws); with four, a
    difference of differences whose n is the smallest sample's; with three units of constant
    values the interval is the estimate itself."""
    a, b = [5.0, 5.1, 5.3, 4.9], [4.7, 4.8, 4.95]
    two = bootstrap_samples([a, b], lambda s: statistics.fmean(s[0]) - statistics.fmean(s[1]))
    assert two == bootstrap_diff(a, b, statistics.fmean)
    c, d = [1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5, 0.5]
    dd = bootstrap_samples(
        [c, d, c, d], lambda s: (s[0][0] - s[1][0]) - (s[2][0] - s[3][0])
    )  # every resample of a constant sample is the same
    assert (dd.estimate, dd.lo, dd.hi, dd.n) == (0.0, 0.0, 0.0, 3)
    assert not bootstrap_samples([a, [1.0]], lambda s: 0.0).defined


def test_ratio_of_means_over_seeds():
    """The ratio of the means, not the mean of the ratios; a zero denominator is NaN."""
    units = [(2.0, 1.0), (6.0, 3.0), (1.0, 4.0)]
    assert ratio_of_means(units) == pytest.approx(9.0 / 8.0)
    assert math.isnan(ratio_of_means([(1.0, 0.0)]))
    ci = bootstrap(units, ratio_of_means)
    assert ci.lo <= 9.0 / 8.0 <= ci.hi and ci.lo >= 0.25 and ci.hi <= 2.0
    other = [(3.0, 1.0), (3.0, 1.0)]  # growth 3
    assert growth_ratio([units, other]) == pytest.approx(9.0 / 8.0 / 3.0)
    assert math.isnan(growth_ratio([units, [(0.0, 1.0)]]))


def test_all_hold_joins_decisions():
    assert all_hold(HOLDS, HOLDS) == HOLDS
    assert all_hold(HOLDS, UNDECIDED) == UNDECIDED
    assert all_hold(UNDECIDED, FAILS) == all_hold(HOLDS, FAILS) == FAILS


def test_decisions_use_the_interval_not_the_point_estimate():
    wide = Interval(0.5, -0.2, 1.2, 3)  # estimate well past 0.1, interval straddles it
    assert exceeds(wide, 0.1) == UNDECIDED
    assert exceeds(Interval(0.5, 0.2, 0.8, 3), 0.1) == HOLDS
    assert exceeds(Interval(0.0, -0.1, 0.05, 3), 0.1) == FAILS
    assert falls_below(Interval(0.0, -0.1, 0.05, 3), 0.1) == HOLDS
    assert falls_below(wide, 0.1) == UNDECIDED
    assert falls_below(Interval(0.5, 0.2, 0.8, 3), 0.1) == FAILS


def test_above_is_strict_at_the_threshold():
    assert above(Interval(1.0, 0.5, 1.5, 3), 0.0) == HOLDS
    assert above(Interval(0.0, 0.0, 0.0, 3), 0.0) == FAILS  # every resample exactly 0
    assert above(Interval(0.2, 0.0, 0.5, 3), 0.0) == UNDECIDED
    assert exceeds(Interval(0.2, 0.0, 0.5, 3), 0.0) == HOLDS  # the non-strict one


def test_slope_of_a_line_and_of_a_power_law():
    assert slope([1.0, 2.0, 3.0], [1.0, 3.0, 5.0]) == pytest.approx(2.0)
    depths = [6.0, 12.0, 24.0]
    logs = [math.log(d) for d in depths]
    assert slope(logs, [math.log(d**-0.5) for d in depths]) == pytest.approx(-0.5)
    assert math.isnan(slope([2.0, 2.0], [1.0, 3.0]))


def test_one_unit_is_undecided():
    one = mean_interval([0.5])
    assert not one.defined and one.estimate == 0.5 and "no interval" in one.text()
    assert exceeds(one, 0.1) == falls_below(one, 0.1) == UNDECIDED
    assert tost([1.0], [1.0, 1.1], 0.1).decision == UNDECIDED


def test_tost_p_value_is_the_larger_of_two_welch_tests():
    """Against scipy's Welch t-tests on shifted samples (another route to the same p)."""
    a, b, m = [5.01, 5.12, 4.97, 5.05], [5.08, 5.02, 5.11], 0.15
    got = tost(a, b, m)
    lower = sp.ttest_ind([x + m for x in a], b, equal_var=False, alternative="greater").pvalue
    upper = sp.ttest_ind([x - m for x in a], b, equal_var=False, alternative="less").pvalue
    assert got.p == pytest.approx(max(lower, upper))
    assert got.inner.level == pytest.approx(0.9)


@pytest.mark.parametrize(
    "a, b, margin, decision",
    [
        ([5.00, 5.01, 4.99, 5.00], [5.01, 5.00, 5.02, 5.01], 0.05, HOLDS),  # tight, close
        ([5.00, 5.01, 4.99, 5.00], [5.50, 5.51, 5.49, 5.52], 0.05, FAILS),  # tight, far
        ([5.0, 5.4, 4.6], [5.1, 4.7, 5.5], 0.05, UNDECIDED),  # too noisy to say
    ],
)
def test_tost_constructed_cases(a, b, margin, decision):
    assert tost(a, b, margin).decision == decision


def test_tost_error_rate_at_the_margin():
    """True difference exactly at the margin: equivalence is (wrongly) declared in at most
    about alpha = 5 % of 2,000 trials."""
    rng = np.random.default_rng(11)
    wrong = sum(
        tost(list(rng.normal(0.1, 0.1, 6)), list(rng.normal(0.0, 0.1, 6)), 0.1).decision == HOLDS
        for _ in range(2000)
    )
    assert wrong / 2000 <= 0.065, wrong
