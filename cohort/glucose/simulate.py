"""``run``: a closed-loop glucose cohort (UVA/Padova) into xarray/zarr, with glycaemic metrics.

Patients are cut into chunks of ``chunk_size`` (the last one padded, so one compiled solve
serves every chunk); each chunk runs :func:`cohort.engine.closed_loop.solve_closed_loop` on the
next of JAX's local devices (round robin, dispatched asynchronously: one chunk in flight per
device plus one) and, with ``out``, is written to a zarr result store as it completes, so memory
stays flat in the number of patients. On CPU, give JAX one device per core to use them all
(:func:`cohort.use_cpu_cores` before JAX's first use, as the ``cohort`` CLI does; one XLA
CPU device runs this loop on one core). Metrics
(:func:`cohort.glucose.metrics.glycemic_metrics` on the true subcutaneous glucose ``Gsub``) are
added per patient.
"""

from __future__ import annotations

import collections
import datetime
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
import zarr

from cohort._version import __version__
from cohort.engine.closed_loop import ClosedLoopOptions, MealInputs, solve_closed_loop
from cohort.engine.inputs import InputError, population_arrays
from cohort.engine.simulate import result_dataset
from cohort.engine.status import STATUS_MEANINGS, Status
from cohort.glucose.controllers import controller as named_controller
from cohort.glucose.metrics import CVGA_ZONES, metric_arrays, metrics_dataset, time_weights
from cohort.glucose.scenarios import MealScenario
from cohort.glucose.scenarios import scenario as named_scenario
from cohort.models import get
from cohort.store import ResultStore, open_result
from cohort.store.lock import locks_output

_OUTPUTS = {
    "Gsub": ("mg/dL", "subcutaneous (interstitial) glucose, true value"),
    "CGM": ("mg/dL", "sensor glucose seen by the controller"),
    "insulin": ("U/min", "insulin delivered, mean over the period starting at time"),
}


def _meal_inputs(sc: MealScenario, dtype: str) -> MealInputs:
    def arr(x):
        return np.asarray(x, dtype)

    return MealInputs(
        start=arr(sc.start),
        grams=arr(sc.grams),
        eat_rate=arr(sc.eat_rate),
        announced=arr(sc.announced_grams()),
        bolus=arr(sc.bolus),
        profile=arr(sc.profile),
    )


@jax.jit
def _device_metrics(gsub, weights):
    """Glycaemic metrics of time-major ``gsub`` ``[T, N]`` on its device, after the solve."""
    return metric_arrays(jnp.asarray(gsub, float).T, weights, jnp)


def _status(finite, min_scaled, invalid) -> np.ndarray:
    finite, min_scaled = np.asarray(finite), np.asarray(min_scaled)
    st = np.where(~finite, Status.NONFINITE, np.where(min_scaled < -1e-6, Status.NEGATIVE, 0))
    return np.where(invalid, int(Status.INVALID_PARAMETERS), st).astype(np.int8)


@locks_output("out")
def run(
    patients: Any,
    scenario: MealScenario | str = "random",
    controller: Any = "basal-bolus",
    days: float = 1.0,
    seed: int = 0,
    out: str | None = None,
    *,
    options: ClosedLoopOptions | None = None,
    chunk_size: int | None = None,
    dtype: str = "float64",
    out_dtype: str = "float32",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """Simulate ``patients`` (a DataFrame such as :func:`reference_patients`, or a dict of
    parameter arrays) for ``days`` under a meal ``scenario`` and an insulin ``controller``.

    Returns an ``xr.Dataset`` (dims ``patient``, ``time`` in min at the control period):
    ``Gsub``, ``CGM``, ``insulin``, ``status`` (0 ok), the parameters, and the glycaemic
    metrics per patient (TIR, TBR, ..., ``cvga_zone``). ``seed`` drives sensor noise and named
    random scenarios. With ``out`` the trajectories stream to a zarr store (returned lazily).
    """
    model = get("uva_padova")
    options = options or ClosedLoopOptions()
    try:
        options.steps_per_minute()
    except ValueError as exc:
        raise InputError(f"options: {exc}") from None
    params = population_arrays(model, patients, None)
    n_pat = len(params["BW"])
    n_periods = int(round(days * 1440.0 / options.period))
    if n_periods < 1:
        raise InputError(f"days: must cover at least one control period, got {days}")
    if isinstance(scenario, str):
        scenario = named_scenario(scenario, n_pat, math.ceil(days), seed)
    if scenario.n_patients != n_pat:
        raise InputError(f"scenario has {scenario.n_patients} patients, population {n_pat}")
    ctrl = named_controller(controller) if isinstance(controller, str) else controller
    devices = jax.local_devices()
    chunk_size = min(n_pat, chunk_size or min(10_000, math.ceil(n_pat / len(devices))))
    times = np.arange(n_periods + 1) * options.period
    attrs = {
        "title": f"closed-loop glucose cohort ({getattr(ctrl, 'name', type(ctrl).__name__)})",
        "cohort_version": __version__,
        "model": model.name,
        "controller": repr(ctrl),
        "closed_loop_options": repr(options),
        "seed": int(seed),
        "days": float(days),
        "meals_per_patient": int(scenario.start.shape[1]),
        "chunk_size": chunk_size,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "status_codes": [int(s) for s in Status],
        "status_meanings": " ".join(STATUS_MEANINGS[int(s)] for s in Status),
        "spec_hash": "closed-loop",
    }
    store = None
    if out is not None:
        store = ResultStore.create(
            out,
            n_patients=n_pat,
            times=times,
            time_units="min",
            outputs={k: {"units": u, "long_name": d} for k, (u, d) in _OUTPUTS.items()},
            parameters={
                q.name: {"units": q.units, "long_name": q.description} for q in model.parameters
            },  # fmt: skip
            dtype=out_dtype,
            chunk_size=chunk_size,
            attrs=attrs,
            overwrite=overwrite,
        )
    keep = {k: np.empty((n_pat, len(times)), out_dtype) for k in _OUTPUTS} if store is None else {}
    status = np.empty(n_pat, np.int8)
    metrics = []
    bounds = {q.name: (q.lower, q.upper, q.default) for q in model.parameters}
    weights = time_weights(times)

    def dispatch(k):
        idx = np.arange(k * chunk_size, min((k + 1) * chunk_size, n_pat))
        pad = np.concatenate([idx, np.full(chunk_size - len(idx), idx[-1])])
        invalid = np.zeros(len(pad), bool)
        p = {}
        for name, (lo, hi, default) in bounds.items():
            v = params[name][pad]
            bad = ~np.isfinite(v) | (v < lo) | (v > hi)
            invalid |= bad
            p[name] = np.where(bad, default, v).astype(dtype)
        args = (p, _meal_inputs(scenario.take(pad), dtype), pad, np.asarray(seed))
        device = devices[k % len(devices)]
        res = solve_closed_loop(
            model, ctrl, options, n_periods, *jax.device_put(args, device), dtype=out_dtype
        )
        res = (*res, _device_metrics(res[0]["Gsub"], jax.device_put(weights, device)))
        return k, idx, invalid, res

    def finish(k, idx, invalid, res):
        outs, finite, min_scaled, met = res
        st = _status(finite, min_scaled, invalid)[: len(idx)]
        block = {name: np.asarray(v)[:, : len(idx)].T.copy() for name, v in outs.items()}
        met = {name: np.asarray(v)[: len(idx)].copy() for name, v in met.items()}
        for name in block:
            block[name][st != 0] = np.nan
        for name in met:
            met[name][st != 0] = -1 if name == "cvga_code" else np.nan
        status[idx] = st
        template = xr.DataArray(idx, dims=("patient",), coords={"patient": idx})
        metrics.append(metrics_dataset(met, template))
        if store is not None:
            store.write_chunk(k, block, st, {name: params[name][idx] for name in bounds})
        else:
            for name, v in block.items():
                keep[name][idx] = v
        if progress:
            progress(int(idx[-1]) + 1, n_pat)

    pending = collections.deque()
    for k in range(math.ceil(n_pat / chunk_size)):
        pending.append(dispatch(k))
        if len(pending) > len(devices):
            finish(*pending.popleft())
    while pending:
        finish(*pending.popleft())
    met = xr.concat(metrics, dim="patient")
    if store is not None:
        store.finish()
        _append_metrics(met, out)
        ds = open_result(out)
        codes = ds["cvga_zone"].values
        ds["cvga_zone"] = ("patient", np.asarray(("", *CVGA_ZONES))[codes + 1], met.cvga_zone.attrs)
        return ds
    return _dataset(model, keep, status, params, times, attrs).merge(met)


def _append_metrics(met: xr.Dataset, out: str) -> None:
    """Add the metrics to the store; CVGA zones as int8 codes (zarr v3 has no stable string
    type), ``-1`` for a patient without metrics."""
    zones = met["cvga_zone"].values.astype(str)
    lookup = {z: i for i, z in enumerate(CVGA_ZONES)}
    codes = np.asarray([lookup.get(z, -1) for z in zones], np.int8)
    met = met.drop_vars("patient").assign(
        cvga_zone=("patient", codes, {"flag_values": list(range(len(CVGA_ZONES))),
                                      "flag_meanings": "|".join(CVGA_ZONES)}),
    )  # fmt: skip
    group = zarr.open_group(out, mode="r+")
    attrs = dict(group.attrs)  # xarray's append rewrites the group attributes
    met.attrs = {}
    met.to_zarr(out, mode="a", consolidated=False)
    zarr.open_group(out, mode="r+").attrs.update(attrs)


def _dataset(model, outs, status, params, times, attrs) -> xr.Dataset:
    data = {
        k: (("patient", "time"), v, {"units": _OUTPUTS[k][0], "long_name": _OUTPUTS[k][1]})
        for k, v in outs.items()
    }
    units = {q.name: (q.units, q.description) for q in model.parameters}
    data.update(
        {
            k: (("patient",), v, {"units": units[k][0], "long_name": units[k][1]})
            for k, v in params.items()
            if k in units
        }  # fmt: skip
    )
    return result_dataset(data, status, times, "min", attrs)
