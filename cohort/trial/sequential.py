"""Group-sequential designs: Lan–DeMets alpha spending, boundaries, early-stopping decisions.

Spending functions (Lan & DeMets 1983) for one-sided level ``a`` at information fraction t:

* O'Brien–Fleming type: ``alpha(t) = 2 - 2 Phi(z_{1-a/2} / sqrt(t))``
* Pocock type:          ``alpha(t) = a log(1 + (e - 1) t)``

Efficacy boundaries ``c_k`` solve ``P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) =
alpha(t_k) - alpha(t_{k-1})`` under H0, where the standardised statistics have the canonical
joint distribution ``corr(Z_i, Z_j) = sqrt(t_i / t_j)`` (Jennison & Turnbull 2000, ch. 3); the
multivariate normal probabilities come from ``scipy.stats.multivariate_normal.cdf``. Two-sided
designs use symmetric boundaries with ``a = alpha / 2`` per side (the usual approximation: the
chance of crossing the opposite boundary first is negligible). Futility boundaries are
non-binding (they do not change the efficacy boundaries).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import optimize, stats


def spending(t: np.ndarray, a: float, kind: str = "obrien_fleming") -> np.ndarray:
    """Cumulative one-sided alpha spent by information fraction ``t``."""
    t = np.asarray(t, float)
    if kind == "obrien_fleming":
        return 2.0 - 2.0 * stats.norm.cdf(stats.norm.isf(a / 2) / np.sqrt(t))
    if kind == "pocock":
        return a * np.log1p((math.e - 1.0) * t)
    raise ValueError(f"spending: unknown spending function {kind!r}")


def boundaries(
    looks: tuple[float, ...] | np.ndarray,
    alpha: float,
    sided: int = 2,
    kind: str = "obrien_fleming",
) -> np.ndarray:
    """Efficacy z-boundaries at the information fractions ``looks`` (last look = 1).

    Multivariate normal probabilities use Genz's quasi-Monte Carlo with a fixed seed and
    absolute error 1e-6 (boundaries accurate to ~1e-5; deterministic), cached per design."""
    return np.array(_boundaries(tuple(float(x) for x in looks), float(alpha), int(sided), kind))


@functools.lru_cache(maxsize=64)
def _boundaries(looks: tuple[float, ...], alpha: float, sided: int, kind: str) -> tuple[float, ...]:
    t = np.asarray(looks, float)
    a = alpha / sided
    cum = spending(t, a, kind)
    inc = np.diff(np.concatenate([[0.0], cum]))
    corr = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    c = np.empty(len(t))
    c[0] = stats.norm.isf(inc[0])
    for k in range(1, len(t)):
        sub = corr[: k + 1, : k + 1]
        mvn_prev = stats.multivariate_normal(np.zeros(k), corr[:k, :k], seed=0)
        mvn = stats.multivariate_normal(np.zeros(k + 1), sub, seed=0)
        prev = _cdf(mvn_prev, c[:k])

        def excess(x: float, k: int = k, prev: float = prev, mvn=mvn) -> float:
            return prev - _cdf(mvn, np.append(c[:k], x)) - inc[k]

        c[k] = optimize.brentq(excess, -2.0, 12.0, xtol=1e-8)
    return tuple(c.tolist())


def _cdf(mvn, upper: np.ndarray) -> float:
    if len(upper) == 1:
        return float(stats.norm.cdf(upper[0]))
    mvn.abseps, mvn.releps = 1e-6, 1e-6
    return float(mvn.cdf(upper))


def decide(
    z: np.ndarray, bounds: np.ndarray, sided: int = 2, futility: float | None = None
) -> dict[str, np.ndarray]:
    """Stopping decisions for statistics ``z`` of shape ``[replicates, looks]``.

    ``z`` is oriented so that positive means benefit. Returns ``look`` (0-based look at which
    each replicate stopped), ``reject`` (the efficacy boundary crossed **in the direction of
    benefit**: what power counts), ``harm`` (a two-sided boundary crossed in the harmful
    direction: the trial stops, but this is not efficacy) and ``futile`` (stopped at an
    interim for futility, z < ``futility``)."""
    stat = np.abs(z) if sided == 2 else z
    cross = stat >= bounds
    fut = np.zeros_like(cross)
    if futility is not None:
        fut[:, :-1] = z[:, :-1] < futility
    stop = cross | fut
    stop[:, -1] = True
    look = np.argmax(stop, axis=1)
    rows = np.arange(len(z))
    crossed = cross[rows, look]
    beneficial = z[rows, look] > 0
    return {
        "look": look,
        "reject": crossed & beneficial,
        "harm": crossed & ~beneficial,
        "futile": fut[rows, look] & ~crossed,
    }


def simulate_normal(
    n_per_arm: int,
    delta: float,
    sd: float,
    looks: tuple[float, ...],
    alpha: float = 0.05,
    sided: int = 2,
    replicates: int = 2000,
    seed: int = 0,
    kind: str = "obrien_fleming",
    futility: float | None = None,
) -> dict[str, np.ndarray]:
    """Group-sequential two-arm trials on a normal endpoint (mean difference ``delta``).

    A fast check of a design's operating characteristics (type I error with ``delta = 0``,
    power, expected sample size) using the same t-test and decision code as :func:`cohort.
    trial.run`; patients enrol alternately 1:1, interim looks analyse the first enrolled."""
    from cohort.trial.stats import ttest

    gen = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    n = 2 * n_per_arm
    arm = np.broadcast_to(np.arange(n) % 2, (replicates, n))
    y = gen.normal(0.0, sd, (replicates, n)) + delta * arm
    order = np.arange(n)
    z = np.column_stack(
        [
            ttest(y, arm, 1, 0, np.broadcast_to(order < round(f * n), y.shape), alpha, sided)["z"]
            for f in looks
        ]
    )
    bounds = boundaries(looks, alpha, sided, kind)
    out = decide(z, bounds, sided, futility)
    out["z"], out["bounds"] = z, bounds
    out["n_used"] = np.round(np.asarray(looks)[out["look"]] * n)
    return out
