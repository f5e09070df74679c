"""What CGM twins print and write: posterior summaries, and the replay of the records' days as
lived and under altered therapy (``cohort twin cgm`` and ``cohort twin update``)."""

from __future__ import annotations

from rich.table import Table

from cohort.cli._common import console, fail, patient_table
from cohort.cli._twin_common import report_file

# The altered therapy CGM twins replay by default (`twin cgm`, and `twin update` of CGM twins)
REPORT_NAMES = ("individual.csv", "replay.csv", "replay.png")  # what --report holds
REPLAY = {"bolus_scale": 0.8, "basal_scale": 1.2, "meal_scale": 1.0}


def cgm_summary(tw, title: str) -> Table:
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


def check_scales(scales: dict) -> None:
    """Replay scales checked before any work (not after the twins are identified)."""
    import math

    for flag, v in scales.items():
        if v is not None and not (math.isfinite(v) and v >= 0):
            fail(f"{flag} must be a finite number >= 0, got {v}")


def cgm_replay(tw, folder, overwrite: bool, bolus_scale, basal_scale, meal_scale) -> None:
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

        table = report_file(folder, "individual.csv", overwrite)
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
        replay_csv = report_file(folder, "replay.csv", overwrite)
        pd.concat(rows).to_csv(replay_csv)
        fig = plots.cgm_replay(tw, base, alt, label, report_file(folder, "replay.png", overwrite))
        console.print(f"report: {table}, {replay_csv}, {fig}")
