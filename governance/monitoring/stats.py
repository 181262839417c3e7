"""The statistics of monitoring: pure functions on arrays and counts, no store, no I/O.

Drift (label-free): population stability index on the reference's deciles, two-sample
Kolmogorov-Smirnov, a binomial test of the flag rate, chi-squared on raw category counts with
sparse categories pooled (Cramer's V as the effect size), a one-sided Bernoulli CUSUM whose
decision limit is chosen from an in-control average run length, and Benjamini-Hochberg.
Performance (with labels): Wilson intervals for proportions and the AUC with a bootstrap interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: Added to empty bins so that PSI stays finite (a common convention; 1e-4 of a window of 200
#: studies is far below one study, so it never hides a real shift).
PSI_EPSILON = 1e-4


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must hold finite numbers only")
    return array


def decile_edges(quantiles: Sequence[float]) -> np.ndarray:
    """The 9 inner decile edges from 21 quantiles at 0, 5, ..., 100 % (what training records)."""
    q = _as_1d(quantiles, "quantiles")
    if q.size != 21:
        raise ValueError(f"quantiles must hold the 21 values 0, 5, ..., 100 %, got {q.size}")
    return q[2:19:2]


def psi(
    reference_fractions: Sequence[float] | np.ndarray, window_counts: Sequence[int] | np.ndarray
) -> float:
    """Population stability index sum((w - r) ln(w / r)) of a window against reference bins.

    ``reference_fractions`` sums to 1 (0.1 each on the reference's deciles); ``window_counts``
    are the window's counts in the same bins. Bands: < 0.1 stable, 0.1-0.25 moderate, >= 0.25
    a shift.
    """
    r = _as_1d(reference_fractions, "reference_fractions")
    counts = _as_1d(window_counts, "window_counts")
    if r.shape != counts.shape:
        raise ValueError("reference_fractions and window_counts must have the same bins")
    if counts.sum() <= 0:
        raise ValueError("window_counts must not be all zero")
    w = counts / counts.sum()
    r = np.maximum(r / r.sum(), PSI_EPSILON)
    w = np.maximum(w, PSI_EPSILON)
    return float(np.sum((w - r) * np.log(w / r)))


def bin_counts(values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in the bins (-inf, e1], (e1, e2], ..., (ek, inf)."""
    index = np.searchsorted(inner_edges, _as_1d(values, "values"), side="left")
    return np.bincount(index, minlength=inner_edges.size + 1)


def reference_cdf(quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Knots (x, F(x)) of the piecewise-linear CDF through the 0, 5, ..., 100 % quantiles."""
    q = _as_1d(quantiles, "quantiles")
    if q.size != 21:
        raise ValueError(f"quantiles must hold 21 values, got {q.size}")
    return np.maximum.accumulate(q), np.linspace(0.0, 1.0, 21)


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test of one feature: its statistic, p-value and effect size (named by ``effect``)."""

    statistic: float
    p_value: float
    effect: float
    n: int


def ks_against_cdf(
    window: Sequence[float] | np.ndarray, cdf_x: np.ndarray, cdf_f: np.ndarray, n_reference: int
) -> TestResult:
    """Two-sample KS of a window against a reference known by its CDF and its size.

    The reference is the validation distribution training recorded as quantiles, so D is taken
    against its interpolated CDF and the p-value from the asymptotic two-sample distribution
    with the effective size n m / (n + m). D is the effect size.
    """
    x = np.sort(_as_1d(window, "window"))
    n = x.size
    if n == 0:
        raise ValueError("window must not be empty")
    if n_reference <= 0:
        raise ValueError(f"n_reference must be positive, got {n_reference}")
    f = np.interp(x, cdf_x, cdf_f, left=0.0, right=1.0)
    upper = np.arange(1, n + 1) / n
    lower = np.arange(0, n) / n
    d = float(max(np.max(upper - f), np.max(f - lower)))
    n_eff = n * n_reference / (n + n_reference)
    p = float(sps.kstwobign.sf(d * math.sqrt(n_eff)))
    return TestResult(statistic=d, p_value=min(1.0, p), effect=d, n=n)


def ks_two_sample(
    reference: Sequence[float] | np.ndarray, window: Sequence[float] | np.ndarray
) -> TestResult:
    """Two-sample KS test (scipy, exact for small samples); D is the effect size."""
    ref = _as_1d(reference, "reference")
    win = _as_1d(window, "window")
    if ref.size == 0 or win.size == 0:
        raise ValueError("reference and window must not be empty")
    result = sps.ks_2samp(ref, win)
    d = float(result.statistic)
    return TestResult(statistic=d, p_value=float(result.pvalue), effect=d, n=int(win.size))


def pooled_table(
    reference: Mapping[str, int], window: Mapping[str, int], *, min_expected: float = 5.0
) -> tuple[list[str], np.ndarray]:
    """The 2 x k table of raw counts with sparse categories pooled into ``"(other)"``.

    A category is sparse when an expected cell count under homogeneity (row total x column
    total / grand total) falls below ``min_expected``. Pooling stops at two columns.
    """
    names = sorted(set(reference) | set(window))
    table = np.array(
        [[reference.get(k, 0) for k in names], [window.get(k, 0) for k in names]], dtype=float
    )
    if table.sum(axis=1).min() <= 0:
        raise ValueError("reference and window must each hold at least one count")
    row = table.sum(axis=1, keepdims=True)
    expected = row * table.sum(axis=0, keepdims=True) / table.sum()
    sparse = expected.min(axis=0) < min_expected
    if sparse.any():
        kept = [n for n, s in zip(names, sparse, strict=True) if not s]
        other = table[:, sparse].sum(axis=1, keepdims=True)
        table = np.hstack([table[:, ~sparse], other])
        names = [*kept, "(other)"]
    return names, table


def chi_squared(
    reference: Mapping[str, int], window: Mapping[str, int], *, min_expected: float = 5.0
) -> TestResult:
    """Chi-squared test of homogeneity on raw counts, sparse categories pooled; Cramer's V.

    With one column left after pooling there is nothing to compare: p = 1, V = 0.
    """
    names, table = pooled_table(reference, window, min_expected=min_expected)
    table = table[:, table.sum(axis=0) > 0]
    n = int(table.sum())
    if table.shape[1] < 2:
        return TestResult(statistic=0.0, p_value=1.0, effect=0.0, n=int(table[1].sum()))
    chi2, p, _, _ = sps.chi2_contingency(table, correction=False)
    v = math.sqrt(chi2 / (n * (min(table.shape) - 1)))
    return TestResult(statistic=float(chi2), p_value=float(p), effect=v, n=int(table[1].sum()))


def binomial_rate(k: int, n: int, expected: float) -> TestResult:
    """Two-sided exact binomial test of ``k`` flags in ``n`` against the ``expected`` rate.

    The effect is the observed minus the expected rate.
    """
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    if not 0.0 < expected < 1.0:
        raise ValueError(f"expected must be a rate in (0, 1), got {expected}")
    p = float(sps.binomtest(k, n, expected).pvalue)
    return TestResult(statistic=k / n, p_value=p, effect=k / n - expected, n=n)


def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion k / n."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    phat = k / n
    denominator = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denominator
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up, monotone, capped at 1)."""
    p = _as_1d(p_values, "p_values")
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    s = _as_1d(scores, "scores")
    y = np.asarray(labels).astype(bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auc needs both classes")
    ranks = sps.rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_bootstrap(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    replicates: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """AUC and its percentile bootstrap interval, resampling within each class (seeded)."""
    s = _as_1d(scores, "scores")
    y = np.asarray(labels).astype(bool).ravel()
    point = auc(s, y)
    rng = np.random.default_rng(seed)
    pos, neg = s[y], s[~y]
    draws = np.empty(replicates)
    for i in range(replicates):
        p = rng.choice(pos, pos.size)
        n = rng.choice(neg, neg.size)
        # Mann-Whitney on the resample: the fraction of (pos, neg) pairs ordered right.
        ranks = sps.rankdata(np.concatenate([p, n]))
        draws[i] = (ranks[: p.size].sum() - p.size * (p.size + 1) / 2) / (p.size * n.size)
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return point, float(low), float(high)
