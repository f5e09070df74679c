"""Figures of simulation results (matplotlib; nothing below the CLI imports this module)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from cohort.store.figures import save_figure  # noqa: E402


def band(
    ds: xr.Dataset,
    outputs: list[str],
    path: str | Path,
    q=(0.05, 0.5, 0.95),
    max_patients: int = 100_000,
) -> Path:
    """Median and 5-95 % band over patients for each output, one panel each, saved as PNG.
    Computed from the first ``max_patients`` patients (virtual patients are independent
    draws, so they are a random sample; with 10⁵ the standard errors of the 5 % and 95 %
    quantiles are ~0.2 % of their values at a 30 % CV), so that a figure of 10⁷ patients
    does not read the whole store into memory."""
    fig, axes = plt.subplots(len(outputs), 1, figsize=(8, 3.2 * len(outputs)), squeeze=False)
    t = ds["time"].values
    n_used = 0
    for ax, name in zip(axes[:, 0], outputs):
        (lo, mid, hi), n_used = band_quantiles(ds, name, q, max_patients)
        ax.fill_between(t, lo, hi, alpha=0.3, label=f"{int(q[0] * 100)}-{int(q[2] * 100)} %")
        ax.plot(t, mid, lw=2, label="median")
        ax.set_ylabel(f"{name} [{ds[name].attrs.get('units', '')}]")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    axes[-1, 0].set_xlabel(f"time [{ds['time'].attrs.get('units', '')}]")
    n = ds.sizes["patient"]
    which = (
        f"{n_used:,} patients"
        if n <= max_patients
        else f"{n_used:,} of the first {max_patients:,} of {n:,} patients"
    )
    fig.suptitle(f"{ds.attrs.get('model', '')}: {which}")
    return save_figure(fig, path, dpi=110)


def band_quantiles(ds: xr.Dataset, name: str, q, max_patients: int = 100_000):
    """``(quantiles [len(q), T], patients used)`` of output ``name`` over the first
    ``max_patients`` patients whose status is 0."""
    head = ds.isel(patient=slice(0, max_patients))
    v = np.asarray(head[name].values)
    if "status" in head:
        v = v[np.asarray(head["status"].values) == 0]
    return np.nanquantile(v, q, axis=0), v.shape[0]


def histograms(ds: xr.Dataset, path: str | Path, max_points: int = 100_000) -> Path:
    """One histogram per patient-level variable (covariates and parameters), saved as PNG."""
    names = [k for k in ds.data_vars if ds[k].dims == ("patient",)]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        v = np.asarray(ds[name].values[:max_points], dtype=float)
        ax.hist(v[np.isfinite(v)], bins=50, color="tab:blue", alpha=0.8)
        ax.set_title(f"{name} [{ds[name].attrs.get('units', '')}]", fontsize=9)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(str(ds.attrs.get("population", "")))
    return save_figure(fig, path, dpi=100)
