"""Normalise user inputs (population, times) into arrays, with errors that say what to fix."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cohort.errors import CohortError, CohortWarning
from cohort.models.base import Model


class InputError(CohortError, ValueError):
    """Bad simulation input; the message names the field and the fix."""


MAX_GRID_POINTS = 10_000_000  # 80 MB of times; 1-min saves over 19 years


def grid(start: float, stop: float, step: float) -> np.ndarray:
    """Evenly spaced save times from ``start`` to ``stop`` inclusive (``stop`` ends a shorter
    last interval when the span is not a whole number of steps; at most
    :data:`MAX_GRID_POINTS`: a mistyped step must not ask for the machine's memory)."""
    if not (np.isfinite(start) and np.isfinite(stop)):
        raise InputError(f"grid: start and stop must be finite, got {start} and {stop}")
    if not (np.isfinite(step) and step > 0):
        raise InputError(f"grid: step must be a finite number > 0, got {step}")
    if stop < start:
        raise InputError(f"grid: stop ({stop}) is before start ({start})")
    points = (stop - start) / step
    if not points < MAX_GRID_POINTS:
        raise InputError(
            f"grid: {start:g} to {stop:g} in steps of {step:g} is {points:.3g} save times "
            f"(at most {MAX_GRID_POINTS:,}); use a larger step"
        )
    eps = 1e-9 * max(1.0, points)  # round-off of the division, relative to the count
    n = int(np.floor(points + eps))  # a step that divides the span up to round-off
    times = start + step * np.arange(n + 1)
    if points - n > eps:  # the span is not a whole number of steps: the last is shorter
        times = np.append(times, stop)
    return times


def check_times(times: Any) -> np.ndarray:
    try:
        t = np.asarray(times, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(
            f"times: give numbers (e.g. cohort.grid(0, 24, 0.25) or [0, 1, 2]), got {times!r}"
        ) from None
    if t.size == 0:
        raise InputError("times: give at least one save time")
    if not np.all(np.isfinite(t)):
        raise InputError("times: all save times must be finite numbers")
    if np.any(np.diff(t) <= 0):
        i = int(np.flatnonzero(np.diff(t) <= 0)[0]) + 1
        raise InputError(
            f"times: must be strictly increasing (entry {i}: {t[i]:g} after {t[i - 1]:g})"
        )
    return t


def same_model(name: str, model: Model) -> bool:
    """Whether the registered model ``name`` is ``model`` under another name (an alias such as
    ``pk2_oral_idr`` for ``pk2_oral+idr1``: same name and equations)."""
    if name in (model.name, getattr(model, "_registered_as", None)):
        return True
    from cohort.models.base import _REGISTRY, get

    if name not in _REGISTRY:
        return False
    other = get(name)
    return other.name == model.name and other.fingerprint() == model.fingerprint()


def check_population_model(model: Model, population: xr.Dataset) -> None:
    """A generated population (``attrs['model']``, parameters marked in ``long_name``) must be
    for this model: simulating a pk1 population with a pk2 model would silently drop V and use
    V1's default."""
    made_for = population.attrs.get("model")
    if made_for and not same_model(str(made_for), model):
        raise InputError(
            f"population: generated for model {made_for!r} (its attrs['model']), not "
            f"{model.name!r}; simulate it with model {made_for!r}, or generate a population "
            f"for {model.name!r}"
        )
    params = [
        k
        for k in population.data_vars
        if str(population[k].attrs.get("long_name", "")).startswith("parameter ")
    ]
    lacking = sorted(set(params) - set(model.parameter_names))
    if lacking:
        raise InputError(
            f"population: parameter(s) {lacking} are not parameters of model {model.name!r} "
            f"({', '.join(model.parameter_names)}); choose the model the population was made for"
        )


def _warn_near_misses(model: Model, extra: list, cols: dict) -> None:
    """A table's column that is not a parameter is kept as a covariate; one that differs from
    a parameter the table lacks only in case or by a typo ("gb" for Gb) is most likely meant as
    that parameter, which would otherwise run at its default without a word."""
    import difflib

    missing = [p for p in model.parameter_names if p not in cols]
    lower = {p.lower(): p for p in missing}
    # other names a parameter goes by (a patient table with WT and no BW ran every patient
    # at the default body weight without a word; a probe)
    aliases = {q.name: q.aliases for q in model.parameters}
    for col in map(str, extra):
        meant = (
            lower.get(col.lower())
            or next((p for p in missing if col.upper() in aliases[p]), None)
            or next(iter(difflib.get_close_matches(col, missing, n=1, cutoff=0.8)), None)
        )
        if meant is not None:
            warnings.warn(
                f"population: column {col!r} is not a parameter of {model.name!r} (kept as a "
                f"covariate), and {meant!r} is not given (it runs at its default "
                f"{model.defaults()[meant]:g}): rename the column to {meant!r} if it is meant",
                CohortWarning,
                stacklevel=4,
            )


def population_arrays(model: Model, population: Any, n: int | None) -> dict[str, np.ndarray]:
    """Parameters per patient as float64 arrays of length N, defaults filled in.

    ``population`` may be an ``xr.Dataset`` (dim ``patient``), a DataFrame (one row per
    patient), a dict of scalars/arrays, or ``None`` (all defaults; then ``n`` is required).
    Extra names are rejected unless they are ``D_<cmt>`` infusion durations or covariates in a
    Dataset/DataFrame (ignored by the model; :func:`population_extras` carries them into the
    results).
    """
    if population is None:
        if n is None:
            raise InputError("population: give a population or the number of patients n")
        population = {}
    strict = isinstance(population, dict)
    if isinstance(population, xr.Dataset):
        check_population_model(model, population)
        cols = {
            k: population[k].values
            for k in population.data_vars
            if population[k].dims == ("patient",)
        }
    elif isinstance(population, pd.DataFrame):
        cols = {k: population[k].to_numpy() for k in population.columns}
    elif isinstance(population, dict):
        cols = dict(population)
    else:
        raise InputError(
            "population must be an xarray Dataset, a pandas DataFrame, a dict or None; got "
            f"{type(population).__name__}"
        )
    known = set(model.parameter_names)
    extra = [k for k in cols if k not in known and not str(k).startswith("D_")]
    if strict and extra:
        raise InputError(
            f"population: unknown parameter(s) {extra} for model {model.name!r}; "
            f"parameters are {sorted(known)}"
        )
    _warn_near_misses(model, extra, cols)
    deep = [k for k, v in cols.items() if np.ndim(v) > 1]
    if deep:
        raise InputError(
            f"population: {deep[0]!r} has shape {np.shape(cols[deep[0]])}; give one value per "
            "patient (a 1-D array) or one value for all"
        )
    sizes = {k: np.size(v) for k, v in cols.items() if np.ndim(v) > 0}
    lengths = set(sizes.values())
    if len(lengths) > 1:
        raise InputError(f"population: parameter arrays have different lengths {sizes}")
    size = lengths.pop() if lengths else None
    if n is None:
        n = size if size is not None else 1
    elif size is not None and size != n:
        raise InputError(f"population: {size} patients given but n={n}")
    out = {}
    for q in model.parameters:
        v = cols.get(q.name, q.default)
        try:
            arr = np.asarray(v, dtype=float)
        except (TypeError, ValueError):
            raise InputError(_not_numeric(q.name, v)) from None
        out[q.name] = np.broadcast_to(arr, (n,)).copy()
    for k, v in cols.items():
        if str(k).startswith("D_"):
            out[str(k)] = np.broadcast_to(np.asarray(v, dtype=float), (n,)).copy()
    return out


# Names a covariate cannot take in a result (its own variables and coordinates).
_RESERVED = {"patient", "time", "status", "chunk_done", "ID", "id"}
# A generated population's attributes kept, prefixed, in the result's provenance.
_POPULATION_PROVENANCE = ("population", "spec_hash", "spec_path", "seed", "cohort_version")


def population_ids(population: Any, n: int) -> np.ndarray | None:
    """The patients' IDs a DataFrame or Dataset population carries in an ``ID`` column (any
    case), kept with the results so they can be joined back to the user's table; None if it
    has none. IDs must be unique (one row per patient)."""
    from cohort.dosing import id_values

    if isinstance(population, pd.DataFrame):
        col = next((c for c in population.columns if str(c).upper() == "ID"), None)
        values = None if col is None else population[col].to_numpy()
    elif isinstance(population, xr.Dataset) and "ID" in population.variables:
        values = population["ID"].values if population["ID"].dims == ("patient",) else None
    else:
        values = None
    if values is None or len(values) != n:
        return None
    ids = id_values(values)
    seen = pd.Index(ids)
    if seen.has_duplicates:
        dup = seen[seen.duplicated()][0]
        raise InputError(
            f"population: ID {dup} is on more than one row; give each patient one row (one ID)"
        )
    return ids


def paired_by_id(population: Any, dosing: Any) -> Any:
    """``population``'s rows in the order of the dosing records' patients (first appearance),
    matched by ``ID`` when both carry one: matching by row order would give one patient's
    parameters to another's doses whenever the two tables list them differently. IDs on one
    side only, or repeated in the population, are an :class:`InputError`."""
    from cohort.dosing import id_keys, patient_ids

    dose_ids = patient_ids(dosing)
    pop_ids = population_ids(population, _rows(population)) if dose_ids is not None else None
    if pop_ids is None:
        return population
    # compared as the dosing reader tells patients apart (numbers where every ID is one, as
    # NONMEM reads ID): "001" in both files was one patient to each reader but "001" against
    # 1 here, and the run was refused (a probe)
    dose_keys, pop_keys = id_keys(dose_ids), id_keys(pop_ids)
    where: dict = {}
    for i, k in enumerate(pop_keys):
        if k in where:  # "1" and "01": one patient to the dosing records, two rows here
            raise InputError(
                f"population: IDs {pop_ids[where[k]]} and {pop_ids[i]} are one patient as the "
                "dosing records read IDs (numbers); give each patient one row and one ID"
            )
        where[k] = i
    missing = [dose_ids[j] for j, k in enumerate(dose_keys) if k not in where]
    dosed = set(dose_keys)
    extra = [pop_ids[i] for i, k in enumerate(pop_keys) if k not in dosed]
    if missing or extra:
        parts = [f"ID {missing[0]} has dose records but no parameters" if missing else "",
                 f"ID {extra[0]} has parameters but no dose records" if extra else ""]  # fmt: skip
        raise InputError(
            f"population and dosing: patient IDs differ ({'; '.join(p for p in parts if p)}); "
            "give both the same IDs"
        )
    order = [where[k] for k in dose_keys]
    if order == list(range(len(order))):
        return population
    if isinstance(population, pd.DataFrame):
        return population.iloc[order].reset_index(drop=True)
    return population.isel(patient=order)


def _rows(population: Any) -> int:
    if isinstance(population, pd.DataFrame):
        return len(population)
    if isinstance(population, xr.Dataset) and "patient" in population.sizes:
        return population.sizes["patient"]
    return -1


_COVARIATE_ATTRS = ("units", "long_name", "categories", "comment", "distribution", "citation")


def population_extras(
    model: Model, population: Any, outputs: tuple[str, ...] = ()
) -> tuple[dict[str, tuple[np.ndarray, dict]], dict[str, Any]]:
    """What a Dataset/DataFrame population carries besides the model's parameters: numeric
    per-patient covariates (e.g. WT, AGE) as ``{name: (float64 values, attrs)}``, kept with the
    results so exposures can be related to them, and a generated population's provenance
    (``population_*`` attributes). The model does not use the covariates."""
    if isinstance(population, xr.Dataset):
        cols = {
            k: (population[k].values, dict(population[k].attrs))
            for k in population.data_vars
            if population[k].dims == ("patient",)
        }
        provenance = {
            ("population" if k == "population" else f"population_{k}"): population.attrs[k]
            for k in _POPULATION_PROVENANCE
            if k in population.attrs
        }
    elif isinstance(population, pd.DataFrame):
        cols = {str(k): (population[k].to_numpy(), {}) for k in population.columns}
        provenance = {}
    else:
        return {}, {}
    skip = set(model.parameter_names) | _RESERVED | set(outputs)
    covariates = {}
    for k, (v, attrs) in cols.items():
        if k in skip or str(k).startswith("D_") or np.asarray(v).dtype.kind not in "biuf":
            continue
        # the coding of a categorical covariate goes with its codes (which of 0/1 was M was
        # lost in the results; a probe), and its source with its values
        attrs = {a: attrs[a] for a in _COVARIATE_ATTRS if a in attrs}
        attrs.setdefault("long_name", f"covariate {k} (not used by the model)")
        covariates[str(k)] = (np.asarray(v, dtype=float), attrs)
    return covariates, provenance


def outside_bounds(q, values) -> np.ndarray:
    """Where ``values`` of parameter ``q`` are non-finite or outside ``[q.lower, q.upper]``."""
    v = np.asarray(values, float)
    return ~np.isfinite(v) | (v < q.lower) | (v > q.upper)


def _not_numeric(name: str, values) -> str:
    """Which patient (0-based row) and value of a parameter column are not numbers."""
    flat = np.asarray(values, dtype=object).reshape(-1)
    for i, x in enumerate(flat):
        try:
            float(x)
        except (TypeError, ValueError):
            shown = "an empty cell" if x is None or str(x).strip() in ("", "nan") else repr(x)
            return (
                f"population: parameter {name!r} is not numeric: patient {i} (row {i + 1} of "
                f"a table) has {shown}; give a number"
            )
    return f"population: parameter {name!r} is not numeric"


def checked_params(
    model: Model, params: dict[str, np.ndarray], dtype: str, invalid: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-patient flag of parameters outside their bounds (or non-finite), and the parameters
    cast to the run's dtype with such patients' values replaced by defaults, so a bad patient
    is solved harmlessly and then marked ``INVALID_PARAMETERS`` (every engine and the
    closed-loop runs built on the engine use this one check). ``invalid``: patients already
    known to be invalid (e.g. a modelled infusion duration <= 0)."""
    n_pat = len(next(iter(params.values())))
    invalid = np.zeros(n_pat, bool) if invalid is None else np.asarray(invalid, bool).copy()
    for q in model.parameters:
        if q.name in params:
            invalid |= outside_bounds(q, params[q.name])
    defaults = model.defaults()
    clean = {}
    for name, v in params.items():
        v = np.asarray(v, dtype)
        clean[name] = np.where(invalid, defaults.get(name, 1.0), v) if invalid.any() else v
    return invalid, clean
