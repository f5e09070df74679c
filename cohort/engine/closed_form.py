"""Exact solution of linear mammillary PK systems (the NONMEM ADVAN1-4/11-12 idea).

The system matrix of a 1-3 compartment model with an optional first-order depot is
diagonalised per patient; in modal coordinates each amplitude obeys ``a' = r a + w·u`` with a
closed-form solution, so the exact state is propagated from one change/save time to the next:
bolus doses add ``amount·w``, infusions enter through ``expm1(rΔ)/r``, and SS=1 doses set the
amplitudes to the geometric-series steady state. No ODE is solved. The disposition matrix
``M·diag(1/V)`` is similar to the symmetric ``diag(V)^-1/2 · M · diag(V)^-1/2`` (equal flows
both ways), so ``eigh`` applies — stable, real and supported on GPU, unlike a general ``eig``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cohort.engine.events import BOLUS, RATE, RESET, SS_BOLUS, SS_INFUSION, Changes, resolve
from cohort.models.base import Model, Tree


def supports(model: Model) -> bool:
    """Whether ``model`` is purely linear PK (every state belongs to the linear system)."""
    lp = model.linear_pk
    if lp is None:
        return False
    pk_states = {lp.central, *lp.peripherals} | ({lp.depot} if lp.depot else set())
    return set(model.state_names) == pk_states


def modes(model: Model, p: Tree) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Per-patient rates ``r [M]``, directions ``dirs [S, M]`` and input weights ``w [M, S]``."""
    lp = model.linear_pk
    names = model.state_names
    n = lp.n_cmt
    vols = jnp.stack([p[v] for v in lp.volumes])
    flows = [p[q] for q in lp.flows]
    m = jnp.zeros((n, n), dtype=vols.dtype)
    m = m.at[0, 0].set(-(p[lp.cl] + sum(flows)))
    for j, q in enumerate(flows, start=1):
        m = m.at[0, j].set(q).at[j, 0].set(q).at[j, j].set(-q)
    sq = jnp.sqrt(vols)
    lam, q = jnp.linalg.eigh(m / jnp.outer(sq, sq))
    pdir = sq[:, None] * q  # columns: mode directions in amount space
    wgt = q.T / sq[None, :]  # rows: modal weight of a unit input into each compartment
    disp_idx = [names.index(lp.central), *(names.index(s) for s in lp.peripherals)]
    s = len(names)
    dirs = jnp.zeros((s, n), dtype=vols.dtype).at[jnp.array(disp_idx)].set(pdir)
    w = jnp.zeros((n, s), dtype=vols.dtype).at[:, jnp.array(disp_idx)].set(wgt)
    if lp.depot is None:
        return lam, dirs, w
    d = names.index(lp.depot)
    ka = p[lp.ka]
    # Nudge ka off an exact coincidence with a disposition eigenvalue (flip-flop point), where
    # the partial fractions below are singular; the relative error this introduces is 1e-7.
    gap = jnp.min(jnp.abs(lam + ka))
    ka = jnp.where(gap < 1e-7 * ka, ka * (1.0 + 1e-7), ka)
    frac = wgt[:, 0] * ka / (lam + ka)  # depot dose -> disposition modes (via the central input)
    w = w.at[:, d].set(frac)
    v_ka = jnp.zeros(s, dtype=vols.dtype).at[d].set(1.0)
    v_ka = v_ka.at[jnp.array(disp_idx)].add(-(pdir @ frac))
    dirs = jnp.concatenate([dirs, v_ka[:, None]], axis=1)
    w_ka = jnp.zeros((1, s), dtype=vols.dtype).at[0, d].set(1.0)
    return jnp.concatenate([lam, -ka[None]]), dirs, jnp.concatenate([w, w_ka], axis=0)


def _phi(r, dt):
    """``∫_0^dt exp(r s) ds = expm1(r dt) / r`` with its ``r -> 0`` limit."""
    safe = jnp.where(r == 0, 1.0, r)
    return jnp.where(r == 0, dt, jnp.expm1(safe * dt) / safe)


def solve_patient(
    model: Model, p: Tree, ev: dict, times: jnp.ndarray, with_infusion: bool
) -> jnp.ndarray:
    """Exact state amounts ``[T, S]`` of one patient at ``times`` (right-continuous at doses)."""
    ch: Changes = resolve(model, ev, p, with_infusion)
    r, dirs, w = modes(model, p)
    n_t, n_c = times.shape[0], ch.time.shape[0]
    all_t = jnp.concatenate([ch.time, times])
    is_save = jnp.concatenate([jnp.zeros(n_c, bool), jnp.ones(n_t, bool)])
    order = jnp.argsort(all_t, stable=True)  # changes sort before saves at equal times
    src = jnp.concatenate([jnp.arange(n_c), jnp.zeros(n_t, int)])[order]
    pts_t, pts_save = all_t[order], is_save[order]
    s = dirs.shape[0]
    dtype = dirs.dtype

    def step(carry, x):
        a, u, t_prev, last_reset = carry
        t, save, k = x
        dt = jnp.where(jnp.isfinite(t), t - t_prev, 0.0)
        a = a * jnp.exp(r * dt) + (w @ u) * _phi(r, dt)
        kind, cmt = ch.kind[k], ch.cmt[k]
        active = ~save & jnp.isfinite(t)
        onehot = jax.nn.one_hot(cmt, s, dtype=dtype)
        is_reset = active & ((kind == RESET) | (kind == SS_BOLUS) | (kind == SS_INFUSION))
        a = jnp.where(is_reset, 0.0, a)
        u = jnp.where(is_reset, 0.0, u)
        last_reset = jnp.where(is_reset, t, last_reset)
        a = a + jnp.where(active & (kind == BOLUS), ch.amount[k], 0.0) * w[:, cmt]
        take_rate = active & ((kind == RATE) | (kind == SS_INFUSION)) & (ch.start[k] >= last_reset)
        u = u + jnp.where(take_rate, ch.rate[k], 0.0) * onehot
        # Steady state: sum of the geometric series of identical past doses every II.
        ii = ch.ii[k]
        denom = -jnp.expm1(r * ii)
        ss_bolus = ch.amount[k] * w[:, cmt] / denom
        dur = ch.dur[k]
        ss_inf = ch.rate[k] * w[:, cmt] * _phi(r, dur) * jnp.exp(r * (ii - dur)) / denom
        a = jnp.where(active & (kind == SS_BOLUS), ss_bolus, a)
        a = jnp.where(active & (kind == SS_INFUSION), ss_inf, a)
        return (a, u, jnp.where(jnp.isfinite(t), t, t_prev), last_reset), dirs @ a

    m = r.shape[0]
    t0 = jnp.minimum(times[0], jnp.min(ch.time))
    init = (jnp.zeros(m, dtype), jnp.zeros(s, dtype), t0, jnp.asarray(-jnp.inf, dtype))
    _, x = jax.lax.scan(step, init, (pts_t, pts_save, src))
    save_pos = jnp.nonzero(pts_save, size=n_t)[0]
    return x[save_pos]
