"""The statistics every table and judge uses, defined once.

Values that are not finite (NaN, inf: a diverged run's loss, the rank correlation of a flat
profile) and None are left out of every summary: `n` is the number of values that remain.
A mean of no values is None (`mean` takes a default instead, e.g. NaN for a judge's
comparison); a standard deviation needs two values and is None below that.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any


def finite(values: Iterable[Any]) -> list[float]:
    """The values that are numbers and finite, as floats."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation of the finite values: (None, None) for
    none, and a standard deviation of None for one."""
    v = finite(values)
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None)


def mean(values: Iterable[Any], default: float = math.nan) -> float:
    """The mean of the finite values, `default` for none."""
    m = mean_std(values)[0]
    return default if m is None else m


def pm(values: Iterable[Any], digits: int = 3) -> str:
    """'mean ± std (n=k)' of the finite values in `digits` significant digits."""
    v = finite(values)
    m, s = mean_std(v)
    if m is None:
        return "-"
    if s is None:
        return f"{m:.{digits}g} (n=1)"
    return f"{m:.{digits}g} ± {s:.2g} (n={len(v)})"


def stderr_diff(a: Iterable[Any], b: Iterable[Any]) -> float:
    """The standard error of mean(a) - mean(b); a side with fewer than two finite values
    adds nothing (its spread is unknown)."""
    total = 0.0
    for side in (finite(a), finite(b)):
        s = mean_std(side)[1]
        if s is not None:
            total += s**2 / len(side)
    return math.sqrt(total)


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
