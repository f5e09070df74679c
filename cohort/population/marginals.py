"""Covariate marginals of a prior spec: each distribution's CDF and quantile function, truncated
to the covariate's ``lower``/``upper`` bounds by inverting the CDF between them (no rejection:
the draw stays one uniform per covariate, so populations are reproducible whatever the bounds),
and the checks that a spec's bounds and power effects make sense before anything is drawn.

scipy's frozen distributions would do the same per call; their ``ppf`` is 5-10× slower than
these ``scipy.special`` functions at 10^7 draws, hence the small table below."""

from __future__ import annotations

import math

import numpy as np

from cohort.population.spec import PopulationSpec, SpecError

CONTINUOUS = ("normal", "truncnormal", "lognormal", "uniform", "beta", "empirical")


def category_values(cov) -> np.ndarray:
    """Stored value of each category: the label itself when all labels are numbers (so that
    expressions like ``APGR < 5`` read naturally), else the integer code."""
    cats = cov.args["categories"]
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in cats):
        return np.asarray(cats, dtype=float)
    return np.arange(len(cats), dtype=float)


def _cdf(cov, x):
    """The untruncated CDF of a continuous covariate at ``x``."""
    from scipy import special  # here: `cohort simulate` never needs scipy

    a, d = cov.args, cov.distribution
    x = np.asarray(x, dtype=float)
    if d in ("normal", "truncnormal"):
        return special.ndtr((x - a["mean"]) / a["sd"])
    if d == "lognormal":
        s, m = math.sqrt(math.log1p(a["cv"] ** 2)), math.log(a["median"])
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 0, special.ndtr((np.log(np.maximum(x, 1e-300)) - m) / s), 0.0)
    if d == "uniform":
        return np.clip((x - a["lower"]) / (a["upper"] - a["lower"]), 0.0, 1.0)
    if d == "beta":
        z = np.clip((x - a["loc"]) / a["scale"], 0.0, 1.0)
        return special.betainc(a["alpha"], a["beta"], z)
    if d == "empirical":
        return np.interp(x, a["quantiles"], a["probabilities"], left=0.0, right=1.0)
    raise SpecError(f"no CDF for distribution {d!r}")  # pragma: no cover (validated)


def _quantile(cov, p):
    from scipy import special

    a, d = cov.args, cov.distribution
    if d in ("normal", "truncnormal"):
        return a["mean"] + a["sd"] * special.ndtri(p)
    if d == "lognormal":
        s, m = math.sqrt(math.log1p(a["cv"] ** 2)), math.log(a["median"])
        return np.exp(m + s * special.ndtri(p))
    if d == "uniform":
        return a["lower"] + p * (a["upper"] - a["lower"])
    if d == "beta":
        return a["loc"] + a["scale"] * special.betaincinv(a["alpha"], a["beta"], p)
    if d == "empirical":
        return np.interp(p, a["probabilities"], a["quantiles"])
    raise SpecError(f"no quantile function for {d!r}")  # pragma: no cover (validated)


def _truncation(cov) -> tuple[float, float]:
    """CDF values at the covariate's bounds (0 and 1 without bounds)."""
    lo, hi = cov.args.get("lower", -np.inf), cov.args.get("upper", np.inf)
    return float(_cdf(cov, lo)), float(_cdf(cov, hi))


def draw(cov, u: np.ndarray) -> np.ndarray:
    """Values of covariate ``cov`` from uniforms ``u`` (in (0, 1)), within its bounds."""
    d = cov.distribution
    if d == "categorical":
        cum = np.cumsum(cov.args["probabilities"])
        code = np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)
        return category_values(cov)[code]
    if d == "constant":
        return np.full(u.shape, cov.args["value"])
    pl, ph = _truncation(cov)
    x = _quantile(cov, pl + u * (ph - pl))
    # the quantile function can land a rounding error outside the bounds
    return np.clip(x, cov.args.get("lower", -np.inf), cov.args.get("upper", np.inf))


def _describe(cov) -> str:
    keys = {k: v for k, v in cov.args.items() if k not in ("lower", "upper", "probabilities")}
    shown = ", ".join(
        f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}=[{v[0]:g} .. {v[-1]:g}]"
        for k, v in keys.items()
        if isinstance(v, (int, float, np.ndarray))
    )
    return f"{cov.distribution}({shown})"


def nonpositive_fraction(cov) -> float:
    """P(covariate <= 0) under its (truncated) marginal."""
    d, a = cov.distribution, cov.args
    if d == "categorical":
        return float(np.sum(np.asarray(a["probabilities"])[category_values(cov) <= 0]))
    if d == "constant":
        return float(a["value"] <= 0)
    pl, ph = _truncation(cov)
    below = float(_cdf(cov, min(0.0, a.get("upper", np.inf))))
    return max(below - pl, 0.0) / (ph - pl) if ph > pl else 0.0


def check(spec: PopulationSpec) -> None:
    """Refuse, before drawing, bounds that hold no probability and power effects on a
    covariate that can be zero or negative (those candidates came out NaN and were rejected
    silently, skewing the covariate: a normal(10, 10) AGE came out with mean 13)."""
    by_name = {c.name: c for c in spec.covariates}
    for cov in spec.covariates:
        if cov.distribution in CONTINUOUS and ("lower" in cov.args or "upper" in cov.args):
            pl, ph = _truncation(cov)
            if not ph - pl > 1e-12:
                lo, hi = cov.args.get("lower", -np.inf), cov.args.get("upper", np.inf)
                raise SpecError(
                    f"{spec.path}: [covariates.{cov.name}] lower/upper: the bounds "
                    f"[{lo:g}, {hi:g}] hold no probability under {_describe(cov)} "
                    f"({cov.units}); check the units, or widen the bounds"
                )
    for p in spec.parameters:
        for e in p.effects:
            if e.type != "power":
                continue
            cov = by_name[e.args["covariate"]]
            frac = nonpositive_fraction(cov)
            if frac > 1e-6:
                raise SpecError(
                    f"{spec.path}: [parameters.{p.name}] power effect of {cov.name}: "
                    f"{cov.name} must be > 0, but {_describe(cov)} gives {frac:.3g} of the "
                    f"patients a value <= 0 (they would be rejected, skewing {cov.name}); give "
                    f"[covariates.{cov.name}] a lower bound above 0, or a lognormal distribution"
                )
