"""The one statistics module: what a mean and a spread are for no, one and several values."""

from __future__ import annotations

import math

import pytest

from normbench.analysis.stats import finite, mean, mean_std, pm, stderr_diff


def test_no_value_one_value_and_several():
    assert mean_std([]) == (None, None)
    assert mean_std([None, math.nan, math.inf]) == (None, None)  # nothing finite
    assert mean_std([2.0]) == (2.0, None)  # a spread needs two values
    m, s = mean_std([1.0, 2.0, 3.0, math.nan])
    assert m == pytest.approx(2.0) and s == pytest.approx(1.0)
    assert math.isnan(mean([])) and mean([], default=0.0) == 0.0 and mean([1, 3]) == 2.0
    assert finite([1, None, math.inf, -2]) == [1.0, -2.0]


def test_formatting_and_the_standard_error_of_a_difference():
    assert pm([]) == "-" and pm([1.23456]) == "1.23 (n=1)"
    assert pm([1.0, 3.0]) == "2 ± 1.4 (n=2)"
    # sqrt(var(a)/n_a + var(b)/n_b); a side with one value adds nothing
    assert stderr_diff([1.0, 3.0], [2.0, 2.0]) == pytest.approx(1.0)
    assert stderr_diff([1.0, 3.0], [5.0]) == pytest.approx(1.0)
    assert stderr_diff([1.0], [5.0]) == 0.0
