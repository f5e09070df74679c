"""Twins bound to their records: the inference machinery (``BoundModel``) with each patient's
prior median ``μᵢ`` (from its covariates) in place of the population's typical values.

Every per-patient computation (modes, Hessians, sampling, predictions) then runs vmapped over
the patient axis exactly as population fits do; the prior is the fixed population (η ~ N(0, Ω)
with known Ω and σ), so nothing population-level is estimated.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from cohort.data import Dataset, read_nonmem
from cohort.errors import CohortWarning
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
    cgm_only = ("add_sd_log", "ar1", "initial_sd")
    if err is not None and any(getattr(err, k) is not None for k in cgm_only):
        raise TwinError(
            f"prior {prior.name!r}: an [error] with an estimated SD (add_sd_log), AR(1) "
            "residuals (ar1) or an estimated initial state (initial_sd) is for CGM twins "
            "(cohort.twin.CGMTwins, `cohort twin cgm`)"
        )
    if prior.spec.iov is not None:
        raise TwinError(
            f"prior {prior.name!r}: inter-occasion variability ([iov]) is read by CGM twins "
            "(cohort.twin.CGMTwins); PK twins have one set of parameters per patient: remove "
            "[iov] from the spec"
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


def read_records(
    records: pd.DataFrame | str, prior: TwinPrior, new_rows: np.ndarray | None = None
) -> Dataset:
    """Validated NONMEM-style records for ``prior.model`` (errors name the row and column).

    ``new_rows [R]`` (an update: the twin's records followed by the new ones): the 1-based row
    of each record in the update's file, 0 for the records seen before; messages name those
    rows, and warnings are given for the new records only (the others were warned about when
    they were added)."""
    _check_not_cgm(prior)
    with warnings.catch_warnings():
        if new_rows is not None:  # the reader's warnings were given by row of the update
            warnings.simplefilter("ignore", CohortWarning)  # (append_records' own check)
        data = read_nonmem(records, prior.model)
    where = _row_names(data, new_rows)
    _check_doses_first(data, prior, where)
    _warn_time_varying(data, prior, where)
    _warn_implausible_records(data, prior, where, covariates=new_rows is None)
    if new_rows is None:  # an update says it by its own rows (records.append_records)
        _warn_second_results(data)
    return data


def _warn_second_results(data: Dataset) -> None:
    """Two observations of one patient and output at one time with different values (a
    corrected result kept beside the first?) are both used: said, as an update says it (an
    identification took them silently; a probe)."""
    rec = data.records
    obs = rec[(rec["EVID"] == 0) & (rec["MDV"] == 0)]
    keys = ["ID", "TIME"] + [k for k in ("CMT", "DVID") if k in obs]  # one kind at one time
    twice = obs[obs.duplicated(keys, keep=False)]
    if twice.empty:
        return
    first = twice.iloc[0]
    same = twice[(twice[keys] == first[keys]).all(axis=1)]
    warnings.warn(
        f"records {', '.join(str(int(r)) for r in same['ROW'])} (ID {show_id(first['ID'])}, "
        f"TIME {first['TIME']:g}): {len(same)} results at one time (DV "
        f"{', '.join(f'{v:g}' for v in same['DV'])}); all are used as separate samples. "
        "To correct a result, keep only the corrected one",
        CohortWarning,
        stacklevel=4,
    )


def _row_names(data: Dataset, new_rows: np.ndarray | None):
    """``where(ROW) -> "record 7"`` or, in an update, ``"update record 3"`` / ``None`` (a
    record seen before: nothing to warn about again)."""

    def where(row: int, *, seen: str | None = None) -> str | None:
        if new_rows is None:
            return f"record {int(row)}"
        k = int(new_rows[int(row) - 1])
        if k:
            return f"update record {k}"
        return None if seen is None else f"{seen} {int(row)}"

    return where


def _first_new(frame: pd.DataFrame, where) -> tuple[pd.Series, str] | None:
    """The first record of ``frame`` that ``where`` names (a new one in an update)."""
    for _, row in frame.iterrows():
        name = where(row["ROW"])
        if name is not None:
            return row, name
    return None


def _warn_implausible_records(
    data: Dataset, prior: TwinPrior, where, *, covariates: bool = True
) -> None:
    """Covariates outside the range the prior declares (a weight in grams, a creatinine
    clearance in mL/s) and negative concentrations are accepted (a real patient may lie
    outside a design range) but said, naming the first patient."""
    base = data.covariates
    if not covariates:  # an update: the twins keep the baseline covariates seen before
        base = base.iloc[:0]
    for c in prior.spec.covariates:
        lo, hi = c.args.get("lower", -np.inf), c.args.get("upper", np.inf)
        if c.name not in base or not (np.isfinite(lo) or np.isfinite(hi)):
            continue
        v = base[c.name].to_numpy(float)
        out = np.flatnonzero((v < lo) | (v > hi))
        if out.size:
            k = int(out[0])
            warnings.warn(
                f"ID {show_id(base.index[k])}: {c.name} {v[k]:g} {c.units} is outside the "
                f"prior's range {lo:g}-{hi:g} ({out.size} patient(s)); check its units: the "
                "covariate model is used outside the range the prior declares",
                CohortWarning,
                stacklevel=4,
            )
    if prior.output.startswith("conc"):
        rec = data.records
        obs = rec[(rec["EVID"] == 0) & (rec["MDV"] == 0)]
        if "CENS" in rec:
            obs = obs[obs["CENS"].fillna(0) == 0]
        # a zero under an error model that cannot take one is refused when bound
        zero_ok = prior.error[0] in ("additive", "combined")
        found = _first_new(obs[(obs["DV"] < 0) | ((obs["DV"] == 0) & zero_ok)], where)
        if found is not None:
            row, name = found
            what = "a negative concentration" if row["DV"] < 0 else "a zero concentration"
            warnings.warn(
                f"{name} (ID {show_id(row['ID'])}): DV {row['DV']:g} is {what}, fitted as "
                "measured; a sample below the limit of quantification (often coded 0) "
                "belongs in CENS/LLOQ columns",
                CohortWarning,
                stacklevel=4,
            )


def implausible_parameters(prior: TwinPrior, ids, values: dict[str, np.ndarray]) -> list[str]:
    """Messages for individual estimates (``values[name] [N]``) outside the plausible range
    the prior declares for a parameter (``[parameters.X] lower/upper``)."""
    out = []
    for p in prior.spec.parameters:
        if p.name not in values or not (np.isfinite(p.lower) or np.isfinite(p.upper)):
            continue
        v = np.asarray(values[p.name], float)
        bad = np.flatnonzero((v < p.lower) | (v > p.upper))
        if bad.size:
            k = int(bad[0])
            out.append(
                f"ID {show_id(ids[k])}: {p.name} {v[k]:.4g} {p.units} is outside the prior's "
                f"plausible range {p.lower:g}-{p.upper:g} ({bad.size} patient(s)); check the "
                "records (units, doses, sample times)"
            )
    return out


def uninformed(prior: TwinPrior, ids, sd: np.ndarray, n_obs: np.ndarray) -> list[str]:
    """A message naming the patients whose observations (at least 2) left every posterior SD
    (``sd [N, q]``, log scale) at 97 % or more of the prior's: the predictions do not respond
    to the parameters there. Doses in g instead of mg gave twins equal to the prior, flagged
    ok, without a word (a probe); so do observations all below the LLOQ."""
    prior_sd = np.sqrt(np.diagonal(np.asarray(prior.omega, float)))
    if prior_sd.size == 0:
        return []
    flat = (np.asarray(n_obs) >= 2) & np.all(np.asarray(sd) >= 0.97 * prior_sd, axis=1)
    if not flat.any():
        return []
    k = int(np.flatnonzero(flat)[0])
    return [
        f"ID {show_id(ids[k])}: its {int(n_obs[k])} observations left the posterior where the "
        f"prior is (every posterior SD >= 97 % of the prior's; {int(flat.sum())} patient(s)): "
        "the predictions barely respond to the parameters there; check the units of AMT and "
        "DV, the dose records' CMT, and whether the observations are all below the LLOQ"
    ]


FAR = 5.0  # prior SDs: the prior gives a random effect this far out 1 in 1.7 million


def far_from_prior(prior: TwinPrior, ids, eta: np.ndarray) -> list[str]:
    """A message naming the patients whose estimate of a random effect (``eta [N, q]``) lies
    more than :data:`FAR` prior SDs from the typical value: records in other units than the
    prior's (TIME in minutes, DV in g/L) give such twins, flagged ok, without a word (a
    probe: CL 0.062 L/h, ten SDs below the prior's typical value)."""
    sd = np.sqrt(np.diagonal(np.asarray(prior.omega, float)))
    if sd.size == 0:
        return []
    z = np.asarray(eta, float) / np.where(sd > 0, sd, np.inf)
    far = np.abs(z) > FAR
    if not far.any():
        return []
    k, j = (int(i) for i in np.unravel_index(np.argmax(np.abs(z)), z.shape))  # the farthest
    side = "above" if z[k, j] > 0 else "below"
    return [
        f"ID {show_id(ids[k])}: its {prior.eta_names[j]} estimate is {abs(z[k, j]):.1f} prior "
        f"SDs {side} the typical value ({int(far.any(axis=1).sum())} patient(s)), which the "
        "prior makes all but impossible; check the records' units against the prior's (TIME "
        "in its time unit, AMT and DV in its amount and concentration units) and the doses"
    ]


def _warn_time_varying(data: Dataset, prior: TwinPrior, where) -> None:
    """Twins use each patient's baseline covariates (the first record's): say so, naming the
    first change, when a covariate the prior uses changes later (e.g. a new weight in an
    update), instead of ignoring it silently."""
    used = [c for c in prior.covariates if c in data.records]
    changing = data.time_varying(used) if used else []
    if not changing:
        return
    rec = data.records
    col = changing[0]
    first = rec.groupby("ID", sort=False)[col].transform("first")
    found = _first_new(rec[(rec[col] != first) & rec[col].notna()], where)
    if found is None:
        return
    moved, name = found
    base = first.loc[moved.name]
    keep = "keeps its first value" if len(changing) == 1 else "keep their first values"
    warnings.warn(
        f"{name} (ID {show_id(moved['ID'])}): {col} {moved[col]:g} differs "
        f"from the patient's first value {base:g}; twins use baseline covariates (time-varying "
        f"covariates are not modelled), so {', '.join(changing)} {keep}. To use the new value, "
        "identify the twin again from records carrying it",
        CohortWarning,
        stacklevel=3,
    )


def _check_doses_first(data: Dataset, prior: TwinPrior, where) -> None:
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
            f"{where(row['ROW'], seen='record')} (ID {show_id(row['ID'])}, TIME {row['TIME']:g}): "
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
