"""``cohort twin example | mipd``: example records to try the twin commands on, and the
simulated vancomycin MIPD study (twins re-dosing against label dosing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from cohort._seed import MAX_SEED
from cohort.cli._common import command, console, fail
from cohort.cli._twin_common import report_file, report_folder

PACKAGED_PRIORS = Path(__file__).resolve().parent.parent / "twin" / "data"


@command(timed=True)
def example(
    folder: Path = typer.Argument(Path("twin_example"), help="directory for the example records"),
    n: int = typer.Option(20, help="vancomycin patients"),
    n_cgm: int = typer.Option(3, help="CGM patients (UVA/Padova reference adults, at most 10)"),
    seed: int = typer.Option(1, min=0, max=MAX_SEED, help="random seed"),
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
    out = report_folder(folder, overwrite, flag="FOLDER")  # an argument, not --report
    names = ("day0.csv", "day1.csv", "truth.csv", "cgm_day1.csv", "cgm_day2.csv")
    paths = {name: report_file(out, name, overwrite, flag="FOLDER") for name in names}
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


@command(timed=True)
def mipd(
    n: int = typer.Option(200, help="simulated patients"),
    days: int = typer.Option(3, help="days (day 0 on label dosing in both arms)"),
    seed: int = typer.Option(1, min=0, max=MAX_SEED, help="random seed"),
    report: Path = typer.Option(Path("twin_mipd"), help="directory for tables and figure"),
    overwrite: bool = typer.Option(False, help="replace an existing --report by cohort"),
):
    """Simulated vancomycin MIPD (Goti 2018 model): twins re-dose after each day's TDM for
    AUC 400–600 mg·h/L, against label dosing (15 mg/kg q12h)."""
    from cohort.twin import mipd as study
    from cohort.twin import plots

    if n < 1 or days < 2:
        fail("--n must be >= 1 and --days >= 2")
    folder = report_folder(report, overwrite)
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
    summary = report_file(folder, "mipd.csv", overwrite)
    result.table.to_csv(summary, index=False)
    per = report_file(folder, "mipd_patients.csv", overwrite)
    result.auc.merge(result.doses, on=["ID", "day", "arm"]).to_csv(per, index=False)
    fig = plots.mipd(result, report_file(folder, "mipd.png", overwrite))
    console.print(f"report: {summary}, {per}, {fig}")
