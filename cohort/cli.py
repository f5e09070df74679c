"""Command line: ``cohort demo | simulate | info | models`` (typer + rich)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="cohort: GPU-accelerated virtual-patient cohorts.",
)
console = Console()


@app.callback()
def _main(ctx: typer.Context) -> None:
    """Give JAX one CPU device per core before any command runs, so batches are split over
    all of them (no effect on GPU backends or when XLA_FLAGS sets a device count). ``fit``
    chooses its own device count (one per MCMC chain)."""
    if ctx.invoked_subcommand == "fit":
        return
    from cohort.engine.devices import use_cpu_cores

    use_cpu_cores()


# Parameters that are fractions, lags or shape constants keep their typical value in the
# simple log-normal cohorts built here (full population specs come from priors/).
_FIXED = {"F", "ALAG", "IMAX", "GAMMA", "SMAX", "E0", "EMAX"}


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code=2)


def _lognormal_population(model, n: int, seed: int, cv: float) -> dict[str, np.ndarray]:
    """Typical values times log-normal variability (coefficient of variation ``cv``)."""
    if n < 1:
        _fail(f"--n must be >= 1, got {n}")
    if cv < 0:
        _fail(f"--iiv must be >= 0, got {cv}")
    rng = np.random.default_rng(seed)
    sd = np.sqrt(np.log1p(cv**2))
    pop = {}
    for q in model.parameters:
        if q.name in _FIXED or q.default <= 0:
            pop[q.name] = np.full(n, q.default)
        else:
            pop[q.name] = q.default * np.exp(sd * rng.standard_normal(n) - sd**2 / 2)
    return pop


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} patients"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _run(model, pop, dosing, times, **kw):
    import cohort

    with _progress() as bar:
        task = bar.add_task(f"simulating {model.name}", total=len(next(iter(pop.values()))))

        def update(done, total):
            bar.update(task, completed=done, total=total)

        try:
            return cohort.simulate(model, pop, dosing, times, progress=update, **kw)
        except (cohort.InputError, cohort.DosingError, cohort.store.StoreError) as exc:
            bar.stop()
            _fail(str(exc))


def _summary(ds, outputs) -> Table:
    from cohort.engine.status import STATUS_MEANINGS

    table = Table(title=f"{ds.attrs.get('model')} — {ds.sizes['patient']:,} patients")
    table.add_column("output")
    table.add_column("units")
    for col in ("Cmax p5", "Cmax median", "Cmax p95", "AUC median", "last median"):
        table.add_column(col, justify="right")
    ok = (ds["status"] == 0).values
    t = ds["time"].values
    for o in outputs:
        v = np.asarray(ds[o].values)[ok]
        cmax = np.nanmax(v, axis=1)
        auc = np.trapezoid(v, t, axis=1)
        table.add_row(
            o,
            ds[o].attrs.get("units", ""),
            *(f"{x:.4g}" for x in np.nanquantile(cmax, [0.05, 0.5, 0.95])),
            f"{np.nanmedian(auc):.4g}",
            f"{np.nanmedian(v[:, -1]):.4g}",
        )
    counts = pd.Series(np.asarray(ds["status"].values)).value_counts().sort_index()
    table.caption = "status: " + ", ".join(
        f"{STATUS_MEANINGS.get(int(k), k)}={int(c):,}" for k, c in counts.items()
    )
    return table


@app.command()
def demo(
    n: int = typer.Option(10_000, help="number of virtual patients"),
    out: Path = typer.Option(Path("runs/demo.zarr"), help="zarr store to write"),
    plot: Path = typer.Option(Path("runs/demo.png"), help="PNG figure to write"),
    seed: int = typer.Option(1, help="random seed of the virtual cohort"),
):
    """Simulate a default cohort: 2-cpt oral PK + indirect response, 320 mg q12h for 7 days."""
    import cohort
    from cohort import plots

    model = cohort.models.get("pk2_oral_idr")
    pop = _lognormal_population(model, n, seed, cv=0.3)
    dose = cohort.Regimen(amt=320, cmt="depot", ii=12, addl=13)
    times = cohort.grid(0, 168, 0.5)
    t0 = time.perf_counter()
    ds = _run(
        model,
        pop,
        dose,
        times,
        method="fast",
        out=str(out),
        overwrite=True,
        seed=seed,
        chunk_size=min(n, 5_000),
    )
    dt = time.perf_counter() - t0
    console.print(_summary(ds, ["conc", "response"]))
    plots.band(ds, ["conc", "response"], plot)
    console.print(
        f"{n:,} patients x 7 days in {dt:.1f} s "
        f"({n * 7 / dt:,.0f} patient-days/s, incl. compile and zarr writes)"
    )
    console.print(f"store: [bold]{out}[/]   figure: [bold]{plot}[/]")


@app.command()
def simulate(
    model: str = typer.Option("pk2_oral_idr", help="model name (see `cohort models`)"),
    n: int = typer.Option(1000, help="number of virtual patients"),
    seed: int = typer.Option(1, help="random seed"),
    iiv: float = typer.Option(0.3, help="log-normal between-patient CV on positive parameters"),
    population: Path = typer.Option(None, help="CSV with one row per patient (parameters)"),
    dosing: Path = typer.Option(None, help="NONMEM-style CSV (ID TIME AMT EVID CMT ...)"),
    amt: float = typer.Option(100.0, help="dose amount (when no --dosing file)"),
    cmt: str = typer.Option(None, help="dosing compartment name (default: first dosable)"),
    ii: float = typer.Option(24.0, help="dosing interval [h]"),
    addl: int = typer.Option(0, help="additional doses"),
    rate: float = typer.Option(0.0, help="infusion rate (0: bolus)"),
    t_end: float = typer.Option(24.0, help="end of the simulation [h]"),
    step: float = typer.Option(0.25, help="save-time spacing [h]"),
    out: Path = typer.Option(Path("runs/simulation.zarr"), "--out", "-o", help="zarr store"),
    method: str = typer.Option("auto", help="auto | closed_form | diffrax | fast"),
    dtype: str = typer.Option("float64", help="float64 | float32"),
    dt: float = typer.Option(None, help="fast path step (default: the model's)"),
    chunk_size: int = typer.Option(None, help="patients per batch"),
    resume: bool = typer.Option(False, help="continue an interrupted run into --out"),
    overwrite: bool = typer.Option(False, help="replace an existing --out"),
):
    """Simulate a cohort and stream the results into a zarr store."""
    import cohort

    try:
        m = cohort.models.get(model)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    if population is not None:
        if not population.exists():
            _fail(f"--population: no such file {population}")
        if population.suffix == ".zarr" or population.is_dir():
            import xarray as xr

            pop_ds = xr.open_zarr(str(population), consolidated=False)
            pop = {k: pop_ds[k].values for k in m.parameter_names if k in pop_ds}
            if not pop:
                _fail(
                    f"--population: {population} has none of {m.name}'s parameters "
                    f"{list(m.parameter_names)}"
                )
        else:
            pop = {c: v.to_numpy() for c, v in pd.read_csv(population).items()}
        n = len(next(iter(pop.values())))
    else:
        pop = _lognormal_population(m, n, seed, iiv)
    if dosing is not None:
        if not dosing.exists():
            _fail(f"--dosing: no such file {dosing}")
        dose = pd.read_csv(dosing)
    else:
        if cmt is not None and cmt not in m.dose_targets:
            _fail(f"--cmt: {cmt!r} cannot be dosed in {m.name}; use one of {list(m.dose_targets)}")
        dose = cohort.Regimen(
            amt=amt, cmt=cmt or m.dose_targets[0], ii=ii if addl else 0.0, addl=addl, rate=rate
        )
    if step <= 0 or t_end <= 0:
        _fail("--step and --t-end must be > 0")
    options = cohort.FastOptions(dt=dt) if method == "fast" else None
    if dt is not None and dt <= 0:
        _fail(f"--dt must be > 0, got {dt}")
    t0 = time.perf_counter()
    ds = _run(
        m,
        pop,
        dose,
        cohort.grid(0, t_end, step),
        method=method,
        dtype=dtype,
        out=str(out),
        resume=resume,
        overwrite=overwrite,
        seed=seed,
        chunk_size=chunk_size,
        options=options,
    )
    console.print(_summary(ds, list(m.output_names)))
    console.print(f"done in {time.perf_counter() - t0:.1f} s -> [bold]{out}[/]")


@app.command()
def generate(
    spec: Path = typer.Argument(..., help="prior spec, e.g. priors/adult_pk_oral.toml"),
    n: int = typer.Option(10_000, help="number of virtual patients"),
    seed: int = typer.Option(1, help="random seed"),
    out: Path = typer.Option(Path("runs/population.zarr"), "--out", "-o", help="zarr store"),
    chunk_size: int = typer.Option(200_000, help="patients per chunk"),
    overwrite: bool = typer.Option(False, help="replace an existing --out"),
    plot: Path = typer.Option(None, help="PNG with covariate/parameter histograms"),
):
    """Generate a virtual population from a prior spec into a zarr store."""
    from cohort import population as popmod

    t0 = time.perf_counter()
    try:
        with _progress() as bar:
            task = bar.add_task("generating", total=n)
            ds = popmod.generate(
                spec,
                n,
                seed,
                chunk_size=chunk_size,
                out=out,
                overwrite=overwrite,
                progress=lambda d, t: bar.update(task, completed=d, total=t),
            )
    except (popmod.SpecError, popmod.PopulationError) as exc:
        _fail(str(exc))
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
        f"{ds.attrs['acceptance_rate']:.1%} -> [bold]{out}[/]"
    )
    if plot is not None:
        from cohort import plots

        plots.histograms(ds, plot)
        console.print(f"figure: [bold]{plot}[/]")


@app.command()
def info(store: Path = typer.Argument(..., help="result store written by cohort")):
    """Describe a result store: sizes, variables with units, provenance, status counts."""
    import cohort

    try:
        ds = cohort.open_result(store)
    except cohort.store.StoreError as exc:
        _fail(str(exc))
    console.print(f"[bold]{store}[/]: " + ", ".join(f"{k}={v:,}" for k, v in ds.sizes.items()))
    table = Table("variable", "dims", "units", "description")
    for name, var in ds.data_vars.items():
        table.add_row(
            name, ",".join(var.dims), var.attrs.get("units", ""), var.attrs.get("long_name", "")
        )
    console.print(table)
    for key in (
        "model",
        "model_hash",
        "method",
        "solver_settings",
        "dtype",
        "seed",
        "cohort_version",
        "created",
        "spec_hash",
        "incomplete",
    ):
        if key in ds.attrs:
            console.print(f"  {key}: {ds.attrs[key]}")
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


@app.command()
def models(name: str = typer.Argument(None, help="show one model in detail")):
    """List the registered models, or the states/parameters/units of one."""
    import cohort

    if name is None:
        table = Table("model", "states", "outputs", "description")
        for key in cohort.models.available():
            m = cohort.models.get(key)
            table.add_row(key, ", ".join(m.state_names), ", ".join(m.output_names), m.description)
        console.print(table)
        return
    try:
        m = cohort.models.get(name)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    console.print(f"[bold]{m.name}[/]: {m.description}")
    st = Table("state", "units", "description", title="states")
    for s in m.states:
        st.add_row(s.name, s.units, s.description)
    pt = Table("parameter", "units", "default", "range", "description", title="parameters")
    for q in m.parameters:
        pt.add_row(q.name, q.units, f"{q.default:g}", f"[{q.lower:g}, {q.upper:g}]", q.description)
    ot = Table("output", "units", "description", title="outputs")
    for o in m.outputs:
        ot.add_row(o.name, o.units, o.description)
    console.print(st, pt, ot)
    console.print(f"dose targets: {', '.join(m.dose_targets)}")


# Commands defined in their own modules (they import console/_fail/_progress from here).
from cohort.cli_fit import fit  # noqa: E402
from cohort.cli_glucose import glucose  # noqa: E402
from cohort.cli_trial import report, trial  # noqa: E402

app.command()(fit)
app.command()(glucose)
app.command()(trial)
app.command()(report)

if __name__ == "__main__":
    app()
