"""CLI commands ``cohort trial`` and ``cohort report`` (typer functions; registered in cli.py
with ``app.command()(trial)`` and ``app.command()(report)``)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from cohort.cli import _fail, _progress, console


def _power_table(summary) -> Table:
    table = Table(title="power per comparison (95 % Monte Carlo CI)")
    for col in ("comparison", "mean estimate", "mean N", "power", "MC CI"):
        table.add_column(col, justify="left" if col == "comparison" else "right")
    for row in summary.itertuples(index=False):
        table.add_row(
            row.comparison,
            f"{row.estimate_mean:.4g}",
            f"{row.n_mean:.1f}",
            f"{row.power:.3f}",
            f"[{row.power_mc_low:.3f}, {row.power_mc_high:.3f}]",
        )
    return table


def trial(
    spec: Path = typer.Argument(
        ..., help="trial spec, e.g. experiments/theophylline_dose_ranging.toml"
    ),
    out: Path = typer.Option(None, "--out", "-o", help="zarr store for the trial (optional)"),
    seed: int = typer.Option(None, help="override the spec's seed"),
    replicates: int = typer.Option(None, help="override the number of replicate trials"),
    n: int = typer.Option(None, help="override the patients per trial"),
    overwrite: bool = typer.Option(False, help="replace an existing --out"),
    report_path: Path = typer.Option(None, "--report", help="also write a report (.md or .html)"),
    sample_size: bool = typer.Option(False, help="search [analysis] sample_sizes for power"),
    escalation: bool = typer.Option(False, help="run the spec's [escalation] design"),
    pta_doses: str = typer.Option(None, help="dose sweep for PTA curves, e.g. '100,200,400'"),
):
    """Simulate every arm x replicate of a trial spec, analyse it and print power."""
    import cohort.trial as ct
    from cohort.population.expr import ExpressionError

    if not spec.exists():
        _fail(f"no such trial spec {spec}")
    t0 = time.perf_counter()
    try:
        parsed = ct.load(spec)
        with _progress() as bar:
            task = bar.add_task(f"trial {parsed.name}", total=1)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = ct.run(
                parsed,
                out=out,
                seed=seed,
                replicates=replicates,
                n=n,
                overwrite=overwrite,
                progress=update,
            )
        analysis = ct.analyze(result)
        sizes = ct.sample_size(parsed, replicates=replicates, seed=seed) if sample_size else None
        esc = ct.escalate(parsed, replicates=replicates, seed=seed) if escalation else None
        sweep = None
        if pta_doses:
            try:
                doses = [float(x) for x in pta_doses.split(",")]
            except ValueError:
                _fail(f"--pta-doses: expected comma-separated numbers, got {pta_doses!r}")
            sweep = ct.dose_pta(parsed, doses, seed=seed)
    except (ct.TrialSpecError, ExpressionError, ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc))
    if len(analysis.summary):
        console.print(_power_table(analysis.summary))
    if len(analysis.pta):
        console.print(analysis.pta[["target", "arm", "pta"]].to_string(index=False))
    if sizes is not None:
        console.print(sizes[["n", "comparison", "power", "meets_target"]].to_string(index=False))
    if esc is not None:
        console.print(esc.to_string(index=False))
    if sweep is not None:
        console.print(sweep.to_string(index=False))
    if report_path is not None:
        path = ct.report(
            result,
            report_path,
            analysis=analysis,
            sample_sizes=sizes,
            escalation=esc,
            dose_pta=sweep,
        )
        console.print(f"report -> [bold]{path}[/]")
    where = f" -> [bold]{out}[/]" if out else ""
    console.print(f"done in {time.perf_counter() - t0:.1f} s{where}")


def report(
    store: Path = typer.Argument(..., help="trial store written by `cohort trial -o`"),
    path: Path = typer.Option(None, "--out", "-o", help="report file (.md or .html)"),
):
    """Write a Markdown/HTML report (tables + PNG figures) for a trial store."""
    import cohort.trial as ct

    if not store.exists():
        _fail(f"no such store {store}")
    path = path or store.with_suffix(".md")
    try:
        written = ct.report(store, path)
    except (FileNotFoundError, KeyError, ValueError, ct.TrialSpecError) as exc:
        _fail(str(exc))
    console.print(f"report -> [bold]{written}[/]")
