"""``run``: every arm of every replicate trial simulated as one vectorized cohort.

Replicate ``r``'s enrolled patient ``j`` is cohort patient ``r * n + j`` (simulation row
``sim_row``; response-adaptive designs simulate every patient under every arm, row
``arm * replicates * n + r * n + j``): one ``simulate`` call
covers replicates x patients (chunked by the engine and streamed to zarr with ``out``), so a
1,000-replicate trial costs one large closed-form or fast-path solve instead of 1,000 small
ones. Per-arm dosing becomes one padded event table indexed by each patient's arm. Measured
observations, dropout and endpoints are computed with array operations afterwards.

Store layout (``out``): the engine's result store at the root (outputs at simulation times,
parameters, status), group ``trial`` (per-patient replicate, arm, stratum, dropout, endpoints,
covariates; attrs hold the spec) and, after :func:`cohort.trial.analyze` with ``out``, group
``analysis``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cohort._version import __version__
from cohort.dosing import EventTable, Regimen, event_table
from cohort.engine.simulate import simulate
from cohort.errors import CohortWarning
from cohort.models import get as get_model
from cohort.store.lock import locks_output
from cohort.trial import adaptive, design, endpoints, groups
from cohort.trial.schema import TrialSpecError, from_json, to_json
from cohort.trial.spec import TrialSpec, load


@dataclasses.dataclass
class TrialResult:
    """A simulated trial: the spec, the simulation (``patient`` x ``time``) and per-patient
    trial data (``patient``: replicate, arm, stratum, dropout time, endpoints, covariates)."""

    spec: TrialSpec
    simulation: xr.Dataset
    patients: xr.Dataset
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.spec.replicates, self.spec.n

    def grid(self, name: str) -> np.ndarray:
        """A per-patient variable reshaped to ``[replicates, n]``."""
        return np.asarray(self.patients[name].values).reshape(self.shape)


def _arm_tables(spec: TrialSpec, model) -> EventTable:
    """One event-table row per arm, padded to a common record count."""
    rows = []
    for arm in spec.arms:
        regs = [Regimen(**g) for g in arm.regimens] or [Regimen(amt=0.0, cmt=model.dose_targets[0])]
        rows.append(event_table(regs, model.state_names, model.dose_targets, None))
    e = max(t.n_records for t in rows)
    fields = {}
    for f in ("time", "amt", "rate", "cmt", "evid", "ss", "ii"):
        fill = np.inf if f == "time" else 0
        arrs = []
        for t in rows:
            a = getattr(t, f)
            pad = np.full((1, e - a.shape[1]), fill, dtype=a.dtype)
            arrs.append(np.concatenate([a, pad], axis=1))
        fields[f] = np.concatenate(arrs, axis=0)
    return EventTable(**fields, state_names=tuple(model.state_names))


def simulation_times(spec: TrialSpec, jumps=()) -> np.ndarray:
    """Sampling times plus a regular grid (for bands, unobserved endpoints and hazards), and
    just before each of them that is a time in ``jumps`` (a bolus or reset of any arm) a
    pre-dose copy (see :func:`endpoints.pre_dose_time`): a sample drawn at a dose time is
    taken before the dose, and an AUC window ending there stops before it."""
    t_end = max(spec.times)
    grid = np.arange(0.0, t_end + 1e-9, spec.grid_step)
    base = np.unique(np.round(np.concatenate([grid, spec.times]), 9))
    jumps = np.asarray(list(jumps), float)
    pre = [endpoints.pre_dose_time(t) for t in base if np.any(np.isclose(jumps, t, atol=1e-9))]
    return np.unique(np.concatenate([base, pre]))


def check_ss_samples(spec: TrialSpec, table: EventTable) -> None:
    """Refuse a value, trough or baseline at the time of a steady-state (SS=1) dose: the
    engines impose the steady state at the record time, so there is no pre-dose value there
    (it came out as 0); the same trough is one interval later."""
    ss = (table.evid == 1) & (table.ss != 0) & np.isfinite(table.time)
    starts = np.unique(table.time[ss])
    for i, e in enumerate(spec.endpoints):
        for name in ("time", "baseline"):
            t = getattr(e, name, None)
            if e.type in ("ctrough", "value", "change") and t is not None:
                hit = np.isclose(starts, t, rtol=0, atol=1e-9 * max(1.0, abs(t)))
                if hit.any():
                    ii = float(
                        np.max(
                            table.ii[ss][
                                np.isclose(table.time[ss], t, rtol=0, atol=1e-9 * max(1.0, abs(t)))
                            ]
                        )
                    )
                    where = f"{spec.path}: " if spec.path else ""
                    raise TrialSpecError(
                        f"{where}[endpoints[{i}].{name}] {t:g} is the time of a "
                        "steady-state dose (ss = true), where no pre-dose sample exists in the "
                        f"simulation; take it one interval later ({t + ii:g}): the steady state "
                        "repeats every ii"
                    )


def jump_times(table: EventTable) -> np.ndarray:
    """Times at which some arm's state jumps: boluses (and doses whose rate is not given,
    which become boluses) and EVID 3/4 resets."""
    # a steady-state dose (SS=1) is left out: before its record time the engines hold no
    # steady state (see :func:`check_ss_samples`)
    bolus = (table.evid == 1) & (table.amt != 0) & (table.rate == 0) & (table.ss == 0)
    reset = (table.evid == 3) | (table.evid == 4)
    t = table.time[(bolus | reset) & np.isfinite(table.time)]
    return np.unique(t)


@locks_output("out")
def run(
    spec: TrialSpec | str | Path,
    out: str | Path | None = None,
    seed: int | None = None,
    *,
    replicates: int | None = None,
    n: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    chunk_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cluster: Any = None,
) -> TrialResult:
    """Simulate all arms x replicates of the trial in ``spec`` (a path or a :class:`TrialSpec`).

    ``seed``, ``replicates`` and ``n`` override the spec. Same spec + seed = same trial.
    ``resume=True`` finishes an interrupted run into ``out`` (its simulation continues where
    it stopped; endpoints and analysis are recomputed): the store equals a clean run's.
    ``cluster`` (a Dask Client, Cluster or scheduler address; needs ``out``) solves the
    replicates' patients on its workers, bit-identical to a local run."""
    if not isinstance(spec, TrialSpec):
        spec = load(spec)
    for name, value, lo in (("replicates", replicates, 1), ("n", n, 1), ("seed", seed, 0)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < lo):
            raise TrialSpecError(f"{name}: must be an integer >= {lo}, got {value!r}")
    spec = spec.with_(
        seed=spec.seed if seed is None else int(seed),
        replicates=spec.replicates if replicates is None else int(replicates),
        n=spec.n if n is None else int(n),
    )
    if spec.n < 2 * len(spec.arms):
        # fewer would leave an arm with 0-1 patients: its mean, SD and every comparison NaN
        where = f"{spec.path}: [trial.n] (or --n)" if spec.path else "n:"
        raise TrialSpecError(
            f"{where} {spec.n} patients per trial cannot give each of the {len(spec.arms)} arms "
            f"the two patients its statistics need; use n >= {2 * len(spec.arms)}"
        )
    model = get_model(spec.model)
    reps, n_per = spec.replicates, spec.n
    total = reps * n_per
    pop = design.enroll(
        spec.prior, total, spec.seed, spec.inclusion, spec.exclusion,
        needed_for=f" ({reps} trial(s) x {n_per} patients)",
    )  # fmt: skip
    strata = design.strata_codes(pop, spec.strata)
    arm = design.allocate(
        strata.reshape(reps, n_per),
        spec.ratio,
        spec.block_size,
        design.rng(spec.seed, "allocation"),
        n_strata=2 ** len(spec.strata),  # strata_codes' bit patterns
    ).reshape(-1)
    # Response-adaptive designs simulate every patient under every arm (potential outcomes).
    copies = len(spec.arms) if spec.adaptive is not None else 1
    sim_arm = np.repeat(np.arange(copies), total) if copies > 1 else arm
    source = np.tile(np.arange(total), copies)
    tables = _arm_tables(spec, model)
    check_ss_samples(spec, tables)
    times = simulation_times(spec, jump_times(tables))
    outputs = sorted(
        {e.output for e in spec.endpoints if e.output} | {a.output for a in spec.assays}
    )
    params = {
        k: np.asarray(pop[k].values)[source] for k in pop.data_vars if k in model.parameter_names
    }
    sim = simulate(
        model,
        params,
        tables.select(sim_arm),
        times,
        outputs=outputs,
        method=spec.method,
        dtype=spec.dtype,
        chunk_size=chunk_size,
        out=None if out is None else str(out),
        overwrite=overwrite,
        resume=resume,
        seed=spec.seed,
        progress=progress,
        cluster=cluster,
        # with the store's layout: a run killed after its batches but before the trial table
        # read as a finished simulation ("ok=60,000", a probe)
        attrs=None if out is None else groups.planned_attrs(["trial"]),
    )
    dropout = design.dropout_times(total, spec.dropout_hazard, design.rng(spec.seed, "dropout"))
    values = _endpoint_values(spec, sim, times, outputs, dropout[source])
    row = np.arange(total)
    if copies > 1:
        outcome = values[spec.adaptive.endpoint].reshape(copies, reps, n_per)
        arm = adaptive.thompson(
            spec.adaptive, outcome, arm.reshape(reps, n_per), design.rng(spec.seed, "adaptive")
        ).reshape(-1)
        row = arm * total + row
    values = {k: v[row] for k, v in values.items()}
    patients = _patients(spec, pop, values, row, arm, strata, dropout)
    result = TrialResult(spec, sim, patients, None if out is None else Path(out))
    if out is not None:
        groups.plan(out, ["trial"])
        patients.to_zarr(str(out), group="trial", mode="w", consolidated=False)
        groups.mark_done(out, "trial")
    return result


def potential_outcomes(
    spec: TrialSpec, pool: int, seed: int | None = None
) -> dict[str, np.ndarray]:
    """Endpoints ``[arms, pool]`` of ``pool`` eligible patients each simulated under every arm
    (one vectorized cohort; assay error applied, no dropout). Used for dose escalation and
    dose–PTA sweeps, where the same virtual patient is needed at every dose."""
    seed = spec.seed if seed is None else int(seed)
    spec = spec.with_(seed=seed, dropout_hazard=0.0)
    model = get_model(spec.model)
    levels = len(spec.arms)
    pop = design.enroll(
        spec.prior, pool, seed, spec.inclusion, spec.exclusion,
        needed_for=" (patients simulated under every arm)",
    )  # fmt: skip
    source = np.tile(np.arange(pool), levels)
    params = {
        k: np.asarray(pop[k].values)[source] for k in pop.data_vars if k in model.parameter_names
    }
    tables = _arm_tables(spec, model)
    check_ss_samples(spec, tables)
    times = simulation_times(spec, jump_times(tables))
    outputs = sorted(
        {e.output for e in spec.endpoints if e.output} | {a.output for a in spec.assays}
    )
    arm = np.repeat(np.arange(levels), pool)
    sim = simulate(
        model,
        params,
        tables.select(arm),
        times,
        outputs=outputs,
        method=spec.method,
        dtype=spec.dtype,
    )
    values = _endpoint_values(spec, sim, times, outputs, np.full(len(arm), np.inf))
    return {k: v.reshape(levels, pool) for k, v in values.items()}


def _endpoint_values(spec, sim, times, outputs, dropout) -> dict[str, np.ndarray]:
    """Observations (assay error, LLOQ, dropout) and endpoints for every simulated row;
    rows whose solve failed get NaN endpoints."""
    sample_t = np.round(np.asarray(spec.times), 9)
    after = np.searchsorted(times, sample_t)  # the value after any dose at the sample time
    before = endpoints.pre_dose_columns(times, after)
    assays = {a.output: a for a in spec.assays}
    # one stream per output, and per patient in enrolment order inside it (see observe):
    # a patient's assay errors do not depend on how many patients or replicates are run
    gens = design.rng(spec.seed, "assay").spawn(len(outputs))
    true, obs, obs_after, blq, blq_after = {}, {}, {}, {}, {}
    for o, gen in zip(outputs, gens, strict=True):
        true[o] = np.asarray(sim[o].values, dtype=float)
        (obs[o], blq[o]), (obs_after[o], blq_after[o]) = endpoints.observe(
            true[o][:, before], assays.get(o), gen, true[o][:, after]
        )
        if spec.estimand != "hypothetical":
            gone = sample_t[None, :] > dropout[:, None]
            obs[o][gone] = obs_after[o][gone] = np.nan
    lloq = {a.output: a.lloq for a in spec.assays}
    values = endpoints.compute(
        spec.endpoints,
        endpoints.Samples(obs, obs_after, blq, blq_after),
        lloq,
        sample_t,
        true,
        times,
        dropout,
        spec.estimand,
        design.rng(spec.seed, "events"),
    )
    status = np.asarray(sim["status"].values)
    ok = status == 0
    if not ok.all():
        _warn_failed(status, len(spec.arm_names))
    return {k: np.where(ok, v, np.nan) for k, v in values.items()}


def _warn_failed(status: np.ndarray, arms: int) -> None:
    """Say that simulated patients failed: their endpoints are missing and the analyses leave
    them out, which biases an arm when failures are not random (a prior drawing Gb above
    t1d_minimal's range dropped the most hyperglycaemic patients without a word; a probe)."""
    from cohort.engine.status import STATUS_MEANINGS

    codes, counts = np.unique(status[status != 0], return_counts=True)
    why = ", ".join(f"{STATUS_MEANINGS.get(int(c), int(c))} {n:,}" for c, n in zip(codes, counts))
    warnings.warn(
        f"trial: {int(counts.sum()):,} of {status.size:,} simulated patients failed ({why}; "
        f"first: simulation row {int(np.flatnonzero(status != 0)[0])}); their endpoints are "
        "missing and the analyses leave them out, a bias where failures are not random: fix "
        "the prior (bounds within the model's ranges, `cohort models "
        f"MODEL`) or the solver options{' (over all arms)' if arms > 1 else ''}",
        CohortWarning,
        stacklevel=4,
    )


def _patients(spec, pop, values, row, arm, strata, dropout) -> xr.Dataset:
    reps, n_per = spec.replicates, spec.n
    data = {
        "replicate": ("patient", np.repeat(np.arange(reps), n_per)),
        "enrol_index": ("patient", np.tile(np.arange(n_per), reps)),
        "arm": ("patient", arm.astype(np.int64)),
        "stratum": ("patient", strata.astype(np.int64)),
        "dropout_time": ("patient", dropout),
        "sim_row": ("patient", row.astype(np.int64)),
    }
    units = _endpoint_units(spec)
    for k, v in values.items():
        data[k] = ("patient", v, {"units": units[k]} if k in units else {})
    for k in pop.data_vars:
        data[k] = ("patient", np.asarray(pop[k].values), dict(pop[k].attrs))
    attrs = {
        "trial": spec.name,
        "spec": to_json(spec),
        "spec_path": spec.path,
        "spec_hash": spec.digest,
        "seed": spec.seed,
        "replicates": reps,
        "n": n_per,
        "arms": json.dumps(list(spec.arm_names)),
        "eligible_fraction": float(pop.attrs.get("eligible_fraction", 1.0)),
        "cohort_version": __version__,
    }
    return xr.Dataset(data, coords={"patient": np.arange(reps * n_per)}, attrs=attrs)


def _endpoint_units(spec: TrialSpec) -> dict[str, str]:
    """Each endpoint's units from its output's and the model's time units (AUC: their
    product; responder and event flags: 1)."""
    model = get_model(spec.model)
    known, t = model.units(), model.time_units
    out = {}
    for ep in spec.endpoints:
        u = known.get(ep.output or "", "")
        if ep.type == "auc":
            out[ep.name] = f"{u}·{t}" if u else ""
        elif ep.type == "tte":
            out[ep.name], out[f"{ep.name}_event"] = t, "1"
        elif ep.type == "responder":
            out[ep.name] = "1"
        else:
            out[ep.name] = u
    return {k: v for k, v in out.items() if v}


def open_trial(path: str | Path) -> TrialResult:
    """Re-open a trial written by :func:`run` with ``out`` (the simulation stays lazy)."""
    from cohort.store import StoreError, open_result

    path = Path(path)
    sim = open_result(path)
    if "trial" in groups.unfinished(path):
        raise StoreError(groups.incomplete_message(path, ["trial"]))
    if "incomplete" in sim.attrs:
        raise StoreError(
            f"{str(path)!r} is an incomplete trial store (the run was interrupted); finish it "
            "with `cohort trial SPEC -o STORE --resume` (the same spec and options)"
        )
    try:
        patients = xr.open_zarr(str(path), group="trial", consolidated=False, chunks=None)
    except Exception:  # noqa: BLE001 - zarr raises several types for a missing group
        raise StoreError(
            f"{str(path)!r} holds no trial (no group 'trial'): give a store written by "
            "`cohort trial -o`, or one whose trial run finished"
        ) from None
    return TrialResult(from_json(patients.attrs["spec"]), sim, patients.load(), path)
