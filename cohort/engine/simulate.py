"""``simulate``: run a cohort through a dosing protocol, batch by batch, into xarray/zarr.

The engine chooses how to batch: the closed form for linear PK, ``vmap`` of per-patient adaptive
diffrax solves (reference), or the structure-of-arrays RK4 fast path (throughput). Cohorts are
cut into chunks of ``chunk_size`` patients; each chunk is solved, then written by a background
thread while the next one computes, so memory stays flat and the store never holds a torn chunk.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import hashlib
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import xarray as xr

from cohort._version import __version__
from cohort.dosing import EventTable, describe_events, event_table, patient_ids, shared_rows
from cohort.engine.base import Engine, resolve_engine
from cohort.engine.batching import (
    BatchSolver,
    batch_shape,
    default_chunk,
    padded_rows,
    patient_major,
    run_batches,
)
from cohort.engine.events import bad_durations, missing_duration_params, ss_lag_problem
from cohort.engine.exported import builtin_model_key, is_cohort_code
from cohort.engine.fast_path import RK4
from cohort.engine.inputs import (
    InputError,
    check_times,
    checked_params,
    paired_by_id,
    population_arrays,
    population_extras,
    population_ids,
)
from cohort.engine.status import status_attrs
from cohort.engine.step_choice import choose_step, pilot_rows
from cohort.errors import CohortWarning
from cohort.models.base import Model
from cohort.models.contract import check_contract
from cohort.store import check_replaceable, locks_output
from cohort.store.remote import is_url
from cohort.store.safety import check_store_name


@functools.lru_cache(maxsize=32)
def _solver(
    model: Model,
    engine: Engine,
    times: tuple,
    t_first: float,
    infusion: bool,
    ss_interval: float,
    outputs: tuple,
    dtype: str,
    n_devices: int = 1,
) -> BatchSolver:
    """The engine's batch solve ``((params, events), None) -> (outputs [T', N] each, status
    [N], {})``, compiled and split over ``n_devices``.

    Outputs stay time-major as the scans produce them: the in-memory result is time-major
    too (exposed as a transposed view), so its copies stay contiguous; the store's writer
    transposes each block into its patient-major chunk (numpy's transposed copy into a reused
    buffer costs less than XLA transposing into a fresh temporary, measured)."""
    solve = engine.batch_solve(
        model, np.asarray(times), t_first, infusion, ss_interval, outputs, dtype
    )

    def run(inputs, shared):
        out, status = solve(*inputs)
        return out, status, {}

    model_key = builtin_model_key(model)
    key = None
    if model_key is not None:  # what the traced program depends on besides input shapes
        grid = hashlib.sha256(np.ascontiguousarray(times, float).tobytes()).hexdigest()
        key = repr(("simulate", model_key, engine, grid, t_first, infusion, ss_interval,
                    outputs, dtype))  # fmt: skip
    options = engine.compiler_options(model)
    return BatchSolver(run, n_devices, cache_key=key, compiler_options=options)


@dataclasses.dataclass
class _Plan:
    model: Model
    engine: Engine
    params: dict[str, np.ndarray]
    table: EventTable
    times: np.ndarray
    outputs: tuple[str, ...]
    dtype: str
    chunk_size: int
    ids: np.ndarray | None = None  # the dosing records' patient IDs, kept with the results
    # the population's covariates ({name: (values, attrs)}) and provenance, kept with them too
    covariates: dict = dataclasses.field(default_factory=dict)
    population_attrs: dict = dataclasses.field(default_factory=dict)

    @property
    def n_patients(self) -> int:
        return len(next(iter(self.params.values())))

    def rows(self, lo: int, hi: int) -> _Plan:
        """The plan of patients ``lo:hi`` (views), e.g. for one distributed task."""
        params = {k: v[lo:hi] for k, v in self.params.items()}
        ids = None if self.ids is None else self.ids[lo:hi]
        covariates = {k: (v[lo:hi], a) for k, (v, a) in self.covariates.items()}
        table = self.table.select(slice(lo, hi))
        return dataclasses.replace(self, params=params, table=table, ids=ids, covariates=covariates)


@dataclasses.dataclass(frozen=True)
class _Shared:
    """Solve settings taken from the whole cohort, so that every batch of a run (in any
    task, on any worker) runs the same compiled program and gives bit-identical results."""

    t_first: float
    infusion: bool
    ss_interval: float

    @classmethod
    def of(cls, plan: _Plan) -> _Shared:
        table = plan.table
        finite_t = table.time[np.isfinite(table.time)]
        t_first = float(min(plan.times[0], finite_t.min() if finite_t.size else plan.times[0]))
        ss_interval = float(np.max(np.where(table.ss, table.ii, 0.0), initial=0.0))
        return cls(t_first, table.has_infusion, ss_interval)


def _spec_hash(plan: _Plan) -> str:
    h = hashlib.sha256()
    h.update(repr((plan.model.fingerprint(), plan.engine, plan.outputs, plan.dtype)).encode())
    h.update(np.ascontiguousarray(plan.times).tobytes())
    for k in sorted(plan.params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(plan.params[k]).tobytes())
    for k, v in sorted(plan.table.arrays().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    if plan.ids is not None:
        h.update(repr(plan.ids.tolist()).encode())
    for k, (v, _) in sorted(plan.covariates.items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:24]


def _validate_events(model: Model, table: EventTable, params, ids=None) -> None:
    """Refuse dosing the engines cannot run; ``ids``: the records' patient IDs (for the
    message), if they have them."""
    missing = [d for d in missing_duration_params(model, table) if d not in params]
    if missing:
        modelled = (table.evid == 1) & (table.rate == -2)
        i, j = (int(k[0]) for k in np.nonzero(modelled))
        who = f"ID {ids[i]}" if ids is not None and len(ids) > i else f"patient {i}"
        raise InputError(
            f"dosing: RATE=-2 (duration modelled) needs the parameter(s) {missing} in the "
            f"population, one value per patient (first such dose: {who}, TIME "
            f"{table.time[i, j]:g}, CMT {table.state_names[int(table.cmt[i, j])]}); add a "
            f"{missing[0]} column to the population, or give the dose a RATE > 0 or RATE=0"
        )
    if table.has_ss and (problem := ss_lag_problem(model, table, params)):
        raise InputError(_with_ids(problem, ids))


def _with_ids(message: str, ids) -> str:
    """``message`` with each "patient index i" (the engines' position in the batch) named by
    the records' ID as well, when the records have IDs (a user knows ID 205, not index 1)."""
    if ids is None:
        return message

    def named(match: re.Match) -> str:
        i = int(match.group(1))
        return f"ID {ids[i]} (patient index {i})" if i < len(ids) else match.group(0)

    return re.sub(r"patient index (\d+)", named, message)


@locks_output("out")
def simulate(
    model: Model | str,
    population: Any = None,
    dosing: Any = None,
    times: Any = None,
    *,
    n: int | None = None,
    outputs: list[str] | tuple[str, ...] | None = None,
    method: str | Engine = "auto",
    dtype: str = "float64",
    chunk_size: int | None = None,
    out: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    options: Any = None,
    seed: int | None = None,
    time_units: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cluster: Any = None,
    attrs: dict | None = None,
) -> xr.Dataset:
    """Simulate every patient of ``population`` under ``dosing`` and save ``outputs`` at ``times``.

    Returns an ``xr.Dataset`` with dims ``patient`` and ``time``: one variable per output,
    per-patient ``status`` (0 ok; see ``attrs['status_meanings']``) and the parameters used.
    With ``out`` the result streams into a zarr store (returned lazily); ``resume=True`` skips
    batches an interrupted run already finished. ``dtype='float32'`` trades accuracy for speed.

    ``method`` is an engine — :class:`~cohort.engine.closed_form.ClosedForm`,
    :class:`~cohort.engine.fast_path.RK4` (``dt=`` or ``tol=``),
    :class:`~cohort.engine.diffrax_path.Adaptive` — or a shorthand for one with its default
    settings (``"closed_form"``, ``"fast"``/``"rk4"``, ``"diffrax"``/``"adaptive"``;
    ``"auto"``: the closed form where the model has one, else adaptive). ``options`` is the
    older way of giving an engine's settings (it must match ``method``).

    ``cluster`` (a ``dask.distributed`` Client, Cluster or scheduler address; needs ``out``)
    spreads the chunks over Dask workers that write their own parts of the store: the result
    is bit-identical to a local run, and a worker lost mid-run has its chunks rerun.
    ``time_units`` (optional) must be the model's own (``model.time_units``): times, dose
    times and the result's time axis are in it.
    ``attrs``: extra attributes for the result (in a store: written with its layout, so a run
    killed at any point still carries them); cohort's provenance keys take precedence.
    """
    if isinstance(model, str):
        from cohort.models import get

        model = get(model)
    if times is None:
        raise InputError("times: give the save times, e.g. cohort.grid(0, 24, 0.25)")
    times = check_times(times)
    if time_units is not None and time_units != model.time_units:
        # it only relabelled the time axis: times in h were labelled min, unconverted (a probe)
        raise InputError(
            f"time_units: {model.name} runs in {model.time_units}, and times and doses are read "
            f"in {model.time_units}; got {time_units!r}: convert the times (and dose times) to "
            f"{model.time_units} and leave time_units out"
        )
    time_units = model.time_units
    if dtype in (np.float32, np.float64) or isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype).name  # numpy's spelling of the same choice
    if dtype not in ("float32", "float64"):
        raise InputError(f"dtype: must be 'float32' or 'float64', got {dtype!r}")
    engine = resolve_engine(model, method, options)
    user_model = not is_cohort_code(model)
    if user_model:
        check_contract(model)
    population = paired_by_id(population, dosing)
    if population is None and n is None and (ids := patient_ids(dosing)) is not None:
        n = len(ids)  # records alone: one patient per ID, at the model's typical values
    params = population_arrays(model, population, n)
    if not len(next(iter(params.values()))):
        raise InputError("population: no patients (an empty table, or n=0); give at least one")
    n_pat = len(next(iter(params.values())))
    table = event_table(dosing, model.state_names, model.dose_targets, n_pat)
    if user_model and table.has_infusion:
        infused = np.unique(table.cmt[(table.rate != 0) & (table.evid == 1)])
        check_contract(model, [model.state_names[int(c)] for c in infused])
    outputs = tuple(outputs or model.output_names)
    for o in outputs:
        if o not in model.output_names + model.state_names:
            raise InputError(
                f"outputs: {o!r} is not an output or state of {model.name!r}; choose from "
                f"{list(model.output_names + model.state_names)}"
            )
    ids = patient_ids(dosing)
    _validate_events(model, table, params, ids)
    for note in model.record_notes(table):
        warnings.warn(f"dosing: {note}", CohortWarning, stacklevel=3)
    try:
        engine.validate(model, table, params)
    except InputError as exc:
        raise InputError(_with_ids(str(exc), ids)) from None
    if isinstance(engine, RK4) and engine.tol is not None and engine.dt is None:
        rows = pilot_rows(n_pat)
        pilot_params = {k: v[rows] for k, v in params.items()}
        pilot_table = table.select(rows)

        def pilot(candidate: RK4) -> dict:
            plan = _Plan(model, candidate, pilot_params, pilot_table, times, outputs,
                         "float64", len(rows))  # fmt: skip
            out = {o: np.empty((len(times), len(rows))) for o in outputs}

            def keep(k, blocks, status, _params):
                for name, parts in blocks.items():
                    for start, block in parts:
                        out[name][:, start : start + block.shape[1]] = block

            _run_chunks(plan, np.zeros(1, bool), keep, None)
            return out

        engine = choose_step(engine, model, pilot)
    if chunk_size is None:
        # Cache-sized batches: the structure-of-arrays engines stream every state through memory
        # once per step, so a batch whose working set fits in cache runs faster per patient
        # (measured in benchmarks/bench_pkpd.py --chunk-sweep); small batches also overlap the
        # copy-out of one batch with the compute of the next.
        per_patient = len(times) * len(outputs) * np.dtype(dtype).itemsize
        chunk_size = min(n_pat, default_chunk(engine.default_chunk, per_patient, out, resume))
    if chunk_size < 1:
        raise InputError(f"chunk_size: must be >= 1, got {chunk_size}")
    ids = patient_ids(dosing)
    if ids is not None and len(ids) != n_pat:
        ids = None  # one patient's records shared by the whole cohort: no ID per patient
    if ids is None:
        ids = population_ids(population, n_pat)
    covariates, population_attrs = population_extras(model, population, outputs)
    population_attrs = {**(attrs or {}), **population_attrs}
    plan = _Plan(model, engine, params, table, times, outputs, dtype, chunk_size, ids,
                 covariates, population_attrs)  # fmt: skip
    if cluster is not None and out is None:
        raise InputError(
            "cluster: a distributed run writes into a store; give out= (e.g. runs/cohort.zarr)"
        )
    if out is not None:
        return _warn_failed(
            model,
            _simulate_to_store(plan, out, seed, time_units, resume, overwrite, progress, cluster),
        )
    n_chunks = math.ceil(n_pat / chunk_size)
    # Time-major buffers: the engines produce [T, N] blocks, so copies stay contiguous; the
    # Dataset exposes them as (patient, time) through a transposed view (no extra copy).
    res_out = {o: np.empty((len(times), n_pat), dtype) for o in outputs}
    res_status = np.empty(n_pat, np.int8)

    def keep(k, blocks, status, _params):
        first = k * chunk_size
        for name, parts in blocks.items():
            for start, block in parts:  # one copy, device buffer -> result
                res_out[name][:, first + start : first + start + block.shape[1]] = block
            res_out[name][:, first + np.flatnonzero(status != 0)] = np.nan
        res_status[first : first + len(status)] = status

    # The provenance hashes every input array (a few ms per 100,000 patients); hashlib
    # releases the GIL, so it runs beside the solves instead of before them.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        attrs = pool.submit(_provenance, plan, seed)
        _run_chunks(plan, np.zeros(n_chunks, bool), keep, progress)
        attrs = attrs.result()
    return _warn_failed(model, _dataset(plan, res_out, res_status, attrs, time_units))


def _warn_failed(model: Model, ds: xr.Dataset) -> xr.Dataset:
    """``ds``, after a :class:`PatientsFailedWarning` if some of its patients failed."""
    from cohort.engine.failures import warn_failed

    return warn_failed(model, ds, stacklevel=4)  # _warn_failed, simulate, its lock wrapper


def _simulate_to_store(plan: _Plan, out, seed, time_units, resume, overwrite, progress, cluster):
    """Stream ``plan`` into the store at ``out`` (:func:`simulate` holds its write lock), here
    or on a Dask ``cluster``."""
    model = plan.model
    shared = _Shared.of(plan)
    prepared = None
    if cluster is not None:
        from cohort.distributed import check_reachable

        check_reachable(cluster, out)
    elif not resume:
        # traced now, compiled by XLA on another thread while zarr is imported and the
        # store's layout written (~0.2 s of a first 100-patient `cohort simulate`'s 3.8 s);
        # an output that may not be written is refused first, not after the tracing
        if not is_url(out):
            check_store_name(out)
            check_replaceable(out, overwrite=overwrite, resumable=True)
        prepared = _prepare(plan, shared)
        solver, inputs, _, batch = prepared
        first = padded_rows(inputs, 0, min(plan.chunk_size, plan.n_patients), batch)
        solver.compile_behind(first, None)
    try:
        store = _create_store(plan, out, seed, time_units, resume, overwrite)
    except BaseException:
        if prepared is not None:  # not while XLA compiles: an exiting process would abort
            prepared[0].settle()
        raise
    if cluster is None:
        _StoreTask(plan, shared, store.location, 0, token=store.token)(progress, prepared)
    else:
        from cohort.distributed import run_chunks

        cs = plan.chunk_size
        done = store.done_chunks()

        def make_task(first: int, stop: int) -> _StoreTask:
            # The task reads its patients' parameters from the store (written there whole
            # when it was created), so what the scheduler ships stays small at any N.
            lo, hi = first * cs, min(stop * cs, plan.n_patients)
            rows = dataclasses.replace(plan.rows(lo, hi), params={})
            return _StoreTask(
                rows, shared, store.location, first, tuple(plan.params), hi - lo, store.token
            )

        run_chunks(
            make_task, done, cluster, n_patients=plan.n_patients, chunk_size=cs,
            progress=progress, name=f"simulate-{model.name}",
        )  # fmt: skip
    store.finish()
    from cohort.store.zarr_store import open_result

    return open_result(out)


def _create_store(plan: _Plan, out, seed, time_units, resume, overwrite):
    """The result store of ``plan`` at ``out`` (new, replaced, or reopened to resume)."""
    from cohort.store.zarr_store import ResultStore

    model = plan.model
    return ResultStore.create(
        out,
        n_patients=plan.n_patients,
        times=plan.times,
        time_units=time_units,
        outputs={o: _output_attrs(model, o) for o in plan.outputs},
        parameters={
            **{k: (v, _param_attrs(model, k)) for k, v in plan.params.items()},
            **plan.covariates,
        },
        dtype=plan.dtype,
        chunk_size=plan.chunk_size,
        attrs=_provenance(plan, seed),
        ids=plan.ids,
        resume=resume,
        overwrite=overwrite,
    )


@dataclasses.dataclass
class _StoreTask:
    """Solve the chunks ``first, first + 1, ...`` that ``plan``'s patients fill into the store
    at ``path``: the local run (every chunk) or one Dask task (a range). Chunks already
    flagged done are skipped, so running a task again (a rescheduled task, a resumed run)
    writes only what is missing."""

    plan: _Plan
    shared: _Shared
    path: str
    first: int
    stored_params: tuple[str, ...] = ()  # parameters to read from the store (plan has none)
    n_rows: int = 0  # ... for this many patients
    token: str | None = None  # the store's run token when planned (see ResultStore.attach)

    def __call__(self, progress: Callable[[int, int], None] | None = None, prepared=None) -> None:
        from cohort.store.zarr_store import ResultStore

        store = ResultStore.attach(self.path, self.token)
        plan, cs = self.plan, self.plan.chunk_size
        if self.stored_params:
            lo = self.first * cs
            params = {k: store.group[k][lo : lo + self.n_rows] for k in self.stored_params}
            plan = dataclasses.replace(plan, params=params)
        n_local = math.ceil(plan.n_patients / cs)
        done = store.done_chunks()[self.first : self.first + n_local]
        # One patient-major staging buffer per output, reused by every chunk (the writer is
        # a single thread): fresh 100 MB arrays per chunk cost more in page faults than the
        # transposed copy into them.
        staging = {o: np.empty((cs, len(plan.times)), plan.dtype) for o in plan.outputs}

        def to_store(k, blocks, status, params):
            def staged(name):
                buf = patient_major(blocks[name], staging[name][: len(status)])
                buf[status != 0] = np.nan
                return buf

            outs = {name: functools.partial(staged, name) for name in blocks}
            store.write_chunk(self.first + k, outs, status, {})

        _run_chunks(plan, done, to_store, progress, self.shared, prepared)


def _prepare(plan: _Plan, shared: _Shared) -> tuple[BatchSolver, tuple, np.ndarray, int]:
    """The batch solver of ``plan``, its inputs for the whole cohort (parameters checked and
    cast once, not per batch; batches are contiguous slices of them), which patients' inputs
    failed their checks, and the batch size."""
    n_dev, batch = batch_shape(plan.chunk_size, plan.engine.max_devices(plan.model))
    solver = _solver(
        plan.model,
        plan.engine,
        tuple(plan.times.tolist()),
        shared.t_first,
        shared.infusion,
        shared.ss_interval,
        plan.outputs,
        plan.dtype,
        n_dev,
    )
    bad_duration = bad_durations(plan.model, plan.table, plan.params)
    invalid, params_all = checked_params(plan.model, plan.params, plan.dtype, bad_duration)
    events_all = dict(plan.table.arrays())
    for key in ("time", "amt", "rate", "ii"):
        v = events_all[key]
        if shared_rows(v):  # cast the one shared row
            events_all[key] = np.broadcast_to(v[:1].astype(plan.dtype), v.shape)
        else:
            events_all[key] = v.astype(plan.dtype, copy=False)
    return solver, (params_all, events_all), invalid, batch


def _run_chunks(
    plan: _Plan, done: np.ndarray, sink, progress, shared: _Shared | None = None, prepared=None
) -> None:
    """Solve every batch not yet ``done`` through :func:`cohort.engine.batching.run_batches`,
    handing ``sink(k, blocks, status, params)`` each finished one. ``shared``: the whole
    cohort's solve settings when ``plan`` is a part of it; ``prepared``: :func:`_prepare`'s
    result when the caller made it."""
    n_pat = plan.n_patients
    shared = shared or _Shared.of(plan)
    solver, (params_all, events_all), invalid, batch = prepared or _prepare(plan, shared)
    n_times = len(plan.times)

    def to_sink(k, lo, hi, blocks, status, extras):
        sink(k, blocks, status, {name: v[lo:hi] for name, v in plan.params.items()})

    run_batches(
        solver,
        (params_all, events_all),
        None,
        n_patients=n_pat,
        chunk_size=plan.chunk_size,
        n_times=n_times,
        out_bytes=batch * n_times * len(plan.outputs) * np.dtype(plan.dtype).itemsize,
        sink=to_sink,
        done=done,
        invalid=invalid,
        progress=progress,
    )


def _output_attrs(model: Model, name: str) -> dict[str, str]:
    for o in model.outputs:
        if o.name == name:
            return {"units": o.units, "long_name": o.description or o.name}
    s = next(s for s in model.states if s.name == name)
    return {"units": s.units, "long_name": s.description or s.name}


def _param_attrs(model: Model, name: str) -> dict[str, str]:
    for q in model.parameters:
        if q.name == name:
            return {"units": q.units, "long_name": q.description or q.name}
    return {"units": "h", "long_name": f"modelled infusion duration ({name})"}


def _describe_times(times: np.ndarray, units: str) -> str:
    """The save grid in a line (recorded, so a resume with another grid names it)."""
    t = np.asarray(times, float)
    if t.size > 2 and np.allclose(np.diff(t), t[1] - t[0], rtol=1e-9, atol=0.0):
        return f"{t.size} times, {t[0]:g} to {t[-1]:g} {units} every {t[1] - t[0]:g}"
    digest = hashlib.sha256(np.ascontiguousarray(t).tobytes()).hexdigest()[:8]
    return f"{t.size} times, {t[0]:g} to {t[-1]:g} {units} (irregular, digest {digest})"


def _provenance(plan: _Plan, seed: int | None) -> dict[str, Any]:
    return {
        "title": f"cohort simulation of {plan.model.name}",
        "cohort_version": __version__,
        "jax_version": jax.__version__,
        "model": plan.model.name,
        "model_hash": plan.model.fingerprint(),
        "spec_hash": _spec_hash(plan),
        "dosing": describe_events(plan.table, plan.model.time_units),
        "save_times": _describe_times(plan.times, plan.model.time_units),
        "seed": -1 if seed is None else int(seed),
        "method": plan.engine.name,
        "solver_settings": plan.engine.describe(plan.model),
        "dtype": plan.dtype,
        "chunk_size": plan.chunk_size,
        "n_patients": int(len(next(iter(plan.params.values())))),
        **plan.population_attrs,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **status_attrs(),
    }


def _dataset(plan: _Plan, outs, status, attrs, time_units: str) -> xr.Dataset:
    data = {o: (("patient", "time"), v.T, _output_attrs(plan.model, o)) for o, v in outs.items()}
    data.update({k: (("patient",), v, _param_attrs(plan.model, k)) for k, v in plan.params.items()})
    data.update({k: (("patient",), v, a) for k, (v, a) in plan.covariates.items()})
    attrs = {**attrs, "solver_settings": str(attrs["solver_settings"])}
    ds = result_dataset(data, status, plan.times, time_units, attrs)
    if plan.ids is not None:
        from cohort.store.zarr_store import ID_ATTRS

        ds = ds.assign_coords(ID=("patient", plan.ids, ID_ATTRS))
    return ds


def result_dataset(data: dict, status, times, time_units: str, attrs: dict) -> xr.Dataset:
    """The in-memory result every engine returns: ``data`` variables plus the per-patient
    ``status`` (flag values and meanings from ``attrs``) on ``patient``/``time`` coordinates."""
    from cohort.store.zarr_store import indexed_coordinates

    data = {
        **data,
        "status": (
            ("patient",),
            status,
            {
                "long_name": "per-patient solve status",
                "flag_values": attrs["status_codes"],
                "flag_meanings": attrs["status_meanings"],
            },
        ),
    }
    coords = indexed_coordinates(  # pint-free indexes (see cohort.store.indexed_coordinates)
        {
            "patient": xr.Variable(
                ("patient",), np.arange(len(status)), {"long_name": "virtual patient index"}
            ),
            "time": xr.Variable(
                ("time",), np.asarray(times), {"units": time_units, "long_name": "time since start"}
            ),
        }
    )
    return xr.Dataset(data, coords=coords, attrs=attrs)
