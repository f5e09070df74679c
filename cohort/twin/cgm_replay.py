"""CGM twins' replays: the records' days under altered therapy for every posterior draw, with
glycaemic metrics and their credible intervals, and the fit to the CGM readings (MARD). They
read a :class:`~cohort.twin.cgm.CGMTwins` through its bound data and posterior draws."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from cohort.twin.cgm_likelihood import TRAJECTORY_KEY, Layout, model_params
from cohort.twin.cgm_solve import trajectory
from cohort.twin.prior import TwinError


def replay(
    twins,
    *,
    bolus_scale: float = 1.0,
    basal_scale: float = 1.0,
    meal_scale: float = 1.0,
    n_draws: int = 200,
    step: float = 5.0,
    output: str = "CGM",
    seed: int = 0,
) -> xr.Dataset:
    """The records' days replayed under altered therapy, for every posterior draw:
    glucose ``[patient, draw, time]`` (noise-free ``output``: ``CGM`` or ``BG``), its
    median and 50 %/90 % bands, and the glycaemic metrics per draw with their medians
    and 90 % credible intervals (``<metric>_q``). Each patient's time runs from its
    first record to its last (NaN after it, on the grid shared by all patients);
    ``basal_scale`` applies from time 0 (the usual basal
    defining ``Ib`` is kept)."""
    from cohort.glucose.metrics import _DESCRIPTIONS, metric_arrays, time_weights

    if output not in TRAJECTORY_KEY:
        raise TwinError(f"output: one of {list(TRAJECTORY_KEY)}, got {output!r}")
    for name, v in (("bolus_scale", bolus_scale), ("basal_scale", basal_scale),
                    ("meal_scale", meal_scale)):  # fmt: skip
        if not (np.isfinite(v) and v >= 0):
            raise TwinError(f"{name}: must be a finite number >= 0, got {v!r}")
    lay, grid, data, _, _ = twins._bound()
    z = jnp.asarray(twins._z_draws(n_draws, seed))
    key = TRAJECTORY_KEY[output]
    run = _replay_program(lay, key)
    g = np.asarray(run(z, data, bolus_scale, basal_scale, meal_scale))  # [N, S, T+1]
    # One grid to the last record of any patient; each patient's glucose is NaN after its
    # own last record and its metrics cover its own span (the grid used to stop at the
    # shortest patient's end, cutting every other patient's metrics to it).
    ends = np.asarray(grid["end"], dtype=float).reshape(-1)
    idx = np.arange(0, int(ends.max()) + 1e-9, step).astype(int)
    g = g[..., idx]
    times = idx.astype(float)
    own = times[None, :] <= ends[:, None]
    g = np.where(own[:, None, :], g, np.nan)
    weights = np.zeros((len(ends), 1, times.size))  # trapezoids on each patient's span
    for i, k in enumerate(own.sum(axis=1)):
        weights[i, 0, :k] = time_weights(times[:k])
    met = metric_arrays(g, weights, skip_missing=True)
    # a draw whose trajectory failed inside the patient's own span has no metrics (the
    # NaN after the span is not missing data; a failure within it is not a gap)
    failed = np.any(own[:, None, :] & ~np.isfinite(g), axis=-1)
    met = {k: np.where(failed, -1 if k == "cvga_code" else np.nan, v) for k, v in met.items()}
    ds = xr.Dataset(coords={"patient": twins.ids, "draw": np.arange(g.shape[1]), "time": times})
    ds["time"].attrs["units"] = "min"
    ds["glucose"] = (("patient", "draw", "time"), g, {"units": "mg/dL", "output": output})
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    ds = ds.assign_coords(quantile=qs)
    ds["glucose_q"] = (("quantile", "patient", "time"), np.quantile(g, qs, axis=1))
    for name, (units, long_name) in _DESCRIPTIONS.items():
        v = met[name]
        ds[name] = (("patient", "draw"), v, {"units": units, "long_name": long_name})
        ds[f"{name}_q"] = (("quantile", "patient"), np.quantile(v, qs, axis=1))
    ds["p_below_70"] = (
        "patient",
        (met["g_min"] < 70).mean(axis=1),
        {"long_name": "posterior probability that glucose goes below 70 mg/dL"},
    )
    ds.attrs.update(
        bolus_scale=bolus_scale, basal_scale=basal_scale, meal_scale=meal_scale,
        model="t1d_minimal", prior=twins.prior.name,
    )  # fmt: skip
    return ds


def fitted(twins, n_draws: int = 200) -> xr.Dataset:
    """The posterior-median prediction at every CGM reading and the fit's MARD per
    patient (mean absolute relative difference to the readings, %)."""
    ds = replay(twins, n_draws=n_draws, step=1.0, output=twins.prior.output)
    lay, grid, *_ = twins._bound()
    med = ds["glucose_q"].sel(quantile=0.5).values  # [N, T]
    obs_idx, dv, mask = grid["obs_idx"], grid["dv"], grid["mask"] > 0
    pred = np.take_along_axis(med, np.minimum(obs_idx, med.shape[1] - 1), axis=1)
    pred = np.where(mask, pred, np.nan)
    dv = np.where(mask, dv, np.nan)
    mard = 100.0 * np.nanmean(np.abs(pred - dv) / dv, axis=1)
    return xr.Dataset(
        {
            "cgm": (("patient", "reading"), dv, {"units": "mg/dL"}),
            "predicted": (("patient", "reading"), pred, {"units": "mg/dL"}),
            "time": (("patient", "reading"), np.where(mask, obs_idx, -1)),
            "mard": ("patient", mard, {"units": "%", "long_name": "fit MARD"}),
        },
        coords={"patient": twins.ids},
    )


@functools.lru_cache(maxsize=8)
def _replay_program(lay: Layout, key: str | tuple[str, ...]):
    """Trajectories ``[N, S, T+1]`` of the state ``key`` (or a tuple of them, from one solve)
    for draws ``z [N, S, q]``."""

    def one(z, d, bolus_scale, basal_scale, meal_scale):
        p = model_params(lay, z, d, basal_scale)
        ins = basal_scale * d["basal"] + bolus_scale * d["bolus"]
        traj = trajectory(p, meal_scale * d["meal"], ins)
        return traj[key] if isinstance(key, str) else tuple(traj[k] for k in key)

    per_draw = jax.vmap(one, in_axes=(0, None, None, None, None))
    return jax.jit(jax.vmap(per_draw, in_axes=(0, 0, None, None, None)))
