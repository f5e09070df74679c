"""``cohort glucose``: a closed-loop UVA/Padova cohort."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from cohort._seed import MAX_SEED
from cohort.cli._common import command, console, err_console, fail, progress
from cohort.timing import describe, phases, step

if TYPE_CHECKING:
    import pandas as pd

_METRICS = (
    ("tir_70_180", "TIR 70–180 %"),
    ("tbr_70", "TBR <70 %"),
    ("tbr_54", "TBR <54 %"),
    ("tar_180", "TAR >180 %"),
    ("tar_250", "TAR >250 %"),
    ("mean", "mean mg/dL"),
    ("cv", "CV %"),
    ("gmi", "GMI %"),
    ("lbgi", "LBGI"),
    ("hbgi", "HBGI"),
)


def _metrics_table(result) -> Table:
    """The metrics of a run: its dataset, or the arrays of ``metrics_only``."""
    from cohort.glucose.metrics import CVGA_ZONES, zone_counts

    status = np.asarray(result["status"])
    ok = status == 0
    table = Table(
        title=f"glycaemic metrics of Gsub (noise-free subcutaneous glucose, not the CGM "
        f"readings) — {int(ok.sum()):,}/{status.size:,} patients"
    )
    for col in ("metric", "mean", "median", "p5", "p95"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, label in _METRICS:
        v = np.asarray(result[name], float)[ok]
        if v.size == 0:
            continue
        p5, med, p95 = np.nanquantile(v, [0.05, 0.5, 0.95])
        table.add_row(label, f"{np.nanmean(v):.2f}", f"{med:.2f}", f"{p5:.2f}", f"{p95:.2f}")
    if "cvga_zone" in result:
        zone = np.asarray(result["cvga_zone"]).astype(str)[ok]
    else:
        zone = np.asarray(CVGA_ZONES)[np.asarray(result["cvga_code"])[ok]]
    counts = zone_counts(zone, letters=True)
    table.caption = "CVGA " + "  ".join(f"{z}:{c}" for z, c in counts.items())
    return table


def _rate(x: float) -> str:
    """A throughput with the digits that matter (12,345; 37.5; 0.812)."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


@command
def glucose(
    patients: str = typer.Option("adult", help="adolescent | adult | child"),
    n: int = typer.Option(10, help="virtual patients (reference patients if --n <= 10)"),
    plausible: bool = typer.Option(
        True,
        help="keep only sampled patients whose outcomes on a standard day (45/70/80 g meals, "
        "basal-bolus) fall within the reference patients' range",
    ),
    days: float = typer.Option(1.0, help="simulated days"),
    controller: str = typer.Option("basal-bolus", help="open-loop | basal-bolus | pid | hybrid"),
    scenario: str = typer.Option("random", help="fixed (45/70/80 g) | random (simglucose-like)"),
    seed: int = typer.Option(
        0, min=0, max=MAX_SEED, help="seed of patients, meals and sensor noise"
    ),
    cgm_noise: bool = typer.Option(True, help="CGM sensor noise (Johnson SU, simglucose Dexcom)"),
    pump_increment: float = typer.Option(0.05, help="pump quantisation, U (0: none)"),
    period: float = typer.Option(5.0, help="control / CGM period, min"),
    out: str = typer.Option(
        None,
        "--out",
        "-o",
        help="zarr store for the trajectories: a path or an fsspec URL (s3://bucket/runs/x.zarr)",
    ),
    overwrite: bool = typer.Option(
        False, help="replace an existing --out (and --plots figures) written by cohort"
    ),
    resume: bool = typer.Option(False, help="finish an interrupted run into the same --out"),
    plots: Path = typer.Option(None, help="folder for glucose-band and CVGA figures"),
    scheduler: str = typer.Option(
        None,
        help="Dask scheduler address (tcp://host:8786): its workers solve and write the "
        "chunks (needs --out on storage every worker reaches)",
    ),
):
    """Closed-loop UVA/Padova cohort: meals, CGM and an insulin controller in the loop."""
    # One JAX CPU device per core (one chunk each) is set up by the app callback in cli.py.
    from cohort.engine.inputs import InputError
    from cohort.glucose.loop import ClosedLoopOptions
    from cohort.glucose.sensor import Sensor
    from cohort.glucose.simulate import control_periods, metrics_only, run
    from cohort.models.glucose import GROUPS, reference_patients, sample_patients
    from cohort.store import StoreError

    if patients not in GROUPS:
        fail(f"--patients must be one of {GROUPS}, got {patients!r}")
    if n < 1:
        fail(f"--n must be >= 1, got {n}")
    if not days > 0:
        fail(f"--days must be > 0, got {days}")
    if not (pump_increment >= 0):
        fail(f"--pump-increment must be >= 0 U (0: no quantisation), got {pump_increment}")
    if not (1 <= period <= 15 and period == round(period) and 1440 % round(period) == 0):
        # the metrics are read on this grid: a day of 1440-min periods gave TIR 50 % from
        # two samples, and a 7-min period a 1442-min "day"
        fail(
            f"--period must be a whole number of minutes from 1 to 15 that divides a day (1, "
            f"2, 3, 4, 5, 6, 8, 10, 12 or 15; CGMs read every 1-15 min), got {period:g}"
        )
    if resume and overwrite:
        fail(
            "--resume and --overwrite contradict each other: resume keeps the store, "
            "overwrite replaces it; give one"
        )
    if resume and out is None:
        fail("--resume needs --out (the store of the interrupted run)")
    if scheduler is not None and out is None:
        fail("--scheduler needs --out: the workers write their chunks into that store")

    figures = None
    if plots is not None:
        # Checked before any work: the folder is new, empty or cohort's own, and an existing
        # figure in it is replaced only with --overwrite and only if cohort drew it.
        from cohort.store import report_directory
        from cohort.store.safety import claim_file

        folder = report_directory(plots, overwrite=overwrite, flag="--plots", create=False)
        figures = [claim_file(folder, name, overwrite=overwrite, flag="--plots")
                   for name in ("glucose_band.png", "cvga.png")]  # fmt: skip
    options = ClosedLoopOptions(
        period=period,
        sensor=Sensor() if cgm_noise else None,
        pump_increment=pump_increment or None,
    )
    build, ahead_spent = None, {}
    if n > 10 and scheduler is None:
        # The run's batch program depends on the patients' number and columns, not on their
        # values: compile it on a second thread while the patients are sampled (screening
        # them compiles and runs a program of its own: ours starts once the candidates are
        # drawn, as two compilations started together slowed the screening down).
        import threading

        from cohort.glucose.simulate import compile_ahead

        def build() -> None:
            try:
                with phases() as spent:
                    like = reference_patients(patients).iloc[np.zeros(n, int)]
                    compile_ahead(
                        like, scenario, controller, days=days, seed=seed, options=options,
                        out=None if out is None else str(out), resume=resume,
                    )  # fmt: skip
                ahead_spent.update(spent)
            except Exception:  # noqa: BLE001 - the run itself reports any problem
                pass

    def build_alongside() -> None:
        if build is not None:
            threading.Thread(target=build, name="compile-ahead", daemon=True).start()

    try:
        with phases() as spent:
            # patient sampling (screening plausible patients runs standard days) is timed
            # apart from the run, so that the printed split does not file it under startup
            with step(spent, "sampling"):
                if n <= 10:
                    pop = reference_patients(patients).iloc[:n]
                elif plausible:
                    from cohort.cli._cache import cached_table
                    from cohort.glucose.patients import sample_plausible

                    def sample() -> pd.DataFrame:
                        nonlocal build
                        then, build = build, None  # started by the sampler
                        return sample_plausible(patients, n, seed=seed, then=then)

                    with err_console.status(f"sampling {n:,} {patients}s with plausible outcomes"):
                        pop = cached_table("plausible", (patients, n, seed), sample)
                    build_alongside()  # the patients came from the cache
                else:
                    build_alongside()
                    pop = sample_patients(patients, n, seed=seed)
            t0 = time.perf_counter()
            with progress() as bar:
                task = bar.add_task(f"glucose {controller}", total=len(pop))

                already: list[int] = []  # patients a resumed store had finished

                def update(done: int, total: int) -> None:
                    if not already:
                        already.append(done)
                    bar.update(task, completed=done, total=total)

                # Without --out or --plots no trajectory is kept: the metrics are all the
                # command prints, so no dataset is assembled.
                ds = (run if out is not None or plots is not None else metrics_only)(
                    pop,
                    scenario,
                    controller,
                    days=days,
                    seed=seed,
                    out=None if out is None else str(out),
                    options=options,
                    overwrite=overwrite,
                    resume=resume,
                    progress=update,
                    cluster=scheduler,
                )
    except (InputError, StoreError, ValueError) as exc:
        fail(str(exc))
    wall = time.perf_counter() - t0
    console.print(_metrics_table(ds))
    if isinstance(ds, dict):  # metrics_only (no --out): run() itself warned otherwise
        from cohort.glucose.simulate import warn_floor

        warn_floor(ds)
    solved = len(pop) - (already[0] if already else 0)
    days = control_periods(days, options.period) * options.period / 1440.0  # as simulated
    console.print(
        f"{solved:,} patients × {days:g} day{'' if days == 1 else 's'} in {wall:.1f} s "
        f"({_rate(solved * days / wall)} patient-days/s)"
        + (f"; {len(pop) - solved:,} were in the store already" if solved < len(pop) else "")
        + (f" → {out}" if out else "")
    )
    console.print(describe(spent, ahead_spent), style="dim")
    if figures is not None:
        from cohort.glucose.plots import cvga_plot, glucose_band
        from cohort.store import report_directory
        from cohort.store.safety import claim_file

        # made now that there is something to write (checked above, before the run)
        folder = report_directory(plots, overwrite=overwrite, flag="--plots")
        figures = [claim_file(folder, p.name, overwrite=overwrite, flag="--plots")
                   for p in figures]  # fmt: skip

        for p in (glucose_band(ds, figures[0]), cvga_plot(ds, figures[1])):
            console.print(f"wrote {escape(str(p))}")
