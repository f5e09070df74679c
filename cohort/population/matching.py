"""Match a plausible virtual population to observed summary distributions.

Allen, Rieger & Musante (2016, CPT:PSP 5:140) select virtual patients from a plausible
population by acceptance–rejection with probability proportional to the ratio of the observed
(target) density to the plausible-population density of the outputs, with a scale factor
chosen to minimise the mismatch. The alternative is importance re-weighting with the same
ratio. Either way the fit is reported as a Kolmogorov–Smirnov distance per output.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import xarray as xr
from scipy import stats

from cohort.errors import OptionError
from cohort.population.expr import evaluate
from cohort.population.spec import PopulationSpec, Target


@dataclasses.dataclass(frozen=True)
class MatchResult:
    """Selected patients (or weights) and the KS distance per target before and after."""

    selected: np.ndarray  # indices into the plausible population (acceptance) or all
    weights: np.ndarray  # importance weights summing to 1 (uniform over selected otherwise)
    ks_before: dict[str, float]
    ks_after: dict[str, float]
    scale: float


def _target_cdf_pdf(t: Target):
    a = t.args
    if t.distribution == "normal":
        d = stats.norm(a["mean"], a["sd"])
        return d.cdf, d.pdf
    if t.distribution == "lognormal":
        s = np.sqrt(np.log1p(a["cv"] ** 2))
        d = stats.lognorm(s, scale=a["median"])
        return d.cdf, d.pdf
    data = np.sort(np.asarray(a["values"], float))
    kde = stats.gaussian_kde(data)
    return (lambda x: np.searchsorted(data, x, side="right") / data.size), kde


def weighted_ks(x: np.ndarray, w: np.ndarray, cdf) -> float:
    """KS distance between the ``w``-weighted empirical CDF of ``x`` and ``cdf``."""
    order = np.argsort(x)
    xs, ws = x[order], w[order] / np.sum(w)
    ecdf_hi = np.cumsum(ws)
    ecdf_lo = ecdf_hi - ws
    f = cdf(xs)
    return float(max(np.max(np.abs(ecdf_hi - f)), np.max(np.abs(ecdf_lo - f))))


def match(
    population: xr.Dataset,
    targets: PopulationSpec | list[Target],
    *,
    outputs: dict[str, np.ndarray] | None = None,
    method: str = "acceptance",
    seed: int = 0,
) -> MatchResult:
    """Select (``method='acceptance'``) or weight (``'weights'``) patients to match targets.

    Target expressions are evaluated on the population's variables plus ``outputs`` (e.g.
    simulated Cmax per patient). The plausible density is a Gaussian KDE of the outputs; the
    target density is the product of the target marginals.
    """
    tlist = list(targets.targets) if isinstance(targets, PopulationSpec) else list(targets)
    if not tlist:
        raise OptionError("match: no targets given")
    if method not in ("acceptance", "weights"):
        raise OptionError(f"match: method must be 'acceptance' or 'weights', got {method!r}")
    env = {
        k: np.asarray(population[k].values, float)
        for k in population.data_vars
        if population[k].dims == ("patient",)
    }
    env.update({k: np.asarray(v, float) for k, v in (outputs or {}).items()})
    y = np.stack([evaluate(t.expression, env) for t in tlist])  # [k, N]
    if not np.all(np.isfinite(y)):
        raise OptionError("match: target expressions gave non-finite values for some patients")
    n = y.shape[1]
    cdfs, pdfs = zip(*(_target_cdf_pdf(t) for t in tlist))
    target_density = np.prod([pdf(y[i]) for i, pdf in enumerate(pdfs)], axis=0)
    # The plausible density is a KDE fitted on at most 2,000 patients: evaluating a KDE of all
    # N at N points is O(N^2) (minutes at N = 10^5) and a 2,000-point fit is smooth enough.
    rng = np.random.default_rng(seed)
    fit_idx = rng.choice(n, size=min(n, 2000), replace=False) if n > 2000 else np.arange(n)
    plausible_density = stats.gaussian_kde(y[:, fit_idx])(y)
    ratio = target_density / np.maximum(plausible_density, 1e-300)
    uniform = np.full(n, 1.0 / n)
    ks_before = {t.name: weighted_ks(y[i], uniform, cdfs[i]) for i, t in enumerate(tlist)}
    if method == "weights":
        w = ratio / ratio.sum()
        ks_after = {t.name: weighted_ks(y[i], w, cdfs[i]) for i, t in enumerate(tlist)}
        return MatchResult(np.arange(n), w, ks_before, ks_after, 1.0)
    u = np.asarray(jax.random.uniform(jax.random.PRNGKey(seed), (n,), dtype=float))
    best = None
    # Scale factor: probabilities min(1, c·ratio); scan c over quantiles of 1/ratio and keep
    # the selection with the smallest worst-case KS distance that keeps >= 1 % of patients.
    for q in np.linspace(0.5, 1.0, 26):
        c = 1.0 / np.quantile(ratio, q)
        sel = np.flatnonzero(u < np.minimum(1.0, c * ratio))
        if sel.size < max(10, n // 100):
            continue
        ks = {
            t.name: weighted_ks(y[i][sel], np.ones(sel.size), cdfs[i]) for i, t in enumerate(tlist)
        }
        if best is None or max(ks.values()) < max(best[1].values()):
            best = (sel, ks, c)
    if best is None:
        raise OptionError(
            "match: the plausible population barely overlaps the targets; "
            "widen the prior or check target units"
        )
    sel, ks, c = best
    return MatchResult(sel, np.full(sel.size, 1.0 / sel.size), ks_before, ks, float(c))
