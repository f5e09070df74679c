"""Figures of closed-loop glucose cohorts: percentile band over time and the CVGA scatter.

matplotlib (Agg) only; nothing below the CLI imports this module.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from cohort.glucose.metrics import cvga  # noqa: E402
from cohort.store.figures import save_figure  # noqa: E402

_BANDS = ((0.05, 0.95), (0.25, 0.75))


def _save(fig, path: str | Path) -> Path:
    return save_figure(fig, path, dpi=110)


def glucose_band(
    ds: xr.Dataset, path: str | Path, var: str = "Gsub", max_patients: int = 20_000
) -> Path:
    """Median, 25–75 % and 5–95 % of ``var`` over patients against time (h), with the 70–180
    mg/dL target range shaded; insulin (median) below when present."""
    ok = ds["status"].values == 0
    idx = np.flatnonzero(ok)[:max_patients]
    t = ds["time"].values / 60.0
    g = np.asarray(ds[var].isel(patient=idx).values, float)
    panels = 2 if "insulin" in ds else 1
    fig, axes = plt.subplots(panels, 1, figsize=(9, 3.4 * panels), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.axhspan(70, 180, color="tab:green", alpha=0.08, label="70–180 mg/dL")
    for lo, hi in _BANDS:
        qlo, qhi = np.nanquantile(g, [lo, hi], axis=0)
        ax.fill_between(t, qlo, qhi, color="tab:blue", alpha=0.18, lw=0,
                        label=f"{lo:.0%}–{hi:.0%}")  # fmt: skip
    ax.plot(t, np.nanmedian(g, axis=0), color="tab:blue", lw=2, label="median")
    ax.set_ylabel(f"{var} [mg/dL]")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    if panels == 2:
        ins = np.asarray(ds["insulin"].isel(patient=idx).values, float) * 60.0
        axes[1, 0].plot(t, np.nanmean(ins, axis=0), color="tab:orange")
        axes[1, 0].set_ylabel("insulin [U/h], mean")
        axes[1, 0].grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time [h]")
    fig.suptitle(f"{ds.attrs.get('title', 'glucose cohort')}: {len(idx):,} patients")
    fig.tight_layout()
    return _save(fig, path)


def cvga_plot(ds: xr.Dataset, path: str | Path, var: str = "Gsub") -> Path:
    """Control-variability grid analysis (Magni et al. 2008): one dot per patient at (minimum,
    maximum) glucose on the reversed-x grid, with zone counts in the title."""
    x, y, zones = cvga_points(ds, var)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(x, y, s=6, alpha=0.4, color="k")
    for x in (70, 90):
        ax.axvline(x, color="grey", lw=0.8)
    for y in (180, 300):
        ax.axhline(y, color="grey", lw=0.8)
    labels = {(100, 145): "A", (80, 145): "Lower B", (60, 145): "Lower C",
              (100, 240): "Upper B", (80, 240): "B", (60, 240): "Lower D",
              (100, 350): "Upper C", (80, 350): "Upper D", (60, 350): "E"}  # fmt: skip
    for (x, y), name in labels.items():
        ax.text(x, y, name, ha="center", va="center", color="tab:red", alpha=0.6, fontsize=9)
    ax.set_xlim(110, 50)
    ax.set_ylim(110, 400)
    ax.set_xlabel("minimum glucose [mg/dL]")
    ax.set_ylabel("maximum glucose [mg/dL]")
    counts = {z: int(np.sum(np.char.endswith(zones, z))) for z in "ABCDE"}
    ax.set_title("CVGA  " + "  ".join(f"{z}:{100 * v / max(len(zones), 1):.0f}%"
                                      for z, v in counts.items()), fontsize=9)  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def cvga_points(ds: xr.Dataset, var: str = "Gsub") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CVGA x (minimum, clipped to 50–110), y (maximum, clipped to 110–400) and zone of each
    patient with status 0. A closed-loop result already holds each patient's ``g_min``,
    ``g_max`` and ``cvga_zone`` of ``Gsub``: those are used, so the figure of a large cohort
    reads three numbers per patient instead of every trajectory (10⁶ patient-days at 5 min:
    2.3 GB); other variables are computed from the trajectories."""
    ok = np.asarray(ds["status"].values) == 0
    if var == "Gsub" and all(k in ds for k in ("g_min", "g_max", "cvga_zone")):
        lo, hi = (np.asarray(ds[k].values, float)[ok] for k in ("g_min", "g_max"))
        zones = np.asarray(ds["cvga_zone"].values)[ok].astype(str)
        return np.clip(lo, 50, 110), np.clip(hi, 110, 400), zones
    c = cvga(ds[var].isel(patient=np.flatnonzero(ok)))
    return c["x"].values, c["y"].values, c["zone"].values.astype(str)
