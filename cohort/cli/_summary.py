"""Summaries of a simulated cohort for the shell: the per-output table (peak, AUC, last value)
and one line per kind of failed patient, with what to do."""

from __future__ import annotations

import numpy as np
from rich.table import Table


def summary_table(ds, outputs) -> Table:
    import pandas as pd

    from cohort.engine.status import STATUS_MEANINGS

    table = Table(title=f"{ds.attrs.get('model')} — {ds.sizes['patient']:,} patients")
    table.add_column("output", no_wrap=True)
    table.add_column("units", no_wrap=True)
    # "peak", not "Cmax": the outputs include PD responses and amounts, not only concentrations
    for col in ("peak p5", "peak median", "peak p95", "AUC median", "AUC units", "last median"):
        table.add_column(col, justify="right")
    time_units = ds["time"].attrs.get("units", "")
    status = np.asarray(ds["status"].values)
    ok = status == 0
    for o in outputs:
        if not ok.any():
            table.add_row(o, ds[o].attrs.get("units", ""), *(["–"] * 6))
            continue
        cmax, auc, last = per_patient(ds, o, ok)
        table.add_row(
            o,
            ds[o].attrs.get("units", ""),
            *(f"{x:.4g}" for x in np.nanquantile(cmax, [0.05, 0.5, 0.95])),
            f"{np.nanmedian(auc):.4g}",
            _auc_units(ds[o].attrs.get("units", ""), time_units),
            f"{np.nanmedian(last):.4g}",
        )
    counts = pd.Series(status).value_counts().sort_index()
    table.caption = "status: " + ", ".join(
        f"{STATUS_MEANINGS.get(int(k), k)}={int(c):,}" for k, c in counts.items()
    )
    return table


def _auc_units(units: str, time_units: str) -> str:
    """Units of an output's area under the curve over time: ``mg/L`` and ``h`` give
    ``mg/L·h``; a dimensionless output's area is in time units."""
    if units in ("", "1"):
        return time_units
    return f"{units}·{time_units}" if time_units else units


def per_patient(ds, output: str, ok: np.ndarray, read_bytes: int = 1 << 26):
    """Cmax, AUC (trapezoids) and last value of ``output`` for the patients where ``ok``,
    read a whole number of stored patient chunks (about ``read_bytes``) at a time: the
    output of a large cohort (10⁷ patients × 97 times × float64 = 7.8 GB) does not fit in
    memory, its per-patient summaries do."""
    var = ds[output]
    n, t = var.shape
    chunk = int((var.encoding.get("chunks") or (n,))[0]) or n
    rows = max(chunk, read_bytes // max(t * var.dtype.itemsize, 1) // chunk * chunk)
    times = np.asarray(ds["time"].values)
    parts = []
    for a in range(0, n, rows):
        keep = ok[a : a + rows]
        if not keep.any():
            continue
        v = np.asarray(var.isel(patient=slice(a, a + rows)).values)[keep]
        # v[:, -1] copied: a view would keep the whole block alive (measured: +64 MB a read)
        parts.append((np.nanmax(v, axis=1), np.trapezoid(v, times, axis=1), v[:, -1].copy()))
    return tuple(np.concatenate(x) for x in zip(*parts))
