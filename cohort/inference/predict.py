"""Per-subject model predictions at the observation times (pure JAX, ``vmap``-able).

Linear PK uses the exact modal solution of :mod:`cohort.engine.closed_form` by superposition:
every change record (bolus, infusion start/stop, steady-state dose, reset) adds a closed-form
term to each mode's amplitude, evaluated directly at the observation times, so any dosing
history (multiple doses, infusions, SS, resets) is exact and differentiable (no ``while_loop``,
which reverse-mode AD cannot cross). Nonlinear models go through the engine's adaptive diffrax
solve; its status code marks failed solves, which the likelihood turns into ``-inf``.
"""

from __future__ import annotations

import jax.numpy as jnp

from cohort.engine import closed_form, diffrax_path
from cohort.engine.common import solution_status
from cohort.engine.events import (
    BOLUS,
    PAD,
    RATE,
    RESET,
    SS_BOLUS,
    SS_INFUSION,
    Changes,
    resolve,
)
from cohort.models.base import Model, Tree


def _phi(r, dt):
    """``∫_0^dt exp(r s) ds`` with its ``r -> 0`` limit (safe for gradients)."""
    small = jnp.abs(r) < 1e-12
    safe = jnp.where(small, 1.0, r)
    return jnp.where(small, dt, jnp.expm1(safe * dt) / safe)


def _sym_eig(m):
    """Eigenvalues ``[n]`` and orthonormal eigenvectors (nested lists, ``q[i][k]``) of a
    symmetric 1x1 or 2x2 matrix given as nested lists of scalars: closed formulas, so the
    traced graph holds a few elementwise ops instead of a LAPACK call and its derivative."""
    if len(m) == 1:
        return [m[0][0]], [[1.0]]
    a, b, d = m[0][0], m[0][1], m[1][1]
    angle = 0.5 * jnp.arctan2(2.0 * b, a - d)
    c, s = jnp.cos(angle), jnp.sin(angle)
    l1 = a * c * c + 2.0 * b * s * c + d * s * s
    l2 = a * s * s - 2.0 * b * s * c + d * c * c
    return [l1, l2], [[c, -s], [s, c]]


def modes(model: Model, p: Tree) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """:func:`cohort.engine.closed_form.modes` (rates ``r [M]``, directions ``dirs [S, M]``,
    input weights ``w [M, S]``) with the 1- and 2-compartment eigenproblems solved in closed
    form and the matrices assembled by stacking (no scatter ops): per-subject likelihoods under
    ``vmap``/``grad`` compile and run several times faster. 3 compartments use the engine's."""
    lp = model.linear_pk
    n = lp.n_cmt
    if n > 2:
        return closed_form.modes(model, p)
    names = model.state_names
    vols = [p[v] for v in lp.volumes]
    flows = [p[q] for q in lp.flows]
    if n == 1:  # scaling directions by √V and weights by 1/√V cancels: keep both at one
        lam, q, sq = [-p[lp.cl] / vols[0]], [[1.0]], [1.0]
    else:
        sq = [jnp.sqrt(v) for v in vols]
        qf = flows[0]
        mat = [
            [-(p[lp.cl] + qf) / vols[0], qf / (sq[0] * sq[1])],
            [qf / (sq[0] * sq[1]), -qf / vols[1]],
        ]
        lam, q = _sym_eig(mat)
    pdir = [[sq[i] * q[i][k] for k in range(n)] for i in range(n)]  # amount space, [i][mode]
    wgt = [[q[i][k] / sq[i] for i in range(n)] for k in range(n)]  # [mode][compartment]
    disp = {lp.central: 0, **{s: i + 1 for i, s in enumerate(lp.peripherals)}}
    like = p[lp.cl]
    zero = jnp.zeros_like(like)

    def full(x):
        return jnp.broadcast_to(jnp.asarray(x, like.dtype), like.shape)

    cols = [[full(pdir[disp[s]][k]) if s in disp else zero for s in names] for k in range(n)]
    rows = [[full(wgt[k][disp[s]]) if s in disp else zero for s in names] for k in range(n)]
    rates = [full(x) for x in lam]
    if lp.depot is not None:
        ka = p[lp.ka]
        # Nudge ka off an exact coincidence with a disposition eigenvalue (flip-flop point),
        # where the partial fractions are singular (relative error 1e-7), as the engine does.
        gap = jnp.min(jnp.stack([jnp.abs(x + ka) for x in rates]))
        ka = jnp.where(gap < 1e-7 * ka, ka * (1.0 + 1e-7), ka)
        frac = [wgt[k][0] * ka / (rates[k] + ka) for k in range(n)]
        d = names.index(lp.depot)
        for k in range(n):
            rows[k][d] = frac[k]
        v_ka = [
            1.0 + zero
            if s == lp.depot
            else (-sum(pdir[disp[s]][k] * frac[k] for k in range(n)) if s in disp else zero)
            for s in names
        ]
        cols.append(v_ka)
        rows.append([1.0 + zero if s == lp.depot else zero for s in names])
        rates.append(-ka)
    r = jnp.stack(rates)
    dirs = jnp.stack([jnp.stack(c) for c in cols], axis=-1)  # [S, M]
    w = jnp.stack([jnp.stack(row) for row in rows])  # [M, S]
    return r, dirs, w


def closed_form_subject(
    model: Model,
    output: str,
    p: Tree,
    ev: dict,
    times: jnp.ndarray,
    with_infusion: bool,
    changes: Changes | None = None,
    has_reset: bool = True,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Exact ``output`` at ``times [J]`` for one subject (``p`` scalars), and an ok flag.

    ``changes`` may hold the subject's records already resolved (when F and lag times do not
    depend on estimated parameters); ``has_reset=False`` (no EVID 3/4 or SS records anywhere)
    drops the reset bookkeeping from the compiled graph.
    """
    ch = resolve(model, ev, p, with_infusion, has_reset) if changes is None else changes
    r, dirs, w = modes(model, p)  # [M], [S, M], [M, S]
    kind = ch.kind[None, :]
    dt = times[:, None] - ch.time[None, :]  # [J, R]
    active = (dt >= 0) & (kind != PAD) & (kind != RESET)
    infusing = kind == RATE
    if has_reset:
        is_reset = (ch.kind == RESET) | (ch.kind == SS_BOLUS) | (ch.kind == SS_INFUSION)
        started = is_reset[None, :] & (dt >= 0)
        last_reset = jnp.max(jnp.where(started, ch.time[None, :], -jnp.inf), axis=1)[:, None]
        active = active & (ch.time[None, :] >= last_reset)
        active = active & (~infusing | (ch.start[None, :] >= last_reset))
    dts = jnp.where(active, dt, 0.0)[..., None]  # [J, R, 1]
    # [R, M]: modal weights of each record's compartment, by a one-hot sum rather than a
    # gather (whose derivative is a scatter): elementwise ops that fuse under vmap/grad
    onehot = ch.cmt[:, None] == jnp.arange(w.shape[1])[None, :]  # [R, S]
    wc = jnp.sum(jnp.where(onehot[:, None, :], w[None, :, :], 0.0), axis=-1)
    amount = ch.amount[:, None]
    rate = ch.rate[:, None]
    start_amp = jnp.where((ch.kind == BOLUS)[:, None], amount * wc, 0.0)
    if has_reset:  # steady-state records exist only together with resets
        # Steady state at the record time (the record's own dose is a separate change when
        # it enters, after its lag ``start - time``; see engine.events.resolve).
        is_ss = (ch.kind == SS_BOLUS) | (ch.kind == SS_INFUSION)
        ii = jnp.where(is_ss, ch.ii, 1.0)[:, None]
        lag = jnp.where(is_ss, ch.start - ch.time, 0.0)[:, None]
        denom = jnp.where(is_ss[:, None], -jnp.expm1(r[None, :] * ii), 1.0)  # [R, M]
        dur = ch.dur[:, None]
        ss_bolus = amount * wc * jnp.exp(r * (ii - lag)) / denom
        ss_inf = rate * wc * _phi(r, dur) * jnp.exp(r * (ii - dur - lag)) / denom
        start_amp = jnp.where((ch.kind == SS_BOLUS)[:, None], ss_bolus, start_amp)
        start_amp = jnp.where((ch.kind == SS_INFUSION)[:, None], ss_inf, start_amp)
    amp = start_amp[None] * jnp.exp(r[None, None, :] * dts)  # [J, R, M]
    if with_infusion:
        flow = jnp.where(infusing[0][:, None], rate * wc, 0.0)  # [R, M]
        amp = amp + flow[None] * _phi(r[None, None, :], dts)
    a = jnp.sum(jnp.where(active[..., None], amp, 0.0), axis=1)  # [J, M]
    y = jnp.sum(a[:, None, :] * dirs[None, :, :], axis=-1)  # [J, S] (a fusable reduction)
    states = {s: y[:, i] for i, s in enumerate(model.state_names)}
    f = model.output(output, states, p)
    return f, jnp.all(jnp.isfinite(f))


def ode_subject(
    model: Model,
    output: str,
    p: Tree,
    ev: dict,
    times: jnp.ndarray,
    with_infusion: bool,
    has_ss: bool,
    options: diffrax_path.DiffraxOptions,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``output`` at ``times`` via the engine's adaptive diffrax solve; ok is False when the
    solve failed (max steps, non-finite or negative states)."""
    states, code = diffrax_path.solve_patient(model, p, ev, times, with_infusion, has_ss, options)
    status = solution_status(states, code)
    ok = (status == 0) & jnp.all(jnp.isfinite(states))
    safe = jnp.where(ok, states, 1.0)  # keep NaNs of failed solves out of the likelihood
    f = model.output(output, {s: safe[:, i] for i, s in enumerate(model.state_names)}, p)
    return f, ok & jnp.all(jnp.isfinite(f))
