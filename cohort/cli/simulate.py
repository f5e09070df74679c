"""``cohort demo | simulate | generate | info | models``: cohorts, populations and stores.

(Over ~400 lines because ``simulate`` alone has 20 flags, each checked with a message naming
it; the five commands share the population/dosing readers and the summary table.)"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from cohort.cli._common import command, console, err_console, fail, patient_table, progress
from cohort.timing import describe, phases

# Defaults of `cohort simulate` (None in the signature, so a flag the user gave can be told
# apart from one left at its default when two flags conflict).
DEFAULTS = {"n": 1000, "iiv": 0.3, "amt": 100.0, "ii": 24.0, "addl": 0, "rate": 0.0}


def _run(model, pop, dosing, times, **kw):
    """Simulate with a progress bar; returns the dataset and where the time went."""
    from cohort.engine.simulate import simulate as simulate_cohort

    with phases() as spent, progress() as bar:
        total = len(pop) if hasattr(pop, "columns") else len(next(iter(pop.values())))
        task = bar.add_task(f"simulating {model.name}", total=total)
        ds = simulate_cohort(
            model,
            pop,
            dosing,
            times,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            **kw,
        )
    return ds, spent


def _summary(ds, outputs) -> Table:
    import pandas as pd

    from cohort.engine.status import STATUS_MEANINGS

    table = Table(title=f"{ds.attrs.get('model')} — {ds.sizes['patient']:,} patients")
    table.add_column("output", no_wrap=True)
    table.add_column("units", no_wrap=True)
    # "peak", not "Cmax": the outputs include PD responses and amounts, not only concentrations
    for col in ("peak p5", "peak median", "peak p95", "AUC median", "AUC units", "last median"):
        table.add_column(col, justify="right")
    time_units = ds["time"].attrs.get("units", "")
    status = np.asarray(ds["status"].values)
    ok = status == 0
    for o in outputs:
        if not ok.any():
            table.add_row(o, ds[o].attrs.get("units", ""), *(["–"] * 6))
            continue
        cmax, auc, last = _per_patient(ds, o, ok)
        table.add_row(
            o,
            ds[o].attrs.get("units", ""),
            *(f"{x:.4g}" for x in np.nanquantile(cmax, [0.05, 0.5, 0.95])),
            f"{np.nanmedian(auc):.4g}",
            _auc_units(ds[o].attrs.get("units", ""), time_units),
            f"{np.nanmedian(last):.4g}",
        )
    counts = pd.Series(status).value_counts().sort_index()
    table.caption = "status: " + ", ".join(
        f"{STATUS_MEANINGS.get(int(k), k)}={int(c):,}" for k, c in counts.items()
    )
    return table


def _auc_units(units: str, time_units: str) -> str:
    """Units of an output's area under the curve over time: ``mg/L`` and ``h`` give
    ``mg/L·h``; a dimensionless output's area is in time units."""
    if units in ("", "1"):
        return time_units
    return f"{units}·{time_units}" if time_units else units


def _per_patient(ds, output: str, ok: np.ndarray, read_bytes: int = 1 << 26):
    """Cmax, AUC (trapezoids) and last value of ``output`` for the patients where ``ok``,
    read a whole number of stored patient chunks (about ``read_bytes``) at a time: the
    output of a large cohort (10⁷ patients × 97 times × float64 = 7.8 GB) does not fit in
    memory, its per-patient summaries do."""
    var = ds[output]
    n, t = var.shape
    chunk = int((var.encoding.get("chunks") or (n,))[0]) or n
    rows = max(chunk, read_bytes // max(t * var.dtype.itemsize, 1) // chunk * chunk)
    times = np.asarray(ds["time"].values)
    parts = []
    for a in range(0, n, rows):
        keep = ok[a : a + rows]
        if not keep.any():
            continue
        v = np.asarray(var.isel(patient=slice(a, a + rows)).values)[keep]
        # v[:, -1] copied: a view would keep the whole block alive (measured: +64 MB a read)
        parts.append((np.nanmax(v, axis=1), np.trapezoid(v, times, axis=1), v[:, -1].copy()))
    return tuple(np.concatenate(x) for x in zip(*parts))


def _failure_reasons(model, ds, status: np.ndarray) -> list[str]:
    """One line per failure kind: what it means and what to do (the parameters out of bounds
    by name)."""
    from cohort.engine.status import STATUS_MEANINGS, STATUS_MESSAGES, Status

    lines = []
    for code in sorted(set(status[status != 0].tolist())):
        count = int((status == code).sum())
        name = STATUS_MEANINGS.get(code, str(code))
        lines.append(f"{name} ({count:,}): {STATUS_MESSAGES.get(Status(code), '')}".rstrip(": "))
        if code == Status.INVALID_PARAMETERS:
            lines += [f"  {x}" for x in _invalid_parameters(model, ds, status)]
    return lines


def _invalid_parameters(model, ds, status: np.ndarray, show: int = 4) -> list[str]:
    """Which parameters put patients out of bounds (status ``invalid_parameters``): the
    bound, how many patients and the first offender's value, so the user can fix the
    population (e.g. a log-normal spread pushing a fraction above 1)."""
    from cohort.engine.inputs import outside_bounds
    from cohort.engine.status import Status

    bad = status == Status.INVALID_PARAMETERS
    lines = []
    for q in model.parameters:
        if not bad.any() or q.name not in ds:
            continue
        v = np.asarray(ds[q.name].values, float)
        out = bad & outside_bounds(q, v)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            lines.append(
                f"{q.name} outside [{q.lower:g}, {q.upper:g}]"
                + (f" {q.units}" if q.units not in ("1", "") else "")
                + f" for {int(out.sum()):,} "
                f"patient(s) (e.g. patient {i}: {v[i]:.4g})"
            )
    return lines[:show] + ([f"... and {len(lines) - show} more"] if len(lines) > show else [])


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(n: int, n_params: int) -> None:
    """Refuse up front a cohort whose parameter arrays alone would not fit in memory (they are
    held whole; outputs stream to the store chunk by chunk)."""
    need = n * n_params * 8 * 3  # drawn, checked and cast copies
    free = _available_memory()
    if free is not None and need > 0.8 * free:
        fail(
            f"--n {n:,}: the parameters alone need about {need / 2**30:.1f} GiB but "
            f"{free / 2**30:.1f} GiB are free; use a smaller --n, or generate the population "
            "in a store with `cohort generate` and simulate it in several runs"
        )


@command
def demo(
    n: int = typer.Option(10_000, help="number of virtual patients"),
    out: Path = typer.Option(Path("runs/demo.zarr"), help="zarr store to write"),
    plot: Path = typer.Option(Path("runs/demo.png"), help="PNG figure to write"),
    seed: int = typer.Option(1, help="random seed of the virtual cohort"),
):
    """Simulate a default cohort: 2-cpt oral PK + indirect response, 320 mg q12h for 7 days.

    An existing --out from the same demo is reused (nothing is deleted); any other existing
    path is refused."""
    from cohort.dosing import Regimen
    from cohort.engine.inputs import grid
    from cohort.models import get as get_model
    from cohort.plots import band
    from cohort.population import lognormal
    from cohort.store import prepare_output
    from cohort.store.safety import is_empty_directory

    if n < 1:
        fail(f"--n: must be >= 1, got {n}")
    model = get_model("pk2_oral_idr")
    pop = lognormal(model, n, seed, cv=0.3)
    prepare_output(plot, overwrite=True, flag="--plot")  # replaces only cohort's own figure
    t0 = time.perf_counter()
    from cohort.store import StoreError

    try:
        ds, spent = _run(
            model,
            pop,
            Regimen(amt=320, cmt="depot", ii=12, addl=13),
            grid(0, 168, 0.5),
            method="fast",
            out=str(out),
            # the same demo again: its finished store is reused as is (an empty folder is new)
            resume=out.exists() and not is_empty_directory(out),
            seed=seed,
            chunk_size=min(n, 5_000),
        )
    except StoreError as exc:
        if "different inputs" not in str(exc):
            raise
        fail(
            f"--out {out} holds a demo run with other settings (--n/--seed); give another "
            "--out, or remove that store yourself (cohort never deletes it)"
        )
    dt = time.perf_counter() - t0
    console.print(_summary(ds, ["conc", "response"]))
    band(ds, ["conc", "response"], plot)
    console.print(
        f"{n:,} patients x 7 days in {dt:.1f} s "
        f"({n * 7 / dt:,.0f} patient-days/s, incl. compile and zarr writes)"
    )
    console.print(f"store: [bold]{escape(str(out))}[/]   figure: [bold]{escape(str(plot))}[/]")
    console.print(describe(spent), style="dim")


def _read_population(path: Path, model_name: str | None):
    """Parameters from a population store (``cohort generate``) or a CSV, and the model."""
    import pandas as pd

    from cohort.data.reader import DataError, read_table
    from cohort.models import get as get_model
    from cohort.population import open_population

    if not path.exists():
        fail(f"--population: no such file or store {path}")
    if path.is_dir():
        ds = open_population(path)
        made_for = ds.attrs.get("model") or None
        if model_name is None and made_for is None:
            fail(f"--population {path}: the store names no model; pass --model")
        # A --model other than the population's is refused by simulate itself.
        model = get_model(model_name or made_for)
        return model, ds
    model = get_model(model_name or "pk2_oral_idr")
    try:
        table = read_table(path)
    except DataError as exc:
        fail(f"--population {exc}")
    id_col = _id_column(table)
    ids = None if id_col is None else _id_keys(table[id_col])
    table = table.drop(columns=[] if id_col is None else [id_col])
    # besides the model's parameters: the modelled infusion durations RATE=-2 records read
    durations = {model.duration.get(s, f"D_{s}") for s in model.dose_targets}
    known = [*model.parameter_names, *sorted(durations)]
    # a column named like a parameter in another case ("cl" for CL) is that parameter
    by_case = {k.upper(): [q for q in known if q.upper() == k.upper()] for k in known}
    table = table.rename(
        columns={
            c: by_case[str(c).upper()][0]
            for c in table.columns
            if c not in known and len(by_case.get(str(c).upper(), [])) == 1
        }
    )
    if table.columns.duplicated().any():
        dup = table.columns[table.columns.duplicated()][0]
        fail(f"--population {path}: parameter {dup} is given twice (names differing in case)")
    unknown = [c for c in table.columns if c not in known]
    other_models = _parameters_of_other_models(unknown, model)
    if other_models:
        names = sorted(other_models)
        fail(
            f"--population {path}: column(s) {names} are not parameters of {model.name!r} "
            f"({', '.join(model.parameter_names)}) but of other models (e.g. "
            f"{other_models[names[0]]}); pass --model for the population's model, or rename "
            "or remove them"
        )
    if table.empty:
        fail(f"--population {path}: no patients (the file has no rows)")
    for c, v in table[[c for c in table.columns if c in known]].items():
        bad = pd.to_numeric(v, errors="coerce").isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            cell = str(v.iloc[i]).strip()
            shown = (
                "the cell is empty" if cell in ("", "nan", "None") else f"{cell!r} is not a number"
            )
            fail(f"--population {path}: row {i + 1}, column {c}: {shown}; give a number")
    # numbers (an empty cell: NaN) ride along; a column with text in it is left out, said
    blank = {c: table[c].astype(str).str.strip().isin(("", "nan", ".")) for c in unknown}
    numbers = {c: pd.to_numeric(table[c].where(~blank[c]), errors="coerce") for c in unknown}
    covariates = [c for c in unknown if (numbers[c].notna() | blank[c]).all()]
    text = [c for c in unknown if c not in covariates]
    if text:
        err_console.print(
            f"note: column(s) {', '.join(map(str, text))} hold text: not kept (covariates are "
            "kept as numbers; code categories as numbers to keep them)"
        )
    if covariates:
        # covariates (WT, AGE, ...) are kept with the results for exposure-covariate plots;
        # said out loud, so that a misspelt parameter is seen too
        err_console.print(
            f"note: column(s) {', '.join(map(str, covariates))} of --population are not "
            f"parameters of {model.name} ({', '.join(model.parameter_names)}): kept in the "
            "results as covariates, not used by the model"
        )
    pop = {c: v.to_numpy() for c, v in table.items() if c in known}
    pop.update({c: numbers[c].to_numpy(dtype=float) for c in covariates})
    return model, pop if ids is None else (pop, ids)


def _outside_model_ranges(ds) -> list[str]:
    """Parameters a generated population puts outside its model's range (a log-normal
    spread on a fraction: F > 1 for about half the patients), which `cohort simulate` would
    mark invalid_parameters: one line each, with the spec key that bounds them."""
    from cohort.engine.inputs import outside_bounds
    from cohort.models import get as get_model

    name = ds.attrs.get("model")
    if not name:
        return []
    lines = []
    for q in get_model(name).parameters:
        if q.name not in ds:
            continue
        out = outside_bounds(q, ds[q.name].values)  # the rule simulate marks patients by
        if out.any():
            lines.append(
                f"{q.name} is outside {name}'s range [{q.lower:g}, {q.upper:g}] for "
                f"{out.mean():.1%} of the patients; `cohort simulate` will mark them "
                f"invalid_parameters: bound it in the spec ([parameters.{q.name}] lower/upper)"
            )
    return lines


def _parameters_of_other_models(columns, model) -> dict[str, str]:
    """The columns that name a parameter of a related model, one sharing parameters with
    ``model`` (a population written for it: pk1's V in a pk2 file would otherwise ride along
    as a covariate while V1 took its typical value), each with one such model. An unrelated
    model's parameter is a covariate here (BW is a glucose model's parameter and a PK
    population's covariate)."""
    from cohort.models import available
    from cohort.models import get as get_model

    ours = set(model.parameter_names)
    found: dict[str, str] = {}
    for name in available():
        theirs = get_model(name).parameter_names
        if not ours & set(theirs):
            continue
        for q in theirs:
            if q in columns and q not in found:
                found[q] = name
    return found


def _id_column(table):
    """The name of a table's ID column (any case), or None."""
    return next((c for c in table.columns if str(c).upper() == "ID"), None)


def _id_keys(column) -> list:
    """Patient IDs of a table column, comparable across files ("7" and "7.0" are one ID)."""
    import pandas as pd

    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().all():
        return numbers.astype(float).tolist()
    return column.astype(str).str.strip().tolist()


def _pair_by_id(pop: dict, pop_ids: list, dose, population: Path, dosing: Path) -> dict:
    """The population's rows in the order of the dosing file's patients (its first appearance
    of each ID), matched by ID: pairing by row order would give one patient's parameters to
    another's doses whenever the two files list them differently."""
    if len(set(pop_ids)) != len(pop_ids):
        seen: set = set()
        dup = next(i for i in pop_ids if i in seen or seen.add(i))
        fail(
            f"--population {population}: ID {dup:g} appears on more than one row"
            if isinstance(dup, float)
            else f"--population {population}: ID {dup!r} repeats"
        )
    id_col = _id_column(dose)
    if id_col is None:
        return pop
    order = list(dict.fromkeys(_id_keys(dose[id_col])))
    where = {k: i for i, k in enumerate(pop_ids)}
    dosed = set(order)
    missing = [k for k in order if k not in where]
    extra = [k for k in pop_ids if k not in dosed]

    def show(k):
        return f"{k:g}" if isinstance(k, float) else repr(k)

    if missing or extra:
        fail(
            f"--population {population} and --dosing {dosing}: patient IDs differ ("
            + "; ".join(
                part for part in (
                    f"ID {show(missing[0])} has doses but no parameters" if missing else "",
                    f"ID {show(extra[0])} has parameters but no doses" if extra else "",
                ) if part
            )
            + "); give both files the same IDs"
        )  # fmt: skip
    rows = [where[k] for k in order]
    return {k: v[rows] for k, v in pop.items()}


@command
def simulate(
    model: str = typer.Option(
        None, help="model name (see `cohort models`; default pk2_oral_idr, or the population's)"
    ),
    n: int = typer.Option(
        None, help="number of virtual patients [default: 1000, or one per ID of --dosing]"
    ),
    seed: int = typer.Option(1, help="random seed"),
    iiv: float = typer.Option(
        None,
        help="between-patient CV: log-normal on positive parameters, logit-normal on "
        "fractions [default: 0.3]",
    ),
    population: Path = typer.Option(
        None, help="population store (`cohort generate`) or CSV with one row per patient"
    ),
    dosing: Path = typer.Option(None, help="NONMEM-style CSV (ID TIME AMT EVID CMT ...)"),
    amt: float = typer.Option(None, help="dose amount (without --dosing) [default: 100]"),
    cmt: str = typer.Option(None, help="dosing compartment name (default: first dosable)"),
    ii: float = typer.Option(
        None,
        help="dosing interval in the model's time unit (h; min for glucose models) [default: 24]",
    ),
    addl: int = typer.Option(None, help="additional doses [default: 0]"),
    rate: float = typer.Option(
        None,
        help="infusion rate (0: bolus; -2: duration from a D_<compartment> column of "
        "--population) [default: 0]",
    ),
    t_end: float = typer.Option(
        24.0,
        help="end of the simulation, in the model's time unit (h; min for the glucose models "
        "bergman, uva_padova, t1d_minimal)",
    ),
    step: float = typer.Option(0.25, help="save-time spacing, in the model's time unit"),
    out: str = typer.Option(
        "runs/simulation.zarr",
        "--out",
        "-o",
        help="zarr store: a path, or an fsspec URL such as s3://bucket/runs/x.zarr "
        "(credentials from the environment)",
    ),
    method: str = typer.Option("auto", help="auto | closed_form | diffrax | fast"),
    dtype: str = typer.Option("float64", help="float64 | float32"),
    dt: float = typer.Option(None, help="fast path step (default: the model's)"),
    tol: float = typer.Option(
        None, help="fast path accuracy instead of --dt: largest error relative to each peak"
    ),
    chunk_size: int = typer.Option(None, help="patients per batch"),
    resume: bool = typer.Option(False, help="continue an interrupted run into --out"),
    overwrite: bool = typer.Option(False, help="replace an existing --out written by cohort"),
    scheduler: str = typer.Option(
        None,
        help="Dask scheduler address (tcp://host:8786): its workers solve and write the "
        "chunks (needs --out on storage every worker reaches)",
    ),
):
    """Simulate a cohort and stream the results into a zarr store."""
    from cohort.data.reader import DataError, read_table
    from cohort.dosing import Regimen
    from cohort.engine.fast_path import RK4
    from cohort.engine.inputs import grid
    from cohort.models import get as get_model
    from cohort.population import lognormal

    if resume and overwrite:
        fail("--resume and --overwrite: choose one (continue the run, or replace it)")
    regimen_flags = {"--amt": amt, "--ii": ii, "--addl": addl, "--rate": rate, "--cmt": cmt}
    given = [k for k, v in regimen_flags.items() if v is not None]
    if dosing is not None and given:
        fail(f"--dosing and {', '.join(given)}: the dosing file sets the doses; drop one side")
    if population is not None and (n is not None or iiv is not None):
        which = ", ".join(f for f, v in (("--n", n), ("--iiv", iiv)) if v is not None)
        fail(f"--population and {which}: the population sets the patients; drop one side")
    if n is not None and n < 1:
        fail(f"--n must be >= 1, got {n}")
    if iiv is not None and not (np.isfinite(iiv) and iiv >= 0):
        fail(f"--iiv must be >= 0, got {iiv}")
    if not (np.isfinite(t_end) and t_end > 0):
        fail(f"--t-end must be > 0, got {t_end}")
    if not (np.isfinite(step) and step > 0):
        fail(f"--step must be > 0, got {step}")
    if dt is not None and not (np.isfinite(dt) and dt > 0):
        fail(f"--dt must be > 0 and finite, got {dt}")
    if chunk_size is not None and chunk_size < 1:
        fail(f"--chunk-size must be >= 1, got {chunk_size}")
    if method not in ("auto", "closed_form", "diffrax", "fast"):
        fail(f"--method must be auto, closed_form, diffrax or fast; got {method!r}")
    if dtype not in ("float32", "float64"):
        fail(f"--dtype must be float32 or float64, got {dtype!r}")
    if method == "auto" and (dt is not None or tol is not None):
        method = "fast"  # a step or an accuracy target is the fast path's setting
    if dt is not None and method != "fast":
        fail("--dt sets the fast path's step: use it with --method fast")
    if tol is not None and method != "fast":
        fail("--tol sets the fast path's accuracy: use it with --method fast")
    if tol is not None and dt is not None:
        fail("--dt and --tol: give the step or the accuracy, not both")
    if tol is not None and not 0 < tol < 1:
        fail(f"--tol must be in (0, 1), got {tol}")
    dose = None
    if dosing is not None:
        if not dosing.is_file():
            fail(f"--dosing: no such file {dosing}")
        try:
            dose = read_table(dosing)
        except DataError as exc:
            fail(f"--dosing {exc}")
    pop_ids = None
    if population is not None:
        m, pop = _read_population(population, model)
        if isinstance(pop, tuple):  # a CSV with an ID column
            pop, pop_ids = pop
        missing = [q for q in m.parameter_names if q not in pop]
        if missing:
            err_console.print(
                f"note: the population has no {', '.join(missing)}; {m.name}'s typical "
                "values are used for them"
            )
    else:
        m = get_model(model or "pk2_oral_idr")
        if n is None:  # one virtual patient per patient of the dosing file, else the default
            id_col = None if dose is None else _id_column(dose)
            n = DEFAULTS["n"] if id_col is None else len(set(_id_keys(dose[id_col])))
        _check_memory(n, len(m.parameter_names))
        cv = DEFAULTS["iiv"] if iiv is None else iiv
        pop = lognormal(m, n, seed, cv)
        if dose is not None:  # a NONMEM user may expect the file's own patients' parameters
            err_console.print(
                f"note: each of the {n:,} patients of --dosing gets parameters drawn around "
                f"{m.name}'s typical values (CV {cv:.0%}, seed {seed}); covariates and DV in "
                "the file are not used: give --population for your patients' own parameters"
            )
    if dosing is not None:
        if pop_ids is not None:
            pop = _pair_by_id(pop, pop_ids, dose, population, dosing)
    else:
        if cmt is not None and cmt.strip().isdigit() and 1 <= int(cmt) <= len(m.state_names):
            cmt = m.state_names[int(cmt) - 1]  # a NONMEM compartment number, as CMT in files
        if cmt is not None and cmt not in m.dose_targets:
            numbers = [m.state_names.index(t) + 1 for t in m.dose_targets]
            fail(
                f"--cmt: {cmt!r} cannot be dosed in {m.name}; use one of "
                f"{list(m.dose_targets)} (or their numbers {numbers})"
            )
        v = {k: DEFAULTS[k] if val is None else val for k, val in
             (("amt", amt), ("ii", ii), ("addl", addl), ("rate", rate))}  # fmt: skip
        for flag, key in (("--amt", "amt"), ("--ii", "ii")):
            if not (np.isfinite(v[key]) and v[key] >= 0):
                fail(f"{flag} must be a finite number >= 0, got {v[key]}")
        if not (np.isfinite(v["rate"]) and (v["rate"] >= 0 or v["rate"] == -2.0)):
            fail(
                f"--rate must be a finite number >= 0 (0: bolus), or -2 (the duration from "
                f"a D_<compartment> column of --population), got {v['rate']}"
            )
        if v["addl"] < 0:
            fail(f"--addl must be >= 0, got {v['addl']}")
        if v["addl"] and not v["ii"] > 0:
            fail(f"--ii must be > 0 with --addl, got {v['ii']}")
        dose = Regimen(
            amt=v["amt"],
            cmt=cmt or m.dose_targets[0],
            ii=v["ii"] if v["addl"] else 0.0,
            addl=v["addl"],
            rate=v["rate"],
        )
    if isinstance(pop, dict) and any(k not in m.parameter_names for k in pop):
        import pandas as pd

        pop = pd.DataFrame(pop)  # covariates ride along in a frame (a dict takes parameters only)
    t0 = time.perf_counter()
    ds, spent = _run(
        m,
        pop,
        dose,
        grid(0, t_end, step),
        method=RK4(dt=dt, tol=tol) if method == "fast" else method,
        dtype=dtype,
        out=str(out),
        resume=resume,
        overwrite=overwrite,
        seed=seed,
        chunk_size=chunk_size,
        cluster=scheduler,
    )
    console.print(_summary(ds, list(m.output_names)))
    console.print(describe(spent), style="dim")
    status = np.asarray(ds["status"].values)
    n_bad = int((status != 0).sum())
    if n_bad:
        err_console.print(
            f"[bold yellow]warning:[/] {n_bad:,} of {ds.sizes['patient']:,} patients failed "
            "(status != 0; their outputs are NaN)"
        )
        for line in _failure_reasons(m, ds, status):
            err_console.print(f"  {escape(line)}")
    console.print(f"done in {time.perf_counter() - t0:.1f} s -> [bold]{escape(str(out))}[/]")


@command
def generate(
    spec: Path = typer.Argument(..., help="prior spec, e.g. priors/adult_pk_oral.toml"),
    n: int = typer.Option(10_000, help="number of virtual patients"),
    seed: int = typer.Option(1, help="random seed"),
    out: Path = typer.Option(Path("runs/population.zarr"), "--out", "-o", help="zarr store"),
    chunk_size: int = typer.Option(200_000, help="patients per chunk"),
    resume: bool = typer.Option(False, help="finish an interrupted run into --out"),
    overwrite: bool = typer.Option(False, help="replace an existing --out written by cohort"),
    plot: Path = typer.Option(None, help="PNG with covariate/parameter histograms"),
    max_candidates: int = typer.Option(
        None, help="candidate draws allowed before giving up [default: 100 x --n, >= 10,000]"
    ),
):
    """Generate a virtual population from a prior spec into a zarr store."""
    from cohort.population import generate as generate_population
    from cohort.store import prepare_output

    if resume and overwrite:
        fail("--resume and --overwrite: choose one (finish the run, or replace it)")
    if n < 1:
        fail(f"--n must be >= 1, got {n}")
    if chunk_size < 1:
        fail(f"--chunk-size must be >= 1, got {chunk_size}")
    if max_candidates is not None and max_candidates < n:
        fail(f"--max-candidates must be >= --n ({n:,}), got {max_candidates:,}")
    if not spec.is_file():
        fail(
            f"{spec} is a folder, not a spec file" if spec.is_dir() else f"no such spec file {spec}"
        )
    if plot is not None:
        if plot.suffix.lower() != ".png":
            fail(f"--plot {plot}: give a .png path (the figure is a PNG)")
        prepare_output(plot, overwrite=overwrite, flag="--plot")
    t0 = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("generating", total=n)
        ds = generate_population(
            spec,
            n,
            seed,
            chunk_size=chunk_size,
            out=out,
            overwrite=overwrite,
            resume=resume,
            progress=lambda d, t: bar.update(task, completed=d, total=t),
            max_candidates=max_candidates,
        )
    dt = time.perf_counter() - t0
    table = Table("variable", "units", "p5", "median", "p95", title=ds.attrs["population"])
    for k in ds.data_vars:
        v = np.asarray(ds[k].values)
        table.add_row(
            k,
            ds[k].attrs.get("units", ""),
            *(f"{x:.4g}" for x in np.quantile(v, [0.05, 0.5, 0.95])),
        )
    console.print(table)
    console.print(
        f"{n:,} patients in {dt:.2f} s, acceptance rate "
        f"{ds.attrs['acceptance_rate']:.1%} -> [bold]{escape(str(out))}[/]"
    )
    for line in _outside_model_ranges(ds):
        err_console.print(f"[bold yellow]warning:[/] {escape(line)}")
    if plot is not None:
        from cohort.plots import histograms

        histograms(ds, plot)
        console.print(f"figure: [bold]{escape(str(plot))}[/]")


def _is_fit(path: Path) -> bool:
    """A fit result of `cohort fit` (netCDF, or a zarr store with a fit_summary group)."""
    if path.is_file():
        return path.suffix == ".nc"
    return (path / "fit_summary").is_dir()


def _fit_info(path: Path) -> None:
    """`cohort info` of a fit result: its settings and estimates (log-scale rows left out)."""
    from cohort.errors import CohortError
    from cohort.inference import load_fit

    try:
        summary = load_fit(path)["fit_summary"]
    except (OSError, KeyError, ValueError) as exc:
        if isinstance(exc, CohortError):
            raise
        fail(f"{path}: not a readable fit result ({exc})")
    a = summary.attrs
    console.print(
        f"[bold]{escape(str(path))}[/]: fit of {escape(str(a.get('model', '?')))} "
        f"({escape(str(a.get('method', '?')))}), {summary.sizes.get('subject', 0)} subjects"
    )
    estimate = "estimate" if "estimate" in summary else "mean"
    spread = "se" if "se" in summary else "sd"
    table = Table("parameter", estimate, spread, "units")
    for i, name in enumerate(summary["parameter"].values.astype(str)):
        if name.startswith("log_"):
            continue
        table.add_row(
            name,
            f"{float(summary[estimate].values[i]):.4g}",
            f"{float(summary[spread].values[i]):.3g}",
            str(summary["units"].values[i]) if "units" in summary else "",
        )
    console.print(table)
    keys = ("error_model", "omega", "approximation", "n_observations", "ofv", "converged",
            "diagnostic_verdict", "model_hash", "cohort_version")  # fmt: skip
    for key in keys:
        if key in a and str(a[key]) != "":
            console.print(f"  {key}: {escape(str(a[key]))}")


def _is_twin_store(path: Path) -> bool:
    """A twin store of `cohort twin` (its root's kind, read from the zarr metadata)."""
    import json

    meta = path / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {}) if meta.is_file() else {}
    except (OSError, ValueError):
        return False
    return attrs.get("kind") == "cohort-twins"


def _twin_info(path: Path) -> None:
    """`cohort info` of a twin store: model, prior, patients, every stored update and the
    current estimates."""
    from cohort.twin import open_twins

    tw = open_twins(path)
    size = _disk_bytes(path)
    on_disk = "" if size is None else f" ({_human_bytes(size)} on disk)"
    console.print(
        f"[bold]{escape(str(path))}[/]: twins of {tw.n:,} patient(s), model "
        f"{escape(tw.prior.model.name)}, prior {escape(tw.prior.name)}, method {tw.method}"
        + on_disk
    )
    table = Table("update", "step", "records seen", "seconds")
    for k, entry in enumerate(tw.history):
        seen = entry.get("rows")
        if seen is None:
            seen = f"{int(sum(entry.get('n_observations', []))):,} observations"
        seconds = entry.get("seconds")
        table.add_row(
            str(k),
            str(entry.get("step", entry.get("method", ""))),
            str(seen),
            "" if seconds is None else f"{float(seconds):.1f}",
        )
    console.print(table)
    ind = tw.individual()
    if hasattr(tw, "replay"):  # CGM twins: posterior medians (their intervals: `twin cgm`)
        ind = ind[[c for c in ind.columns if f"{c}_q05" in ind.columns] + ["mard", "ok"]]
    shown = ind.head(10)
    rows = {
        pid: [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        for pid, row in shown.iterrows()
    }
    est = patient_table(rows, [str(c) for c in shown.columns], "current estimates")
    if len(ind) > 10:
        est.caption = f"first 10 of {len(ind)} patients"
    console.print(est)
    console.print(f"  usable posteriors: {int(tw.ok.sum())}/{tw.n}")


def _human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


def _disk_bytes(store: Path) -> int | None:
    """Bytes of the files under a local store (None for a URL or an unreadable folder)."""
    try:
        return sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
    except OSError:
        return None


@command
def info(
    store: Path = typer.Argument(..., help="result store, fit result or twin store of cohort"),
):
    """Describe a result store (sizes, variables with units, provenance, status counts), a
    fit result of `cohort fit` (settings and estimates) or a twin store (updates, estimates)."""
    import pandas as pd

    from cohort.store import open_result

    if _is_fit(store):
        return _fit_info(store)
    if _is_twin_store(store):
        return _twin_info(store)
    ds = open_result(store)
    size = _disk_bytes(store)
    on_disk = "" if size is None else f" ({_human_bytes(size)} on disk)"
    console.print(
        f"[bold]{escape(str(store))}[/]: "
        + ", ".join(f"{'batches' if k == 'chunk' else k}={v:,}" for k, v in ds.sizes.items())
        + on_disk
    )
    table = Table("variable", "dims", "units", "description")

    def order(item):  # trajectories, then per-patient results, parameters, bookkeeping
        name, var = item
        return ("time" not in var.dims, name != "status", name == "chunk_done", name)

    for name, var in sorted(ds.data_vars.items(), key=order):
        table.add_row(
            name, ",".join(var.dims), var.attrs.get("units", ""), var.attrs.get("long_name", "")
        )
    for name, var in ds.coords.items():  # e.g. ID: the dosing records' patient IDs
        if name not in ds.dims:
            description = var.attrs.get("long_name", "") + " (coordinate)"
            table.add_row(name, ",".join(var.dims), var.attrs.get("units", ""), description)
    console.print(table)
    for key in (
        "model",
        "population",
        "dosing",
        "model_hash",
        "method",
        "solver_settings",
        "dtype",
        "seed",
        "cohort_version",
        "created",
        "spec_hash",
    ):
        if key in ds.attrs:
            console.print(f"  {key}: {escape(str(ds.attrs[key]))}")
    if "status" in ds:
        from cohort.engine.status import STATUS_MEANINGS

        counts = pd.Series(ds["status"].values).value_counts().sort_index()
        console.print(
            "  status: "
            + ", ".join(
                f"{STATUS_MEANINGS.get(int(k), 'not computed')}={int(c):,}"
                for k, c in counts.items()
            )
        )
    if "incomplete" in ds.attrs:
        err_console.print(f"[bold yellow]INCOMPLETE:[/] {ds.attrs['incomplete']}")


@command
def models(name: str = typer.Argument(None, help="show one model in detail")):
    """List the registered models, or the states/parameters/units of one."""
    from cohort.models import available as available_models
    from cohort.models import get as get_model

    if name is None:
        table = Table("model", "states", "outputs", "description")
        for key in available_models():
            m = get_model(key)
            table.add_row(key, ", ".join(m.state_names), ", ".join(m.output_names), m.description)
        console.print(table)
        return
    m = get_model(name)
    console.print(f"[bold]{m.name}[/]: {escape(m.description)}")
    st = Table("state", "units", "description", title="states")
    for s in m.states:
        st.add_row(s.name, escape(s.units), escape(s.description))
    pt = Table("parameter", "units", "default", "range", "description", title="parameters")
    for q in m.parameters:
        pt.add_row(
            q.name,
            escape(q.units),
            f"{q.default:g}",
            escape(f"[{q.lower:g}, {q.upper:g}]"),
            escape(q.description),
        )
    ot = Table("output", "units", "description", title="outputs")
    for o in m.outputs:
        ot.add_row(o.name, escape(o.units), escape(o.description))
    console.print(st, pt, ot)
    console.print(f"dose targets: {', '.join(m.dose_targets)}")
