"""Residual-error likelihoods, per observation, in NONMEM's −2 log L convention.

Terms omit the ``log 2π`` constant (NONMEM reports OFV without ``N·log 2π``); uncensored
observations give ``log V + (y − f)²/V``; observations below the LLOQ give the M3 term
``−2 log Φ((LLOQ − f)/√V)`` (Beal 2001). ``log-additive`` error works on ``log y`` and
``log f`` (transform-both-sides; no Jacobian, like a NONMEM fit of log-transformed DV).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LOG_2PI = float(np.log(2.0 * np.pi))
_TINY = 1e-300


def transformed(kind: str, f, dv, lloq):
    """Predictions, data and limits on the scale the error model is Gaussian on."""
    if kind != "log-additive":
        return f, dv, lloq
    safe = lambda x: jnp.log(jnp.maximum(x, _TINY))  # noqa: E731
    return safe(f), safe(dv), safe(lloq)


def residual_var(kind: str, sigma, f):
    """Residual variance ``V`` at predictions ``f`` (on the untransformed scale)."""
    add2, prop2 = sigma[0] ** 2, sigma[1] ** 2
    if kind in ("additive", "log-additive"):
        return jnp.broadcast_to(add2, jnp.shape(f))
    if kind == "proportional":
        return prop2 * f**2
    return add2 + prop2 * f**2


def obs_terms(kind: str, sigma, f, dv, mask, cens, lloq, censored: bool = True):
    """``−2 log p(y_j | f_j)`` without ``log 2π`` per observation (0 where not observed).
    ``censored=False`` (no BLQ record in the data) leaves the M3 branch out of the graph: the
    float64 ``log Φ`` and its derivative are large to compile."""
    var = residual_var(kind, sigma, f)
    m, y, lim = transformed(kind, f, dv, lloq)
    var_safe = jnp.where(mask, var, 1.0)
    terms = jnp.log(var_safe) + (y - m) ** 2 / var_safe
    if censored:
        m3 = -2.0 * jax.scipy.stats.norm.logcdf((lim - m) / jnp.sqrt(var_safe))
        terms = jnp.where(cens, m3, terms)
    return jnp.where(mask, terms, 0.0)


def n_gaussian(mask, cens) -> int:
    """Number of uncensored observations (the ``N`` of ``N·log 2π``)."""
    return int(np.sum(np.asarray(mask) & ~np.asarray(cens)))


def loglik_obs(kind: str, sigma, f, dv, mask, cens, lloq, censored: bool = True):
    """Proper log-likelihood per observation (with the ``log 2π`` constant)."""
    terms = obs_terms(kind, sigma, f, dv, mask, cens, lloq, censored)
    return jnp.where(mask, -0.5 * (terms + jnp.where(cens, 0.0, LOG_2PI)), 0.0)


def simulate_dv(kind: str, sigma, f, key):
    """Draw observations around predictions ``f`` (posterior predictive / VPC)."""
    return simulate_dv_eps(kind, sigma, f, jax.random.normal(key, jnp.shape(f)))


def simulate_dv_eps(kind: str, sigma, f, eps):
    """Observations around predictions ``f`` from standard normal deviates ``eps``."""
    if kind == "log-additive":
        return jnp.exp(jnp.log(jnp.maximum(f, _TINY)) + sigma[0] * eps)
    return f + jnp.sqrt(residual_var(kind, sigma, f)) * eps
