"""``cohort trial`` and ``cohort report``: in-silico trials from specs, and their reports."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from cohort._seed import MAX_SEED
from cohort.cli._common import command, console, err_console, fail, progress


def _power_table(summary, spec) -> Table:
    table = Table(title="power per comparison (95 % Monte Carlo CI)")
    for col in ("comparison", "mean estimate", "mean N", "power", "MC CI", "harm"):
        table.add_column(col, justify="left" if col == "comparison" else "right")
    for row in summary.itertuples(index=False):
        table.add_row(
            escape(row.comparison),
            f"{row.estimate_mean:.4g}",
            f"{row.n_mean:.1f}",
            f"{row.power:.3f}",
            f"[{row.power_mc_low:.3f}, {row.power_mc_high:.3f}]",
            f"{row.harm_rate:.3f}",
        )
    reps = int(summary["replicates"].max())
    table.caption = (
        f"power: fraction of the {reps:,} replicate trials rejecting H0 in the direction of "
        f"benefit ({'two' if spec.sided == 2 else 'one'}-sided, alpha {spec.alpha:g}); harm: "
        "rejecting it the other way; trials that could not be analysed count as not rejecting"
    )
    return table


def _unanalysable(summary) -> list[str]:
    """A warning per comparison whose replicates could not all be analysed."""
    return [
        f"{row.comparison}: {row.not_analysable:,} of {row.replicates:,} replicate trials could "
        "not be analysed (e.g. too few patients or events in an arm, or no variation in the "
        "endpoint); they count as not rejecting"
        for row in summary.itertuples(index=False)
        if row.not_analysable
    ]


def _frame_table(frame, title: str) -> Table:
    """A pandas table as a rich table: text left, numbers right (4 significant digits)."""
    import numbers

    table = Table(title=title)
    for col in frame.columns:
        numeric = frame[col].map(lambda v: isinstance(v, numbers.Number)).all()
        table.add_column(str(col), justify="right" if numeric else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(
            f"{v:.4g}" if isinstance(v, float) else escape(str(v)) for v in row
        ))  # fmt: skip
    return table


def _escalation_table(esc) -> Table:
    """The escalation's operating characteristics, each probability with its 95 % interval."""
    import pandas as pd

    def with_ci(col):
        return [f"{p:.3f} ({lo:.3f}–{hi:.3f})" for p, lo, hi in
                zip(esc[col], esc[f"{col}_low"], esc[f"{col}_high"])]  # fmt: skip

    shown = pd.DataFrame({
        "arm": esc["arm"],
        "P(DLT) (95 % CI)": with_ci("p_dlt"),
        "P(MTD) (95 % CI)": with_ci("p_select"),
        "patients (mean)": esc["mean_patients"],
        "DLTs (mean)": esc["mean_dlts"],
    })  # fmt: skip
    table = _frame_table(shown, f"dose escalation ({esc.attrs.get('design', '')})")
    for column in table.columns[1:3]:
        column.no_wrap = True  # "0.250 (0.214–0.290)" on one line
    table.caption = escape(
        f"P(MTD): the chance a trial selects that dose; none selected: "
        f"{esc.attrs['none_selected']:.3f}; true DLT rates from a pool of "
        f"{esc.attrs['pool']:,} virtual patients (raise [escalation] pool to narrow them)"
    )
    return table


@command(timed=True)
def trial(
    spec: Path = typer.Argument(
        ..., help="trial spec, e.g. experiments/theophylline_dose_ranging.toml"
    ),
    out: Path = typer.Option(None, "--out", "-o", help="zarr store for the trial (optional)"),
    seed: int = typer.Option(None, min=0, max=MAX_SEED, help="override the spec's seed"),
    replicates: int = typer.Option(None, help="override the number of replicate trials"),
    n: int = typer.Option(None, help="override the patients per trial"),
    overwrite: bool = typer.Option(False, help="replace an existing --out/--report by cohort"),
    resume: bool = typer.Option(False, help="finish an interrupted run into the same --out"),
    report_path: Path = typer.Option(None, "--report", help="also write a report (.md or .html)"),
    sample_size: bool = typer.Option(False, help="search [analysis] sample_sizes for power"),
    escalation: bool = typer.Option(False, help="run the spec's [escalation] design"),
    pta_doses: str = typer.Option(None, help="dose sweep for PTA curves, e.g. '100,200,400'"),
    scheduler: str = typer.Option(
        None,
        help="Dask scheduler address (tcp://host:8786): its workers solve and write the "
        "chunks (needs --out on storage every worker reaches)",
    ),
):
    """Simulate every arm x replicate of a trial spec, analyse it and print power."""
    import cohort.trial as ct
    from cohort._toml import resolve
    from cohort.store import check_path, write_lock

    spec = resolve(spec, "experiments")  # a bare name: cohort's own spec of that name
    if spec.is_dir():
        fail(f"{spec} is a folder, not a trial spec")
    for flag, value, lo in (("--replicates", replicates, 1), ("--n", n, 1)):
        if value is not None and value < lo:
            fail(f"{flag} must be >= {lo}, got {value}")
    if resume and overwrite:
        fail("--resume and --overwrite: choose one (finish the run, or replace it)")
    if resume and out is None:
        fail("--resume needs --out (the store of the interrupted run)")
    doses = None
    if pta_doses:
        try:
            doses = [float(x) for x in pta_doses.split(",")]
        except ValueError:
            fail(f"--pta-doses: expected comma-separated numbers, got {pta_doses!r}")
    if report_path is not None:
        from cohort.store import check_replaceable

        if report_path.suffix.lower() not in (".md", ".html"):  # before the trial, not after
            fail(f"--report {report_path}: give a .md or .html path")
        check_replaceable(report_path, overwrite=overwrite, flag="--report")
    t0 = time.perf_counter()
    if scheduler is not None and out is None:
        fail("--scheduler needs --out: the workers write their chunks into that store")
    lock = contextlib.nullcontext() if out is None else write_lock(check_path(out))
    with lock:
        parsed = ct.load(spec)
        # what the extra analyses need, checked before the trial runs, not after it
        if sample_size:
            from cohort.trial.analysis import check_sample_sizes

            check_sample_sizes(parsed)
        if escalation:
            from cohort.trial.escalation import check_escalation

            check_escalation(parsed)
        if doses:
            from cohort.trial.pta import check_dose_pta

            check_dose_pta(parsed, doses)
        with progress() as bar:
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
                resume=resume,
                progress=update,
                cluster=scheduler,
            )
        if out is not None:  # what follows the simulation, so a kill before it is seen
            from cohort.trial import groups

            later = {"sample_sizes": sample_size, "escalation": escalation, "dose_pta": doses}
            groups.plan(out, ["analysis", *[k for k, wanted in later.items() if wanted]])
        analysis = ct.analyze(result, out=out)
    sizes = ct.sample_size(parsed, replicates=replicates, seed=seed) if sample_size else None
    esc = ct.escalate(parsed, replicates=replicates, seed=seed) if escalation else None
    sweep = ct.dose_pta(parsed, doses, seed=seed) if doses else None
    if out is not None:  # kept with the trial: `cohort report STORE` shows them later
        from cohort.trial.report import save_tables

        save_tables(out, sample_sizes=sizes, escalation=esc, dose_pta=sweep)
    if len(analysis.summary):
        console.print(_power_table(analysis.summary, result.spec))
        for line in _unanalysable(analysis.summary):
            err_console.print(f"[bold yellow]warning:[/] {escape(line)}")
    if len(analysis.pta):
        console.print(_frame_table(analysis.pta[["target", "arm", "pta"]],
                                   "probability of target attainment"))  # fmt: skip
    if sizes is not None:
        console.print(_frame_table(sizes[["n", "comparison", "power", "meets_target"]],
                                   "sample size search"))  # fmt: skip
    if esc is not None:
        console.print(_escalation_table(esc))
    if sweep is not None:
        console.print(_frame_table(sweep, "PTA by dose"))
    if report_path is not None:
        path = ct.report(
            result,
            report_path,
            analysis=analysis,
            sample_sizes=sizes,
            escalation=esc,
            dose_pta=sweep,
            overwrite=overwrite,
        )
        console.print(f"report -> [bold]{escape(str(path))}[/]")
    where = f" -> [bold]{escape(str(out))}[/]" if out else ""
    console.print(f"done in {time.perf_counter() - t0:.1f} s{where}")


@command
def report(
    store: Path = typer.Argument(..., help="trial store written by `cohort trial -o`"),
    path: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="report file (.md or .html) [default: the store's name with .md, beside it]",
    ),
    overwrite: bool = typer.Option(False, help="replace an existing report written by cohort"),
):
    """Write a Markdown/HTML report (tables + PNG figures) for a trial store."""
    import cohort.trial as ct

    if not store.is_dir():
        fail(f"no such store {store} (give a directory written by `cohort trial -o`)")
    path = path or store.with_suffix(".md")
    written = ct.report(store, path, overwrite=overwrite)
    console.print(f"report -> [bold]{escape(str(written))}[/]")
