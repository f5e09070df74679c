"""Dose recommendations: the amount (and optionally the interval) that best attains a target
under each twin's posterior, by gradients through the solver (optax) with a grid as the check.

The future doses of a regimen template are scaled by a per-patient amount ``a``; predictions
at the target's times come from the inference prediction path (exact linear PK or the
adaptive ODE solve), which is differentiable in the dose amounts. All patients are optimised in
one vectorised program. Objective ``pta`` maximises a smoothed probability of attainment
(logistic edges 3 % wide in log units) over the posterior draws; ``center`` minimises the mean
squared log distance to the window's geometric centre. The continuous optimum is rounded to
the available strengths and compared with the best strength on the grid.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from cohort.dosing import Regimen
from cohort.inference import predict
from cohort.twin.forecast import check_future, event_table
from cohort.twin.prior import TwinError
from cohort.twin.targets import Target

OBJECTIVES = ("pta", "center")
_EDGE = 0.03  # width of the smoothed window edges, log units


def _future_tables(twins, template: Regimen):
    """Event arrays with the template's doses at one unit, and a mask of those rows."""
    one = event_table(twins, dataclasses.replace(template, amt=1.0))
    two = event_table(twins, dataclasses.replace(template, amt=2.0))
    mask = (one.amt != two.amt) & (one.evid == 1)
    return one, mask


def _metric_fn(twins, table, mask, target: Target):
    """``f(a [N], logp [N, S, K]) -> output [N, S, T]`` at the target's times (jit-able,
    differentiable in ``a``)."""
    bm = twins.bound
    model, out = twins.prior.model, target.output
    times = jnp.asarray(target.times(), float)
    ev = {k: jnp.asarray(v) for k, v in table.arrays().items()}
    for k in ("time", "amt", "rate", "ii"):
        ev[k] = ev[k].astype(float)
    mask = jnp.asarray(mask)
    with_inf, has_ss, has_reset = table.has_infusion, table.has_ss, table.has_reset or table.has_ss

    def one(a, logp_s, ev_i, mask_i):
        e = dict(ev_i)
        e["amt"] = jnp.where(mask_i, a * ev_i["amt"], ev_i["amt"])
        e["rate"] = jnp.where(mask_i, a * ev_i["rate"], ev_i["rate"])

        def draw(logp):
            p = bm.model_params(logp)
            if bm.engine == "closed_form":
                f, _ = predict.closed_form_subject(
                    model, out, p, e, times, with_inf, None, has_reset
                )
            else:
                f, _ = predict.ode_subject(model, out, p, e, times, with_inf, has_ss, bm.options)
            return f

        return jax.vmap(draw)(logp_s)

    return jax.vmap(one), ev, mask


def _loss(objective: str, target: Target, v):
    """Per-patient loss from metric draws ``v [N, S]`` (smaller is better)."""
    logv = jnp.log(jnp.maximum(v, 1e-300))
    if objective == "center":
        finite = [b for b in (target.lo, target.hi) if np.isfinite(b) and b > 0]
        centre = float(np.exp(np.mean(np.log(finite))))
        return jnp.mean((logv - np.log(centre)) ** 2, axis=-1)
    p = jnp.ones_like(logv)
    if np.isfinite(target.lo) and target.lo > 0:
        p = p * jax.nn.sigmoid((logv - np.log(target.lo)) / _EDGE)
    if np.isfinite(target.hi):
        p = p * jax.nn.sigmoid((np.log(target.hi) - logv) / _EDGE)
    return -jnp.mean(p, axis=-1)


def recommend(
    twins,
    template: Regimen,
    target: Target,
    *,
    max_dose: float,
    strength: float | None = None,
    min_dose: float | None = None,
    intervals=None,
    objective: str = "pta",
    n_draws: int = 500,
    seed: int = 0,
    steps: int = 40,
) -> pd.DataFrame:
    """Per patient: the recommended amount per dose (a multiple of ``strength`` from the first
    at or above ``min_dose``, at most ``max_dose``) for the ``template`` regimen (its ``amt``
    is replaced; an infusion keeps its duration: ``duration``, or ``amt / rate`` of the
    template), and optionally the best interval among
    ``intervals`` (the regimen keeps its time span: every dose starting within it). Columns:
    ``dose``, ``ii``, ``doses`` (number of doses in the regimen), ``pta``
    (exact, at the recommended dose), ``dose_gradient`` (the continuous optimum),
    ``dose_grid``/``pta_grid`` (best strength on the grid: the check) and ``agree``."""
    import optax

    if objective not in OBJECTIVES:
        raise TwinError(f"objective: {objective!r} is not one of {OBJECTIVES}")
    if not max_dose > 0:
        raise TwinError("max_dose: must be > 0")
    if target.output not in twins.prior.model.output_names:
        raise TwinError(f"target: {target.output!r} is not an output of the model")
    check_future(twins, template)  # a dose chosen for a time already past was recommended
    if template.rate > 0 and template.duration is None:
        # The infusion keeps the template's length amt / rate while its amount is chosen: a
        # template's RATE kept as the rate of a 1-unit dose made every dose a 0.002-h bolus
        # (peak targets were met with the wrong dose, a probe)
        if not template.amt > 0:
            raise TwinError(
                f"template: an infusion given by rate={template.rate:g} needs the template's "
                "amt to know its duration (amt / rate); give duration= instead"
            )
        template = dataclasses.replace(template, rate=0.0, duration=template.amt / template.rate)
    window_end = float(np.max(target.times()))
    if window_end <= template.time:
        raise TwinError(
            f"target: {target.label} ends at TIME {window_end:g}, before the first dose to "
            f"choose (TIME {template.time:g}): no dose can change it; put the target after "
            "the planned doses' start"
        )
    if strength is not None and not strength > 0:
        raise TwinError(f"strength: must be > 0, got {strength!r}")
    if min_dose is not None and not min_dose >= 0:
        raise TwinError(f"min_dose: must be >= 0, got {min_dose!r}")
    if strength:
        # whole numbers of the strength: from the first at or above min_dose (at least one)
        step = float(strength)
        first = max(1, math.ceil(float(min_dose or 0.0) / step - 1e-9))
        grid = step * np.arange(first, math.floor(max_dose / step + 1e-9) + 1)
    else:  # no strengths: a grid of max_dose / 100 from min_dose
        step = max_dose / 100.0
        grid = np.arange(float(min_dose) if min_dose else step, max_dose * (1 + 1e-9), step)
    if grid.size == 0:
        raise TwinError(
            f"min_dose ({min_dose}), strength ({strength}) and max_dose ({max_dose:g}) leave "
            "no dose to choose: lower min_dose or the strength, or raise max_dose"
        )
    grid = np.array([float(f"{d:.12g}") for d in grid])  # 0.7, not 0.7000000000000001
    lo_dose = float(grid[0])
    logp = jnp.asarray(twins.log_params(twins.eta_draws(n_draws, seed)))
    span = (template.addl + 1) * template.ii if template.ii > 0 else None
    best, by_interval = None, {}
    for ii in intervals or [template.ii]:
        if ii != template.ii and span is None:
            raise TwinError("intervals: the template needs ii and addl (a repeated regimen)")
        # every dose that starts within the template's span: q7h in a 24-h span is 4 doses
        # (0, 7, 14, 21), not round(24/7) = 3 that left the last 3 h of the window undosed
        addl = template.addl if ii == template.ii else max(0, math.ceil(span / ii - 1e-9) - 1)
        tmpl = dataclasses.replace(template, ii=float(ii), addl=addl)
        table, mask = _future_tables(twins, tmpl)
        fn, ev, m = _metric_fn(twins, table, mask, target)

        if twins.bound.engine == "closed_form":
            # Linear PK: the output is affine in the future doses' amount, y(a) = y(0) +
            # a·(y(1) − y(0)), so two solves per draw serve the grid and every optimiser step.
            values = jax.jit(fn)
            y0 = values(jnp.zeros(twins.n), logp, ev, m)
            y1 = values(jnp.ones(twins.n), logp, ev, m)
            dy = y1 - y0

            def metric(a, y0=y0, dy=dy):
                return target.value(jnp, y0 + a[:, None, None] * dy)

        else:

            @jax.jit
            def metric(a, fn=fn, ev=ev, m=m):
                return target.value(jnp, fn(a, logp, ev, m))

        def loss(x, metric=metric):
            return jnp.sum(_loss(objective, target, metric(jnp.exp(x))))

        # grid: every strength for every patient (the check, and the optimiser's start)
        vals = np.stack([np.asarray(metric(jnp.full(twins.n, d))) for d in grid])  # [G, N, S]
        pta_grid = np.mean(target.attained(vals), axis=-1)  # [G, N]
        obj_grid = np.stack([np.asarray(_loss(objective, target, jnp.asarray(v))) for v in vals])
        g_best = np.argmin(obj_grid, axis=0)
        x = jnp.log(jnp.asarray(grid[g_best], float))
        opt = optax.adam(0.05)
        state = opt.init(x)
        grad = jax.jit(jax.grad(loss))
        lo_x, hi_x = np.log(lo_dose), np.log(max_dose)
        for _ in range(steps):
            updates, state = opt.update(grad(x), state)
            x = jnp.clip(optax.apply_updates(x, updates), lo_x, hi_x)  # projected: dose bounds
        cont = np.exp(np.asarray(x))
        # round to the strengths either side and keep the better (exact PTA, then objective)
        below = np.clip(np.floor((cont - lo_dose) / step + 1e-9), 0, grid.size - 1).astype(int)
        above = np.clip(below + 1, 0, grid.size - 1)
        cols = np.arange(twins.n)
        pta_b, pta_a = pta_grid[below, cols], pta_grid[above, cols]
        up = (pta_a > pta_b) | ((pta_a == pta_b) & (obj_grid[above, cols] < obj_grid[below, cols]))
        pick = np.where(up, above, below)
        grid_pick = np.lexsort((obj_grid, -pta_grid), axis=0)[0]
        row = pd.DataFrame(
            {
                "dose": grid[pick],
                "ii": float(ii),
                "doses": addl + 1,
                "pta": pta_grid[pick, cols],
                "dose_gradient": cont,
                "dose_grid": grid[grid_pick],
                "pta_grid": pta_grid[grid_pick, cols],
            },
            index=pd.Index(twins.ids, name="ID"),
        )
        by_interval[float(ii)] = pta_grid
        if best is None:
            best = row
        else:
            better = row["pta"] > best["pta"] + 1e-12
            best = best.where(~better, row)
    best["agree"] = best["pta"] >= best["pta_grid"] - 1.0 / n_draws - 1e-12
    # a recommendation on a bound of the dose range is a constraint, not an optimum: say so
    best["bound"] = np.where(
        best["dose"] >= grid[-1] - 1e-9 * max_dose,
        "max dose",
        np.where(best["dose"] <= grid[0] + 1e-9 * max_dose, "min dose", ""),
    )
    chosen = best["ii"].to_numpy()  # each patient's attainment curve at its chosen interval
    curves = np.stack([by_interval[chosen[k]][:, k] for k in range(twins.n)], axis=1)
    best.attrs.update(
        target=target.label, objective=objective, n_draws=n_draws, grid=grid, pta_grid=curves,
        warnings=_warnings(template, target, best),
    )  # fmt: skip
    return best


def _warnings(template: Regimen, target: Target, best: pd.DataFrame) -> list[str]:
    """What makes a recommendation questionable although it is the optimum asked for."""
    out = []
    last = template.time + template.addl * template.ii
    window = np.asarray(target.times(), float)
    reach = template.ii if template.ii > 0 else 24.0
    if window.min() > last + reach:
        out.append(
            f"the target ({target.label}) starts at {window.min():g}, more than one dosing "
            f"interval after the last planned dose ({last:g}): the planned doses reach it only "
            "through what is left of them; plan doses up to the target window"
        )
    low = best["pta"] < 0.5
    if low.any():
        out.append(
            f"{int(low.sum())} of {len(best)} patient(s) reach the target with probability < 0.5 "
            "at the recommended dose: no dose in the allowed range (and interval) does better"
        )
    return out
