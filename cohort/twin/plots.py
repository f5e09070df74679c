"""Figures of digital twins: posterior shrinkage across updates, forecast bands against the
observations, dose–target-attainment curves and the MIPD comparison (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from cohort.store.figures import save_figure  # noqa: E402


def shrinkage(twins, path: str | Path) -> Path:
    """Median over patients of each parameter's posterior SD (log scale ≈ CV) after each
    identification/update, with the prior SD at update 0's left."""
    sd = np.asarray([h["posterior_sd"] for h in twins.history])  # [U, N, q]
    prior_sd = np.sqrt(np.diag(twins.prior.omega))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(-1, len(sd))
    for j, name in enumerate(twins.prior.eta_names):
        y = np.concatenate([[prior_sd[j]], np.median(sd[:, :, j], axis=1)])
        ax.plot(x, y, marker="o", label=name)
    ax.set_xticks(x, ["prior"] + [f"{h['step']} {k}" for k, h in enumerate(twins.history)])
    ax.set_ylabel("posterior SD, log scale (≈ CV)")
    ax.set_title(f"{twins.n} twins: median posterior SD across updates")
    ax.legend()
    return save_figure(fig, path)


def forecast_bands(
    twins, fc: xr.Dataset, path: str | Path, later: pd.DataFrame | None = None, max_panels: int = 6
) -> Path:
    """Per patient (the first ``max_panels``): 5–95 % and 25–75 % bands and the median of the
    next measurement, the observations the twin has seen (dots) and, when given, observations
    it has not (crosses: the forecast's check)."""
    out = f"{twins.prior.output}_obs" if f"{twins.prior.output}_obs" in fc else twins.prior.output
    units = fc[out].attrs.get("units", "")
    ids = list(fc["patient"].to_numpy())[:max_panels]
    fig, axes = _panels(len(ids), 4.2)
    rec = twins.data.to_frame()
    seen = rec[(rec["EVID"] == 0) & (rec["MDV"] == 0)]
    t = fc["time"].to_numpy()
    for ax, pid in zip(axes.ravel(), ids):
        q = fc[out].sel(patient=pid)
        _bands(ax, t, q)
        s = seen[seen["ID"] == pid]
        ax.plot(s["TIME"], s["DV"], "o", ms=4, color="k", label="seen")
        if later is not None:
            lt = later[(later["ID"] == pid) & (later.get("EVID", 0) == 0)]
            ax.plot(lt["TIME"], lt["DV"], "x", ms=6, color="tab:red", label="later")
        ax.set_title(f"patient {pid}")
        ax.set_xlabel(f"time ({twins.prior.model.time_units})")
        ax.set_ylabel(f"{twins.prior.output} ({units})")
    return _finish(fig, axes, len(ids), fc.sizes["patient"], path)


def cgm_forecast_bands(
    twins, fc: xr.Dataset, path: str | Path, later: pd.DataFrame | None = None, max_panels: int = 6
) -> Path:
    """CGM twins' forecasts per patient (the first ``max_panels``): 5–95 % and 25–75 % bands
    and the median of the predicted readings, the last day of readings the twin has seen
    (dots) and, when given, later readings (crosses: the forecast's check), with the
    70–180 mg/dL range shaded. Times in hours since each patient's first record."""
    ids = list(fc["patient"].to_numpy())[:max_panels]
    fig, axes = _panels(len(ids), 4.6)
    rec = twins.records
    t = fc["time"].to_numpy()
    for ax, pid in zip(axes.ravel(), ids):
        q = fc["cgm_q"].sel(patient=pid)
        start = float(rec.loc[rec["ID"] == pid, "TIME"].iloc[0])
        last = float(fc["last_reading"].sel(patient=pid))
        ax.axhspan(70, 180, color="tab:green", alpha=0.07)
        _bands(ax, t / 60, q)
        seen = rec[(rec["ID"] == pid) & rec["CGM"].notna()]
        rel = seen["TIME"].to_numpy(float) - start
        keep = rel >= last - 1440
        ax.plot(rel[keep] / 60, seen["CGM"].to_numpy()[keep], ".", ms=2, color="k", label="seen")
        if later is not None and "CGM" in later:
            lt = later[(later["ID"] == pid) & later["CGM"].notna()]
            ax.plot((lt["TIME"] - start) / 60, lt["CGM"], "x", ms=3, color="tab:red", label="later")
        ax.set_title(f"patient {pid}")
        ax.set_xlabel("time since the first record (h)")
        ax.set_ylabel("CGM (mg/dL)")
    return _finish(fig, axes, len(ids), fc.sizes["patient"], path)


def _panels(n: int, width: float):
    """A grid of ``n`` panels, three per row."""
    cols = min(3, n)
    rows = -(-n // cols)
    return plt.subplots(rows, cols, figsize=(width * cols, 3.2 * rows), squeeze=False)


def _bands(ax, t, q: xr.DataArray) -> None:
    """90 % (and 50 %, when its quantiles are there) bands and the median of ``q``."""
    ax.fill_between(t, q.sel(quantile=0.05), q.sel(quantile=0.95), alpha=0.2, label="90 %")
    if 0.25 in q["quantile"]:
        ax.fill_between(t, q.sel(quantile=0.25), q.sel(quantile=0.75), alpha=0.3, label="50 %")
    ax.plot(t, q.sel(quantile=0.5), lw=1.2, label="median")


def _finish(fig, axes, shown: int, total: int, path: str | Path) -> Path:
    """Blank the unused panels, one legend, say when only the first patients are shown."""
    for ax in axes.ravel()[shown:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    if total > shown:
        fig.suptitle(f"first {shown} of {total} patients", fontsize=9)
    return save_figure(fig, path)


def attainment_curves(rec: pd.DataFrame, path: str | Path, max_patients: int = 12) -> Path:
    """Probability of target attainment against dose per patient (every strength on the grid
    was evaluated; points, not interpolated lines), the recommended dose marked."""
    grid = np.asarray(rec.attrs["grid"])
    pta = np.asarray(rec.attrs["pta_grid"])  # [G, N]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    # one colour per patient: the default 10-colour cycle gave patients 1 and 11 one colour
    colours = plt.get_cmap("tab20").colors
    # with several intervals each curve is at the patient's chosen one: said (a reader took
    # them all for the template's, a probe)
    several = "ii" in rec and rec["ii"].nunique() > 1
    for k, (pid, row) in enumerate(rec.iloc[:max_patients].iterrows()):
        colour = colours[(2 * k) % 20 + (2 * k) // 20]  # the strong shades first
        label = f"{pid}, every {row['ii']:g}" if several else f"{pid}"
        ax.plot(grid, pta[:, k], "o", ms=3, alpha=0.8, label=label, color=colour)
        ax.plot([row["dose"]], [row["pta"]], "*", ms=11, color=colour)
    ax.set_xlabel(f"dose per administration ({rec.attrs.get('dose_units', 'mg')})")
    ax.set_ylabel(f"P({rec.attrs['target']})")
    ax.set_ylim(-0.02, 1.02)
    shown = "" if len(rec) <= max_patients else f", first {max_patients} of {len(rec)} patients"
    at = ", each at its recommended interval" if several else ""
    ax.set_title(f"target attainment by dose (★ recommended{at}{shown})")
    ax.legend(title="patient", fontsize=7, ncol=2)
    return save_figure(fig, path)


def mipd(result, path: str | Path) -> Path:
    """Fraction of patients in the AUC window per day, twin arm vs label dosing, and the
    distribution of the true AUC per day and arm."""
    table, auc = result.table, result.auc
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    days = sorted(table["day"].unique())
    width = 0.38
    for k, arm in enumerate(("label", "twin")):
        t = table[table["arm"] == arm].set_index("day").loc[days]
        a1.bar(np.asarray(days) + (k - 0.5) * width, t["in_target"], width, label=arm)
    a1.set_xticks(days, [f"day {d}\n({d} TDM cycles)" for d in days])
    a1.set_ylabel("fraction with AUC in 400–600 mg·h/L")
    a1.set_ylim(0, 1)
    a1.legend()
    data, labels = [], []
    for d in days:
        for arm in ("label", "twin"):
            data.append(auc[(auc["day"] == d) & (auc["arm"] == arm)]["auc"].to_numpy())
            labels.append(f"{arm}\nday {d}")
    a2.boxplot(data, showfliers=False)
    a2.set_xticks(np.arange(1, len(labels) + 1), labels, fontsize=7)
    a2.axhspan(400, 600, color="tab:green", alpha=0.1)
    a2.set_ylabel("true AUC of the day (mg·h/L)")
    fig.suptitle(f"Vancomycin MIPD, {table.attrs.get('n', '')} simulated patients")
    return save_figure(fig, path)


def cgm_replay(twins, base: xr.Dataset, alt: xr.Dataset, label: str, path, max_panels: int = 6):
    """Per patient (the first ``max_panels``): the CGM readings, and the 90 % band and median
    of the twin's glucose as lived and under the altered therapy ``label``."""
    n = min(max_panels, base.sizes["patient"])
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.4 * n), sharex=True, squeeze=False)
    rec = twins.records
    for k in range(n):
        ax = axes[k, 0]
        pid = base["patient"].values[k]
        hours = base["time"].values / 60.0
        for ds, color, name in ((base, "C0", "as lived"), (alt, "C3", label)):
            q = ds["glucose_q"].isel(patient=k)
            ax.fill_between(hours, q.sel(quantile=0.05), q.sel(quantile=0.95), color=color,
                            alpha=0.2, lw=0)  # fmt: skip
            ax.plot(hours, q.sel(quantile=0.5), color=color, lw=1.2, label=f"twin, {name}")
        r = rec[rec["ID"] == pid]
        t = (r["TIME"] - r["TIME"].iloc[0]) / 60.0
        ax.plot(t, r["CGM"], ".", ms=2.5, color="k", label="CGM readings")
        ax.axhspan(70, 180, color="0.9", zorder=-1)
        ax.set_ylabel("glucose (mg/dL)")
        ax.set_title(f"patient {pid}", fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("time from the first record (h)")
    fig.suptitle("CGM twins: replay with 90 % credible bands (shaded: 70-180 mg/dL)")
    return save_figure(fig, path)
