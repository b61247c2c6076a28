"""The statistics of every table and verdict: means and standard deviations over seeds, rank
and linear correlation, bootstrap intervals and the decisions taken on them.

One behaviour everywhere (compare's summary rows, the probe's tables, the claims' judges):

- a value that is None, NaN or infinite is not a measurement and is left out;
- n = 0 (no value left): the mean and the standard deviation are None;
- n = 1: the mean is the value and the standard deviation is None (one seed says nothing
  about the spread; tables show an empty cell or no `± std`);
- n >= 2: the mean and the sample standard deviation (n - 1 in the denominator).

Intervals and decisions (every judge and study uses these, nothing else):

- `bootstrap`: a seeded, reproducible bootstrap interval of any statistic of a list of units
  (a unit is what is resampled: a seed's value, or a seed's runs across an lr grid),
  `bootstrap_diff` for the difference of two independent samples and `bootstrap_samples` for
  any statistic of several independent samples (each resampled on its own: a difference of
  two differences, a ratio of two arms' growths). `ratio_of_means` is the statistic of a
  ratio over (numerator, denominator) units: resampling seeds recomputes the ratio of means;
  `growth_ratio` that of two arms' ratios; `mean_ratio` that of the means of two independent
  samples (two arms' tokens/s).
  The interval is Hesterberg's *expanded percentile* interval (Hesterberg 2015, "What
  teachers should know about the bootstrap", section 5): the percentiles at alpha'/2 =
  Phi(-sqrt(n/(n-1)) * t_{n-1, 1-alpha/2}) instead of alpha/2, which corrects the plain
  percentile interval's undercoverage at small n (at n = 3, alpha' / 2 is about 1e-7: the bootstrap distribution's
  range). tests/analysis/test_stats.py measures the coverage on synthetic data. No
  bootstrap interval can be wider than the range of what the resamples can produce, so with
  n units the coverage of a mean's interval is at most 1 - 2^(1-n) for a symmetric
  distribution (the chance that the truth lies between the smallest and largest unit): 75 %
  at n = 3, 87.5 % at 4, 94 % at 5. `Interval.text` says so wherever that is below the
  nominal level ("95% CI, n=3, coverage ≤ 75%"): three seeds give an interval, not a 95 % one.
- `exceeds` / `falls_below`: a quantity judged by its interval against a threshold, never by
  its point estimate: HOLDS when the whole interval is past the threshold, FAILS when the
  whole interval is on the other side, UNDECIDED (underpowered) when it straddles it or when
  fewer than two units leave no interval. `all_hold` joins the decisions of a condition
  made of several (a two-sided "within [lo, hi]", or "a and b"): HOLDS when every one holds,
  FAILS when any fails, UNDECIDED otherwise.
- `tost`: equivalence within a fixed margin by two one-sided Welch t-tests (Schuirmann 1987):
  HOLDS when both reject at alpha (the 1 - 2 alpha interval of the difference lies inside
  (-margin, margin)), FAILS when the 1 - alpha interval lies wholly outside it, UNDECIDED
  otherwise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

LEVEL = 0.95  # the confidence level of every interval
N_BOOT = 2000  # bootstrap resamples
BOOT_SEED = 0  # the resampling generator's seed: a report is reproducible

HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided"


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


def slope(x: Sequence[float], y: Sequence[float]) -> float:
    """The slope of the least-squares line through (x, y) (NaN when x does not vary)."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return sxy / sxx if sxx else math.nan


# --- intervals ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A statistic's estimate on all the units and its interval at `level`; `n` units.

    lo and hi are NaN when there is no interval (fewer than two units)."""

    estimate: float
    lo: float
    hi: float
    n: int
    level: float = LEVEL

    @property
    def defined(self) -> bool:
        return self.n >= 2 and not (math.isnan(self.lo) or math.isnan(self.hi))

    @property
    def max_coverage(self) -> float:
        """The most a bootstrap interval of a mean over n units can cover: 1 - 2^(1-n)."""
        return 1 - 2.0 ** (1 - self.n) if self.n >= 1 else 0.0

    @property
    def label(self) -> str:
        """'95% CI, n=5', with the attainable coverage where it is below the level."""
        text = f"{self.level:.0%} CI, n={self.n}"
        if self.n < 2:
            return f"n={self.n}, no interval"
        if self.max_coverage < self.level:
            text += f", coverage ≤ {self.max_coverage:.0%}"
        return text

    def text(self, digits: int = 3) -> str:
        """'est [lo, hi] (95% CI, n=k)', or 'est (n=1, no interval)'."""
        est = f"{self.estimate:.{digits}g}"
        if not self.defined:
            return f"{est} (n={self.n}, no interval)"
        return f"{est} [{self.lo:.{digits}g}, {self.hi:.{digits}g}] ({self.label})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "lo": self.lo,
            "hi": self.hi,
            "n": self.n,
            "level": self.level,
        }


def expanded_alpha(alpha: float, n: int) -> float:
    """Hesterberg's expanded alpha': 2 Phi(-sqrt(n/(n-1)) t_{n-1, 1-alpha/2})."""
    from scipy import stats as sp

    if n < 2:
        return alpha
    z = math.sqrt(n / (n - 1)) * float(sp.t.ppf(1 - alpha / 2, n - 1))
    return 2 * float(sp.norm.cdf(-z))


def _percentiles(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    """The alpha/2 and 1 - alpha/2 order statistics (infinities allowed; NaNs are left out)."""
    r = np.sort(replicates[~np.isnan(replicates)])
    if r.size == 0:
        return math.nan, math.nan
    lo = int(math.floor(alpha / 2 * r.size))
    hi = int(math.ceil((1 - alpha / 2) * r.size)) - 1
    return float(r[min(lo, r.size - 1)]), float(r[max(hi, 0)])


def _resample(rng: np.random.Generator, units: Sequence[T]) -> list[T]:
    return [units[i] for i in rng.integers(0, len(units), len(units))]


def bootstrap(
    units: Sequence[T],
    statistic: Callable[[Sequence[T]], float],
    level: float = LEVEL,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
    expanded: bool = True,
) -> Interval:
    """The statistic on `units` and its bootstrap interval: `n_boot` resamples of the units
    with replacement (a numpy generator seeded with `seed`), the expanded percentile interval
    (`expanded=False`: the plain percentile interval). No interval for fewer than 2 units."""
    n = len(units)
    estimate = float(statistic(units)) if n else math.nan
    if n < 2:
        return Interval(estimate, math.nan, math.nan, n, level)
    rng = np.random.default_rng(seed)
    reps = np.array([statistic(_resample(rng, units)) for _ in range(n_boot)], dtype=float)
    alpha = expanded_alpha(1 - level, n) if expanded else 1 - level
    lo, hi = _percentiles(reps, alpha)
    return Interval(estimate, lo, hi, n, level)


def bootstrap_samples(
    samples: Sequence[Sequence[T]],
    statistic: Callable[[list[Sequence[T]]], float],
    level: float = LEVEL,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> Interval:
    """statistic(samples) and its interval, each of the independent samples resampled on its
    own; the expansion uses the smallest sample's n (n of the interval)."""
    n = min((len(s) for s in samples), default=0)
    estimate = float(statistic(list(samples))) if n else math.nan
    if n < 2:
        return Interval(estimate, math.nan, math.nan, n, level)
    rng = np.random.default_rng(seed)
    reps = np.array(
        [statistic([_resample(rng, s) for s in samples]) for _ in range(n_boot)], dtype=float
    )
    lo, hi = _percentiles(reps, expanded_alpha(1 - level, n))
    return Interval(estimate, lo, hi, n, level)


def bootstrap_diff(
    a: Sequence[T],
    b: Sequence[T],
    statistic: Callable[[Sequence[T]], float],
    level: float = LEVEL,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
    statistic_b: Callable[[Sequence[T]], float] | None = None,
) -> Interval:
    """statistic(a) - statistic_b(b) (default: the same statistic) and its interval, a and b
    resampled independently; the expansion uses the smaller sample's n (n of the interval)."""
    stat_b = statistic_b or statistic
    return bootstrap_samples([a, b], lambda s: statistic(s[0]) - stat_b(s[1]), level, n_boot, seed)


def ratio_of_means(units: Sequence[tuple[float, float]]) -> float:
    """mean(numerators) / mean(denominators) of (numerator, denominator) units (NaN for a
    zero denominator): the statistic of a ratio bootstrapped over seeds."""
    den = statistics.fmean(d for _, d in units)
    return statistics.fmean(x for x, _ in units) / den if den else math.nan


def growth_ratio(samples: Sequence[Sequence[tuple[float, float]]]) -> float:
    """ratio_of_means(samples[0]) / ratio_of_means(samples[1]) (NaN for a zero
    denominator): how many times one arm's growth is another's, for `bootstrap_samples`."""
    other = ratio_of_means(samples[1])
    return ratio_of_means(samples[0]) / other if other else math.nan


def mean_ratio(samples: Sequence[Sequence[float]]) -> float:
    """mean(samples[0]) / mean(samples[1]) (NaN for a zero denominator): how many times one
    arm's mean is another's, each arm resampled on its own by `bootstrap_samples`."""
    den = statistics.fmean(samples[1])
    return statistics.fmean(samples[0]) / den if den else math.nan


def mean_interval(values: Iterable[float | None], **kw: Any) -> Interval:
    """The mean of the finite values and its bootstrap interval."""
    return bootstrap(finite(values), statistics.fmean, **kw)


def diff_interval(a: Iterable[float | None], b: Iterable[float | None], **kw: Any) -> Interval:
    """mean(a) - mean(b) over their finite values, and its bootstrap interval."""
    return bootstrap_diff(finite(a), finite(b), statistics.fmean, **kw)


# --- decisions ----------------------------------------------------------------------------


def exceeds(interval: Interval, threshold: float) -> str:
    """Is the quantity at least `threshold`? HOLDS when the whole interval is at or above it,
    FAILS when the whole interval is below it, UNDECIDED otherwise or without an interval."""
    if not interval.defined:
        return UNDECIDED
    if interval.lo >= threshold:
        return HOLDS
    if interval.hi < threshold:
        return FAILS
    return UNDECIDED


def falls_below(interval: Interval, threshold: float) -> str:
    """Is the quantity below `threshold`? The mirror of `exceeds`."""
    if not interval.defined:
        return UNDECIDED
    if interval.hi < threshold:
        return HOLDS
    if interval.lo >= threshold:
        return FAILS
    return UNDECIDED


def above(interval: Interval, threshold: float) -> str:
    """Is the quantity strictly above `threshold`? HOLDS when the whole interval is above it,
    FAILS when the whole interval is at or below it (e.g. a difference of grid steps whose
    every resample is 0), UNDECIDED otherwise or without an interval."""
    if not interval.defined:
        return UNDECIDED
    if interval.lo > threshold:
        return HOLDS
    if interval.hi <= threshold:
        return FAILS
    return UNDECIDED


def all_hold(*decisions: str) -> str:
    """The decision of a condition made of several: HOLDS when every one holds, FAILS when any
    fails, UNDECIDED otherwise."""
    if FAILS in decisions:
        return FAILS
    return HOLDS if all(d == HOLDS for d in decisions) else UNDECIDED


@dataclass(frozen=True)
class Tost:
    """Two one-sided tests of |mean(a) - mean(b)| < margin."""

    diff: float
    se: float
    df: float
    margin: float
    p: float  # the larger of the two one-sided p-values: equivalence at alpha when p < alpha
    inner: Interval  # the 1 - 2 alpha t-interval of the difference (TOST's)
    outer: Interval  # the 1 - alpha t-interval
    decision: str

    def text(self) -> str:
        """'diff +d, 90% CI [lo, hi] against ±margin; TOST p = p', or the n without a test."""
        if math.isnan(self.p):
            return f"diff {self.diff:+.3g} (n={self.inner.n}, no test) against ±{self.margin:g}"
        return (
            f"diff {self.diff:+.3g}, {self.inner.level:.0%} CI [{self.inner.lo:.3g}, "
            f"{self.inner.hi:.3g}] against ±{self.margin:g}; TOST p = {self.p:.3g}"
        )


def _t_interval(d: float, se: float, df: float, level: float, n: int) -> Interval:
    from scipy import stats as sp

    q = float(sp.t.ppf(1 - (1 - level) / 2, df))
    return Interval(d, d - q * se, d + q * se, n, level)


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b), its standard error and Welch-Satterthwaite degrees of freedom."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se else math.inf
    return statistics.fmean(a) - statistics.fmean(b), se, df


def tost(
    a: Iterable[float | None], b: Iterable[float | None], margin: float, alpha: float = 0.05
) -> Tost:
    """Equivalence of the means of a and b within `margin` (finite values; each side needs
    two, else UNDECIDED with NaN numbers)."""
    from scipy import stats as sp

    fa, fb = finite(a), finite(b)
    n = min(len(fa), len(fb))
    if n < 2:
        nan = Interval(math.nan, math.nan, math.nan, n, 1 - 2 * alpha)
        return Tost(math.nan, math.nan, math.nan, margin, math.nan, nan, nan, UNDECIDED)
    d, se, df = welch(fa, fb)
    if se == 0:
        p = 0.0 if abs(d) < margin else 1.0
    else:
        p_low = float(sp.t.sf((d + margin) / se, df))  # H0: d <= -margin
        p_high = float(sp.t.cdf((d - margin) / se, df))  # H0: d >= margin
        p = max(p_low, p_high)
    inner = _t_interval(d, se, df, 1 - 2 * alpha, n)
    outer = _t_interval(d, se, df, 1 - alpha, n)
    if p < alpha:
        decision = HOLDS
    elif outer.lo >= margin or outer.hi <= -margin:
        decision = FAILS
    else:
        decision = UNDECIDED
    return Tost(d, se, df, margin, p, inner, outer, decision)
