"""``cohort demo | simulate``: a default cohort, or any model, population and dosing.

(Over ~300 lines because ``simulate`` alone has 20 flags, each checked with a message naming
it; its input readers are in :mod:`cohort.cli._inputs`, its summary in
:mod:`cohort.cli._summary`.)"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import typer
from rich.markup import escape

from cohort._seed import MAX_SEED
from cohort.cli._common import (
    check_figure_path,
    command,
    console,
    err_console,
    fail,
    progress,
)
from cohort.cli._inputs import (
    horizon_notes,
    id_column,
    id_keys,
    pair_by_id,
    read_population,
)
from cohort.cli._summary import summary_table
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


def _finished_store(out: Path) -> bool:
    """Whether ``out`` holds a complete store (a rerun of the demo reuses it, solving nothing)."""
    from cohort.store.safety import is_empty_directory

    if not out.is_dir() or is_empty_directory(out):
        return False
    try:
        from cohort.store import open_result

        return bool(np.asarray(open_result(out)["chunk_done"]).all())
    except Exception:  # not a readable store: the run says what is wrong with it
        return False


@command
def demo(
    n: int = typer.Option(10_000, help="number of virtual patients"),
    out: Path = typer.Option(Path("runs/demo.zarr"), help="zarr store to write"),
    plot: Path = typer.Option(Path("runs/demo.png"), help="PNG figure to write"),
    seed: int = typer.Option(1, min=0, max=MAX_SEED, help="random seed of the virtual cohort"),
):
    """Simulate a default cohort: 2-cpt oral PK + indirect response, 320 mg q12h for 7 days.

    An existing --out from the same demo is reused (nothing is deleted); any other existing
    path is refused."""
    from cohort.dosing import Regimen
    from cohort.engine.inputs import grid
    from cohort.models import get as get_model
    from cohort.plots import band
    from cohort.population import lognormal
    from cohort.store.safety import is_empty_directory

    if n < 1:
        fail(f"--n: must be >= 1, got {n}")
    model = get_model("pk2_oral_idr")
    pop = lognormal(model, n, seed, cv=0.3)
    check_figure_path(plot, overwrite=True)  # replaces only cohort's own figure, when saved
    t0 = time.perf_counter()
    from cohort.store import StoreError

    reused = _finished_store(out)
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
    console.print(summary_table(ds, ["conc", "response"]))
    band(ds, ["conc", "response"], plot)
    if reused:  # nothing was solved: a throughput would be fiction (it printed 287,007/s)
        console.print(f"{n:,} patients x 7 days: reused the finished store at {escape(str(out))}")
    else:
        console.print(
            f"{n:,} patients x 7 days in {dt:.1f} s "
            f"({n * 7 / dt:,.0f} patient-days/s, incl. compile and zarr writes)"
        )
    console.print(f"store: [bold]{escape(str(out))}[/]   figure: [bold]{escape(str(plot))}[/]")
    console.print(describe(spent), style="dim")


@command
def simulate(
    model: str = typer.Option(
        None, help="model name (see `cohort models`; default pk2_oral_idr, or the population's)"
    ),
    n: int = typer.Option(
        None, help="number of virtual patients [default: 1000, or one per ID of --dosing]"
    ),
    seed: int = typer.Option(1, min=0, max=MAX_SEED, help="random seed"),
    iiv: float = typer.Option(
        None,
        help="between-patient CV: log-normal around each typical value (its median: "
        "TV*exp(ETA)), logit-normal on fractions [default: 0.3]",
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
    method: str = typer.Option("auto", help="auto | closed_form | diffrax (adaptive) | fast (rk4)"),
    dtype: str = typer.Option("float64", help="float64 | float32"),
    dt: float = typer.Option(None, help="fast path step (default: the model's)"),
    tol: float = typer.Option(
        None, help="fast path accuracy instead of --dt: largest error relative to each peak"
    ),
    rtol: float = typer.Option(
        None, help="adaptive engine's relative tolerance [1e-8; float32: 1e-5 is reachable]"
    ),
    atol: float = typer.Option(None, help="adaptive engine's absolute tolerance [1e-10]"),
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
    method = {"rk4": "fast", "adaptive": "diffrax"}.get(method, method)  # the API's aliases
    if method not in ("auto", "closed_form", "diffrax", "fast"):
        fail(
            f"--method must be auto, closed_form, diffrax (adaptive) or fast (rk4); got {method!r}"
        )
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
    tolerances = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
    for name, value in tolerances.items():
        if not (np.isfinite(value) and 0 < value < 1):
            fail(f"--{name} must be in (0, 1), got {value}")
    if tolerances and method == "auto":
        method = "diffrax"  # a tolerance is the adaptive engine's setting
    if tolerances and method != "diffrax":
        fail("--rtol/--atol set the adaptive engine's tolerances: use them with --method diffrax")
    dose = None
    if dosing is not None:
        if not dosing.is_file():
            fail(f"--dosing: no such file {dosing}")
        try:
            dose = read_table(dosing)
        except DataError as exc:
            fail(f"--dosing {exc}")
        if len(dose) == 0:
            fail(f"--dosing {dosing}: the file has a header but no records; add the dose rows")
        for level, note in horizon_notes(dose, t_end):
            style = "[bold yellow]warning:[/]" if level == "warning" else "note:"
            err_console.print(f"{style} --dosing {escape(note)}")
    pop_ids = None
    if "://" not in str(out):
        inputs = {"--population": population, "--dosing": dosing}
        for flag, given in inputs.items():
            if given is not None and Path(given).resolve() == Path(out).resolve():
                # the results replaced the population store and its provenance (a probe)
                fail(f"--out {out} is the {flag} input: write the results to another path")
    if population is not None:
        m, pop = read_population(population, model)
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
        id_col = None if dose is None else id_column(dose)
        n_ids = None if id_col is None else len(set(id_keys(dose[id_col])))
        if n is None:  # one virtual patient per patient of the dosing file, else the default
            n = DEFAULTS["n"] if n_ids is None else n_ids
        elif n_ids is not None and n != n_ids:
            fail(
                f"--n {n:,}, but --dosing describes {n_ids:,} patients (IDs): leave out --n for "
                "one virtual patient per ID"
            )
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
            pop = pair_by_id(pop, pop_ids, dose, population, dosing)
        elif population is not None and population.is_file() and id_column(dose) is not None:
            err_console.print(
                f"note: --population {population} has no ID column: its rows are paired with "
                "the patients of --dosing in their order of first appearance; add an ID column "
                "to pair them by ID"
            )
    else:
        if pop_ids is not None:  # kept as the results' ID coordinate (must be unique)
            pop = {**pop, "ID": np.asarray(pop_ids, dtype=object)}
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
    from cohort.dosing import DosingError

    try:
        ds, spent = _run(
            m,
            pop,
            dose,
            grid(0, t_end, step),
            method=RK4(dt=dt, tol=tol) if method == "fast" else _adaptive(method, tolerances),
            dtype=dtype,
            out=str(out),
            resume=resume,
            overwrite=overwrite,
            seed=seed,
            chunk_size=chunk_size,
            cluster=scheduler,
        )
    except DosingError as exc:
        if dosing is None:
            raise
        fail(f"--dosing {dosing}: {exc}")  # rows as the file numbers them (the dosing reader)
    console.print(summary_table(ds, list(m.output_names)))
    console.print(describe(spent), style="dim")
    status = np.asarray(ds["status"].values)
    n_bad = int((status != 0).sum())
    if n_bad:
        err_console.print(
            f"[bold yellow]warning:[/] {n_bad:,} of {ds.sizes['patient']:,} patients failed "
            "(status != 0; their outputs are NaN)"
        )
        from cohort.engine.failures import failure_reasons  # here: --help imports no JAX

        for line in failure_reasons(m, ds, status):
            err_console.print(f"  {escape(line)}")
    console.print(f"done in {time.perf_counter() - t0:.1f} s -> [bold]{escape(str(out))}[/]")
    if n_bad == ds.sizes["patient"]:  # nothing usable: a script must not read it as success
        raise typer.Exit(1)


def _adaptive(method: str, tolerances: dict):
    """``method``, or the adaptive engine with the given tolerances (--rtol/--atol)."""
    if not tolerances:
        return method
    from cohort.engine.diffrax_path import Adaptive

    return Adaptive(**tolerances)
