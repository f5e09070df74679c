"""The ``t1d_minimal`` model solved on a 1-min grid in parallel over time, for CGM twins.

A CGM twin's posterior needs tens of thousands of gradients of a day-long (1,440-minute)
trajectory. A sequential solver (diffrax, or RK4 in ``lax.scan``) makes each gradient a
1,440-step loop; this model's structure allows better, and diffrax has no parallel-in-time
solver, so it is written here. With inputs held constant over each minute (meals in mg/min,
insulin in U/min):

* the stomach–gut chain and the subcutaneous–plasma insulin chain are linear with constant
  coefficients: each minute is one exact affine map ``x ← Φx + γu`` (``Φ``, ``γ`` from one
  matrix exponential), composed over the day by ``lax.associative_scan``;
* ``X``, ``G`` and ``IG`` are scalar linear ODEs once their drivers are known (``I`` for
  ``X``, ``X`` and ``Ra`` for ``G``, ``G`` for ``IG``): each minute is ``h ← αh + β`` with an
  exponential integrator (drivers linear across the minute: exact for ``X`` and ``IG``,
  second order for ``G``), again composed by an associative scan.

So a trajectory costs O(T) work in O(log T) sequential depth, and its gradient likewise. The
ODE model (:class:`cohort.models.glucose.T1DMinimal`, any engine) is the reference: tests
compare the two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cohort.models.base import Tree
from cohort.models.glucose.t1d_minimal import insulin_per_unit

DT = 1.0  # min; the grid of inputs and solution


def _affine_scan(alpha, beta, h0):
    """``h[k+1] = alpha[k]·h[k] + beta[k]`` for all k at once: ``[T+1]`` from ``h0``."""

    def compose(a, b):  # a earlier, b later
        return a[0] * b[0], b[0] * a[1] + b[1]

    a, b = jax.lax.associative_scan(compose, (alpha, beta))
    return jnp.concatenate([jnp.reshape(h0, (1,)), a * h0 + b])


def _chain_scan(a_mat, inputs, x0, dt: float):
    """Exact solution of ``x' = A x + e₁ u`` with ``u`` constant over each step: ``[T+1, n]``.

    ``Φ = exp(A·dt)`` and ``γ = ∫₀^dt exp(A s) e₁ ds`` come from one exponential of the
    augmented matrix ``[[A, e₁], [0, 0]]``."""
    n = a_mat.shape[0]
    aug = jnp.zeros((n + 1, n + 1), a_mat.dtype).at[:n, :n].set(a_mat).at[0, n].set(1.0)
    e = jax.scipy.linalg.expm(aug * dt)
    phi, gamma = e[:n, :n], e[:n, n]
    mats = jnp.broadcast_to(phi, (inputs.shape[0], n, n))
    vecs = inputs[:, None] * gamma[None, :]

    def compose(a, b):
        return b[0] @ a[0], jnp.einsum("...ij,...j->...i", b[0], a[1]) + b[1]

    m, v = jax.lax.associative_scan(compose, (mats, vecs))
    return jnp.concatenate([x0[None, :], jnp.einsum("kij,j->ki", m, x0) + v])


def _phi1(z):
    """``(1 − e^(−z))/z``, smooth through ``z = 0``."""
    small = jnp.abs(z) < 1e-6
    zs = jnp.where(small, 1.0, z)
    return jnp.where(small, 1.0 - 0.5 * z + z * z / 6.0, -jnp.expm1(-zs) / zs)


def _lag(rate, drive, h0, dt: float):
    """``h' = rate·(drive − h)`` with ``drive`` linear across each step (exact)."""
    a = jnp.exp(-rate * dt)
    one_minus = 1.0 - a
    ramp = 1.0 - one_minus / (rate * dt)
    beta = drive[:-1] * one_minus + (drive[1:] - drive[:-1]) * ramp
    return _affine_scan(jnp.broadcast_to(a, beta.shape), beta, h0)


def trajectory(p: Tree, meal, insulin, dt: float = DT) -> Tree:
    """States of one patient at ``t = 0, dt, …, T·dt`` (``[T+1]`` each).

    ``p``: the ``t1d_minimal`` parameters (scalars; ``basal`` sets the initial insulin steady
    state); ``meal [T]``: carbohydrate eaten, mg/min; ``insulin [T]``: total subcutaneous
    delivery, U/min (basal included), each constant over its step.
    """
    dtype = jnp.result_type(meal, insulin, p["SG"])
    meal, insulin = meal.astype(dtype), insulin.astype(dtype)
    zero = jnp.zeros((), dtype)
    ke, ka = p["kempt"], p["kabs"]
    gut = jnp.stack(
        [jnp.stack([-ke, zero, zero]), jnp.stack([ke, -ke, zero]), jnp.stack([zero, ke, -ka])]
    )
    qgut = _chain_scan(gut, meal, jnp.zeros(3, dtype), dt)[:, 2]
    c = insulin_per_unit(p)
    kd, ka2, kei = p["kd"], p["ka2"], p["ke"]
    ins = jnp.stack(
        [
            jnp.stack([-kd, zero, zero]),
            jnp.stack([kd, -ka2, zero]),
            jnp.stack([zero, ka2 * c, -kei]),
        ]
    )
    u0 = p["basal"]
    x0 = jnp.stack([u0 / kd, u0 / ka2, u0 * c / kei]).astype(dtype)
    plasma = _chain_scan(ins, insulin, x0, dt)[:, 2]
    drive = p["SI"] * (plasma - p["Ib"])
    x = _lag(p["p2"], drive, drive[0], dt)
    ra = p["f"] * ka * qgut / (p["BW"] * p["VG"])  # mg/dL/min
    rate = p["SG"] + 0.5 * (x[:-1] + x[1:])
    forcing = p["SG"] * p["Gb"] + 0.5 * (ra[:-1] + ra[1:])
    g = _affine_scan(jnp.exp(-rate * dt), forcing * dt * _phi1(rate * dt), p["G0"])
    ig = _lag(1.0 / p["tau"], g, p["G0"], dt)
    return {"qgut": qgut, "I": plasma, "X": x, "G": g, "IG": ig}
