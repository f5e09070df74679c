"""``cohort generate``: a virtual population from a prior spec, streamed into a zarr store."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from cohort._seed import MAX_SEED
from cohort.cli._common import check_figure_path, command, console, err_console, fail, progress


@command
def generate(
    spec: Path = typer.Argument(..., help="prior spec, e.g. priors/adult_pk_oral.toml"),
    n: int = typer.Option(10_000, help="number of virtual patients"),
    seed: int = typer.Option(1, min=0, max=MAX_SEED, help="random seed"),
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

    if resume and overwrite:
        fail("--resume and --overwrite: choose one (finish the run, or replace it)")
    if n < 1:
        fail(f"--n must be >= 1, got {n}")
    if chunk_size < 1:
        fail(f"--chunk-size must be >= 1, got {chunk_size}")
    if max_candidates is not None and max_candidates < n:
        fail(f"--max-candidates must be >= --n ({n:,}), got {max_candidates:,}")
    from cohort._toml import resolve

    spec = resolve(spec, "priors")  # a bare name: cohort's own spec of that name
    if spec.is_dir():
        fail(f"{spec} is a folder, not a spec file")
    if plot is not None:
        if plot.suffix.lower() != ".png":
            fail(f"--plot {plot}: give a .png path (the figure is a PNG)")
        check_figure_path(plot, overwrite)
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
    if ds.attrs.get("rejected_by"):
        console.print(f"candidates {escape(str(ds.attrs['rejected_by']))}")
    for line in _outside_model_ranges(ds):
        err_console.print(f"[bold yellow]warning:[/] {escape(line)}")
    if plot is not None:
        from cohort.plots import histograms

        histograms(ds, plot)
        console.print(f"figure: [bold]{escape(str(plot))}[/]")


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
