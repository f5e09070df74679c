"""Figures of simulation results (matplotlib; nothing below the CLI imports this module)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402


def band(ds: xr.Dataset, outputs: list[str], path: str | Path, q=(0.05, 0.5, 0.95)) -> Path:
    """Median and 5-95 % band over patients for each output, one panel each, saved as PNG."""
    ok = ds["status"] == 0 if "status" in ds else True
    fig, axes = plt.subplots(len(outputs), 1, figsize=(8, 3.2 * len(outputs)), squeeze=False)
    t = ds["time"].values
    for ax, name in zip(axes[:, 0], outputs):
        v = ds[name].where(ok, drop=True).values
        lo, mid, hi = np.nanquantile(v, q, axis=0)
        ax.fill_between(t, lo, hi, alpha=0.3, label=f"{int(q[0] * 100)}-{int(q[2] * 100)} %")
        ax.plot(t, mid, lw=2, label="median")
        ax.set_ylabel(f"{name} [{ds[name].attrs.get('units', '')}]")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    axes[-1, 0].set_xlabel(f"time [{ds['time'].attrs.get('units', '')}]")
    n_ok = int(np.sum(np.asarray(ok))) if "status" in ds else ds.sizes["patient"]
    fig.suptitle(f"{ds.attrs.get('model', '')}: {n_ok} patients")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
