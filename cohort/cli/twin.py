"""``cohort twin``: digital twins from the command line — identify (``fit``), ``update``,
``forecast``, ``dose``, the simulated vancomycin MIPD study (``mipd``) and type 1 diabetes
twins from CGM records with therapy replay (``cgm``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from cohort.cli._common import command, console, fail, patient_table

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="digital twins: identify from records, update, forecast, recommend doses",
)

_PRIOR_HELP = "population prior: a priors spec with an [error] section (.toml) or a saved fit"


# The altered therapy CGM twins replay by default (`twin cgm`, and `twin update` of CGM twins)
REPLAY = {"bolus_scale": 0.8, "basal_scale": 1.2, "meal_scale": 1.0}


def _report(path: Path | None, overwrite: bool) -> Path | None:
    """``--report`` checked before any work; the folder is made by the first :func:`_file`,
    so a command that fails leaves nothing behind."""
    from cohort.store import report_directory

    if path is None:
        return None
    return report_directory(path, overwrite=overwrite, flag="--report", create=False)


def _file(folder: Path, name: str, overwrite: bool) -> Path:
    from cohort.store import report_directory
    from cohort.store.safety import claim_file

    report_directory(folder, overwrite=overwrite, flag="--report")
    return claim_file(folder, name, overwrite=overwrite)


def _before_identifying(data: Path, out: Path, report: Path | None, overwrite: bool):
    """Every check on the paths before any work (not after hours of NUTS): the records exist,
    ``out`` is a ``.zarr`` twin store that may be written, the report folder is cohort's.
    Returns the report folder (or None)."""
    from cohort.store import check_replaceable

    if not data.is_file():
        fail(f"no such file {data}")
    if Path(out).suffix != ".zarr":
        fail(f"--out {out}: a twin store is a .zarr directory, e.g. twins.zarr")
    check_replaceable(out, overwrite=overwrite)
    return _report(report, overwrite)


def _checkpoint(out: Path):
    """Where finished blocks of patients are kept while twins for ``out`` are computed
    (``<name>.blocks.zarr`` beside it), until the command has saved them (it then calls the
    checkpoint's ``remove``): rerunning the same command after a crash, even one during the
    save, computes only the blocks still missing."""
    from cohort.twin.checkpoint import KeptCheckpoint

    path = out.with_name(out.name.removesuffix(".zarr") + ".blocks.zarr")
    if path.exists():
        console.print(
            f"{path}: blocks of an interrupted run; those computed from the same inputs are reused"
        )
    return KeptCheckpoint(path)


def _summary(tw, title: str) -> Table:
    ind = tw.individual()
    table = Table(
        "ID", *tw.prior.names, *[f"SD log {n}" for n in tw.prior.eta_names], "ok", title=title
    )
    for pid, row in ind.head(15).iterrows():
        cells = [f"{row[n]:.4g}" for n in tw.prior.names]
        cells += [f"{row[f'sd_log_{n}']:.3f}" for n in tw.prior.eta_names]
        table.add_row(str(pid), *cells, "yes" if row["ok"] else "[red]no[/]")
    if len(ind) > 15:
        table.caption = f"first 15 of {len(ind)} patients"
    return table


def _status_line(tw, seconds: float, path: Path) -> str:
    bad = int((~tw.ok).sum())
    line = f"{tw.n} twins ({tw.method}) in {seconds:.1f} s -> [bold]{escape(str(path))}[/]"
    if bad:
        line += f"   [red]{bad} without a usable posterior[/] (see the ok column)"
    if tw.samples is not None:
        s = tw.samples
        line += (
            f"\nNUTS: max R-hat {s.rhat.max():.4f}, min bulk ESS {s.ess_bulk.min():.0f}, "
            f"{int(s.divergences.sum())} divergences; converged (R-hat < 1.01, ESS > 400, "
            f"<= 1 % divergent): {int(s.converged.sum())}/{tw.n}"
        )
    return line


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
    seed: int = typer.Option(0, help="random seed"),
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
    from cohort.twin import TwinPrior, Twins

    folder = _before_identifying(data, out, report, overwrite)
    t0 = time.perf_counter()
    kept = _checkpoint(out)
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
    console.print(_summary(tw, f"{tw.prior.name}: individual MAP estimates"))
    console.print(_status_line(tw, time.perf_counter() - t0, path))
    if folder is not None:
        _write_individual(tw, folder, overwrite)


def _write_individual(tw, folder: Path, overwrite: bool) -> None:
    from cohort.twin import plots

    table = _file(folder, "individual.csv", overwrite)
    tw.individual().to_csv(table)
    fig = plots.shrinkage(tw, _file(folder, "shrinkage.png", overwrite))
    console.print(f"report: {table}, {fig}")


@app.command("update")
@command(timed=True)
def update(
    store: Path = typer.Argument(..., help="twin store written by `cohort twin fit`"),
    data: Path = typer.Argument(..., help="new records (at or after each patient's last one)"),
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
    _check_scales(scales)
    if not data.is_file():
        fail(f"no such file {data}")
    folder = _report(report, overwrite)
    t0 = time.perf_counter()
    with console.status("updating twins"):
        twins = open_twins(store)
        given = [k for k, v in scales.items() if v is not None]
        if given and not hasattr(twins, "replay"):
            fail(f"{', '.join(given)}: for CGM twins' replay; {store} holds PK twins")
        extra = {"cluster": scheduler} if scheduler is not None else {}
        kept = _checkpoint(store)
        tw = twins.update(str(data), method=method, checkpoint=kept, **extra)
    path = tw.save(store)
    kept.remove()
    if hasattr(tw, "replay"):  # CGM twins
        console.print(_cgm_summary(tw, f"{tw.prior.name}: updated posteriors"))
        console.print(_status_line(tw, time.perf_counter() - t0, path))
        console.print(f"update {len(tw.history) - 1} stored")
        given = {"bolus_scale": bolus_scale, "basal_scale": basal_scale, "meal_scale": meal_scale}
        _cgm_replay(tw, folder, overwrite, **{k: REPLAY[k] if v is None else v
                                             for k, v in given.items()})  # fmt: skip
        return
    console.print(_summary(tw, f"{tw.prior.name}: updated MAP estimates"))
    console.print(_status_line(tw, time.perf_counter() - t0, path))
    console.print(f"update {len(tw.history) - 1} stored")
    if folder is not None:
        _write_individual(tw, folder, overwrite)


def _pk_twins(store: Path, ids: list[str], command: str):
    """The PK twins of ``store`` (all, or the patients ``ids`` as written by the user)."""
    from cohort.twin import open_twins
    from cohort.twin.prior import show_id

    tw = open_twins(store)
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
    import numpy as np

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
    seed: int = typer.Option(0, help="random seed"),
    patient: list[str] = typer.Option([], "--id", help="only this patient (repeat for more)"),
    later: Path = typer.Option(None, help="later observations (CSV) drawn over the bands"),
    report: Path = typer.Option(Path("twin_forecast"), help="directory for CSV and figure"),
    overwrite: bool = typer.Option(False, help="replace an existing --report by cohort"),
):
    """Posterior-predictive bands (5/25/50/75/95 %) and probability of target attainment."""
    import pandas as pd

    from cohort.twin import plots
    from cohort.twin.targets import parse_target

    targets = [parse_target(t) for t in target]
    _check_draws(draws)
    folder = _report(report, overwrite)
    tw = _pk_twins(store, patient, "forecast")
    t0 = time.perf_counter()
    fc = tw.forecast(
        _regimen(amt, start, ii, addl, duration),
        _times(times) if times else None,
        targets=targets,
        n_draws=draws,
        seed=seed,
    )
    bands = fc.drop_vars([v for v in fc.data_vars if "time" not in fc[v].dims])
    csv = _file(folder, "forecast.csv", overwrite)
    bands.to_dataframe().reset_index().to_csv(csv, index=False)
    later_frame = pd.read_csv(later) if later is not None else None
    fig = plots.forecast_bands(tw, fc, _file(folder, "forecast.png", overwrite), later_frame)
    console.print(f"forecast of {tw.n} twins ({draws} draws) in {time.perf_counter() - t0:.1f} s")
    if targets:
        pta = fc[[f"pta_{k}" for k in range(len(targets))]].to_dataframe()
        pta.columns = [f"P({t.label})" for t in targets]
        pta_csv = _file(folder, "attainment.csv", overwrite)
        pta.to_csv(pta_csv)
        table = Table("ID", *pta.columns, title="probability of target attainment")
        for pid, row in pta.head(15).iterrows():
            table.add_row(str(pid), *[f"{v:.3f}" for v in row])
        console.print(table)
        console.print(f"report: {csv}, {fig}, {pta_csv}")
    else:
        console.print(f"report: {csv}, {fig}")


@app.command("dose")
@command(timed=True)
def dose(
    store: Path = typer.Argument(..., help="twin store"),
    target: str = typer.Option(..., help="auc:OUT:START:END:LO:HI | level:OUT:TIME:LO:HI | ..."),
    start: float = typer.Option(..., help="time of the first dose to choose"),
    ii: float = typer.Option(12.0, help="dosing interval"),
    addl: int = typer.Option(1, help="additional doses"),
    duration: float = typer.Option(None, help="infusion duration (none: bolus)"),
    max_dose: float = typer.Option(..., help="largest dose per administration"),
    min_dose: float = typer.Option(None, help="smallest dose (default: one --strength)"),
    strength: float = typer.Option(None, help="doses are multiples of this (e.g. 250 mg)"),
    intervals: str = typer.Option(None, help="also choose the interval from these, e.g. 8,12,24"),
    objective: str = typer.Option("pta", help="pta (maximise attainment) | center"),
    draws: int = typer.Option(500, help="posterior draws"),
    seed: int = typer.Option(0, help="random seed"),
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
    folder = _report(report, overwrite)
    try:
        ivals = [float(x) for x in intervals.split(",")] if intervals else None
    except ValueError:
        fail(f"--intervals {intervals!r}: give numbers separated by commas, e.g. 8,12,24")
    tw = _pk_twins(store, patient, "dose")
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
    csv = _file(folder, "dose.csv", overwrite)
    rec.to_csv(csv)
    fig = plots.attainment_curves(rec, _file(folder, "attainment_by_dose.png", overwrite))
    table = Table(
        "ID",
        "dose",
        "interval",
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


PACKAGED_PRIORS = Path(__file__).resolve().parent.parent / "twin" / "data"


@app.command("example")
@command(timed=True)
def example(
    folder: Path = typer.Argument(Path("twin_example"), help="directory for the example records"),
    n: int = typer.Option(20, help="vancomycin patients"),
    n_cgm: int = typer.Option(3, help="CGM patients (UVA/Padova reference adults, at most 10)"),
    seed: int = typer.Option(1, help="random seed"),
    overwrite: bool = typer.Option(False, help="replace an earlier example written by cohort"),
):
    """Write example records to try the twin commands on: simulated vancomycin TDM
    (day0.csv, day1.csv, truth.csv: Goti 2018 patients, 1 g q12h over 1 h, two samples a day)
    and two days of CGM, meals and insulin (cgm_day1.csv, cgm_day2.csv: UVA/Padova reference
    adults with jittered meals, boluses at their carbohydrate ratio, a noisy CGM)."""
    import pandas as pd

    from cohort.dosing import Regimen
    from cohort.models.glucose.patients import reference_patients
    from cohort.twin import TwinPrior
    from cohort.twin.cgm_synthetic import meal_plan, uva_days
    from cohort.twin.synthetic import simulate_records

    if n < 1 or not 1 <= n_cgm <= 10:
        fail("--n must be >= 1 and --n-cgm between 1 and 10")
    out = _report(folder, overwrite)
    names = ("day0.csv", "day1.csv", "truth.csv", "cgm_day1.csv", "cgm_day2.csv")
    paths = {name: _file(out, name, overwrite) for name in names}  # refused before any work
    vanco = PACKAGED_PRIORS / "vancomycin_goti2018.toml"
    with console.status("simulating example patients"):
        prior = TwinPrior.from_spec(vanco)
        day0, day1 = [2.5, 11.75], [26.5, 35.75]  # after the 1st and before the 2nd dose, daily
        reg = Regimen(amt=1000.0, ii=12.0, addl=3, duration=1.0)
        records, truth = simulate_records(prior, n, day0 + day1, reg, seed=seed)
        first = records[(records.EVID == 1) | records.TIME.isin(day0)]
        later = records[(records.EVID == 0) & records.TIME.isin(day1)]
        times, grams = meal_plan(n_cgm, 2, seed=seed, jitter=30.0)
        adults = reference_patients("adult").iloc[:n_cgm]
        cgm, _ = uva_days(adults, times, grams, 2, seed=seed)
    truth = pd.DataFrame({"ID": np.arange(1, n + 1), **truth})
    frames = (first, later, truth, cgm[cgm.TIME < 1440], cgm[cgm.TIME >= 1440])
    for name, frame in zip(names, frames):
        frame.to_csv(paths[name], index=False)
    console.print(f"wrote {', '.join(names)} to {out}; then, for example:")
    for line in (
        f"cohort twin fit {out}/day0.csv --prior {vanco} -o twins.zarr",
        f"cohort twin update twins.zarr {out}/day1.csv",
        "cohort twin dose twins.zarr --target auc:conc:48:72:400:600 --start 48 --ii 12 "
        "--addl 1 --duration 1 --max-dose 3000 --strength 250",
        f"cohort twin cgm {out}/cgm_day1.csv --method laplace -o cgm_twins.zarr",
        f"cohort twin update cgm_twins.zarr {out}/cgm_day2.csv",
    ):
        console.print(f"  {escape(line)}", soft_wrap=True)


@app.command("mipd")
@command(timed=True)
def mipd(
    n: int = typer.Option(200, help="simulated patients"),
    days: int = typer.Option(3, help="days (day 0 on label dosing in both arms)"),
    seed: int = typer.Option(1, help="random seed"),
    report: Path = typer.Option(Path("twin_mipd"), help="directory for tables and figure"),
    overwrite: bool = typer.Option(False, help="replace an existing --report by cohort"),
):
    """Simulated vancomycin MIPD (Goti 2018 model): twins re-dose after each day's TDM for
    AUC 400–600 mg·h/L, against label dosing (15 mg/kg q12h)."""
    from cohort.twin import mipd as study
    from cohort.twin import plots

    if n < 1 or days < 2:
        fail("--n must be >= 1 and --days >= 2")
    folder = _report(report, overwrite)
    with console.status("simulating MIPD") as status:
        result = study.run(n=n, days=days, seed=seed, progress=lambda s: status.update(s))
    table = Table(
        "day",
        "arm",
        "TDM cycles",
        "in 400–600",
        "below",
        "above",
        "median AUC",
        title=f"vancomycin MIPD, {n} patients ({result.seconds:.0f} s)",
    )
    for _, r in result.table.iterrows():
        table.add_row(
            str(r["day"]),
            r["arm"],
            str(r["tdm_cycles"]),
            f"{r['in_target']:.1%}",
            f"{r['below']:.1%}",
            f"{r['above']:.1%}",
            f"{r['median_auc']:.0f}",
        )
    console.print(table)
    summary = _file(folder, "mipd.csv", overwrite)
    result.table.to_csv(summary, index=False)
    per = _file(folder, "mipd_patients.csv", overwrite)
    result.auc.merge(result.doses, on=["ID", "day", "arm"]).to_csv(per, index=False)
    fig = plots.mipd(result, _file(folder, "mipd.png", overwrite))
    console.print(f"report: {summary}, {per}, {fig}")


def _cgm_summary(tw, title: str) -> Table:
    """Posterior medians and 90 % intervals, MARD and usability per patient."""
    ind = tw.individual()
    names = [n for n in ind.columns if n + "_q05" in ind.columns]
    shown = ind.head(15)

    def cells(row):
        band = [f"{row[n]:.3g} [{row[n + '_q05']:.3g}, {row[n + '_q95']:.3g}]" for n in names]
        return [*band, f"{row['mard']:.1f}", "yes" if row["ok"] else "[red]no[/]"]

    rows = {pid: cells(row) for pid, row in shown.iterrows()}
    table = patient_table(rows, [*names, "MARD %", "ok"], title)
    table.caption = "posterior median [90 % interval]" + (
        f"; first 15 of {len(ind)} patients" if len(ind) > 15 else ""
    )
    return table


_REPLAY_METRICS = (("tir_70_180", "TIR 70-180 %"), ("tbr_70", "TBR <70 %"), ("mean", "mean mg/dL"))


def _replay_table(base, alt, label: str) -> Table:
    table = Table("ID", *[f"{t} (as lived)" for _, t in _REPLAY_METRICS],
                  *[f"{t} ({label})" for _, t in _REPLAY_METRICS], title="replay")  # fmt: skip
    for k, pid in enumerate(base["patient"].values[:15]):
        cells = []
        for ds in (base, alt):
            for m, _ in _REPLAY_METRICS:
                q = ds[f"{m}_q"].isel(patient=k)
                lo, med, hi = (q.sel(quantile=x).item() for x in (0.05, 0.5, 0.95))
                cells.append(f"{med:.1f} [{lo:.1f}, {hi:.1f}]")
        table.add_row(str(pid), *cells)
    table.caption = (
        "posterior median [90 % credible interval] of each metric over the records' days"
    )
    return table


DEFAULT_CGM_PRIOR = Path(__file__).resolve().parent.parent / "twin" / "data" / "t1d_cgm_twin.toml"


@app.command("cgm")
@command(timed=True)
def cgm(
    data: Path = typer.Argument(
        ...,
        help="CGM records (CSV): ID, TIME (min), CGM (mg/dL), CHO (g), BOLUS (U), "
        "BASAL (U/h), BW (kg)",
    ),  # fmt: skip
    prior: Path = typer.Option(
        DEFAULT_CGM_PRIOR,
        "--prior",
        help="t1d_minimal twin prior (default: the packaged priors/t1d_cgm_twin.toml)",
    ),  # fmt: skip
    out: Path = typer.Option(Path("cgm_twins.zarr"), "--out", "-o", help="twin store (.zarr)"),
    method: str = typer.Option("nuts", help="nuts | laplace (MAP + Laplace only)"),
    chains: int = typer.Option(4, help="NUTS chains per patient"),
    warmup: int = typer.Option(500, help="NUTS warmup iterations (from the Laplace fit)"),
    draws: int = typer.Option(500, help="NUTS draws per chain"),
    seed: int = typer.Option(0, help="random seed"),
    bolus_scale: float = typer.Option(REPLAY["bolus_scale"], help="replay: boluses times this"),
    basal_scale: float = typer.Option(REPLAY["basal_scale"], help="replay: basal rate times this"),
    meal_scale: float = typer.Option(REPLAY["meal_scale"], help="replay: meals times this"),
    report: Path = typer.Option(None, help="directory for tables and figures"),
    overwrite: bool = typer.Option(False, help="replace an existing --out/--report by cohort"),
    scheduler: str = typer.Option(
        None, help="Dask scheduler address (tcp://host:8786): blocks of patients as tasks"
    ),
):
    """Identify a type 1 diabetes twin per patient from CGM, insulin and meal records, then
    replay the same days under altered therapy (glycaemic metrics with credible intervals).
    Finished blocks of patients are kept in OUT's name with .blocks.zarr until the twins are
    saved: the same command after a crash computes only the rest."""
    from cohort.twin import CGMTwins, TwinPrior

    _check_scales({"--bolus-scale": bolus_scale, "--basal-scale": basal_scale,
                   "--meal-scale": meal_scale})  # fmt: skip
    folder = _before_identifying(data, out, report, overwrite)
    t0 = time.perf_counter()
    kept = _checkpoint(out)
    with console.status("identifying CGM twins"):
        tw = CGMTwins.identify(
            TwinPrior.from_file(prior), str(data), method=method, chains=chains,
            warmup=warmup, draws=draws, seed=seed, cluster=scheduler, checkpoint=kept,
        )  # fmt: skip
    path = tw.save(out, overwrite=overwrite)
    kept.remove()
    console.print(_cgm_summary(tw, f"{tw.prior.name}: individual posteriors"))
    console.print(_status_line(tw, time.perf_counter() - t0, path))
    _cgm_replay(tw, folder, overwrite, bolus_scale, basal_scale, meal_scale)


def _check_scales(scales: dict) -> None:
    """Replay scales checked before any work (not after the twins are identified)."""
    import math

    for flag, v in scales.items():
        if v is not None and not (math.isfinite(v) and v >= 0):
            fail(f"{flag} must be a finite number >= 0, got {v}")


def _cgm_replay(tw, folder, overwrite: bool, bolus_scale, basal_scale, meal_scale) -> None:
    """The fit's MARD, the records' days replayed as lived and under the altered therapy
    (table), and with ``folder`` the individual table, replay CSV and figure."""
    import numpy as np

    mard = tw.fitted().mard.values
    console.print(
        f"fit MARD to the CGM readings: median {np.median(mard):.1f} %, max {mard.max():.1f} %"
    )
    base = tw.replay()
    alt = tw.replay(bolus_scale=bolus_scale, basal_scale=basal_scale, meal_scale=meal_scale)
    label = f"bolus x{bolus_scale:g}, basal x{basal_scale:g}" + (
        f", meals x{meal_scale:g}" if meal_scale != 1 else ""
    )
    console.print(f"replay of the records' days as lived and with {label}:")
    console.print(_replay_table(base, alt, label))
    if folder is not None:
        from cohort.twin import plots

        table = _file(folder, "individual.csv", overwrite)
        tw.individual().to_csv(table)
        import pandas as pd

        rows = []
        for tag, ds in (("as lived", base), (label, alt)):
            cols = []
            for m, _ in _REPLAY_METRICS:
                q = ds[f"{m}_q"].to_pandas().T
                q.columns = [f"{m}_q{int(round(100 * c)):02d}" for c in q.columns]
                cols.append(q)
            rows.append(pd.concat(cols, axis=1).assign(therapy=tag))
        replay_csv = _file(folder, "replay.csv", overwrite)
        pd.concat(rows).to_csv(replay_csv)
        fig = plots.cgm_replay(tw, base, alt, label, _file(folder, "replay.png", overwrite))
        console.print(f"report: {table}, {replay_csv}, {fig}")
