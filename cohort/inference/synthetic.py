"""Simulated NONMEM-style datasets with known truth (parameter recovery, calibration, benchmarks).

The same bound model that fits the data simulates it, so a recovery test checks estimation,
not a second implementation of the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from cohort.data import read_nonmem
from cohort.inference import likelihood
from cohort.inference.layout import Layout
from cohort.inference.problem import BoundModel, Pop, bind
from cohort.inference.spec import NLME


def design(
    n_subjects: int,
    times: Sequence[float],
    amt: float,
    cmt: int | str = 1,
    covariates: Mapping[str, np.ndarray] | None = None,
    obs_cmt: int | str | None = None,
) -> pd.DataFrame:
    """One dose at time 0 into ``cmt`` then observations at ``times`` for each subject (DV
    placeholders). ``obs_cmt``: the observations' CMT; by default none is given, so they are
    the fitted output whatever its compartment (an oral model's dose CMT on them was refused
    as a depot observation)."""
    times = np.asarray(times, float)
    n_obs = len(times)
    ids = np.repeat(np.arange(1, n_subjects + 1), n_obs + 1)
    time = np.tile(np.concatenate([[0.0], times]), n_subjects)
    dose = np.tile(np.concatenate([[1], np.zeros(n_obs, int)]), n_subjects)
    frame = pd.DataFrame(
        {
            "ID": ids,
            "TIME": time,
            "AMT": np.where(dose == 1, float(amt), 0.0),
            "DV": np.where(dose == 1, np.nan, 0.0),
            "EVID": dose,
            "CMT": [cmt if d == 1 else obs_cmt for d in dose],
        }
    )
    for name, values in (covariates or {}).items():
        frame[name] = np.repeat(np.asarray(values, float), n_obs + 1)
    return frame


def make_pop(
    bm: BoundModel,
    typical: Mapping[str, float],
    omega: Mapping[str, float],
    sigma: Mapping[str, float],
    beta: Mapping[str, float] | None = None,
    corr: np.ndarray | None = None,
) -> Pop:
    """A :class:`Pop` from natural-scale values: ``typical`` values, IIV SDs ``omega``,
    residual SDs ``sigma`` (``add``/``prop``), covariate effects ``beta`` by label
    (``"V~WT"``; binary effects as proportional shifts)."""
    spec = bm.spec
    theta = jnp.log(jnp.asarray([typical[p.name] for p in spec.params], float))
    gamma = []
    for e in bm.effects:
        value = e.fixed if e.fixed is not None else (beta or {})[e.label]
        gamma.append(np.log1p(value) if e.kind == "binary" else value)
    names = Layout(bm).eta_names
    q = len(names)
    chol = jnp.eye(q) if corr is None else jnp.linalg.cholesky(jnp.asarray(corr, float))
    return Pop(
        theta,
        jnp.asarray(gamma, float).reshape(-1),
        jnp.asarray([omega[n] for n in names], float),
        chol,
        jnp.asarray([sigma.get("add", 0.0), sigma.get("prop", 0.0)], float),
    )


def simulate_data(
    spec: NLME,
    frame: pd.DataFrame,
    truth: Pop | None = None,
    seed: int = 0,
    **truth_values,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Fill the DV of the observation rows of ``frame`` by simulating ``spec`` at ``truth``
    (a Pop, or keyword arguments of :func:`make_pop`). Returns the data and the true η."""
    bm = bind(spec, read_nonmem(frame, spec.model))
    pop = truth if truth is not None else make_pop(bm, **truth_values)
    key_eta, key_eps = jax.random.split(jax.random.PRNGKey(seed))
    z = jax.random.normal(key_eta, (bm.n_subjects, bm.n_eta))
    eta = z @ bm.omega_chol(pop).T
    f, ok = jax.jit(bm.predict)(pop, eta)
    dv = np.asarray(likelihood.simulate_dv(spec.error.kind, pop.sigma, f, key_eps))
    obs = bm.data.observations
    out = frame.copy().reset_index(drop=True)
    rows = obs.row[obs.mask] - 1
    out.loc[rows, "DV"] = dv[obs.mask]
    return out, np.asarray(eta)
