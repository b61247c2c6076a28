"""The statistics of every table and verdict: means and standard deviations over seeds, the
standard error of a difference, rank and linear correlation.

One behaviour everywhere (compare's summary rows, the probe's tables, the claims' judges):

- a value that is None, NaN or infinite is not a measurement and is left out;
- n = 0 (no value left): the mean and the standard deviation are None;
- n = 1: the mean is the value and the standard deviation is None (one seed says nothing
  about the spread; tables show an empty cell or no `± std`);
- n >= 2: the mean and the sample standard deviation (n - 1 in the denominator).

The judges compare means with thresholds; `mean_or_nan` gives them NaN where there is no
value, so that every such comparison fails (the check does not hold).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def finite(values: Iterable[float | None]) -> list[float]:
    """The values that are measurements: None, NaN and infinities left out."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation of the finite values: (None, None) for
    none, (value, None) for one."""
    v = finite(values)
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None)


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the finite values (None for none)."""
    return mean_std(values)[0]


def mean_or_nan(values: Iterable[float | None]) -> float:
    """The mean of the finite values, NaN for none (a threshold compared with it fails)."""
    m = mean(values)
    return math.nan if m is None else m


def stderr_diff(a: Iterable[float | None], b: Iterable[float | None]) -> float:
    """The standard error of mean(a) - mean(b) over their finite values (a side with fewer
    than two adds nothing)."""
    total = 0.0
    for side in (finite(a), finite(b)):
        std = mean_std(side)[1]
        if std is not None:
            total += std * std / len(side)
    return math.sqrt(total)


def pm(values: Iterable[float | None], digits: int = 3) -> str:
    """'mean ± std (n=k)' of the finite values in `digits` significant digits ('mean (n=1)'
    for one, '-' for none)."""
    v = finite(values)
    m, s = mean_std(v)
    if m is None:
        return "-"
    if s is None:
        return f"{m:.{digits}g} (n=1)"
    return f"{m:.{digits}g} ± {s:.2g} (n={len(v)})"


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (NaN for fewer than 3 points or a constant side)."""
    if len(x) < 3:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else math.nan


def r_squared(x: list[float], y: list[float]) -> float:
    """The coefficient of determination of the least-squares line through (x, y)."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy * sxy / (sxx * syy) if sxx and syy else math.nan
