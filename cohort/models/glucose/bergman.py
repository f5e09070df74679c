"""Bergman minimal model of glucose–insulin kinetics for IVGTT/OGTT, time in minutes.

Glucose and remote insulin action (Bergman, Ider, Bowden & Cobelli 1979)::

    dG/dt = -(p1 + X) G + p1 Gb                       (G: plasma glucose, mg/dL)
    dX/dt = -p2 X + p3 (I - Ib)                       (X: insulin action, 1/min)

coupled to the insulin minimal model of Pacini & Bergman (1986) with second-phase secretion
proportional to the hyperglycaemia above ``h`` and to the time since the glucose injection::

    dI/dt = -n (I - Ib) + gamma max(G - h, 0) t       (I: plasma insulin, µU/mL)

Clearance acts on insulin above basal so that ``(Gb, 0, Ib)`` is a steady state when
``Gb <= h``; the factor ``t`` ties the model to an IVGTT given at ``t = 0``. Insulin
sensitivity ``SI = p3/p2`` and glucose effectiveness ``SG = p1``.

Doses are concentrations: a glucose bolus into ``G`` is in mg/dL (dose / distribution volume),
an insulin infusion into ``I`` in µU/mL/min. For the standard *glucose* minimal-model analysis
of an IVGTT, where measured insulin drives ``X``, use :func:`fit_ivgtt`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from cohort.models.base import Model, Output, Parameter, State, Tree, register

_SI_UNITS = "mL/µU/min^2"


class Bergman(Model):
    """Bergman minimal model with Pacini–Bergman insulin secretion (defaults: the 1986 IVGTT)."""

    name = "bergman"
    description = "Bergman minimal model (G, X, I) with time-weighted insulin secretion, minutes"
    states = (
        State("G", "mg/dL", "plasma glucose concentration"),
        State("X", "1/min", "remote insulin action on glucose disappearance", nonnegative=False),
        State("I", "µU/mL", "plasma insulin concentration"),
    )
    parameters = (
        Parameter("Gb", "mg/dL", 92.0, "basal glucose", 1.0, 1000.0),
        Parameter("Ib", "µU/mL", 7.3, "basal insulin", 0.0, 1000.0),
        Parameter("p1", "1/min", 0.03082, "glucose effectiveness SG", 0.0, 1.0),
        Parameter("p2", "1/min", 0.02093, "decay rate of insulin action", 1e-6, 1.0),
        Parameter("p3", _SI_UNITS, 1.062e-5, "insulin-dependent gain of insulin action", 0, 1),
        Parameter("n", "1/min", 0.3, "insulin clearance rate", 0.0, 10.0),
        Parameter("gamma", "µU/mL/min^2 per mg/dL", 0.003349, "second-phase secretion", 0, 1),
        Parameter("h", "mg/dL", 89.5, "glucose threshold of insulin secretion", 0.0, 1000.0),
        Parameter("G0", "mg/dL", 92.0, "glucose at t = 0", 0.0, 2000.0),
        Parameter("I0", "µU/mL", 7.3, "insulin at t = 0", 0.0, 5000.0),
    )
    outputs = (
        Output("glucose", "mg/dL", lambda y, p: y["G"], "plasma glucose"),
        Output("insulin", "µU/mL", lambda y, p: y["I"], "plasma insulin"),
    )
    dose_targets = ("G", "I")
    time_units = "min"
    fast_dt = 0.5

    def initial(self, p: Tree) -> Tree:
        return {"G": p["G0"], "X": jnp.zeros_like(p["G0"]), "I": p["I0"]}

    def rhs(self, t, y: Tree, p: Tree, u: Tree) -> Tree:
        secretion = p["gamma"] * jnp.maximum(y["G"] - p["h"], 0.0) * t
        return {
            "G": -(p["p1"] + y["X"]) * y["G"] + p["p1"] * p["Gb"] + u["G"],
            "X": -p["p2"] * y["X"] + p["p3"] * (y["I"] - p["Ib"]),
            "I": -p["n"] * (y["I"] - p["Ib"]) + secretion + u["I"],
        }


@register("bergman")
def _bergman() -> Model:
    return Bergman()


# -- glucose minimal-model analysis of an IVGTT (measured insulin as forcing) ---------------------


@dataclasses.dataclass(frozen=True)
class IVGTTFit:
    """Least-squares estimates of the glucose minimal model from one IVGTT."""

    p1: float
    p2: float
    p3: float
    G0: float
    Gb: float
    Ib: float
    rmse: float  # mg/dL over the fitted samples
    n_obs: int
    success: bool
    message: str

    @property
    def SI(self) -> float:
        """Insulin sensitivity p3/p2 (mL/µU/min)."""
        return self.p3 / self.p2

    @property
    def SG(self) -> float:
        """Glucose effectiveness p1 (1/min)."""
        return self.p1


def _grid(t_obs: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Integration grid through every sample time (steps <= dt) and the samples' indices."""
    points, index = [t_obs[0]], [0]
    for a, b in zip(t_obs[:-1], t_obs[1:]):
        k = max(1, int(np.ceil((b - a) / dt - 1e-9)))
        points.extend(a + (b - a) * np.arange(1, k + 1) / k)
        index.append(len(points) - 1)
    return np.asarray(points), np.asarray(index)


def _glucose_path(theta, grid, t_ins, ins, gb, ib):
    """G on ``grid`` for ``theta = log(p1, p2, p3, G0)``; RK4, insulin linearly interpolated."""
    p1, p2, p3, g0 = jnp.exp(theta)

    def f(t, y):
        g, x = y
        i_t = jnp.interp(t, t_ins, ins)
        return jnp.stack([-(p1 + x) * g + p1 * gb, -p2 * x + p3 * (i_t - ib)])

    def step(y, ts):
        ta, tb = ts
        h = tb - ta
        k1 = f(ta, y)
        k2 = f(ta + h / 2, y + h / 2 * k1)
        k3 = f(ta + h / 2, y + h / 2 * k2)
        k4 = f(tb, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y, y[0]

    y0 = jnp.stack([g0, jnp.zeros_like(g0)])
    _, g = jax.lax.scan(step, y0, (grid[:-1], grid[1:]))
    return jnp.concatenate([g0[None], g])


def fit_ivgtt(
    t,
    glucose,
    insulin,
    *,
    gb: float | None = None,
    ib: float | None = None,
    t_min: float = 8.0,
    dt: float = 0.25,
) -> IVGTTFit:
    """Fit ``p1, p2, p3`` and ``G0`` of the glucose minimal model to an IVGTT.

    The standard analysis (Bergman et al. 1979; MINMOD, Pacini & Bergman 1986): the bolus is
    at ``t = 0``; samples at ``t <= 0`` are basal (the usual -10 and 0 min); measured insulin,
    linearly interpolated, drives ``X``; ``Gb``/``Ib`` default to the mean of the basal
    samples (the first sample where none is at ``t <= 0``); glucose samples before ``t_min``
    minutes (mixing phase) are not fitted; ``G0`` is the extrapolated glucose right after the
    bolus. Least squares on glucose (scipy's
    trust-region reflective method, exact Jacobian from JAX) over log-parameters, started from
    a few ``p2`` values because ``p2``/``p3`` are weakly identifiable separately.
    """
    t = np.asarray(t, dtype=float)
    g_obs = np.asarray(glucose, dtype=float)
    i_obs = np.asarray(insulin, dtype=float)
    if not (t.shape == g_obs.shape == i_obs.shape) or t.ndim != 1 or t.size < 5:
        raise ValueError("t, glucose and insulin must be 1-D arrays of equal length >= 5")
    if np.any(np.diff(t) <= 0):
        raise ValueError("t must be strictly increasing")
    if not t_min > 0:
        raise ValueError(f"t_min must be > 0 min (after the bolus), got {t_min}")
    basal = t <= 0
    gb = float((np.mean(g_obs[basal]) if basal.any() else g_obs[0]) if gb is None else gb)
    ib = float((np.mean(i_obs[basal]) if basal.any() else i_obs[0]) if ib is None else ib)
    # The bolus is at t = 0: integrate from there (G0 is the state at t = 0); a basal sample
    # at -10 min once moved the start there, and G0 came out 357 for a true 287.
    grid, index = _grid(np.concatenate([[0.0], t[~basal]]), dt)
    use = t >= t_min
    if use.sum() < 4:
        raise ValueError(f"fewer than 4 glucose samples at t >= t_min={t_min}")
    sel = jnp.asarray(index[1:][use[~basal]])
    target = jnp.asarray(g_obs[use])
    args = (jnp.asarray(grid), jnp.asarray(t), jnp.asarray(i_obs), gb, ib)

    from scipy.optimize import least_squares  # here: scipy.optimize costs 0.2 s to import

    def residuals(theta):
        return _glucose_path(theta, *args)[sel] - target

    res_fn = jax.jit(residuals)
    jac_fn = jax.jit(jax.jacfwd(residuals))
    best = None
    g0_guess = float(np.max(g_obs[use]) * 1.1)
    for p2 in (0.005, 0.02, 0.08):
        x0 = np.log([0.03, p2, 5e-4 * p2, g0_guess])
        sol = least_squares(
            lambda th: np.asarray(res_fn(jnp.asarray(th))),
            x0,
            jac=lambda th: np.asarray(jac_fn(jnp.asarray(th))),
            method="trf",
            x_scale="jac",
            max_nfev=500,
        )
        if best is None or sol.cost < best.cost:
            best = sol
    p1, p2, p3, g0 = np.exp(best.x)
    rmse = float(np.sqrt(np.mean(best.fun**2)))
    return IVGTTFit(
        float(p1), float(p2), float(p3), float(g0), gb, ib, rmse, int(use.sum()),
        bool(best.success), str(best.message),
    )  # fmt: skip


def predict_ivgtt(fit: IVGTTFit, t, t_ins, insulin, dt: float = 0.25) -> np.ndarray:
    """Glucose (mg/dL) of a fitted minimal model at times ``t``, insulin-forced: ``Gb``
    before the bolus (``t < 0``), ``G0`` at ``t = 0``, the model after."""
    t = np.asarray(t, dtype=float)
    after = t > 0
    grid, index = _grid(np.concatenate([[0.0], t[after]]), dt)
    theta = jnp.log(jnp.asarray([fit.p1, fit.p2, fit.p3, fit.G0]))
    g = _glucose_path(
        theta, jnp.asarray(grid), jnp.asarray(t_ins, float), jnp.asarray(insulin, float),
        fit.Gb, fit.Ib,
    )  # fmt: skip
    path = np.asarray(g)[index]
    return np.where(t < 0, fit.Gb, np.where(after, np.interp(t, grid[index], path), path[0]))
