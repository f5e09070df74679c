"""Twins bound to their records: the inference machinery (``BoundModel``) with each patient's
prior median ``μᵢ`` (from its covariates) in place of the population's typical values.

Every per-patient computation (modes, Hessians, sampling, predictions) then runs vmapped over
the patient axis exactly as population fits do; the prior is the fixed population (η ~ N(0, Ω)
with known Ω and σ), so nothing population-level is estimated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from cohort.data import Dataset, read_nonmem
from cohort.inference.problem import BoundModel, Pop, array_module, bind
from cohort.inference.spec import NLME, ErrorModel, Param
from cohort.twin.prior import TwinError, TwinPrior, show_id


@dataclasses.dataclass(frozen=True, eq=False)
class TwinBound(BoundModel):
    """A :class:`BoundModel` whose ``features`` are the patients' log typical values ``μ``."""

    @property
    def structure(self) -> tuple:
        return (*super().structure, "twin")

    def log_params(self, pop: Pop, eta, features):
        """``log P = μ + η`` (η scattered into the parameters with a random effect)."""
        xp = array_module(eta, features)
        shape = np.broadcast_shapes(np.shape(eta)[:-1], np.shape(features)[:-1])
        cols = []
        for k in range(len(self.spec.params)):
            v = features[..., k]
            if k in self.iiv:
                v = v + eta[..., self.iiv.index(k)]
            cols.append(xp.broadcast_to(v, shape))
        return xp.stack(cols, axis=-1)


def _check_not_cgm(prior: TwinPrior) -> None:
    err = prior.spec.error
    if err is not None and (err.ar1 is not None or err.add_sd_log is not None):
        raise TwinError(
            f"prior {prior.name!r}: an [error] with an estimated SD (add_sd_log) or AR(1) "
            "residuals (ar1) is for CGM twins (cohort.twin.CGMTwins, `cohort twin cgm`)"
        )


def nlme_of(prior: TwinPrior) -> NLME:
    _check_not_cgm(prior)
    kind, add, prop = prior.error
    off_diagonal = prior.omega.size and np.any(prior.omega - np.diag(np.diag(prior.omega)))
    units = prior.model.units()
    return NLME(
        model=prior.model,
        params=tuple(
            Param(n, iiv=n in prior.eta_names, units=units.get(n, "")) for n in prior.names
        ),
        error=ErrorModel(kind, add or None, prop or None),
        omega="full" if off_diagonal else "diagonal",
        output=prior.output,
        fixed=dict(prior.fixed),
    )


def prior_pop(prior: TwinPrior) -> Pop:
    """The fixed population: θ = 0 (μ carries the typical values), Ω as SDs and a
    correlation Cholesky factor, σ = (add, prop)."""
    sd = np.sqrt(np.diag(prior.omega))
    corr = prior.omega / np.outer(sd, sd)
    _, add, prop = prior.error
    return Pop(
        jnp.zeros(len(prior.names)),
        jnp.zeros(0),
        jnp.asarray(sd),
        jnp.asarray(np.linalg.cholesky(corr)),
        jnp.asarray([add, prop], float),
    )


def read_records(records: pd.DataFrame | str, prior: TwinPrior) -> Dataset:
    """Validated NONMEM-style records for ``prior.model`` (errors name the row and column)."""
    _check_not_cgm(prior)
    data = read_nonmem(records, prior.model)
    _check_doses_first(data, prior)
    return data


def _check_doses_first(data: Dataset, prior: TwinPrior) -> None:
    """An observation before a patient's first dose is predicted as 0 by a model whose states
    start empty (all PK models): almost always a data error (a missing dose record)."""
    p0 = {k: jnp.asarray(v, float) for k, v in prior.model.defaults().items()}
    if any(float(jnp.max(jnp.abs(v))) > 0 for v in prior.model.initial(p0).values()):
        return  # states start away from zero (e.g. a baseline response): nothing to check
    rec = data.records
    doses = rec[rec["EVID"].isin((1, 4))].groupby("ID", sort=False)["TIME"].min()
    obs = rec[(rec["EVID"] == 0) & (rec["MDV"] == 0)]
    first = obs["ID"].map(doses)
    bad = obs[first.isna() | (obs["TIME"] < first)]
    if len(bad):
        row = bad.iloc[0]
        raise TwinError(
            f"record {int(row['ROW'])} (ID {show_id(row['ID'])}, TIME {row['TIME']:g}): "
            f"observation before the patient's first dose; {prior.model.name!r} starts with empty "
            "compartments, so it predicts 0 there. Add the earlier dose records (or an SS=1 "
            "dose) or drop the observation"
        )


def bind_twins(prior: TwinPrior, data: Dataset) -> TwinBound:
    """Bind the prior's model to ``data``: ``features`` = each patient's ``μ [K]``."""
    spec = nlme_of(prior)
    bm = bind(spec, data)
    mu = prior.log_typical(data.covariates)
    fields = {f.name: getattr(bm, f.name) for f in dataclasses.fields(bm)}
    fields["features"] = mu
    fields["arrays"] = {**bm.arrays, "features": jnp.asarray(mu)}
    return TwinBound(**fields)


def to_device(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)
