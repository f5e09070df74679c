"""A fit's estimates as a population prior description (the priors-spec TOML format, with an
``[error]`` section): what digital twins use as their prior, stored with saved fits."""

from __future__ import annotations

import numpy as np

from cohort.errors import OptionError


def prior_description(fit, name: str | None = None) -> dict:
    """The TOML-shaped prior of a :class:`~cohort.inference.results.FitResult`: θ as typical
    values, covariate effects with their reference values resolved to numbers (binary effects
    as expressions), covariates as the fitted data's empirical distribution, Ω and σ. Raises
    ``ValueError`` for a fit with a transform (a Python function cannot be stored)."""
    bm = fit.bound
    spec = bm.spec
    if spec.transform is not None:
        raise OptionError(
            "the fit uses a transform (a Python function), which a twin cannot "
            "store; fit the model's own parameters instead"
        )
    pop = fit.pop
    theta = np.asarray(pop.theta, float)
    gamma = np.asarray(pop.gamma, float)
    cov = bm.data.covariates
    params: dict[str, dict] = {}
    for k, p in enumerate(spec.params):
        effects = []
        for g, e in enumerate(bm.effects):
            if e.k != k:
                continue
            if e.kind in ("power", "exp"):  # the reference the fit centred on (Effect.ref)
                kind = "power" if e.kind == "power" else "exponential"
                effects.append(
                    {
                        "type": kind,
                        "covariate": e.column,
                        "reference": e.ref,
                        "coefficient": float(gamma[g]),
                    }
                )
            else:  # binary: the factor exp(γ) where the indicator is 1
                shift = float(np.expm1(gamma[g]))
                ind = e.column if e.ref is None else f"({e.column} < {e.ref!r})"
                effects.append({"type": "expression", "expression": f"1 + {shift!r} * {ind}"})
        entry = {
            "typical": float(np.exp(theta[k])),
            "units": spec.units(p.name) or "1",
            "citation": "cohort fit estimate",
        }
        if effects:
            entry["effects"] = effects
        params[p.name] = entry
    defaults = {**spec.model.defaults(), **spec.fixed}
    for q in spec.model.parameter_names:
        if q not in params:
            params[q] = {
                "typical": float(defaults[q]),
                "units": spec.model.units().get(q, "") or "1",
                "citation": "fixed in the fit",
            }
    chol = np.asarray(bm.omega_chol(pop), float)
    omega = chol @ chol.T
    sigma = np.asarray(pop.sigma, float)
    columns = sorted({e.column for e in bm.effects})
    covariates = {
        c: {
            "distribution": "empirical",
            "quantiles": np.quantile(cov[c].to_numpy(float), np.linspace(0, 1, 21)).tolist(),
            "units": "1",
            "citation": f"the {bm.n_subjects} subjects of the fitted data",
        }
        for c in columns
    }
    raw = {
        "population": {
            "name": name or f"fit_{spec.model.name}",
            "model": spec.model.name,
            "citation": f"cohort fit ({fit.method}) of {bm.n_subjects} subjects",
        },
        "covariates": covariates,
        "parameters": params,
        "iiv": {
            "parameters": list(spec.iiv_names),
            "omega": omega.tolist(),
            "citation": "cohort fit estimate",
        },
        "error": {
            "kind": spec.error.kind,
            "output": spec.output,
            "citation": "cohort fit estimate",
        },
    }
    if "add" in spec.error.components:
        raw["error"]["add"] = float(sigma[0])
    if "prop" in spec.error.components:
        raw["error"]["prop"] = float(sigma[1])
    return raw
