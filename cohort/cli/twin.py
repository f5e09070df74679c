"""``cohort twin``: digital twins from the command line — identify (``fit``), ``update``,
``forecast`` and ``dose``. The group's other commands (``example``, ``mipd``: module
``twin_examples``; ``cgm``: ``twin_cgm``) are added to :data:`app` by :mod:`cohort.cli`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from cohort._seed import MAX_SEED
from cohort.cli._cgm_report import REPLAY, REPORT_NAMES, cgm_replay, cgm_summary, check_scales
from cohort.cli._common import command, console, fail
from cohort.cli._twin_common import (
    before_identifying,
    check_report_files,
    checkpoint_for,
    report_file,
    report_folder,
    status_line,
)

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="digital twins: identify from records, update, forecast, recommend doses",
)

PK_REPORT_NAMES = ("individual.csv", "shrinkage.png")  # what a PK twin's --report holds
_PRIOR_HELP = "population prior: a priors spec with an [error] section (.toml) or a saved fit"


def _with_units(tw, name: str, units: str | None = None) -> str:
    """``name (units)``, the units the model gives ``name`` (or ``units``), if any."""
    units = units or tw.prior.model.units().get(name, "")
    return f"{name} ({units})" if units else name


def _summary(tw, title: str) -> Table:
    ind = tw.individual()
    names = [_with_units(tw, n) for n in tw.prior.names]
    table = Table("ID", *names, *[f"SD log {n}" for n in tw.prior.eta_names], "ok", title=title)
    for pid, row in ind.head(15).iterrows():
        cells = [f"{row[n]:.4g}" for n in tw.prior.names]
        cells += [f"{row[f'sd_log_{n}']:.3f}" for n in tw.prior.eta_names]
        table.add_row(str(pid), *cells, "yes" if row["ok"] else "[red]no[/]")
    if len(ind) > 15:
        table.caption = f"first 15 of {len(ind)} patients"
    return table


@app.command("fit")
@command(timed=True)
def fit(
    data: Path = typer.Argument(..., help="NONMEM-style records (CSV) with the prior's covariates"),
    prior: Path = typer.Option(..., "--prior", help=_PRIOR_HELP),
    out: Path = typer.Option(Path("twins.zarr"), "--out", "-o", help="twin store (.zarr)"),
    method: str = typer.Option("laplace", help="laplace (MAP + Laplace) | nuts"),
    chains: int = typer.Option(4, help="NUTS chains per patient"),
    warmup: int = typer.Option(
        250, help="NUTS warmup iterations (step size; the Laplace covariance is the metric)"
    ),
    draws: int = typer.Option(500, help="NUTS draws per chain"),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="random seed"),
    report: Path = typer.Option(None, help="directory for the individual table and figures"),
    overwrite: bool = typer.Option(False, help="replace an existing --out/--report by cohort"),
    scheduler: str = typer.Option(
        None, help="Dask scheduler address (tcp://host:8786): blocks of patients as tasks"
    ),
):
    """Identify one twin per patient of DATA (in blocks of patients, here or as tasks on a
    Dask cluster with --scheduler: the same numbers either way). Finished blocks are kept in
    OUT's name with .blocks.zarr until the twins are saved: the same command after a crash
    computes only the rest."""
    from cohort.store.lock import write_lock
    from cohort.twin import TwinPrior, Twins

    folder = before_identifying(data, out, report, overwrite, PK_REPORT_NAMES)
    t0 = time.perf_counter()
    # the store's lock from the first block to the save: two runs at once into one -o were
    # merged into one store as two identifications (a probe); the second is now refused
    with write_lock(out):
        kept = checkpoint_for(out)
        with console.status("identifying twins"):
            tw = Twins.identify(
                TwinPrior.from_file(prior),
                data,
                method=method,
                chains=chains,
                warmup=warmup,
                draws=draws,
                seed=seed,
                cluster=scheduler,
                checkpoint=kept,
            )
        path = tw.save(out, overwrite=overwrite)
    kept.remove()
    sds = "SDs of the NUTS draws" if tw.samples is not None else "Laplace SDs"
    console.print(_summary(tw, f"{tw.prior.name}: individual MAP estimates ({sds})"))
    console.print(status_line(tw, time.perf_counter() - t0, path))
    if folder is not None:
        _write_individual(tw, folder, overwrite)


def _write_individual(tw, folder: Path, overwrite: bool) -> None:
    from cohort.twin import plots

    table = report_file(folder, "individual.csv", overwrite)
    tw.individual().to_csv(table)
    fig = plots.shrinkage(tw, report_file(folder, "shrinkage.png", overwrite))
    console.print(f"report: {table}, {fig}")


@app.command("update")
@command(timed=True)
def update(
    store: Path = typer.Argument(
        ..., help="twin store written by `cohort twin fit` or `cohort twin cgm`"
    ),
    data: Path = typer.Argument(
        ..., help="new records (PK twins: at or after each patient's last; CGM twins: after it)"
    ),
    from_update: int = typer.Option(
        None, help="start from the twins as of this update (0: the fit) instead of the latest"
    ),
    method: str = typer.Option(None, help="laplace | nuts (default: the store's)"),
    report: Path = typer.Option(None, help="directory for the individual table and figures"),
    overwrite: bool = typer.Option(False, help="replace an existing --report by cohort"),
    scheduler: str = typer.Option(
        None, help="Dask scheduler address: update blocks of twins as tasks"
    ),
    bolus_scale: float = typer.Option(
        None, help=f"CGM twins' replay: boluses times this [{REPLAY['bolus_scale']:g}]"
    ),
    basal_scale: float = typer.Option(
        None, help=f"CGM twins' replay: basal times this [{REPLAY['basal_scale']:g}]"
    ),
    meal_scale: float = typer.Option(
        None, help=f"CGM twins' replay: meals times this [{REPLAY['meal_scale']:g}]"
    ),
):
    """Add new records to the twins and update their posteriors (appended to the store; the
    earlier state stays readable). CGM twins then replay all their days so far under the
    altered therapy, as `cohort twin cgm` does."""
    from cohort.twin import open_twins

    scales = {"--bolus-scale": bolus_scale, "--basal-scale": basal_scale,
              "--meal-scale": meal_scale}  # fmt: skip
    check_scales(scales)
    if not data.is_file():
        fail(f"no such file {data}")
    folder = report_folder(report, overwrite)
    t0 = time.perf_counter()
    from cohort.store.lock import write_lock

    # the store's lock from reading to saving: two updates run at once each read the same
    # state and the later save dropped the earlier's records (a probe); now the second waits
    # for nothing and is refused at once, naming the first
    with write_lock(store), console.status("updating twins"):
        twins = open_twins(store, from_update)
        # before the update is computed and saved, not after (a probe)
        names = REPORT_NAMES if hasattr(twins, "replay") else PK_REPORT_NAMES
        check_report_files(folder, names, overwrite)
        given = [k for k, v in scales.items() if v is not None]
        if given and not hasattr(twins, "replay"):
            fail(f"{', '.join(given)}: for CGM twins' replay; {store} holds PK twins")
        extra = {"cluster": scheduler} if scheduler is not None else {}
        kept = checkpoint_for(store)
        tw = twins.update(str(data), method=method, checkpoint=kept, **extra)
        path = tw.save(store)
    kept.remove()
    stored = f"update {_n_updates(path) - 1} stored" + (
        f" (from update {from_update})" if from_update is not None else ""
    )
    if hasattr(tw, "replay"):  # CGM twins
        console.print(cgm_summary(tw, f"{tw.prior.name}: updated posteriors"))
        console.print(status_line(tw, time.perf_counter() - t0, path))
        console.print(stored)
        given = {"bolus_scale": bolus_scale, "basal_scale": basal_scale, "meal_scale": meal_scale}
        cgm_replay(tw, folder, overwrite, **{k: REPLAY[k] if v is None else v
                                             for k, v in given.items()})  # fmt: skip
        return
    console.print(_summary(tw, f"{tw.prior.name}: updated MAP estimates"))
    console.print(status_line(tw, time.perf_counter() - t0, path))
    console.print(stored)
    if folder is not None:
        _write_individual(tw, folder, overwrite)


def _n_updates(store: Path) -> int:
    import zarr

    return int(zarr.open_group(str(store), mode="r").attrs["n_updates"])


def _pk_twins(store: Path, ids: list[str], command: str, update: int | None = None):
    """The PK twins of ``store`` (all, or the patients ``ids`` as written by the user), as of
    ``update`` (default: the latest)."""
    from cohort.twin import open_twins
    from cohort.twin.prior import show_id

    tw = open_twins(store, update)
    if hasattr(tw, "replay"):
        fail(
            f"{store} holds CGM (type 1 diabetes) twins: `cohort twin {command}` is for PK "
            "twins; CGM twins replay their days under altered therapy (`cohort twin cgm "
            "--bolus-scale/--basal-scale`, or CGMTwins.replay), with P(glucose < 70)"
        )
    if ids:
        known = {show_id(i): i for i in tw.ids.tolist()}  # IDs are numeric (the reader's rule)
        missing = [i for i in ids if i not in known]
        if missing:
            shown = ", ".join(list(known)[:10]) + (" ..." if len(known) > 10 else "")
            fail(f"--id {missing[0]}: no such patient in {store} (patients: {shown})")
        tw = tw.select([known[i] for i in ids])
    return tw


def _check_draws(draws: int) -> None:
    if draws < 2:
        fail(f"--draws must be >= 2 (bands and probabilities come from the draws), got {draws}")


def _regimen(amt, start, ii, addl, duration):
    from cohort.dosing import Regimen

    if amt is None:
        return None
    import math

    if not (math.isfinite(amt) and amt > 0):
        fail(f"--amt must be a finite number > 0, got {amt}")
    if not math.isfinite(start):
        fail(f"--start must be a finite time, got {start}")
    if addl < 0:
        fail(f"--addl must be >= 0, got {addl}")
    if addl and not (math.isfinite(ii) and ii > 0):
        fail(f"--ii must be > 0 with --addl {addl} (the interval between the doses), got {ii}")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        fail(f"--duration must be > 0, got {duration}")
    return Regimen(amt=amt, time=start, ii=ii, addl=addl, duration=duration)


def _times(spec: str) -> list[float]:

    try:
        parts = [float(x) for x in spec.split(":")]
    except ValueError:
        fail(f"--times {spec!r}: use START:END:STEP, e.g. 0:120:1")
    if len(parts) != 3 or not parts[2] > 0 or parts[1] <= parts[0]:
        fail(f"--times {spec!r}: use START:END:STEP with END > START and STEP > 0")
    return list(np.arange(parts[0], parts[1] + 1e-9 * abs(parts[1] or 1), parts[2]))


@app.command("forecast")
@command(timed=True)
def forecast(
    store: Path = typer.Argument(..., help="twin store"),
    at_update: int = typer.Option(
        None, help="use the twins as of this update (0: the fit) instead of the latest"
    ),
    amt: float = typer.Option(None, help="future dose amount (none: past doses only)"),
    start: float = typer.Option(0.0, help="time of the first future dose"),
    ii: float = typer.Option(0.0, help="dosing interval"),
    addl: int = typer.Option(0, help="additional doses"),
    duration: float = typer.Option(None, help="infusion duration (none: bolus)"),
    times: str = typer.Option(None, help="forecast grid START:END:STEP (default 0 to last + 24)"),
    target: list[str] = typer.Option(
        [], help="auc:OUT:START:END:LO:HI | level:OUT:TIME:LO:HI | min:OUT:START:END:LO"
    ),
    draws: int = typer.Option(500, help="posterior draws"),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="random seed"),
    patient: list[str] = typer.Option([], "--id", help="only this patient (repeat for more)"),
    later: Path = typer.Option(None, help="later observations (CSV) drawn over the bands"),
    records: Path = typer.Option(
        None, help="CGM twins: meals and insulin planned after the last record (CSV)"
    ),
    report: Path = typer.Option(Path("twin_forecast"), help="directory for CSV and figure"),
    overwrite: bool = typer.Option(False, help="replace an existing --report by cohort"),
):
    """Posterior-predictive bands (5/25/50/75/95 %) and probability of target attainment;
    for CGM twins, the readings to come under --records' meals and insulin, with
    P(glucose < 70) and P(glucose > 180)."""
    import pandas as pd

    from cohort.twin import plots
    from cohort.twin.targets import parse_target

    targets = [parse_target(t) for t in target]
    _check_draws(draws)
    from cohort.twin import open_twins

    opened = open_twins(store, at_update)
    if hasattr(opened, "replay"):  # CGM twins
        pk_options = {
            "--amt": amt, "--times": times, "--target": target or None, "--ii": ii or None,
            "--addl": addl or None, "--duration": duration, "--start": start or None,
        }  # fmt: skip
        _cgm_forecast(
            opened, store, records, draws, seed, patient, later, report, overwrite, pk_options
        )
        return
    if records is not None:
        fail(f"--records is for CGM twins; {store} holds PK twins (give --amt/--ii/--addl)")
    folder = report_folder(report, overwrite)
    tw = _pk_twins(store, patient, "forecast", at_update)
    t0 = time.perf_counter()
    fc = tw.forecast(
        _regimen(amt, start, ii, addl, duration),
        _times(times) if times else None,
        targets=targets,
        n_draws=draws,
        seed=seed,
    )
    bands = fc.drop_vars([v for v in fc.data_vars if "time" not in fc[v].dims])
    csv = report_file(folder, "forecast.csv", overwrite)
    bands.to_dataframe().reset_index().to_csv(csv, index=False)
    later_frame = pd.read_csv(later) if later is not None else None
    fig = plots.forecast_bands(tw, fc, report_file(folder, "forecast.png", overwrite), later_frame)
    console.print(f"forecast of {tw.n} twins ({draws} draws) in {time.perf_counter() - t0:.1f} s")
    if targets:
        # each target's predicted value (median, 90 % interval) beside its attainment
        pta = pd.DataFrame(index=pd.Index(tw.ids, name="ID"))
        shown = {}
        for k, t in enumerate(targets):
            q = fc[f"target_{k}"]
            unit = q.attrs.get("units", "")
            mid, lo, hi = (q.sel(quantile=x).to_numpy() for x in (0.5, 0.05, 0.95))
            pta[f"{t.name} median ({unit})"] = mid
            pta[f"{t.name} 5 %"], pta[f"{t.name} 95 %"] = lo, hi
            pta[f"P({t.label})"] = fc[f"pta_{k}"].to_numpy()
            shown[f"{t.name} ({unit}): median [90 %]"] = [
                f"{m:.4g} [{a:.4g}, {b:.4g}]" for m, a, b in zip(mid, lo, hi)
            ]
            shown[f"P({t.label})"] = [f"{v:.3f}" for v in pta[f"P({t.label})"]]
        pta_csv = report_file(folder, "attainment.csv", overwrite)
        pta.to_csv(pta_csv)
        table = Table("ID", *shown, title="predicted targets and probability of attainment")
        for i, pid in enumerate(pta.index[:15]):
            table.add_row(str(pid), *[cells[i] for cells in shown.values()])
        console.print(table)
        console.print(f"report: {csv}, {fig}, {pta_csv}")
    else:
        console.print(f"report: {csv}, {fig}")


def _read_csv(path: Path, option: str):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        fail(f"{option} {path}: not a readable CSV ({str(exc).splitlines()[0]})")


def _cgm_forecast(tw, store, records, draws, seed, ids, later, report, overwrite,
                  pk_options) -> None:  # fmt: skip
    """``cohort twin forecast`` of the CGM twins ``tw`` (of ``store``): bands of the readings
    to come."""
    from cohort.twin import plots
    from cohort.twin.prior import show_id

    given = [k for k, v in pk_options.items() if v is not None]
    if given:
        fail(f"{', '.join(given)}: for PK twins; CGM twins forecast the meals and insulin of "
             "--records (a CSV: ID, TIME and CHO, BOLUS, BASAL)")  # fmt: skip
    if records is None:
        fail(f"{store} holds CGM twins: give --records, a CSV of the meals and insulin planned "
             "after each patient's last record (ID, TIME, CHO, BOLUS, BASAL)")  # fmt: skip
    if not records.is_file():
        fail(f"--records {records}: no such file")
    later_frame = None
    if later is not None:  # read before any work: a bad file leaves nothing behind
        if not later.is_file():
            fail(f"--later {later}: no such file")
        later_frame = _read_csv(later, "--later")
        later_frame.columns = [str(c).strip().upper() for c in later_frame.columns]
        if "CGM" not in later_frame or "TIME" not in later_frame:
            fail(f"--later {later}: needs TIME and CGM columns (and ID for several patients)")
    if later_frame is not None and "ID" not in later_frame:
        if tw.n != 1:
            fail(f"--later {later}: needs an ID column ({store} holds {tw.n} twins)")
        later_frame["ID"] = tw.ids[0]
    plan = _read_csv(records, "--records")
    if ids:
        known = {show_id(i): i for i in tw.ids.tolist()}
        missing = [i for i in ids if i not in known]
        if missing:
            fail(f"--id {missing[0]}: no such patient in {store}")
        plan.columns = [str(c).strip().upper() for c in plan.columns]
        if "ID" in plan:
            plan = plan[plan["ID"].map(show_id).isin(ids)]
    if plan.empty:
        fail(f"--records {records}: no rows" + (f" for --id {', '.join(ids)}" if ids else ""))
    folder = report_folder(report, overwrite)
    t0 = time.perf_counter()
    fc = tw.forecast(plan, n_draws=draws, seed=seed)
    if ids:
        fc = fc.sel(patient=[known[i] for i in ids])
    bands = fc[["cgm_q", "glucose_q"]].to_dataframe().unstack("quantile")
    bands.columns = [f"{v.removesuffix('_q')}_q{int(round(100 * q)):02d}" for v, q in bands.columns]
    probs = fc[["p_below_70", "p_above_180"]].to_dataframe()
    table = bands.join(probs).dropna(subset=["cgm_q50"]).reset_index()
    csv = report_file(folder, "forecast.csv", overwrite)
    table.to_csv(csv, index=False)
    fig = plots.cgm_forecast_bands(tw, fc, report_file(folder, "forecast.png", overwrite),
                                   later_frame)  # fmt: skip
    console.print(f"forecast of {fc.sizes['patient']} CGM twins ({fc.attrs['draws']} draws) in "
                  f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    summary = Table("ID", "horizon (h)", "P(< 70 at any time)", "max P(< 70)", "max P(> 180)",
                    title="forecast: probability of hypo- and hyperglycaemia")  # fmt: skip
    for pid in fc["patient"].to_numpy()[:15]:
        one = fc.sel(patient=pid)
        ahead = np.isfinite(one["cgm_q"].sel(quantile=0.5).to_numpy())
        hours = ahead.sum() * float(fc["time"][1] - fc["time"][0]) / 60
        summary.add_row(str(pid), f"{hours:.1f}", f"{float(one['p_below_70_any']):.2f}",
                        f"{float(one['p_below_70'].max()):.2f}",
                        f"{float(one['p_above_180'].max()):.2f}")  # fmt: skip
    console.print(summary)
    console.print(f"report: {csv}, {fig}")


@app.command("dose")
@command(timed=True)
def dose(
    store: Path = typer.Argument(..., help="twin store"),
    at_update: int = typer.Option(
        None, help="use the twins as of this update (0: the fit) instead of the latest"
    ),
    target: str = typer.Option(..., help="auc:OUT:START:END:LO:HI | level:OUT:TIME:LO:HI | ..."),
    start: float = typer.Option(..., help="time of the first dose to choose"),
    ii: float = typer.Option(12.0, help="dosing interval"),
    addl: int = typer.Option(1, help="additional doses"),
    duration: float = typer.Option(None, help="infusion duration (none: bolus)"),
    max_dose: float = typer.Option(..., help="largest dose per administration"),
    min_dose: float = typer.Option(
        None,
        help="smallest dose (default: one --strength; with --strength, doses start at its "
        "first multiple at or above this)",
    ),
    strength: float = typer.Option(None, help="doses are multiples of this (e.g. 250 mg)"),
    intervals: str = typer.Option(None, help="also choose the interval from these, e.g. 8,12,24"),
    objective: str = typer.Option("pta", help="pta (maximise attainment) | center"),
    draws: int = typer.Option(500, help="posterior draws"),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="random seed"),
    patient: list[str] = typer.Option([], "--id", help="only this patient (repeat for more)"),
    report: Path = typer.Option(Path("twin_dose"), help="directory for CSV and figure"),
    overwrite: bool = typer.Option(False, help="replace an existing --report by cohort"),
):
    """Recommend each patient's dose (and interval) for a target, checked against a grid."""
    from cohort.twin import plots
    from cohort.twin.targets import parse_target

    tgt = parse_target(target)
    _check_draws(draws)
    if min_dose is not None and not 0 < min_dose <= max_dose:
        fail(f"--min-dose must be > 0 and <= --max-dose ({max_dose:g}), got {min_dose:g}")
    folder = report_folder(report, overwrite)
    try:
        ivals = [float(x) for x in intervals.split(",")] if intervals else None
    except ValueError:
        fail(f"--intervals {intervals!r}: give numbers separated by commas, e.g. 8,12,24")
    tw = _pk_twins(store, patient, "dose", at_update)
    t0 = time.perf_counter()
    rec = tw.recommend(
        _regimen(1.0, start, ii, addl, duration),
        tgt,
        max_dose=max_dose,
        min_dose=min_dose,
        strength=strength,
        intervals=ivals,
        objective=objective,
        n_draws=draws,
        seed=seed,
    )
    csv = report_file(folder, "dose.csv", overwrite)
    rec.to_csv(csv)
    fig = plots.attainment_curves(rec, report_file(folder, "attainment_by_dose.png", overwrite))
    model = tw.prior.model
    amount = model.units().get(model.dose_targets[0], "") if model.dose_targets else ""
    table = Table(
        "ID",
        _with_units(tw, "dose", amount),
        _with_units(tw, "interval", model.time_units),
        "doses",
        f"P({tgt.label})",
        "gradient optimum",
        "grid best",
        "agree",
        "note",
        title="recommended doses",
    )
    for pid, row in rec.head(20).iterrows():
        table.add_row(
            str(pid),
            f"{row['dose']:g}",
            f"{row['ii']:g}",
            f"{int(row['doses'])}",
            f"{row['pta']:.3f}",
            f"{row['dose_gradient']:.1f}",
            f"{row['dose_grid']:g}",
            "yes" if row["agree"] else "[red]no[/]",
            f"[yellow]{row['bound']}[/]" if row["bound"] else "",
        )
    if len(rec) > 20:
        table.caption = f"first 20 of {len(rec)} patients (all in dose.csv)"
    console.print(table)
    for text in rec.attrs.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(text)}")
    console.print(f"{tw.n} recommendations in {time.perf_counter() - t0:.1f} s")
    console.print(f"report: {csv}, {fig}")
