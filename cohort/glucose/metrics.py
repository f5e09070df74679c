"""Glycaemic outcome metrics per patient from a glucose ``xr.DataArray`` (mg/dL, dim ``time``).

Every statistic is time-weighted on the sampling grid with trapezoid weights (each sample
stands for half of each neighbouring interval), so irregular grids are handled and a uniform
grid gives the usual sample statistics up to the half-weighted end points. An interval over
twice the median one is a gap (rows missing from a CGM export) and counts as a median interval
(:func:`time_weights`). Definitions:

* time in ranges (% of time): TIR 70–180 inclusive, TBR < 70 and < 54, TAR > 180 and > 250
  (international consensus, Battelino et al. 2019);
* mean, SD (time-weighted, population form), CV = 100·SD/mean (%), GMI = 3.31 + 0.02392·mean
  (%; Bergenstal et al. 2018);
* LBGI/HBGI (Kovatchev et al. 1997/2006): ``f = 1.509·(ln(G)^1.084 − 5.381)``, ``r = 10 f²``;
  LBGI is the mean over *all* samples of ``r`` where ``f < 0`` (0 elsewhere), HBGI likewise for
  ``f > 0``; BGRI = LBGI + HBGI. (simglucose 0.2.11 instead averages over the low/high samples
  only.) Glucose is clipped to >= 1 mg/dL before the logarithm;
* CVGA (Magni et al. 2008): each patient's minimum and maximum glucose, clipped to the plot
  ranges 50–110 and 110–400 mg/dL, place it in one of nine zones.

:func:`glycemic_metrics` and :func:`cvga` (a user's CGM data) leave missing readings out with
their share of the time; a patient with no reading gets NaN metrics and CVGA zone ``""``. A
simulation's metrics (:func:`metric_arrays` by default) are NaN for a patient with any missing
value (a failed solve).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from cohort.errors import CohortWarning, OptionError

CVGA_ZONES = ("A", "Lower B", "B", "Upper B", "Lower C", "Upper C", "Lower D", "Upper D", "E")
CVGA_LETTERS = ("A", "B", "C", "D", "E")
# rows: max glucose <= 180, (180, 300], > 300; columns: min glucose >= 90, [70, 90), < 70
_CVGA_GRID = (
    ("A", "Lower B", "Lower C"),
    ("Upper B", "B", "Lower D"),
    ("Upper C", "Upper D", "E"),
)
_CVGA_CODES = tuple(tuple(CVGA_ZONES.index(z) for z in row) for row in _CVGA_GRID)


GAP_FACTOR = 2.0
"""An interval longer than this many median sampling intervals is a gap in the readings."""


def time_weights(time) -> np.ndarray:
    """Trapezoid weights of a strictly increasing time grid, normalised to sum to 1.

    A gap (an interval over :data:`GAP_FACTOR` times the median interval: readings missing
    from a CGM export rather than written as NaN) counts as one median interval, half to the
    reading on each side: the two readings around a 12-hour gap would otherwise stand for
    those 12 hours. On a regular grid nothing changes."""
    t = np.asarray(time, dtype=float)
    if t.size == 1:
        return np.ones(1)
    if np.any(np.diff(t) <= 0):
        raise OptionError("time must be strictly increasing")
    w = np.zeros_like(t)
    dt = np.diff(t)
    typical = np.median(dt)
    dt = np.where(dt > GAP_FACTOR * typical, typical, dt)
    w[:-1] += dt / 2
    w[1:] += dt / 2
    return w / w.sum()


def risk_function(glucose, xp=np):
    """Kovatchev's symmetrised blood-glucose scale ``f`` (0 at 112.5 mg/dL)."""
    g = xp.maximum(xp.asarray(glucose, dtype=float), 1.0)
    return 1.509 * (xp.log(g) ** 1.084 - 5.381)


MMOL_TO_MG_DL = 18.0156
"""mg/dL per mmol/L of glucose (molar mass 180.156 g/mol)."""


def _values(glucose: xr.DataArray, dim: str) -> tuple[np.ndarray, np.ndarray, xr.DataArray]:
    """Readings in mg/dL (``[..., time]``), their time weights and a per-patient template.
    A numpy array or pandas Series is taken as equally spaced readings along its last axis;
    ``units`` "mmol/L" are converted; readings that look like mmol/L without units, and
    readings <= 0, are warned about (every metric is defined on mg/dL)."""
    if isinstance(glucose, (np.ndarray, pd.Series, list, tuple)):
        values = np.asarray(glucose, dtype=float)
        if values.ndim == 0:
            raise OptionError("glucose: give readings over time, not a single number")
        dims = tuple(f"dim_{i}" for i in range(values.ndim - 1)) + (dim,)
        glucose = xr.DataArray(values, dims=dims)
    elif not isinstance(glucose, xr.DataArray):
        raise OptionError(
            f"glucose: an xarray DataArray (e.g. run.Gsub), numpy array or pandas Series of "
            f"mg/dL readings, got {type(glucose).__name__}"
        )
    units = str(glucose.attrs.get("units", "")).strip().lower()
    if units in ("mmol/l", "mmol l-1", "mm"):
        glucose = glucose * MMOL_TO_MG_DL
    elif units not in ("", "mg/dl", "mg dl-1"):
        raise OptionError(f"glucose: units {units!r}; give mg/dL or mmol/L readings")
    finite = np.asarray(glucose.values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size and not units and finite.max() < 35.0:
        warnings.warn(
            f"glucose: every reading is below 35 (max {finite.max():.3g}); the metrics take "
            "mg/dL: were these mmol/L? Give units (glucose.attrs['units'] = 'mmol/L') to convert",
            CohortWarning,
            stacklevel=3,
        )
    if finite.size and finite.min() <= 0:
        warnings.warn(
            f"glucose: {int(np.sum(finite <= 0))} reading(s) <= 0 mg/dL (min {finite.min():g}); "
            "they are taken as 1 mg/dL in LBGI/HBGI",
            CohortWarning,
            stacklevel=3,
        )
    if dim not in glucose.dims:
        raise OptionError(f"glucose has no dimension {dim!r} (dims: {glucose.dims})")
    g = glucose.transpose(..., dim)
    coord = g[dim].values if dim in g.coords else np.arange(g.sizes[dim])
    template = g.isel({dim: 0}, drop=True)
    return np.asarray(g.values, dtype=float), time_weights(coord), template


def _wrap(template: xr.DataArray, values, units: str, long_name: str) -> xr.DataArray:
    return xr.DataArray(
        values,
        dims=template.dims,
        coords=template.coords,
        attrs={"units": units, "long_name": long_name},
    )


_DESCRIPTIONS = {
    "tir_70_180": ("%", "time in range 70-180 mg/dL"),
    "tbr_70": ("%", "time below 70 mg/dL"),
    "tbr_54": ("%", "time below 54 mg/dL"),
    "tar_180": ("%", "time above 180 mg/dL"),
    "tar_250": ("%", "time above 250 mg/dL"),
    "mean": ("mg/dL", "time-weighted mean glucose"),
    "sd": ("mg/dL", "time-weighted standard deviation of glucose"),
    "cv": ("%", "coefficient of variation of glucose"),
    "gmi": ("%", "glucose management indicator"),
    "lbgi": ("1", "low blood glucose index (Kovatchev)"),
    "hbgi": ("1", "high blood glucose index (Kovatchev)"),
    "bgri": ("1", "blood glucose risk index LBGI + HBGI"),
    "g_min": ("mg/dL", "minimum glucose"),
    "g_max": ("mg/dL", "maximum glucose"),
}


def metric_arrays(g, w, xp=np, skip_missing: bool = False) -> dict:
    """The metrics of :func:`glycemic_metrics` as arrays, from glucose ``g`` ``[..., T]``
    (float64) and time weights ``w`` ``[T]``; ``xp`` is ``numpy`` or ``jax.numpy`` (so a
    closed-loop run computes them on its device). Adds ``cvga_code``, the zone's index in
    :data:`CVGA_ZONES` (-1 for a patient with missing values, whose metrics are NaN).

    ``skip_missing`` (numpy only): non-finite readings are gaps (a sensor's, or the time
    after a patient's last record), left out with their weight and the rest renormalised;
    only a patient with no reading gets NaN; ``w`` may then be per patient (broadcastable to
    ``g``). Otherwise any missing value makes the patient's
    metrics NaN (a failed simulation)."""
    finite = xp.isfinite(g)
    if skip_missing:
        weights = np.where(finite, w, 0.0)
        total = weights.sum(axis=-1)
        missing = total == 0
        weights = weights / np.where(missing, 1.0, total)[..., None]
    else:
        missing = xp.any(~finite, axis=-1)
    g_low = xp.where(finite, g, xp.inf)
    g_high = xp.where(finite, g, -xp.inf)
    g = xp.where(finite, g, 0.0)

    f = risk_function(g, xp)
    terms = {  # weighted means over time of these, per patient
        "mean": lambda g, f: g,
        "tir_70_180": lambda g, f: (g >= 70) & (g <= 180),
        "tbr_70": lambda g, f: g < 70,
        "tbr_54": lambda g, f: g < 54,
        "tar_180": lambda g, f: g > 180,
        "tar_250": lambda g, f: g > 250,
        "lbgi": lambda g, f: xp.where(f < 0, 10.0 * f * f, 0.0),
        "hbgi": lambda g, f: xp.where(f > 0, 10.0 * f * f, 0.0),
    }
    if xp is np:
        wt = weights if skip_missing else w
        means = {k: _wmean(t(g, f), wt, missing, skip_missing) for k, t in terms.items()}
        mean = means["mean"]
        dev = g - mean[..., None]
        var = _wmean(dev * dev, wt, missing, skip_missing)
    else:
        means = _ordered_means(g, f, w, missing, terms)
        mean = means["mean"]
        var = _ordered_means(g, f, w, missing, {"var": lambda g, f: (g - mean) ** 2})["var"]
    sd = xp.sqrt(xp.maximum(var, 0.0))
    lbgi, hbgi = means["lbgi"], means["hbgi"]
    g_min = xp.where(missing, xp.nan, g_low.min(axis=-1))
    g_max = xp.where(missing, xp.nan, g_high.max(axis=-1))
    col = xp.where(g_min >= 90, 0, xp.where(g_min >= 70, 1, 2))
    row = xp.where(g_max <= 180, 0, xp.where(g_max <= 300, 1, 2))
    code = xp.asarray(_CVGA_CODES)[row, col]
    return {
        **{k: 100.0 * means[k] for k in ("tir_70_180", "tbr_70", "tbr_54", "tar_180", "tar_250")},
        "mean": mean,
        "sd": sd,
        "cv": 100.0 * sd / mean,
        "gmi": 3.31 + 0.02392 * mean,
        "lbgi": lbgi,
        "hbgi": hbgi,
        "bgri": lbgi + hbgi,
        "g_min": g_min,
        "g_max": g_max,
        "cvga_code": xp.where(missing, -1, code),
    }


def _wmean(x, w, missing, skip_missing: bool):
    """Weighted mean over the last axis (numpy): ``w`` per time, or per patient and time with
    ``skip_missing`` (gaps weighted 0, renormalised)."""
    x = np.asarray(x, dtype=float)
    if skip_missing:
        return np.where(missing, np.nan, np.einsum("...t,...t->...", x, w))
    # einsum: no [N, T] temporaries, and no BLAS threads (slow on busy cores)
    return np.where(missing, np.nan, np.einsum("...t,t->...", x, w))


def _ordered_means(g, f, w, missing, terms: dict) -> dict:
    """Weighted means over time on the device, accumulated in time order by one ``scan`` for
    every patient: a reduction's order in XLA depends on the batch's shape, so a sum over the
    time axis gave results one ulp apart between device counts (each device a smaller batch;
    a probe found 12-56 of 200 patients' metrics differing) and a dot between chunk sizes."""
    import jax
    import jax.numpy as jnp

    gt, ft = jnp.moveaxis(g, -1, 0), jnp.moveaxis(f, -1, 0)

    def body(acc, x):
        g_t, f_t, w_t = x
        return {k: acc[k] + w_t * jnp.asarray(t(g_t, f_t), w.dtype) for k, t in terms.items()}, None

    init = {k: jnp.zeros(gt.shape[1:], w.dtype) for k in terms}
    sums, _ = jax.lax.scan(body, init, (gt, ft, w))
    return {k: jnp.where(missing, jnp.nan, v) for k, v in sums.items()}


_ZONE_NAME = "CVGA zone (Magni et al. 2008)"


def _zone_labels(code) -> np.ndarray:
    """CVGA zone names of :func:`metric_arrays`' ``cvga_code`` ("" for -1: no metrics)."""
    return np.asarray(("", *CVGA_ZONES))[np.asarray(code) + 1]


def metrics_dataset(arrays: dict, template: xr.DataArray) -> xr.Dataset:
    """:func:`metric_arrays` (numpy) as the per-patient ``xr.Dataset`` of
    :func:`glycemic_metrics`, shaped like ``template``."""
    ds = xr.Dataset(
        {k: _wrap(template, np.asarray(arrays[k]), *_DESCRIPTIONS[k]) for k in _DESCRIPTIONS}
    )
    ds["cvga_zone"] = _wrap(template, _zone_labels(arrays["cvga_code"]), "1", _ZONE_NAME)
    ds.attrs["weighting"] = (
        "trapezoid time weights on the sampling grid; intervals over twice the median are gaps"
    )
    return ds


def glycemic_metrics(glucose: xr.DataArray, dim: str = "time") -> xr.Dataset:
    """Per-patient metrics (every dim but ``dim`` is kept) as an ``xr.Dataset``. Missing
    readings (NaN: a CGM's gaps) are left out with their share of the time; a patient with
    no reading gets NaN. Time weights come from the ``dim`` coordinate (trapezoids); without
    one, the readings are taken as equally spaced."""
    g, w, template = _values(glucose, dim)
    return metrics_dataset(metric_arrays(g, w, skip_missing=True), template)


def cvga(glucose: xr.DataArray, dim: str = "time") -> xr.Dataset:
    """CVGA coordinates (min/max clipped to the plot ranges) and zone per patient, by the
    rules of :func:`glycemic_metrics` (gaps left out)."""
    g, w, template = _values(glucose, dim)
    m = metric_arrays(g, w, skip_missing=True)
    return xr.Dataset(
        {
            "x": _wrap(template, np.clip(m["g_min"], 50, 110), "mg/dL", "CVGA x: minimum glucose"),
            "y": _wrap(template, np.clip(m["g_max"], 110, 400), "mg/dL", "CVGA y: maximum glucose"),
            "zone": _wrap(template, _zone_labels(m["cvga_code"]), "1", _ZONE_NAME),
        }
    )


def zone_counts(zones, letters: bool = False) -> dict[str, int]:
    """Patients per CVGA zone (all nine, in :data:`CVGA_ZONES` order) or per letter A–E, from
    zone labels (an array of strings; "" for a failed patient, counted nowhere)."""
    labels = np.asarray(zones).ravel().astype(str)
    if letters:
        labels = np.asarray([z.split()[-1] if z else "" for z in labels.tolist()])
    return {z: int(np.sum(labels == z)) for z in (CVGA_LETTERS if letters else CVGA_ZONES)}


def cvga_counts(zones: xr.DataArray, letters: bool = False) -> xr.DataArray:
    """Number of patients per CVGA zone (all nine), or per letter A–E with ``letters=True``."""
    from cohort.store.zarr_store import indexed_coordinates  # here: metrics alone need no zarr

    per_zone = zone_counts(zones.values, letters)
    names, counts = list(per_zone), list(per_zone.values())
    return xr.DataArray(
        counts,
        dims=("zone",),
        # the index built without importing pint (see cohort.store.indexed_coordinates)
        coords=indexed_coordinates({"zone": xr.Variable(("zone",), np.asarray(list(names)))}),
        attrs={"units": "patients", "long_name": "patients per CVGA zone"},
    )
