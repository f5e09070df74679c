"""``cohort twin cgm``: type 1 diabetes twins identified from CGM, insulin and meal records,
then the same days replayed under altered therapy."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cohort._seed import MAX_SEED
from cohort.cli._cgm_report import REPLAY, REPORT_NAMES, cgm_replay, cgm_summary, check_scales
from cohort.cli._common import command, console
from cohort.cli._twin_common import before_identifying, checkpoint_for, status_line

DEFAULT_CGM_PRIOR = Path(__file__).resolve().parent.parent / "twin" / "data" / "t1d_cgm_twin.toml"


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
    draws: int = typer.Option(1000, help="NUTS draws per chain"),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="random seed"),
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

    check_scales({"--bolus-scale": bolus_scale, "--basal-scale": basal_scale,
                   "--meal-scale": meal_scale})  # fmt: skip
    from cohort.store.lock import write_lock

    folder = before_identifying(data, out, report, overwrite, REPORT_NAMES)
    t0 = time.perf_counter()
    with write_lock(out):  # from the first block to the save (see `cohort twin fit`)
        kept = checkpoint_for(out)
        with console.status("identifying CGM twins"):
            tw = CGMTwins.identify(
                TwinPrior.from_file(prior), str(data), method=method, chains=chains,
                warmup=warmup, draws=draws, seed=seed, cluster=scheduler, checkpoint=kept,
            )  # fmt: skip
        path = tw.save(out, overwrite=overwrite)
    kept.remove()
    console.print(cgm_summary(tw, f"{tw.prior.name}: individual posteriors"))
    console.print(status_line(tw, time.perf_counter() - t0, path))
    cgm_replay(tw, folder, overwrite, bolus_scale, basal_scale, meal_scale)
