"""Forecasts: posterior-predictive bands of every output under a regimen, and the probability
of attaining clinical targets, for every twin at once.

Each patient's posterior draws become individual parameters; the engine
(:func:`cohort.simulate`) solves all patients × draws as one cohort under the patient's past
doses plus the proposed regimen; quantiles over draws give the bands. The observed output also
gets bands with residual error (where the next measurement is expected to fall).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from cohort._version import __version__
from cohort.dosing import EventTable, Regimen, regimens_frame
from cohort.errors import CohortWarning
from cohort.inference import likelihood
from cohort.twin import posterior
from cohort.twin.prior import TwinError, show_id
from cohort.twin.targets import Target

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_DOSE_COLUMNS = ["ID", "TIME", "EVID", "AMT", "CMT", "RATE", "ADDL", "II", "SS"]


def regimen_frame(twins, regimen) -> pd.DataFrame:
    """Future dose records for every patient: ``regimen`` is a :class:`Regimen` or a list of
    them (the same for every patient, absolute times), or NONMEM-style dose rows with ``ID``."""
    model = twins.prior.model
    if regimen is None:
        return pd.DataFrame(columns=_DOSE_COLUMNS)
    if isinstance(regimen, pd.DataFrame):
        frame = regimen.copy()
        frame.columns = [str(c).upper() for c in frame.columns]
        unknown = sorted(set(frame["ID"]) - set(twins.ids.tolist()))
        if unknown:
            raise TwinError(
                f"regimen: ID {show_id(unknown[0])} is not one of these twins' patients"
            )
        frame["EVID"] = frame.get("EVID", 1)
        if "CMT" in frame:  # CMT 0 (Regimen's "default"): the model's first dose target
            frame["CMT"] = (
                frame["CMT"].astype(object).where(frame["CMT"] != 0, model.dose_targets[0])
            )
        return frame
    regs = [regimen] if isinstance(regimen, Regimen) else list(regimen)
    if not all(isinstance(r, Regimen) for r in regs):
        raise TwinError("regimen: give a Regimen, a list of Regimens or dose rows with ID")
    one = regimens_frame(regs, model.dose_targets)
    frames = [one.assign(ID=pid) for pid in twins.ids]
    return pd.concat(frames, ignore_index=True)


def event_records(twins, regimen) -> pd.DataFrame:
    """Past dose/reset records of every patient followed by the future ``regimen``."""
    rec = twins.data.to_frame()
    past = rec[rec["EVID"] != 0]
    future = regimen_frame(twins, regimen)
    cols = [c for c in _DOSE_COLUMNS if c in past.columns or c in future.columns]
    frame = pd.concat([past.reindex(columns=cols), future.reindex(columns=cols)], ignore_index=True)
    frame["DV"] = np.nan
    frame["MDV"] = 1
    for c, default in (("RATE", 0.0), ("ADDL", 0), ("II", 0.0), ("SS", 0), ("AMT", 0.0)):
        frame[c] = frame[c].fillna(default) if c in frame else default
    if frame["CMT"].isna().any():
        frame["CMT"] = (
            frame["CMT"]
            .astype(object)
            .where(frame["CMT"].notna(), twins.prior.model.dose_targets[0])
        )
    order = {pid: k for k, pid in enumerate(twins.ids)}
    idx = np.lexsort(
        (np.arange(len(frame)), frame["TIME"].to_numpy(float), frame["ID"].map(order).to_numpy())
    )
    return frame.iloc[idx].reset_index(drop=True)


def check_future(twins, regimen) -> None:
    """A forecast's regimen is what comes next: a dose before a patient's last record would
    rewrite a past that the posterior was fitted to without it (past doses belong in the
    records: ``update``)."""
    future = regimen_frame(twins, regimen)
    if future.empty:
        return
    rec = twins.data.to_frame()
    last = rec.groupby("ID")["TIME"].max()
    first = pd.to_numeric(future["TIME"]).groupby(future["ID"]).min()
    early = first[first < last.reindex(first.index).to_numpy() - 1e-9]
    if not early.empty:
        pid = early.index[0]
        raise TwinError(
            f"regimen: the first planned dose of patient {show_id(pid)} is at TIME "
            f"{float(early.iloc[0]):g}, before its last record (TIME {float(last[pid]):g}); "
            "plan doses from the last record on; doses already given belong in the records "
            "(an update: `cohort twin update` or Twins.update)"
        )
    # a plan starting at the time of a recorded dose adds to it: a dose recommended "at 48 h"
    # came on top of the 1000 mg recorded at 48 h, without a word (a probe)
    doses = rec[rec["EVID"].isin((1, 4)) & (rec["AMT"] > 0)]
    given = doses.set_index(["ID", "TIME"])["AMT"].groupby(level=[0, 1]).sum()
    for pid, t in first.items():
        amt = given.get((pid, float(t)))
        if amt is not None:
            warnings.warn(
                f"regimen: patient {show_id(pid)}'s first planned dose is at TIME {float(t):g}, "
                f"where its records already hold a dose ({float(amt):g}); the planned doses "
                "add to it. If the recorded dose is the first of this plan, start the plan at "
                "the next dose time",
                CohortWarning,
                stacklevel=3,
            )
            break


def event_table(twins, regimen) -> EventTable:
    from cohort.data import read_nonmem

    frame = event_records(twins, regimen)
    if frame.empty:
        raise TwinError("forecast: no doses at all (past or in the regimen)")
    model = twins.prior.model
    data = read_nonmem(frame, model)
    table = data.event_table(model)
    missing = sorted(set(twins.ids.tolist()) - set(data.ids.tolist()))
    if missing:  # patients without any dose: pad them in with empty rows
        raise TwinError(f"forecast: patient {show_id(missing[0])} has no dose, past or planned")
    return table


def forecast(
    twins,
    regimen=None,
    times: Sequence[float] | None = None,
    *,
    targets: Sequence[Target] = (),
    n_draws: int = 500,
    seed: int = 0,
    outputs: Sequence[str] | None = None,
    quantiles: Sequence[float] = QUANTILES,
) -> xr.Dataset:
    """Posterior-predictive quantiles ``[patient, quantile, time]`` of each output (and of the
    observed output with residual error, ``<output>_obs``), and for each target its quantiles
    ``[patient, quantile]`` and ``pta_<k>`` (probability of attainment per patient)."""
    from cohort.engine.simulate import simulate

    model = twins.prior.model
    outputs = tuple(outputs or model.output_names)
    for o in outputs:
        if o not in model.output_names:
            raise TwinError(f"outputs: {o!r} is not an output of {model.name!r}")
    for t in targets:
        if t.output not in model.output_names:
            raise TwinError(f"target {t.name}: {t.output!r} is not an output of {model.name!r}")
    if int(n_draws) < 2:
        raise TwinError(f"n_draws: bands need at least 2 posterior draws, got {n_draws}")
    check_future(twins, regimen)
    table = event_table(twins, regimen)
    if times is None:
        # from 0 to a day past the last record or planned dose, and past every target window
        doses = table.time[(table.evid == 1) & np.isfinite(table.time)]
        end = max(float(twins.data.records["TIME"].max()), float(doses.max(initial=0.0)))
        end = max([end + 24.0, *[float(np.max(t.times())) for t in targets]])
        times = np.arange(0.0, end + 1e-9, 0.5)
    times = np.asarray(times, float)
    grid = np.unique(np.concatenate([times, *[t.times() for t in targets]]))
    n, s = twins.n, int(n_draws)
    eta = twins.eta_draws(s, seed)  # [N, S, q]
    params = twins.bound.model_params(twins.log_params(eta).reshape(n * s, -1))
    params = {k: np.asarray(v, float).reshape(-1) for k, v in params.items()}
    rows = np.repeat(np.arange(n), s)
    sim = simulate(model, params, table.select(rows), grid, outputs=list(outputs))
    q = np.asarray(quantiles, float)
    pos = np.searchsorted(grid, times)
    ds = xr.Dataset(coords={"patient": twins.ids, "quantile": q, "time": times})
    units = model.units()
    status = sim["status"].to_numpy().reshape(n, s)
    values = {o: sim[o].to_numpy().reshape(n, s, -1) for o in outputs}
    for o in outputs:
        band = np.nanquantile(values[o][:, :, pos], q, axis=1)  # [Q, N, T]
        ds[o] = (
            ("patient", "quantile", "time"),
            np.moveaxis(band, 0, 1),
            {"units": units.get(o, ""), "long_name": f"{o}, posterior quantiles"},
        )
    obs = twins.prior.output
    if obs in values:
        kind, add, prop = twins.prior.error
        eps = posterior.patient_normals(seed + 1, twins.ids, values[obs].shape[1:])
        y = np.asarray(
            likelihood.simulate_dv_eps(
                kind, jnp.asarray([add, prop]), jnp.asarray(values[obs]), jnp.asarray(eps)
            )
        )
        band = np.nanquantile(y[:, :, pos], q, axis=1)
        long_name = f"next measured {obs} (with residual error)"
        if obs.startswith("conc"):  # an assay reports no negative concentration
            band = np.maximum(band, 0.0)
            long_name += "; quantiles below 0 shown as 0"
        ds[f"{obs}_obs"] = (
            ("patient", "quantile", "time"),
            np.moveaxis(band, 0, 1),
            {"units": units.get(obs, ""), "long_name": long_name},
        )
    for k, t in enumerate(targets):
        idx = np.searchsorted(grid, t.times())
        v = t.value(np, values[t.output][:, :, idx])  # [N, S]
        ds[f"target_{k}"] = (
            ("patient", "quantile"),
            np.moveaxis(np.nanquantile(v, q, axis=1), 0, 1),
            {
                "name": t.name,
                "label": t.label,
                "units": t.units(units.get(t.output, ""), model.time_units),
            },
        )
        ds[f"pta_{k}"] = (
            "patient",
            np.mean(t.attained(v) & np.isfinite(v), axis=1),
            {"name": t.name, "label": t.label, "long_name": f"P({t.label})"},
        )
    ds["failed_draws"] = (
        "patient",
        np.sum(status != 0, axis=1),
        {"long_name": "posterior draws whose solve failed"},
    )
    ds.attrs.update(
        model=model.name,
        prior=twins.prior.name,
        method=twins.method,
        n_draws=s,
        seed=seed,
        time_units=model.time_units,
        cohort_version=__version__,
    )
    return ds
