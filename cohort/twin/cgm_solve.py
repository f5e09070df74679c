"""The ``t1d_minimal`` model solved on a 1-min grid in parallel over time, for CGM twins.

A CGM twin's posterior needs tens of thousands of gradients of a day-long (1,440-minute)
trajectory. A sequential solver (diffrax, or RK4 in ``lax.scan``) makes each gradient a
1,440-step loop; this model's structure allows better, and diffrax has no parallel-in-time
solver, so it is written here. With inputs held constant over each minute (meals in mg/min,
insulin in U/min):

* every state is a scalar linear ODE once its driver is known (the meal for ``qsto1``,
  ``Isc1`` for ``Isc2``, ``Isc2`` for ``I``,
  ``qsto1`` for ``qsto2``, ``qsto2`` for ``qgut``, ``I`` for ``X``, ``X`` and ``Ra`` for
  ``G``, ``G`` for ``IG``): each minute is ``h ← αh + β`` with an exponential integrator
  (exact for a driver linear across the minute, second order otherwise), again composed by
  a blocked cumulative sum (:func:`_affine_scan`).

So a trajectory is a few vectorised cumulative sums (O(T) work, short sequential depth), and
its gradient likewise. The
ODE model (:class:`cohort.models.glucose.T1DMinimal`, any engine) is the reference: tests
compare the two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cohort.models.base import Tree
from cohort.models.glucose.t1d_minimal import insulin_per_unit

DT = 1.0  # min; the grid of inputs and solution


BLOCK = 60  # steps per block of the blocked cumulative-sum recurrence
# |log| of one step's factor: a block's running product stays within float64's exp range
# (e^±709) — 11 for blocks of 60 (660)
MAX_LOG_ALPHA = float(700 // BLOCK)


def _affine_scan(log_alpha, beta, h0):
    """``h[k+1] = exp(log_alpha[k])·h[k] + beta[k]`` for all k: ``[T+1]`` from ``h0``.

    Within blocks of :data:`BLOCK` steps, ``h[m] = P[m]·(h0 + Σ_{j<m} beta[j]/P[j+1])``
    with ``P`` the running product of the ``alpha`` (a cumulative sum of ``log_alpha``): two
    cumulative sums, so the graph stays small (fast to compile and differentiate, unlike an
    associative scan's log₂T unrolled levels); a short scan carries ``h`` across blocks.
    Blocks bound the exponents (rates ≤ 2/min: ``P ≥ e^-120``, fine in float64)."""
    t = beta.shape[0]
    # The block formula divides by running products of alpha: exp(-Σ log_alpha) over a block
    # overflows once a rate exceeds ~11.8/min (709/60), and the trajectory becomes inf/NaN.
    # Physiological rates stay below ~2/min, but a NUTS trial step strays further (seen: SG or
    # p2 of 12/min, SI of 2) and each such inf potential was a divergent transition. Beyond
    # ±MAX_LOG_ALPHA per step the decay (or growth) is complete to e^-11 within the minute;
    # clipping there changes the solution by < 2e-5 of the state and keeps it finite.
    log_alpha = jnp.clip(log_alpha, -MAX_LOG_ALPHA, MAX_LOG_ALPHA)
    n_blocks = -(-t // BLOCK)
    pad = n_blocks * BLOCK - t
    la = jnp.pad(jnp.broadcast_to(log_alpha, beta.shape), (0, pad)).reshape(n_blocks, BLOCK)
    b = jnp.pad(beta, (0, pad)).reshape(n_blocks, BLOCK)
    log_p = jnp.cumsum(la, axis=1)  # log P[j+1], j = 0..BLOCK-1
    p = jnp.exp(log_p)
    s = jnp.cumsum(b * jnp.exp(-log_p), axis=1)

    def carry(h, blk):
        p_end, s_end = blk
        return p_end * (h + s_end), h

    _, starts = jax.lax.scan(carry, h0, (p[:, -1], s[:, -1]))  # h at each block start
    h = p * (starts[:, None] + s)  # h[1..] within blocks
    return jnp.concatenate([jnp.reshape(h0, (1,)), h.reshape(-1)[:t]])


def _phi1(z):
    """``(1 − e^(−z))/z``, smooth through ``z = 0``."""
    small = jnp.abs(z) < 1e-6
    zs = jnp.where(small, 1.0, z)
    return jnp.where(small, 1.0 - 0.5 * z + z * z / 6.0, -jnp.expm1(-zs) / zs)


def _lag(rate, drive, h0, dt: float):
    """``h' = rate·(drive − h)`` with ``drive`` linear across each step (exact)."""
    one_minus = -jnp.expm1(-rate * dt)
    ramp = 1.0 - one_minus / (rate * dt)
    beta = drive[:-1] * one_minus + (drive[1:] - drive[:-1]) * ramp
    return _affine_scan(-rate * dt, beta, h0)


def insulin_curve(p: Tree, insulin, dt: float = DT):
    """Plasma insulin (µU/mL) at ``t = 0, dt, …`` from the subcutaneous delivery ``insulin
    [T]`` (U/min, basal included), starting at the steady state of ``p["basal"]``. It does not
    depend on the glucose parameters, so a twin computes it once per patient."""
    insulin = jnp.asarray(insulin)
    dtype = jnp.result_type(insulin, p["kd"])
    insulin = insulin.astype(dtype)
    kd, ka2, ke, c, u0 = p["kd"], p["ka2"], p["ke"], insulin_per_unit(p), p["basal"]
    isc1 = _affine_scan(-kd * dt, insulin * dt * _phi1(kd * dt), u0 / kd)
    isc2 = _lag(ka2, (kd / ka2) * isc1, u0 / ka2, dt)
    return _lag(ke, (ka2 * c / ke) * isc2, u0 * c / ke, dt)


def glucose_curves(p: Tree, meal, plasma, dt: float = DT) -> Tree:
    """Gut, insulin action and glucose at ``t = 0, dt, …`` given the meal ``[T]`` (mg/min)
    and the plasma insulin ``[T+1]`` (:func:`insulin_curve`).

    The stomach–gut chain is solved as three scalar recurrences (exact for the first, drivers
    linear across each minute for the others: second order, like ``G``), which keeps the
    gradient and Hessian graphs small (no matrix exponential of estimated rates)."""
    dtype = jnp.result_type(meal, plasma, p["SG"])
    meal, plasma = meal.astype(dtype), plasma.astype(dtype)
    ke, ka = p["kempt"], p["kabs"]
    zero = jnp.zeros((), dtype)
    q1 = _affine_scan(-ke * dt, meal * dt * _phi1(ke * dt), zero)
    q2 = _lag(ke, q1, zero, dt)
    qgut = _lag(ka, (ke / ka) * q2, zero, dt)
    drive = p["SI"] * (plasma - p["Ib"])
    x = _lag(p["p2"], drive, drive[0], dt)
    ra = p["f"] * ka * qgut / (p["BW"] * p["VG"])  # mg/dL/min
    rate = p["SG"] + 0.5 * (x[:-1] + x[1:])
    forcing = p["SG"] * p["Gb"] + 0.5 * (ra[:-1] + ra[1:])
    g = _affine_scan(-rate * dt, forcing * dt * _phi1(rate * dt), p["G0"])
    ig = _lag(1.0 / p["tau"], g, p["G0"], dt)
    return {"qgut": qgut, "X": x, "G": g, "IG": ig}


def trajectory(p: Tree, meal, insulin, dt: float = DT) -> Tree:
    """States of one patient at ``t = 0, dt, …, T·dt`` (``[T+1]`` each).

    ``p``: the ``t1d_minimal`` parameters (scalars; ``basal`` sets the initial insulin steady
    state); ``meal [T]``: carbohydrate eaten, mg/min; ``insulin [T]``: total subcutaneous
    delivery, U/min (basal included), each constant over its step.
    """
    plasma = insulin_curve(p, insulin, dt)
    return {**glucose_curves(p, jnp.asarray(meal), plasma, dt), "I": plasma}
