"""Per-subject model predictions at the observation times (pure JAX, ``vmap``-able).

Linear PK uses the exact modal solution of :mod:`cohort.engine.linear` by superposition:
every change record (bolus, infusion start/stop, steady-state dose, reset) adds a closed-form
term to each mode's amplitude, evaluated directly at the observation times, so any dosing
history (multiple doses, infusions, SS, resets) is exact and differentiable (no ``while_loop``,
which reverse-mode AD cannot cross). Nonlinear models go through the engine's adaptive diffrax
solve; its status code marks failed solves, which the likelihood turns into ``-inf``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cohort.engine import diffrax_path
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
from cohort.engine.linear import modes, phi
from cohort.models.base import Model, Tree


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
        ss_inf = rate * wc * phi(r, dur) * jnp.exp(r * (ii - dur - lag)) / denom
        start_amp = jnp.where((ch.kind == SS_BOLUS)[:, None], ss_bolus, start_amp)
        start_amp = jnp.where((ch.kind == SS_INFUSION)[:, None], ss_inf, start_amp)
    amp = start_amp[None] * jnp.exp(r[None, None, :] * dts)  # [J, R, M]
    if with_infusion:
        flow = jnp.where(infusing[0][:, None], rate * wc, 0.0)  # [R, M]
        amp = amp + flow[None] * phi(r[None, None, :], dts)
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
    reverse: bool = True,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``output`` at ``times`` via the engine's adaptive diffrax solve; ok is False when the
    solve failed (max steps, non-finite or negative states). ``reverse=False``: forward-mode
    derivatives only (diffrax's ``ForwardMode``), for ``jacfwd``."""
    states, code = diffrax_path.solve_patient(
        model, p, ev, times, with_infusion, has_ss, options, differentiable=reverse
    )
    status = solution_status(states, code)
    ok = (status == 0) & jnp.all(jnp.isfinite(states))
    safe = jnp.where(ok, states, 1.0)  # keep NaNs of failed solves out of the likelihood
    f = model.output(output, {s: safe[:, i] for i, s in enumerate(model.state_names)}, p)
    return f, ok & jnp.all(jnp.isfinite(f))


def value_and_jacfwd(fun, x):
    """``f, ok, ∂f/∂x`` of ``fun(x) -> (f, ok)`` from one forward-mode pass (``jacfwd``)."""

    def both(v):
        f, ok = fun(v)
        return f, (f, ok)

    jac, (f, ok) = jax.jacfwd(both, has_aux=True)(x)
    return f, ok, jac


def reverse_by_forward_jacobian(solve, x, data):
    """``solve(x, data) -> (f, ok)`` made reverse-differentiable in ``x [K]`` through a custom
    VJP whose forward pass computes the Jacobian ``∂f/∂x [J, K]`` with ``K`` forward tangents
    (``jacfwd``); ``data`` (a pytree of arrays) gets no derivative. For an ODE solve with few
    parameters this is cheaper than the reverse-mode adjoint (a checkpointed loop, recomputed
    backwards); the result supports reverse mode only (``jax.custom_vjp`` has no JVP rule).
    ``data`` is an argument, not closed over: custom VJPs must not capture tracers."""

    @jax.custom_vjp
    def value(x, data):
        return solve(x, data)

    def forward(x, data):
        f, ok, jac = value_and_jacfwd(lambda v: solve(v, data), x)
        return (f, ok), jac

    def backward(jac, cotangent):
        return cotangent[0] @ jac, None

    value.defvjp(forward, backward)
    return value(x, data)
