"""``run``: a closed-loop glucose cohort (UVA/Padova) into xarray/zarr, with glycaemic metrics.

An adapter on the engine's one chunk loop (:func:`cohort.engine.batching.run_batches`): it
hands over a batch solve (:func:`cohort.glucose.loop.solve_closed_loop` followed by the
glycaemic metrics of the true subcutaneous glucose ``Gsub``, on the device, in the same pass)
and a sink that keeps or stores each batch. Padding, splitting each batch over the local
devices, donated buffers, the writer thread, progress and resume are the engine's, so a
glucose run is resumable and its results do not depend on the chunk size or device count. On
CPU, give JAX one device per core to use them all (:func:`cohort.use_cpu_cores` before JAX's
first use, as the ``cohort`` CLI does).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from cohort._seed import check_seed
from cohort._version import __version__
from cohort.engine.batching import (
    LANES,
    BatchSolver,
    available_memory,
    batch_shape,
    default_chunk,
    padded_rows,
    patient_major,
    run_batches,
)
from cohort.engine.exported import builtin_model_key, is_cohort_code
from cohort.engine.inputs import InputError, checked_params, population_arrays
from cohort.engine.simulate import result_dataset
from cohort.engine.status import status_attrs, stepping_status
from cohort.errors import CohortWarning
from cohort.glucose.controllers import controller as named_controller
from cohort.glucose.loop import ClosedLoopOptions, MealInputs, solve_closed_loop
from cohort.glucose.metrics import (
    _DESCRIPTIONS,
    CVGA_ZONES,
    metric_arrays,
    metrics_dataset,
    time_weights,
)
from cohort.glucose.scenarios import MealScenario
from cohort.glucose.scenarios import scenario as named_scenario
from cohort.glucose.sensor import knot_count, knot_normals
from cohort.models import get
from cohort.models.base import Model
from cohort.models.glucose import queued_meals
from cohort.store import ResultStore, indexed_coordinates, open_result
from cohort.store.lock import locks_output

_OUTPUTS = {
    "Gsub": ("mg/dL", "subcutaneous (interstitial) glucose, true value"),
    "CGM": ("mg/dL", "sensor glucose seen by the controller"),
    "insulin": ("U/min", "insulin delivered, mean over the period starting at time"),
}
# Patients per batch: small enough that copying a batch out overlaps the next batch's solve
# (10,000 patients x 1 day, float32, 2 CPU devices: 22,700 patient-days/s with 2,048 vs 18,100
# with one 10,000 batch, best of 4), large enough to keep the devices busy.
DEFAULT_CHUNK = 2_048
# On an accelerator each control period is a few kernel launches whose cost hardly grows with
# the batch, so batches there are larger (H200, the same cohort: 12,500 patient-days/s in
# batches of 2,048, 23,800 in one batch of 10,000; benchmarks/README.md).
ACCELERATOR_CHUNK = 16_384


def base_chunk() -> int:
    """Patients per batch before the memory bound: :data:`DEFAULT_CHUNK` on CPU devices,
    :data:`ACCELERATOR_CHUNK` on a GPU or TPU."""
    return DEFAULT_CHUNK if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK


# Which glucose the metrics describe, on every metric variable (the CGM readings' metrics
# differ from it by up to 13 TIR points per patient-day with sensor noise on)
METRICS_OF = "of Gsub, the model's noise-free subcutaneous glucose (not the noisy CGM readings)"


def _metric_variables() -> dict[str, tuple[str, dict]]:
    """Per-patient metric arrays of the store (CVGA zones as int8 codes: zarr v3 has no stable
    string type; -1 for a patient without metrics)."""
    out = {
        k: ("float64", {"units": u, "long_name": d, "comment": METRICS_OF})
        for k, (u, d) in _DESCRIPTIONS.items()
    }
    out["cvga_zone"] = (
        "int8",
        {
            "long_name": "CVGA zone (Magni et al. 2008)",
            "flag_values": list(range(len(CVGA_ZONES))),
            "flag_meanings": "|".join(CVGA_ZONES),
        },
    )
    return out


def control_periods(days: float, period: float) -> int:
    """Control periods a run of ``days`` simulates: the nearest whole number (said when
    ``days`` is off that grid; the days simulated are ``periods · period / 1440``)."""
    return int(round(days * 1440.0 / period))


@functools.lru_cache(maxsize=16)
def _solver(
    model: Model, ctrl: Any, options: ClosedLoopOptions, n_periods: int, dtype: str, n_dev: int
) -> BatchSolver:
    """The batch solve ``((params, meals, patient ids, therapy), (profile, seed, weights))`` ->
    time-major outputs, status and metrics (computed from the stored ``Gsub``). The CGM noise's
    normals are drawn on the host for each batch from its patient ids and the seed."""

    def run(inputs, shared):
        p, meals, therapy, noise = inputs
        profile, _, weights = shared
        outs, finite, min_scaled = solve_closed_loop(
            model, ctrl, options, n_periods, p, meals._replace(profile=profile), noise,
            therapy, dtype=dtype,
        )  # fmt: skip
        status = stepping_status(finite, min_scaled, [outs["Gsub"]])
        metrics = metric_arrays(jnp.asarray(outs["Gsub"], weights.dtype).T, weights, jnp)
        metrics["cvga_zone"] = metrics.pop("cvga_code").astype(jnp.int8)
        return outs, status, metrics

    count = knot_count(options.sensor, round(options.period), n_periods)

    def with_noise(rows, shared):
        p, meals, ids, therapy = rows
        return p, meals, therapy, knot_normals(int(shared[1]), ids, count, meals.start.dtype)

    model_key = builtin_model_key(model)
    key = None
    if model_key is not None and is_cohort_code(ctrl, options, options.sensor):
        key = repr(("closed_loop", model_key, ctrl, options, n_periods, dtype))
    return BatchSolver(run, n_dev, cache_key=key, host_inputs=with_noise)


def _spec_hash(model: Model, params, scenario: MealScenario, settings: tuple) -> str:
    """Hash of every input that determines the result (what a resume must match)."""
    h = hashlib.sha256(repr((model.fingerprint(), *settings)).encode())
    arrays = {**{f"p/{k}": v for k, v in params.items()}, **scenario.arrays()}
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()[:24]


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
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cluster: Any = None,
) -> xr.Dataset:
    """Simulate ``patients`` (a DataFrame such as :func:`reference_patients`, or a dict of
    parameter arrays) for ``days`` under a meal ``scenario`` and an insulin ``controller``.

    Returns an ``xr.Dataset`` (dims ``patient``, ``time`` in min at the control period):
    ``Gsub``, ``CGM``, ``insulin``, ``status`` (0 ok), the parameters, and the glycaemic
    metrics per patient (TIR, TBR, ..., ``cvga_zone``). ``seed`` drives sensor noise and named
    random scenarios. With ``out`` the trajectories stream to a zarr store (returned lazily);
    ``resume=True`` finishes an interrupted run of the same inputs. ``cluster`` (a Dask
    Client, Cluster or scheduler address; needs ``out``) spreads the chunks over its workers,
    bit-identical to a local run.
    """
    plan = _plan(
        patients, scenario, controller, days, seed, options, chunk_size, dtype, out_dtype,
        out, resume,
    )  # fmt: skip
    model, ctrl, options, n_periods, params, times, attrs = (
        plan.model, plan.ctrl, plan.options, plan.n_periods, plan.params, plan.times, plan.attrs
    )  # fmt: skip
    invalid, inputs, shared = plan.invalid, plan.inputs, plan.shared
    chunk_size, n_pat = plan.chunk_size, len(plan.invalid)
    if cluster is not None and out is None:
        raise InputError("cluster: a distributed run writes into a store; give out=")
    metric_vars = _metric_variables()
    if out is not None:
        if cluster is not None:
            from cohort.distributed import check_reachable

            check_reachable(cluster, out)
        store = ResultStore.create(
            out,
            n_patients=n_pat,
            times=times,
            time_units="min",
            outputs={k: {"units": u, "long_name": d} for k, (u, d) in _OUTPUTS.items()},
            parameters={
                **{
                    q.name: (params[q.name], {"units": q.units, "long_name": q.description})
                    for q in model.parameters
                },
                **_therapy_variables(plan.therapy),
            },  # fmt: skip
            variables=metric_vars,
            dtype=out_dtype,
            chunk_size=chunk_size,
            attrs=attrs,
            resume=resume,
            overwrite=overwrite,
        )
        task = _StoreTask(
            (model, ctrl, options, n_periods, out_dtype), inputs, shared, invalid,
            store.location, 0, len(times), store.token,
        )  # fmt: skip
        if cluster is None:
            task(progress)
        else:
            from cohort.distributed import run_chunks

            run_chunks(
                lambda first, stop: task.chunks(first, stop, chunk_size),
                store.done_chunks(), cluster, n_patients=n_pat, chunk_size=chunk_size,
                progress=progress, name="glucose",
            )  # fmt: skip
        store.finish()
        ds = open_result(out)
        codes = ds["cvga_zone"].values
        zone_attrs = {"units": "1", "long_name": "CVGA zone (Magni et al. 2008)"}
        ds["cvga_zone"] = ("patient", np.asarray(("", *CVGA_ZONES))[codes + 1], zone_attrs)
        return warn_floor(ds, model)

    keep, status_all, metrics_all = _solve_in_memory(plan, progress, trajectories=True)
    patients = xr.Variable(("patient",), np.arange(n_pat))
    template = xr.DataArray(
        np.arange(n_pat), dims=("patient",), coords=indexed_coordinates({"patient": patients})
    )
    met = metrics_dataset(metrics_all, template)
    for k in _DESCRIPTIONS:
        met[k].attrs["comment"] = METRICS_OF
    ds = _dataset(model, keep, status_all, params, times, attrs).merge(met)
    for name, (values, var_attrs) in _therapy_variables(plan.therapy).items():
        ds[name] = ("patient", values, var_attrs)
    return warn_floor(ds, model)


def warn_floor(ds, model=None):
    """``ds`` (a result, or :func:`metrics_only`'s arrays), after a warning if some patients
    sat at the model's glucose floor (0 mg/dL, as in simglucose): they solved "ok" but their
    day is not physiological; and one naming the parameters of failed patients (``model``
    given: a body weight of 400 gave NaN metrics without a word)."""
    if model is not None:
        from cohort.engine.failures import warn_failed

        warn_failed(model, ds, stacklevel=4)  # run's lock wrapper, then the caller
    floor = (np.asarray(ds["status"]) == 0) & (np.asarray(ds["g_min"], float) < 1.0)
    if floor.any():
        warnings.warn(
            f"{int(floor.sum())} patient(s) reached 0 mg/dL glucose, the model's floor (first: "
            f"patient {np.flatnonzero(floor)[0]}); their day is not physiological and their "
            "metrics take it as 1 mg/dL (g_min < 1 in the result; sampled patients: "
            "sample_plausible, the CLI's default --plausible, screens such patients out on a "
            "standard day)",
            CohortWarning,
            stacklevel=4,
        )
    return ds


def _therapy_variables(therapy: dict) -> dict:
    """The patients' own CR/CF (what the controllers dosed by) as per-patient variables of
    the result: a run is then reproducible from its store alone."""
    return {
        name: (
            np.asarray(values, np.float64),
            {"units": THERAPY[name][0],
             "long_name": f"{THERAPY[name][1]} (NaN: the rule of thumb from the basal rate)"},
        )
        for name, values in therapy.items()
    }  # fmt: skip


def metrics_only(patients: Any, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
    """:func:`run` (same arguments, without ``out``) reduced to per-patient arrays: the
    glycaemic metrics, ``status`` and ``cvga_code`` (index into ``CVGA_ZONES``, -1 for a
    failed patient). For callers that keep no trajectories (screening patients, the CLI
    without ``--out``): no dataset is assembled, and none of the trajectories is copied out
    of the batch buffers."""
    a = _run_arguments(patients, *args, **kwargs)
    if a["out"] is not None or a["cluster"] is not None:
        raise InputError("out, cluster: metrics_only keeps nothing on disk; use run(out=...)")
    _, status, metrics = _solve_in_memory(_plan_of(a), a["progress"], trajectories=False)
    return {**metrics, "status": status}


def _solve_in_memory(
    plan: _Plan, progress: Callable[[int, int], None] | None, trajectories: bool
) -> tuple[dict, np.ndarray, dict]:
    """Run ``plan``'s batches into memory: trajectories ``[patient, time]`` per output (NaN
    for failed patients; only if ``trajectories``), status, and the metric arrays
    (``cvga_code`` for the zone)."""
    n_pat, n_times = len(plan.invalid), len(plan.times)
    shape = (n_pat, n_times) if trajectories else (0, 0)
    keep = {k: np.empty(shape, plan.out_dtype) for k in _OUTPUTS}
    status_all = np.empty(n_pat, np.int8)
    metrics_all = {k: np.empty(n_pat, np.dtype(d)) for k, (d, _) in _metric_variables().items()}

    def to_memory(k, lo, hi, blocks, status, metrics):
        if trajectories:
            for name, parts in blocks.items():
                patient_major(parts, keep[name][lo:hi])
                keep[name][lo:hi][status != 0] = np.nan
        status_all[lo:hi] = status
        for name, v in _masked(metrics, status != 0).items():
            metrics_all[name][lo:hi] = v

    run_batches(
        plan.solver, plan.inputs, plan.shared, sink=to_memory, n_patients=n_pat,
        chunk_size=plan.chunk_size, n_times=n_times,
        out_bytes=plan.batch * n_times * len(_OUTPUTS) * np.dtype(plan.out_dtype).itemsize,
        invalid=plan.invalid, progress=progress,
    )  # fmt: skip
    metrics_all["cvga_code"] = metrics_all.pop("cvga_zone")
    return keep, status_all, metrics_all


@dataclasses.dataclass
class _Plan:
    """Everything a closed-loop run needs before its first batch (see :func:`_plan`)."""

    model: Model
    ctrl: Any
    options: ClosedLoopOptions
    n_periods: int
    params: dict
    times: np.ndarray
    attrs: dict
    invalid: np.ndarray
    inputs: tuple
    shared: tuple
    chunk_size: int
    batch: int
    solver: BatchSolver
    out_dtype: str
    therapy: dict = dataclasses.field(default_factory=dict)  # the patients' own CR/CF


def _plan(
    patients, scenario, controller, days, seed, options, chunk_size, dtype, out_dtype, out,
    resume,
) -> _Plan:  # fmt: skip
    """Check :func:`run`'s arguments and build its inputs and batch solver."""
    model = get("uva_padova")
    options = options or ClosedLoopOptions()
    try:
        options.steps_per_minute()
    except ValueError as exc:
        raise InputError(f"options: {exc}") from None
    for name, value in (("dtype", dtype), ("out_dtype", out_dtype)):
        if value not in ("float32", "float64"):
            raise InputError(f"{name}: must be 'float32' or 'float64', got {value!r}")
    patients, therapy = _split_therapy(patients)
    params = population_arrays(model, patients, None)
    if isinstance(patients, pd.DataFrame | xr.Dataset) and "BW" not in patients:
        # insulin and meals are dosed per kg: a table without BW ran everyone at the default
        # patient's weight without a word (a probe)
        warnings.warn(
            f"patients: no BW column: every patient runs at {model.name}'s default body weight "
            f"{model.defaults()['BW']:g} kg (insulin and meals act per kg); give each patient's "
            "BW",
            CohortWarning,
            stacklevel=4,
        )
    n_pat = len(params["BW"])
    if n_pat == 0:
        raise InputError("patients: no patients (an empty table); give at least one")
    therapy = {k: np.broadcast_to(np.asarray(v, float), (n_pat,)) for k, v in therapy.items()}
    _check_therapy(therapy, patients)
    check_seed(seed, InputError)
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not math.isfinite(days):
        raise InputError(f"days: a finite number of days, got {days!r}")
    n_periods = control_periods(days, options.period)
    if n_periods < 1:
        raise InputError(f"days: must cover at least one control period, got {days}")
    if abs(n_periods * options.period - days * 1440.0) > 1e-6 * max(1.0, days * 1440.0):
        # rounded without a word, a run of --days 1.003 ended at 1,445 min (a probe)
        warnings.warn(
            f"days: {days:g} days ({days * 1440.0:g} min) is not a whole number of "
            f"{options.period:g}-min control periods; simulating {n_periods} periods "
            f"({n_periods * options.period:g} min, days={n_periods * options.period / 1440:.6g})",
            CohortWarning,
            stacklevel=3,
        )
        days = n_periods * options.period / 1440.0
    per_patient = (n_periods + 1) * len(_OUTPUTS) * np.dtype(out_dtype).itemsize
    memory = available_memory()
    if memory is not None and 4 * LANES * per_patient > memory:  # a batch's buffers and more
        raise InputError(
            f"days: {days:g} days hold {per_patient / 2**20:,.0f} MiB of trajectories per "
            f"patient, beyond this machine's memory ({memory / 2**30:.1f} GiB available); run "
            "fewer days per call, or a longer control period"
        )
    if isinstance(scenario, str):
        scenario = named_scenario(scenario, n_pat, math.ceil(days), seed)
    elif (late := np.isfinite(scenario.start) & (scenario.start >= n_periods * options.period)
          & (scenario.grams > 0)).any():  # fmt: skip
        warnings.warn(
            f"scenario: {int(late.sum())} meal(s) start at or after the run's end "
            f"({n_periods * options.period:g} min, days={days:g}) and are not eaten "
            f"(first: patient {np.argwhere(late)[0][0]}, at {scenario.start[late][0]:g} min)",
            CohortWarning,
            stacklevel=3,
        )
    if scenario.n_patients != n_pat:
        raise InputError(f"scenario has {scenario.n_patients} patients, population {n_pat}")
    ctrl = named_controller(controller) if isinstance(controller, str) else controller
    if chunk_size is None:
        chunk_size = default_chunk(base_chunk(), per_patient, out, resume)
    chunk_size = min(n_pat, chunk_size)
    if chunk_size < 1:
        raise InputError(f"chunk_size: must be >= 1, got {chunk_size}")
    times = np.arange(n_periods + 1) * options.period
    settings = (repr(ctrl), repr(options), float(days), int(seed), dtype, out_dtype)
    params_hashed = {**params, **{f"therapy/{k}": v for k, v in therapy.items()}}
    attrs = {
        "title": f"closed-loop glucose cohort ({getattr(ctrl, 'name', type(ctrl).__name__)})",
        "cohort_version": __version__,
        "jax_version": jax.__version__,
        "model": model.name,
        "model_hash": model.fingerprint(),
        "controller": repr(ctrl),
        "closed_loop_options": repr(options),
        "seed": int(seed),
        "days": float(days),
        "dtype": dtype,
        "meals_per_patient": int(scenario.start.shape[1]),
        "chunk_size": chunk_size,
        "n_patients": n_pat,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **status_attrs(),
        "spec_hash": _spec_hash(model, params_hashed, scenario, settings),
    }
    invalid, clean = checked_params(model, params, dtype)
    meals = MealInputs(
        start=scenario.start.astype(dtype),
        # the grams of each eating bout: overlapping meals queue as in simglucose
        grams=queued_meals(scenario.start, scenario.grams, scenario.eat_rate).astype(dtype),
        eat_rate=scenario.eat_rate.astype(dtype),
        announced=scenario.announced_grams().astype(dtype),
        bolus=scenario.bolus.astype(dtype),
        profile=np.zeros((n_pat, 0), dtype),  # per patient: empty; the profile is shared
    )
    shared = (
        np.asarray(scenario.profile, dtype),
        np.asarray(seed),
        np.asarray(time_weights(times), np.float64),
    )
    n_dev, batch = batch_shape(chunk_size)
    solver = _solver(model, ctrl, options, n_periods, out_dtype, n_dev)
    therapy_in = {k: v.astype(dtype) for k, v in therapy.items()}
    inputs = (clean, meals, np.arange(n_pat), therapy_in)
    return _Plan(
        model, ctrl, options, n_periods, params, times, attrs, invalid, inputs, shared,
        chunk_size, batch, solver, out_dtype, therapy,
    )  # fmt: skip


def _run_arguments(patients: Any, *args: Any, **kwargs: Any) -> dict:
    """:func:`run`'s arguments for this call, by name, defaults filled in."""
    bound = inspect.signature(run).bind(patients, *args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _plan_of(a: dict) -> _Plan:
    """The plan :func:`run` makes for the arguments ``a`` (:func:`_run_arguments`)."""
    return _plan(
        a["patients"], a["scenario"], a["controller"], a["days"], a["seed"], a["options"],
        a["chunk_size"], a["dtype"], a["out_dtype"], a["out"], a["resume"],
    )  # fmt: skip


def compile_ahead(patients: Any, *args: Any, **kwargs: Any) -> None:
    """Compile the batch program that :func:`run` given the same arguments will use. Only
    the number of patients and their columns matter, not their values, so a caller can run
    this on a background thread while it samples the patients (``cohort glucose`` does: XLA
    compiles on one core, and the cold command waits for one compilation instead of two).
    Writes nothing."""
    plan = _plan_of(_run_arguments(patients, *args, **kwargs))
    rows = min(plan.chunk_size, len(plan.invalid))
    plan.solver.compile(padded_rows(plan.inputs, 0, rows, plan.batch), plan.shared)


@dataclasses.dataclass
class _StoreTask:
    """Solve the chunks ``first, first + 1, ...`` that these patients fill into the store at
    ``path``: the local run (every chunk) or one Dask task (a range of chunks). Chunks already
    flagged done are skipped (a rescheduled task or a resumed run writes only what is
    missing)."""

    solver_args: tuple
    inputs: tuple  # (checked params, meals, global patient ids, therapy), rows of this task
    shared: tuple
    invalid: np.ndarray
    path: str
    first: int
    n_times: int
    token: str | None = None  # the store's run token when planned (see ResultStore.attach)

    def chunks(self, first: int, stop: int, chunk_size: int) -> _StoreTask:
        """The task of chunks ``first .. stop - 1`` of this whole-cohort task."""
        lo, hi = first * chunk_size, min(stop * chunk_size, len(self.invalid))
        return dataclasses.replace(
            self, inputs=jax.tree.map(lambda v: v[lo:hi], self.inputs),
            invalid=self.invalid[lo:hi], first=first,
        )  # fmt: skip

    def __call__(self, progress: Callable[[int, int], None] | None = None) -> None:
        store = ResultStore.attach(self.path, self.token)
        cs, n_pat = store.chunk_size, len(self.invalid)
        out_dtype = self.solver_args[-1]
        n_dev, batch = batch_shape(cs)
        solver = _solver(*self.solver_args, n_dev)
        done = store.done_chunks()[self.first : self.first + math.ceil(n_pat / cs)]
        staging = {o: np.empty((cs, self.n_times), out_dtype) for o in _OUTPUTS}

        def to_store(k, lo, hi, blocks, status, metrics):
            bad = status != 0
            outs = {}
            for name, parts in blocks.items():
                outs[name] = patient_major(parts, staging[name][: hi - lo])
                outs[name][bad] = np.nan
            store.write_chunk(self.first + k, outs, status, _masked(metrics, bad))

        run_batches(
            solver, self.inputs, self.shared, n_patients=n_pat, chunk_size=cs,
            n_times=self.n_times,
            out_bytes=batch * self.n_times * len(_OUTPUTS) * np.dtype(out_dtype).itemsize,
            sink=to_store, done=done, invalid=self.invalid, progress=progress,
        )  # fmt: skip


THERAPY = {"CR": ("g/U", "carbohydrate ratio"), "CF": ("mg/dL/U", "correction factor")}


def _check_therapy(therapy: dict[str, np.ndarray], patients: Any) -> None:
    """A patient's own CR/CF must be > 0 and finite, or NaN (the rule of thumb from the basal
    rate): a CR of 0 gave NaN trajectories, a negative one dosed the wrong way "ok"."""
    for name, values in therapy.items():
        bad = np.flatnonzero(~np.isnan(values) & ~((values > 0) & np.isfinite(values)))
        if bad.size:
            units, what = THERAPY[name]
            raise InputError(
                f"patients: {name} ({what}, {units}) of {_label(patients, bad[0])} is "
                f"{values[bad[0]]:g}; it must be > 0 (or empty/NaN: the rule of thumb from the "
                "basal rate)"
            )
    for name, (lo, hint) in _THERAPY_MINIMA.items():
        values = therapy.get(name)
        if values is None:
            continue
        odd = np.flatnonzero(values < lo)
        if odd.size:
            units, what = THERAPY[name]
            warnings.warn(
                f"patients: {name} ({what}) of {odd.size} patient(s) below {lo:g} {units} "
                f"(first: {_label(patients, odd[0])}, {values[odd[0]]:g}); {hint}",
                CohortWarning,
                stacklevel=4,
            )


# Values below which a patient's own therapy setting is implausible in its units, where another
# unit is the likely mistake (the controller would dose by it as given). A carbohydrate ratio
# in U/g is 0.02-0.5; in g/U it is ~3-30 (simglucose's 30 patients: 4-25; cohort's sampled
# patients reach 1.3). CF has no such gap (mmol/L per U, 0.5-5, overlaps sampled mg/dL per U).
_THERAPY_MINIMA = {
    "CR": (1.0, "CR is grams of carbohydrate per unit of insulin (g/U): a value "
           "below 1 looks like U/g (give 1/value)"),
}  # fmt: skip


def _label(patients: Any, i: int) -> str:
    """``patient i``, with its name or ID where the table has one."""
    for col in ("Name", "ID"):
        if isinstance(patients, (pd.DataFrame, xr.Dataset)) and col in patients:
            return f"patient {i} ({np.asarray(patients[col])[i]})"
    return f"patient {i}"


def _split_therapy(patients: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """Therapy settings (``CR``, ``CF``) of ``patients`` for the controller, and the patients
    without them (a dict population is strict about unknown names)."""
    if isinstance(patients, dict):
        rest = {k: v for k, v in patients.items() if k not in THERAPY}
        return rest, {k: patients[k] for k in THERAPY if k in patients}
    if isinstance(patients, pd.DataFrame):
        return patients, {k: patients[k].to_numpy(float) for k in THERAPY if k in patients}
    if isinstance(patients, xr.Dataset):
        return patients, {k: patients[k].values for k in THERAPY if k in patients}
    return patients, {}


def _masked(metrics: dict, bad: np.ndarray) -> dict:
    """Metrics of failed patients: NaN (CVGA zone -1)."""
    out = {}
    for name, v in metrics.items():
        v = v.copy()
        v[bad] = -1 if name == "cvga_zone" else np.nan
        out[name] = v
    return out


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
