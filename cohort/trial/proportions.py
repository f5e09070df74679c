"""Difference of two independent proportions: the Miettinen–Nurminen score test and its score
interval, vectorised over trial replicates.

Hand-written because the library version cannot be used here: statsmodels'
``test_proportions_2indep(method="score")`` / ``confint_proportions_2indep(method="score")``
return NaN or raise when a cell is 0 or n (its Farrington–Manning cubic takes ``arccos`` of a
value rounded just past 1), which responder endpoints hit routinely in small arms; it also runs
one table at a time; and away from a difference of 0 its restricted estimates are not the
constrained likelihood maximum (checked numerically), which shifts its interval. The formulas
are Miettinen & Nurminen (1985) with the restricted maximum likelihood of Farrington & Manning
(1990); the statistic at 0 equals statsmodels' (tested).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def restricted_mle(x1, n1, x2, n2, delta):
    """``(p1, p2)`` maximising the likelihood under ``p1 - p2 = delta`` (closed-form cubic root)."""
    p1, p2 = x1 / n1, x2 / n2
    theta = n2 / n1
    a = 1.0 + theta
    b = -(1.0 + theta + p1 + theta * p2 + delta * (theta + 2.0))
    c = delta**2 + delta * (2.0 * p1 + theta + 1.0) + p1 + theta * p2
    d = -p1 * delta * (1.0 + delta)
    v = b**3 / (27.0 * a**3) - b * c / (6.0 * a**2) + d / (2.0 * a)
    u = np.sign(v) * np.sqrt(np.maximum(b**2 / (9.0 * a**2) - c / (3.0 * a), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(u == 0, 0.0, v / np.where(u == 0, 1.0, u**3))
    w = (np.pi + np.arccos(np.clip(ratio, -1.0, 1.0))) / 3.0
    r1 = np.clip(2.0 * u * np.cos(w) - b / (3.0 * a), 0.0, 1.0)
    r2 = np.clip(r1 - delta, 0.0, 1.0)
    return r1, r2


def score_z(x1, n1, x2, n2, delta=0.0):
    """Miettinen–Nurminen statistic for ``H0: p1 - p2 = delta`` (positive when ``p1 - p2``
    exceeds ``delta``); 0 where the restricted variance vanishes (e.g. 0/n vs 0/n at 0)."""
    x1, n1, x2, n2 = (np.asarray(v, float) for v in (x1, n1, x2, n2))
    r1, r2 = restricted_mle(x1, n1, x2, n2, delta)
    total = n1 + n2
    var = (r1 * (1 - r1) / n1 + r2 * (1 - r2) / n2) * total / (total - 1.0)
    diff = x1 / n1 - x2 / n2 - delta
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(var > 0, diff / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
    # A zero variance with a nonzero difference is impossible data under H0: infinitely far.
    far = np.where(diff > 0, np.inf, -np.inf)
    return np.where((var <= 0) & (diff != 0), far, z)


def score_interval(x1, n1, x2, n2, alpha=0.05, iterations=60):
    """The two-sided ``1 - alpha`` interval of ``p1 - p2`` that inverts :func:`score_z`:
    every ``delta`` the two-sided test does not reject (bisection; the statistic decreases in
    ``delta``), so the interval excludes 0 exactly when the test at 0 rejects."""
    x1, n1, x2, n2 = (np.asarray(v, float) for v in (x1, n1, x2, n2))
    crit = stats.norm.isf(alpha / 2.0)
    est = x1 / n1 - x2 / n2
    eps = 1e-12

    def solve(lo, hi, target):
        # find delta in [lo, hi] with score_z(delta) == target (decreasing in delta)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            above = score_z(x1, n1, x2, n2, mid) > target
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return 0.5 * (lo + hi)

    low = solve(np.full_like(est, -1.0 + eps), est, crit)
    high = solve(est, np.full_like(est, 1.0 - eps), -crit)
    return low, high
