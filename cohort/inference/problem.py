"""An :class:`~cohort.inference.spec.NLME` bound to a dataset: arrays, layout and predictions.

Population parameters travel as a :class:`Pop` pytree on the scales the likelihood uses (log
typical values, log-scale covariate coefficients, IIV SDs with a correlation Cholesky factor,
residual SDs). Estimation methods only decide which parts are free and how they are
parameterised; everything subject-level is vectorized over the padded subject axis.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cohort.data import Dataset
from cohort.data.reader import DataError, Problem, observation_kinds
from cohort.engine.base import resolve_engine
from cohort.engine.closed_form import ClosedForm
from cohort.engine.diffrax_path import Adaptive
from cohort.engine.events import Changes, resolve
from cohort.engine.inputs import InputError
from cohort.errors import CohortWarning, show_id
from cohort.inference import likelihood, predict
from cohort.inference.spec import NLME, SpecError


def array_module(*arrays):
    """``numpy`` when every argument is a numpy array or scalar, else ``jax.numpy``: small
    bookkeeping on concrete values then runs without JAX dispatch (each new eager JAX op
    compiles on first use, which is what a user's first fit would wait for)."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


class Pop(NamedTuple):
    """Population parameters: ``theta [K]`` log typical values, ``gamma [G]`` covariate
    coefficients (log scale), ``omega [q]`` IIV SDs, ``corr [q, q]`` Cholesky factor of the
    IIV correlation, ``sigma [2]`` residual SDs (additive, proportional)."""

    theta: jnp.ndarray
    gamma: jnp.ndarray
    omega: jnp.ndarray
    corr: jnp.ndarray
    sigma: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class Effect:
    """One covariate effect: parameter index ``k``, feature column ``c`` of ``features``."""

    param: str
    k: int
    column: str
    kind: str
    c: int
    fixed: float | None
    init: float
    # the reference value the feature was centred on (power/exp: given or the data median;
    # binary: the threshold or None); not part of the compiled structure
    ref: float | None = dataclasses.field(default=None, compare=False)

    @property
    def label(self) -> str:
        return f"{self.param}~{self.column}"


@dataclasses.dataclass(frozen=True, eq=False)
class BoundModel:
    """Arrays and functions of one NLME on one dataset (build with :func:`bind`)."""

    spec: NLME
    data: Dataset
    effects: tuple[Effect, ...]
    features: np.ndarray  # [N, C]
    iiv: tuple[int, ...]  # indices into spec.params of the random effects
    engine: str  # "closed_form" or "diffrax"
    options: Adaptive | None
    with_infusion: bool
    has_ss: bool
    has_reset: bool
    arrays: dict  # jnp arrays: obs (time, dv, mask, cens, lloq), ev (event table)
    has_cens: bool = True  # any BLQ observation: the M3 terms enter the compiled graph

    @property
    def structure(self) -> tuple:
        """Everything compiled code depends on besides array values and shapes: fits of
        equally structured models on other data reuse compiled functions keyed by it."""
        spec = self.spec
        return (
            spec.model.fingerprint(),
            spec.params,
            spec.error,
            spec.omega,
            tuple(sorted(spec.omega_corr.items())),
            spec.transform,
            spec.output,
            tuple(sorted(spec.fixed.items())),
            self.effects,
            self.iiv,
            self.engine,
            self.options,
            self.with_infusion,
            self.has_ss,
            self.has_reset,
            self.has_cens,
            "changes" in self.arrays["ev"],
        )

    @property
    def n_subjects(self) -> int:
        return self.data.n_subjects

    @property
    def n_eta(self) -> int:
        return len(self.iiv)

    @property
    def error(self):
        return self.spec.error

    def _obs_args(self, sigma, f, obs: dict) -> tuple:
        """The arguments of ``likelihood.obs_terms`` / ``loglik_obs`` for this model."""
        keys = ("dv", "mask", "cens", "lloq")
        return (self.error.kind, sigma, f, *(obs[k] for k in keys), self.has_cens)

    def obs_terms(self, sigma, f, obs: dict) -> jnp.ndarray:
        """``−2 log p(dv | f)`` per observation (no ``log 2π``; 0 where not observed) under
        this model's residual error; ``obs`` holds ``dv``, ``mask``, ``cens`` and ``lloq``."""
        return likelihood.obs_terms(*self._obs_args(sigma, f, obs))

    def loglik_obs(self, sigma, f, obs: dict) -> jnp.ndarray:
        """Log-likelihood per observation, with the ``log 2π`` constant."""
        return likelihood.loglik_obs(*self._obs_args(sigma, f, obs))

    # -- individual parameters -----------------------------------------------------------------
    def log_params(self, pop: Pop, eta: jnp.ndarray, features: jnp.ndarray) -> jnp.ndarray:
        """``log P [..., K]`` for ``eta [..., q]`` and ``features [..., C]``."""
        xp = array_module(*pop, eta, features)
        shape = np.broadcast_shapes(np.shape(eta)[:-1], np.shape(features)[:-1])
        cols = []  # assembled column by column: no scatter ops in the traced graph
        for k in range(len(self.spec.params)):
            v = pop.theta[k]
            for g, e in enumerate(self.effects):
                if e.k == k:
                    v = v + pop.gamma[g] * features[..., e.c]
            if k in self.iiv:
                v = v + eta[..., self.iiv.index(k)]
            cols.append(xp.broadcast_to(v, shape))
        return xp.stack(cols, axis=-1)

    def model_params(self, logp: jnp.ndarray) -> dict:
        """Model parameter dict from estimated log parameters ``[..., K]`` (numpy in, numpy
        out unless the user's transform calls JAX)."""
        xp = array_module(logp)
        est = {p.name: xp.exp(logp[..., k]) for k, p in enumerate(self.spec.params)}
        out = dict(self.spec.transform(est)) if self.spec.transform else dict(est)
        like = logp[..., 0]
        defaults = {**self.spec.model.defaults(), **self.spec.fixed}
        for name in self.spec.model.parameter_names:
            if name not in out:
                out[name] = xp.full_like(like, defaults[name])
        return {k: out[k] for k in self.spec.model.parameter_names}

    # -- predictions ---------------------------------------------------------------------------
    @property
    def forward_mode(self) -> bool:
        """Whether derivatives of the predictions in η are taken in forward mode: ODE solves
        (diffrax's ``ForwardMode``; a few η and many observations make forward tangents
        cheaper than the reverse adjoint, and second derivatives ``jacfwd`` of ``jacfwd``)."""
        return self.engine != "closed_form"

    def predict_subject(self, logp_i, ev_i, times_i, reverse: bool = True):
        """Observed output ``[J]`` of one subject and whether its solve succeeded.

        ODE solves: ``reverse=True`` (default) supports reverse mode only (``grad``, as NUTS
        and SVI take it), ``reverse=False`` forward mode only (``jvp``/``jacfwd``, as the
        FOCE modes and ODE twins take it); both solve in a plain loop with diffrax's
        ``ForwardMode``. Reverse mode gets the vector-Jacobian product from the forward
        Jacobian in the ``K`` log-parameters (a custom VJP): ``K`` tangents through one solve
        cost less than diffrax's checkpointed adjoint (Theoph, 12 subjects: 1.1-1.4 ms per
        gradient instead of 3.2 ms, compiled in 3.4-4.3 s instead of 6.6 s)."""
        m, out = self.spec.model, self.spec.output
        if self.engine == "closed_form":
            p = self.model_params(logp_i)
            changes = Changes(**ev_i["changes"]) if "changes" in ev_i else None
            return predict.closed_form_subject(
                m, out, p, ev_i, times_i, self.with_infusion, changes, self.has_reset
            )

        def solve(lp, data):
            return predict.ode_subject(
                m, out, self.model_params(lp), *data, self.with_infusion, self.has_ss,
                self.options, reverse=False,
            )  # fmt: skip

        if reverse:
            return predict.reverse_by_forward_jacobian(solve, logp_i, (ev_i, times_i))
        return solve(logp_i, (ev_i, times_i))

    def predict(self, pop: Pop, eta: jnp.ndarray, arrays: dict | None = None, reverse: bool = True):
        """Predictions ``[N, J]`` and ok flags ``[N]`` for all subjects (``eta [N, q]``);
        ``reverse`` as in :meth:`predict_subject`."""
        a = self.arrays if arrays is None else arrays
        logp = self.log_params(pop, eta, a["features"])
        one = functools.partial(self.predict_subject, reverse=reverse)
        return jax.vmap(one)(logp, a["ev"], a["time"])

    def omega_chol(self, pop: Pop) -> jnp.ndarray:
        """Cholesky factor ``L`` of Ω (``Ω = L Lᵀ``)."""
        return pop.omega[..., :, None] * pop.corr  # numpy or JAX; leading axes allowed

    def _lag_start(self) -> float:
        """A lag time to start from: half the earliest sampling time after a dose (a lag
        longer than that would leave the first samples at 0)."""
        obs = self.data.observations
        ev = self.data.event_table(self.spec.model)
        first_dose = np.min(np.where(ev.evid == 1, ev.time, np.inf), axis=1)
        after = obs.time - first_dose[:, None]
        after = after[obs.mask & (after > 0)]
        return 0.5 * float(after.min()) if after.size else 0.1

    def default_pop(self) -> Pop:
        """Starting values: inits (or model defaults), covariate inits, each Param's ``omega``, and
        residual SDs from the error model (or a fifth of the data's spread)."""
        spec = self.spec
        defaults = {**spec.model.defaults(), **spec.fixed}
        theta = []
        for p in spec.params:
            v = p.init if p.init is not None else defaults.get(p.name, 1.0)
            if not v > 0 and p.init is None and p.name.upper().startswith(("ALAG", "TLAG")):
                v = self._lag_start()  # a lag's default is 0, which log-normal cannot start at
            if not v > 0:
                raise SpecError(f"Param {p.name!r}: give an init > 0 (no positive default)")
            theta.append(np.log(v))
        gamma = [e.fixed if e.fixed is not None else e.init for e in self.effects]
        gamma = [np.log1p(g) if e.kind == "binary" else g for g, e in zip(gamma, self.effects)]
        omega = [spec.params[k].omega for k in self.iiv]
        dv = np.asarray(self.arrays["dv"])[np.asarray(self.arrays["mask"])]
        if spec.error.kind == "log-additive":
            add = spec.error.add or 0.2
        else:  # a fifth of the data's spread: inside any plausible basin, refined by the fit
            add = spec.error.add or 0.2 * float(np.std(dv)) + 1e-6
        prop = spec.error.prop or 0.1
        sigma = [
            add if "add" in spec.error.components else 0.0,
            prop if "prop" in spec.error.components else 0.0,
        ]
        return Pop(  # numpy: no eager JAX ops (each would compile on a user's first fit)
            np.asarray(theta, float),
            np.asarray(gamma, float).reshape(-1),
            np.asarray(omega, float),
            np.linalg.cholesky(spec.omega_corr_matrix()),  # the initial correlations
            np.asarray(sigma, float),
        )


def _features(spec: NLME, data: Dataset) -> tuple[tuple[Effect, ...], np.ndarray]:
    cov = data.covariates
    used = [c for c in spec.covariate_columns() if c in cov]
    changing = data.time_varying(used) if used else []
    rec = data.records
    for col in used:
        gone = rec[col].isna().to_numpy()
        if not gone.any():
            continue
        first = rec.iloc[int(np.flatnonzero(gone)[0])]
        never = data.covariates[col].isna()
        if never.any():
            raise DataError(
                [
                    Problem(
                        None,
                        col,
                        f"covariate {col!r} has no value for subject(s) "
                        f"{list(never.index[never])[:5]}; give it on at least one record of "
                        "each subject",
                    )
                ]
            )
        warnings.warn(
            f"covariate {col} is missing on {int(gone.sum())} record(s) (first: row "
            f"{int(first['ROW'])}, ID {show_id(first['ID'])}); each subject's first given value "
            "is used",
            CohortWarning,
            stacklevel=3,
        )
    if changing:
        warnings.warn(
            f"covariates {changing} change within a subject; the fit uses each subject's "
            "first (baseline) value",
            CohortWarning,
            stacklevel=3,
        )
    effects, columns = [], []
    names = spec.names
    for p in spec.params:
        for c in p.covariates:
            if c.column not in cov:
                raise DataError(
                    [
                        Problem(
                            None,
                            c.column,
                            f"covariate {c.column!r} of parameter {p.name!r} "
                            f"is not in the data; its covariate columns: "
                            f"{list(cov.columns) or 'none'} (every column but the standard "
                            "NONMEM ones; a column of text, e.g. SEX as M/F, is left out: "
                            "recode it as numbers)",
                        )
                    ]
                )
            x = cov[c.column].to_numpy(dtype=float)
            bad = np.flatnonzero(~np.isfinite(x))
            if bad.size:
                raise DataError(
                    [
                        Problem(
                            None, c.column, f"missing value for subject ID {show_id(data.ids[i])}"
                        )
                        for i in bad
                    ]
                )
            ref = c.ref
            if c.kind == "power":
                ref = c.ref if c.ref is not None else float(np.median(x))
                if ref <= 0:
                    raise DataError(
                        [
                            Problem(
                                None,
                                c.column,
                                f"a power covariate's reference must be > 0, got {ref:g}",
                            )
                        ]  # fmt: skip
                    )
                if np.any(x <= 0):
                    raise DataError(
                        [
                            Problem(
                                None,
                                c.column,
                                f"subject ID {show_id(data.ids[i])}: {x[i]:g}; a "
                                "power covariate (x/ref)^θ must be > 0",
                            )  # fmt: skip
                            for i in np.flatnonzero(x <= 0)
                        ]
                    )
                z = np.log(x / ref)
            elif c.kind == "exp":
                ref = c.ref if c.ref is not None else float(np.median(x))
                z = x - ref
            elif c.ref is not None:  # an indicator by threshold, e.g. NONMEM's APGR.LT.5
                z = (x < c.ref).astype(float)
            else:
                if not np.all(np.isin(x, (0, 1))):
                    raise DataError(
                        [
                            Problem(
                                None,
                                c.column,
                                "a binary covariate must be 0 or 1 per subject (or give a "
                                "threshold: ref=5 means 1 where the column is below 5)",
                            )
                        ]
                    )
                z = x
            effects.append(
                Effect(
                    p.name,
                    names.index(p.name),
                    c.column,
                    c.kind,
                    len(columns),
                    c.fixed,
                    c.init,
                    ref,
                )
            )
            columns.append(z)
    feats = np.stack(columns, axis=1) if columns else np.zeros((data.n_subjects, 0))
    return tuple(effects), feats


INFERENCE_ODE_DEFAULT = Adaptive(rtol=1e-6, atol=1e-9, max_steps=4096)


def bind(spec: NLME, data: Dataset, engine: Any = "auto", options=None) -> BoundModel:
    """Bind ``spec`` to ``data`` (checked against ``spec.model``). ``engine`` selects the
    prediction engine as ``cohort.simulate`` does: an engine object (``ClosedForm()`` for
    linear PK, ``Adaptive(rtol=..., atol=...)``) or ``auto``/``closed_form``/``diffrax``
    (``options``: the older way to give the adaptive engine's settings; default rtol 1e-6,
    atol 1e-9, 4096 steps). The fixed-step engine is not offered: likelihood gradients need
    the adaptive or exact solution."""
    data = data.with_model(spec.model)
    table = data.event_table(spec.model)
    try:
        chosen = resolve_engine(spec.model, engine, options)
    except InputError as exc:
        raise SpecError(str(exc).replace("method:", "engine:", 1)) from None
    if isinstance(chosen, ClosedForm):
        engine, options = "closed_form", None
    elif isinstance(chosen, Adaptive):
        explicit = isinstance(engine, Adaptive) or options is not None
        engine, options = "diffrax", (chosen if explicit else INFERENCE_ODE_DEFAULT)
    else:
        raise SpecError(
            f"engine: inference predicts with ClosedForm() or Adaptive(...), not {chosen!r}"
        )
    if np.any((table.rate == -2) & (table.evid == 1)):
        raise DataError(
            [
                Problem(
                    None,
                    "RATE",
                    "RATE=-2 (modelled duration) is not supported in fits yet; give each "
                    "infusion's rate in the dataset (RATE = AMT / duration; cohort simulate "
                    "runs RATE=-2 with a D_<cmt> parameter)",
                )
            ]
        )
    n_ss = np.sum(table.ss & (table.evid == 1), axis=1)
    if engine == "diffrax" and np.any(n_ss > 1):
        raise DataError([Problem(None, "SS", "the ODE path supports one SS=1 record per subject")])
    _check_observed_compartments(spec, data)
    _check_one_observation_kind(spec, data)
    effects, feats = _features(spec, data)
    obs = data.observations
    if obs.cens.any() and spec.error.kind == "log-additive" and np.any(obs.lloq[obs.cens] <= 0):
        raise DataError([Problem(None, "LLOQ", "log-additive error needs LLOQ > 0")])
    nonpositive = obs.mask & ~obs.cens & (obs.dv <= 0)
    if spec.error.kind == "log-additive" and nonpositive.any():
        rows, values = obs.row[nonpositive], obs.dv[nonpositive]
        first = ", ".join(f"{int(r)} ({v:g})" for r, v in zip(rows[:5], values[:5]))
        logged = (obs.dv[obs.mask] < 0).mean() > 0.1  # many negative values: logs, not BLQ
        raise DataError(  # one line for all of them (56 repeats of one message, a probe)
            [
                Problem(
                    int(rows[0]) if rows.size == 1 else None,
                    "DV",
                    f"DV <= 0 on {rows.size} uncensored observation(s), rows {first}"
                    + (", ..." if rows.size > 5 else "")
                    + ": log-additive error takes DV as concentrations and fits their logs; "
                    + (
                        "these look log-transformed already: give exp(DV) as DV; " if logged else ""
                    )  # fmt: skip
                    + "mark samples below the LLOQ with CENS=1 and LLOQ, or use another error "
                    "model",
                )
            ]
        )
    ev = {k: jnp.asarray(v) for k, v in table.arrays().items()}
    for key in ("time", "amt", "rate", "ii"):
        ev[key] = ev[key].astype(jnp.float64)
    arrays = {
        "time": jnp.asarray(obs.prediction_times()),
        "dv": jnp.asarray(obs.dv),
        "mask": jnp.asarray(obs.mask),
        "cens": jnp.asarray(obs.cens),
        "lloq": jnp.asarray(obs.lloq),
        "features": jnp.asarray(feats),
        "ev": ev,
    }
    iiv = tuple(k for k, p in enumerate(spec.params) if p.iiv)
    bm = BoundModel(
        spec=spec,
        data=data,
        effects=effects,
        features=feats,
        iiv=iiv,
        engine=engine,
        options=options or INFERENCE_ODE_DEFAULT,
        with_infusion=table.has_infusion,
        has_ss=table.has_ss,
        has_reset=table.has_reset or table.has_ss,
        arrays=arrays,
        has_cens=bool(np.any(obs.cens & obs.mask)),
    )
    if engine == "closed_form" and _dosing_is_fixed(bm):
        # F, lags and durations are constants: resolve the records once, outside the likelihood.
        ev["changes"] = _resolved(bm, ev)._asdict()
    return bm


def _check_observed_compartments(spec: NLME, data: Dataset, show: int = 3) -> None:
    """Observation records whose CMT points elsewhere than the fitted output are refused: the
    fit compares every DV with that one output, so PD observations (or a depot CMT) in a PK
    fit were silently fitted as concentrations (measured: CL 7e-9 from a PK+PD file)."""
    rec = data.records
    if "CMT" not in rec:
        return
    obs = rec[(rec["EVID"] == 0) & (rec["MDV"] == 0) & rec["CMT"].notna()]
    if obs.empty:
        return
    model, output = spec.model, spec.output
    reads = model.output_states(output)
    numbers = {model.state_names.index(x) + 1 for x in reads}
    problems = []
    for row, value in zip(obs["ROW"].tolist(), obs["CMT"].tolist()):
        try:
            ok = float(value) in numbers
            shown = f"CMT {float(value):g} ({model.state_names[int(float(value)) - 1]})"
        except (TypeError, ValueError, IndexError):
            ok = str(value) in (output, *reads)
            shown = f"CMT {value!r}"
        if not ok:
            problems.append(int(row))
            if len(problems) == 1:
                first = shown
    if problems:
        rows = ", ".join(map(str, problems[:show])) + (" ..." if len(problems) > show else "")
        cmts = ", ".join(f"{n} ({x})" for n, x in zip(sorted(numbers), reads))
        raise DataError(
            [
                Problem(
                    problems[0],
                    "CMT",
                    f"{first} on an observation (rows {rows}; {len(problems)} in all): the fit "
                    f"compares every DV with {output!r}, which reads CMT {cmts}; give its "
                    f"observations CMT {min(numbers)} or {output!r}, and fit other outputs' "
                    "observations separately (one output per fit: `cohort fit --output` or "
                    "NLME(output=...); a twin prior's [error] output)",
                )
            ]
        )


def _check_one_observation_kind(spec: NLME, data: Dataset) -> None:
    """Observations of several ``DVID`` kinds (a PK/PD file: concentrations and effects) are
    refused: the fit compares every DV with one output through one error model, so the
    effects were fitted as concentrations without a word (a probe: σ_add 31 mg/L)."""
    kinds = observation_kinds(data.records)
    if len(kinds) <= 1:
        return
    found = list(kinds)
    counts = ", ".join(f"{'DVID ' + k if k else 'no DVID'}: {len(r)}" for k, r in kinds.items())
    other = int(kinds[found[1]][0])  # the first row of the second kind
    first = next(k for k in found if k)
    raise DataError(
        [
            Problem(
                other,
                "DVID",
                f"observations of {len(found)} kinds ({counts} records); the fit compares "
                f"every DV with {spec.output!r} through one error model, so they would be "
                f"fitted as one: keep one kind's observations (`cohort fit --dvid {first}`; "
                f"read_nonmem(..., dvid={first!r}) or cohort.fit(..., dvid={first!r}); twins: "
                "records of that DVID and the doses) and fit each other kind with the output "
                "it measures",
            )
        ]
    )


def check_measured_zeros(bm: BoundModel) -> None:
    """Refuse observed DVs of exactly 0 under proportional error (a fit's data, not a design
    whose DVs are placeholders): their residual is −1/σ whatever the prediction."""
    obs = bm.data.observations
    zero = obs.mask & ~obs.cens & (obs.dv == 0)
    if bm.spec.error.kind != "proportional" or not zero.any():
        return
    raise DataError(
        [
            Problem(
                int(r),
                "DV",
                "DV 0 under proportional error: its residual is -1/sigma whatever the "
                "prediction, so it only inflates sigma (and drags the estimates); mark it "
                "MDV=1 (e.g. a pre-dose or within-lag zero), as below the LLOQ (CENS=1 with "
                "LLOQ), or use combined error",
            )
            for r in obs.row[zero]
        ]
    )


_RESOLVERS: dict = {}  # (model, parameter mapping, infusion, resets) -> jitted resolver


def _resolved(bm: BoundModel, ev: dict) -> Changes:
    spec = bm.spec
    key = (
        spec.model.fingerprint(),
        spec.params,
        spec.transform,
        tuple(sorted(spec.fixed.items())),
        bm.with_infusion,
        bm.has_reset,
    )
    if key not in _RESOLVERS:
        if len(_RESOLVERS) >= 32:
            _RESOLVERS.clear()
        k = len(spec.params)

        @jax.jit
        def run(ev):
            p0 = bm.model_params(jnp.zeros((ev["time"].shape[0], k)))
            return jax.vmap(lambda e, q: resolve(spec.model, e, q, bm.with_infusion, bm.has_reset))(
                ev, p0
            )

        _RESOLVERS[key] = run
    return _RESOLVERS[key](ev)


def _dosing_is_fixed(bm: BoundModel) -> bool:
    """Whether the dose-shaping parameters (F, ALAG, D_<cmt>) are the same for any estimates."""
    m = bm.spec.model
    names = set(m.bioavailability.values()) | set(m.lag.values()) | set(m.duration.values())
    if not names:
        return True
    k = len(bm.spec.params)
    draws = np.random.default_rng(0).normal(size=(2, k))
    a = bm.model_params(draws)  # numpy unless the user's transform calls JAX
    return all(float(a[n][0]) == float(a[n][1]) for n in names if n in a)
