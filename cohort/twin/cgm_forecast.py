"""CGM twins' forecasts: the readings to come, given the meals and insulin planned after each
patient's last record, with posterior-predictive bands and the probability of hypo- and
hyperglycaemia.

A predicted reading is, per posterior draw, the model's CGM curve plus the AR(1) residual of
the twin's likelihood (:mod:`cohort.twin.cgm_likelihood`), started at the last reading's
residual and relaxing to its stationary SD. With ``[iov]`` in the prior, an occasion (a day)
after the last reading draws its factors from their prior: how far a new day may stray from
the days the twin has seen. The noise-free blood glucose (``BG``) gives the bands of the
glucose itself and the probabilities ``P(glucose < 70)`` and ``P(glucose > 180)``.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from cohort.twin.cgm_likelihood import TRAJECTORY_KEY, Layout, natural
from cohort.twin.cgm_replay import _replay_program
from cohort.twin.prior import TwinError

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def forecast(
    twins,
    records: pd.DataFrame | str,
    *,
    n_draws: int = 400,
    step: float = 5.0,
    seed: int = 0,
    keep_draws: bool = False,
) -> xr.Dataset:
    """Predicted CGM readings after each patient's last record (see the module docstring).

    ``records``: the rows to come (``ID, TIME`` and any of ``CHO, BOLUS, BASAL``, later than
    each patient's last record, as for :meth:`~cohort.twin.cgm.CGMTwins.update`); CGM values
    in them are not used (update the twin to learn from them). ``step``: the forecast grid
    (min). The horizon runs from the last reading to one ``step`` after the plan's last row
    (or the end of its last meal); a patient without rows in the plan is not forecast (NaN).
    Returns ``cgm_q`` (predicted readings) and ``glucose_q`` (noise-free blood
    glucose) ``[quantile, patient, time]``, ``p_below_70``/``p_above_180`` ``[patient, time]``
    and over the whole horizon ``p_below_70_any`` ``[patient]``; times are minutes since each
    patient's first record, NaN outside its horizon. ``keep_draws``: also the predicted
    readings of every draw, ``cgm [patient, draw, time]`` (for scores of your own)."""
    if not (np.isfinite(step) and step >= 1 and float(step).is_integer()):
        raise TwinError(f"forecast: step must be a whole number of minutes >= 1, got {step!r}")
    if n_draws < 2:
        raise TwinError(f"forecast: n_draws must be >= 2 (bands come from draws), got {n_draws}")
    try:
        future = pd.read_csv(records) if isinstance(records, str) else records.copy()
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise TwinError(f"forecast: {records} is not a readable CSV ({exc})") from None
    future.columns = [str(c).strip().upper() for c in future.columns]
    if future.empty:
        raise TwinError(
            "forecast: the plan has no rows; give the meals and insulin to come (ID, TIME, "
            "CHO, BOLUS, BASAL), later than each patient's last record"
        )
    future["CGM"] = np.nan  # readings in the plan are not evidence (update() learns from them)
    table = twins._merged(future, "forecast", min_readings=0)
    ahead = type(twins)(twins.prior, table, twins.posterior, twins.samples, twins.eat_rate)
    lay, grid, data, _, _ = ahead._bound()
    z = jnp.asarray(ahead._z_draws(n_draws, seed))
    ones = (1.0, 1.0, 1.0)
    solve = _replay_program(lay, (TRAJECTORY_KEY[lay.output], "G"))  # one solve for both
    reading, blood = (np.asarray(a) for a in solve(z, data, *ones))  # [N, S, T+1] each
    err = twins.prior.spec.error
    nat = natural(lay, np.asarray(z))
    sigma = nat[..., lay.names.index("sigma")] if lay.sigma else np.full(nat.shape[:2], err.add)
    phi = nat[..., lay.names.index("ar1")] if lay.ar1 else np.full(nat.shape[:2], err.ar1 or 0.0)
    mask = np.asarray(grid["mask"]) > 0
    last_idx = np.where(mask, np.asarray(grid["obs_idx"]), -1).max(axis=1)  # [N] minute
    ends = np.asarray(grid["end"], dtype=float).reshape(-1)
    times = np.arange(0, ends.max() + 1e-9, step)
    own = (times[None, :] > last_idx[:, None]) & (times[None, :] <= ends[:, None])
    # a patient without rows in the plan is not forecast (its horizon would be one step)
    planned = set(future["ID"]) if "ID" in future else set(twins.ids.tolist())
    own &= np.isin(ahead.ids, list(planned))[:, None]
    keys = jax.random.split(jax.random.PRNGKey(seed), len(ends))
    program = _predict_program(lay, float(err.prop), int(step))
    pred = np.asarray(
        program(
            keys,
            jnp.asarray(reading),
            data["dv"],
            data["obs_idx"],
            data["mask"],
            jnp.asarray(sigma),
            jnp.asarray(phi),
        )
    )[..., : times.size]  # [N, S, G]
    bg = blood[..., times.astype(int)]
    pred = np.where(own[:, None, :], pred, np.nan)
    bg = np.where(own[:, None, :], bg, np.nan)
    ds = xr.Dataset(coords={"patient": twins.ids, "time": times, "quantile": list(QUANTILES)})
    ds["time"].attrs["units"] = "min"
    with warnings.catch_warnings():  # times outside a patient's horizon are all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        ds["cgm_q"] = (
            ("quantile", "patient", "time"),
            np.nanquantile(pred, QUANTILES, axis=1),
            {"units": "mg/dL", "long_name": f"predicted {lay.output} readings"},
        )
        ds["glucose_q"] = (
            ("quantile", "patient", "time"),
            np.nanquantile(bg, QUANTILES, axis=1),
            {"units": "mg/dL", "long_name": "blood glucose (noise-free model curve)"},
        )
    for name, v, text in (
        ("p_below_70", bg < 70, "P(blood glucose < 70 mg/dL)"),
        ("p_above_180", bg > 180, "P(blood glucose > 180 mg/dL)"),
    ):
        ds[name] = (
            ("patient", "time"),
            np.where(own, v.mean(axis=1), np.nan),
            {"long_name": text},
        )
    ds["p_below_70_any"] = (
        "patient",
        np.where(own.any(axis=1), (bg < 70).any(axis=2).mean(axis=1), np.nan),  # NaN: False
        {"long_name": "P(blood glucose < 70 mg/dL at any time of the horizon)"},
    )
    if keep_draws:
        ds["cgm"] = (("patient", "draw", "time"), pred, {"units": "mg/dL"})
    ds["last_reading"] = ("patient", last_idx.astype(float), {"units": "min"})
    ds.attrs.update(draws=int(z.shape[1]), seed=int(seed), prior=twins.prior.name)
    return ds


@functools.lru_cache(maxsize=8)
def _predict_program(lay: Layout, prop: float, step: int):
    """``(keys [N], curve [N, S, T+1], dv, obs_idx, mask [N, M], sigma, phi [N, S]) ->
    readings [N, S, G]`` on the grid ``0, step, …`` (G ≥ T/step + 1): each draw's curve plus
    its AR(1) residual, drawn given the last reading's."""

    def one_draw(key, curve, dv, obs_idx, mask, sigma, phi):
        n_t = curve.shape[0]
        last = jnp.max(jnp.where(mask > 0, jnp.arange(mask.shape[0]), -1))
        t_last = obs_idx[last]
        f_last = curve[t_last]
        e_last = (dv[last] - f_last) / jnp.sqrt(sigma**2 + (prop * f_last) ** 2)
        grid = jnp.arange(0, n_t, step)
        # from e_last on: the exact step from t_last, then grid step to grid step (the value
        # before t_last is not used)
        prev_t = jnp.maximum(jnp.concatenate([grid[:1], grid[:-1]]), t_last)
        lags = jnp.maximum(grid - prev_t, 0).astype(curve.dtype)

        def ar(carry, x):
            lag_k, xi_k, ahead = x
            rho_k = phi ** (lag_k / lay.ar1_interval)
            nxt = jnp.where(ahead, rho_k * carry + jnp.sqrt(1.0 - rho_k**2) * xi_k, e_last)
            return nxt, nxt

        noise = jax.random.normal(key, grid.shape, curve.dtype)
        _, e = jax.lax.scan(ar, e_last, (lags, noise, grid > t_last))
        f_grid = curve[jnp.minimum(grid, n_t - 1)]
        return f_grid + jnp.sqrt(sigma**2 + (prop * f_grid) ** 2) * e

    per_draw = jax.vmap(one_draw, in_axes=(0, 0, None, None, None, 0, 0))

    def per_patient(key, curve, dv, obs_idx, mask, sigma, phi):
        return per_draw(jax.random.split(key, curve.shape[0]), curve, dv, obs_idx, mask, sigma, phi)

    return jax.jit(jax.vmap(per_patient))
