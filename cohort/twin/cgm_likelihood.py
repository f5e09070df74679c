"""The CGM twin's likelihood: which parameters a prior estimates (the layout of the
unconstrained vector ``z``), the prior's moments, ``t1d_minimal``'s parameters of one patient
from ``z`` and its records, and the CGM log-likelihood with AR(1)-correlated residuals (sensor
noise and model misfit are serially correlated at 5-min sampling; independent errors would
make the posterior far too narrow)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cohort.models.glucose.t1d_minimal import basal_plasma_insulin
from cohort.twin.cgm_solve import glucose_curves, trajectory
from cohort.twin.prior import TwinError, TwinPrior

TRAJECTORY_KEY = {"CGM": "IG", "BG": "G", "insulin": "I"}
# parameters that may vary between occasions ([iov]): those the solver takes per minute
IOV_LENGTH = {"Gb": 0, "SG": 0, "SI": 1}  # extra entries beyond the T steps (SI: T + 1 points)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static structure of the unconstrained vector ``z = μ + L·η``: estimated model
    parameters (log), the initial glucose ``G0`` (mg/dL) if estimated, the log residual SD
    and the logit AR(1) correlation if estimated, then (with ``[iov]``) the log factors κ of
    the ``iov`` parameters, occasion by occasion (``n_occ`` occasions of ``iov_interval``
    minutes from the first record)."""

    estimated: tuple[str, ...]
    fixed: tuple[str, ...]
    output: str
    sigma: bool  # log residual SD estimated
    ar1: bool  # logit AR(1) correlation estimated
    ar1_interval: float
    kind: str
    g0: bool = False  # initial glucose estimated (prior centred on the first reading)
    iov: tuple[str, ...] = ()
    iov_sd: tuple[float, ...] = ()
    iov_interval: float = 1440.0
    n_occ: int = 1

    @property
    def insulin_fixed(self) -> bool:
        return not set(self.estimated) & {"kd", "ka2", "ke", "VI"}

    @property
    def names(self) -> tuple[str, ...]:
        extra = ("G0",) * self.g0 + ("sigma",) * self.sigma + ("ar1",) * self.ar1
        occ = tuple(f"{p}_occ{k + 1}" for k in range(self.n_occ) for p in self.iov)
        return (*self.estimated, *extra, *occ)

    @property
    def iov_index(self) -> int:
        """Index in ``z`` of the first occasion factor (after the error parameters)."""
        return self.error_index + self.sigma + self.ar1

    @property
    def error_index(self) -> int:
        """Index in ``z`` of the first error parameter (after the model's)."""
        return len(self.estimated) + self.g0


def n_occasions(interval: float, n_min: int) -> int:
    """Occasions of ``interval`` minutes covering a grid of ``n_min`` minutes."""
    return max(1, -(-int(n_min) // int(interval)))


def layout(prior: TwinPrior, n_min: int = 0) -> Layout:
    """The layout of ``prior``'s twins on records spanning ``n_min`` minutes (the number of
    occasions of its ``[iov]``, if any)."""
    if prior.model.name != "t1d_minimal":
        raise TwinError(
            f"prior {prior.name!r} is for the model {prior.model.name!r}; CGM twins use "
            "t1d_minimal (e.g. priors/t1d_cgm_twin.toml)"
        )
    if prior.output not in TRAJECTORY_KEY:
        raise TwinError(f"prior {prior.name!r}: error.output must be one of {list(TRAJECTORY_KEY)}")
    if not prior.eta_names:
        raise TwinError(f"prior {prior.name!r}: [iiv] names no parameter to estimate")
    err = prior.spec.error
    fixed = tuple(n for n in prior.names if n not in prior.eta_names)
    occ = prior.spec.iov
    if occ is not None:
        other = [n for n in occ.parameters if n not in IOV_LENGTH]
        if other:
            raise TwinError(
                f"prior {prior.name!r}: [iov] on {other}: CGM twins let {list(IOV_LENGTH)} "
                "vary between occasions"
            )
    iov = {} if occ is None else {
        "iov": occ.parameters,
        "iov_sd": occ.sd,
        "iov_interval": occ.interval,
        "n_occ": n_occasions(occ.interval, n_min),
    }  # fmt: skip
    return Layout(
        prior.eta_names,
        fixed,
        prior.output,
        err.add_sd_log is not None,
        err.ar1_sd_logit is not None,
        float(err.ar1_interval or 5.0),
        prior.error[0],
        err.initial_sd is not None,
        **iov,
    )


def prior_moments(prior: TwinPrior, lay: Layout, mu_model: np.ndarray, first: np.ndarray):
    """``μ [N, q]`` and the prior Cholesky factor ``L [q, q]`` of ``z``; ``first [N]``: each
    patient's first reading, the centre of its initial glucose (used when it is estimated)."""
    err = prior.spec.error
    n = mu_model.shape[0]
    cols, sds = [mu_model[:, [prior.names.index(k) for k in lay.estimated]]], []
    if lay.g0:
        cols.append(np.asarray(first, float).reshape(n, 1))
        sds.append(err.initial_sd)
    if lay.sigma:
        cols.append(np.full((n, 1), np.log(err.add)))
        sds.append(err.add_sd_log)
    if lay.ar1:
        cols.append(np.full((n, 1), np.log(err.ar1 / (1.0 - err.ar1))))
        sds.append(err.ar1_sd_logit)
    if lay.iov:  # κ ~ N(0, sd²) per occasion
        cols.append(np.zeros((n, lay.n_occ * len(lay.iov))))
        sds.extend(list(lay.iov_sd) * lay.n_occ)
    q = len(lay.names)
    chol = np.zeros((q, q))
    k = len(lay.estimated)
    chol[:k, :k] = np.linalg.cholesky(prior.omega)
    chol[k:, k:] = np.diag(sds)
    return np.concatenate(cols, axis=1), chol


def model_params(lay: Layout, z, d, basal_scale=1.0):
    """The ``t1d_minimal`` parameter dict of one patient from ``z`` and its data ``d``."""
    p = {k: jnp.exp(z[i]) for i, k in enumerate(lay.estimated)}
    p.update({k: d["fixed"][j] for j, k in enumerate(lay.fixed)})
    g0 = z[len(lay.estimated)] if lay.g0 else d["G0"]
    p.update(BW=d["BW"], G0=g0, basal=d["u0"] * basal_scale)
    p["Ib"] = basal_plasma_insulin(p, d["u0"])  # glucose rests at Gb on the usual basal
    for k, v in d["defaults"].items():
        p.setdefault(k, v)
    if lay.iov:  # per-minute values: each occasion's factor exp(κ)
        n_min = d["meal"].shape[-1]
        occ = jnp.minimum(jnp.arange(n_min + 1) // int(lay.iov_interval), lay.n_occ - 1)
        kappa = z[lay.iov_index :].reshape(lay.n_occ, len(lay.iov))
        for j, name in enumerate(lay.iov):
            p[name] = p[name] * jnp.exp(kappa[occ[: n_min + IOV_LENGTH[name]], j])
    return p


def loglik(lay: Layout, z, d, add: float, prop: float, ar1: float):
    p = model_params(lay, z, d)
    if lay.insulin_fixed:  # plasma insulin computed once per patient when binding
        traj = {**glucose_curves(p, d["meal"], d["plasma"]), "I": d["plasma"]}
    else:
        traj = trajectory(p, d["meal"], d["basal"] + d["bolus"])
    f = traj[TRAJECTORY_KEY[lay.output]][d["obs_idx"]]
    k = lay.error_index
    sd_add = jnp.exp(z[k]) if lay.sigma else add
    phi = jax.nn.sigmoid(z[k + lay.sigma]) if lay.ar1 else ar1
    s = jnp.sqrt(sd_add**2 + (prop * f) ** 2)
    r = (d["dv"] - f) / s  # standardised residuals
    first = ~jnp.isfinite(d["lag"])
    lag = jnp.where(first, 1.0, d["lag"])
    rho = jnp.where(first, 0.0, phi ** (lag / lay.ar1_interval)) if (lay.ar1 or ar1) else 0.0
    prev = jnp.concatenate([jnp.zeros(1, r.dtype), r[:-1]])
    var = 1.0 - rho * rho
    e = r - rho * prev
    terms = -0.5 * e * e / var - 0.5 * jnp.log(2 * jnp.pi * var) - jnp.log(s)
    # An estimated G0's prior, centred on the first reading, is that reading's error term
    # (the normal density is symmetric): counting both would use the reading twice. It still
    # conditions the next residual through the AR(1) term.
    weight = d["mask"] * (~first if lay.g0 else 1.0)
    ll = jnp.sum(weight * terms)
    return jnp.where(jnp.isfinite(ll), ll, -jnp.inf)


@functools.lru_cache(maxsize=16)
def potential_factory(lay: Layout, add: float, prop: float, ar1: float):
    """``make_potential(chol) -> u(η, d)``: ``½|η|² − log p(y | μ + Lη)`` (one per layout, so
    the compiled programs are reused)."""

    def make_potential(chol):
        def u(eta, d):
            z = d["mu"] + chol @ eta
            return 0.5 * jnp.sum(eta * eta) - loglik(lay, z, d, add, prop, ar1)

        return u

    return make_potential


def natural(lay: Layout, z: np.ndarray) -> np.ndarray:
    """``z`` on the natural scale: exp for parameters and SD, G0 as it is (mg/dL), logistic
    for the AR(1) ρ, and for each occasion its value of each ``iov`` parameter."""
    k, e = len(lay.estimated), lay.error_index
    s, o = e + lay.sigma, lay.iov_index
    parts = [np.exp(z[..., :k]), z[..., k:e], np.exp(z[..., e:s])]
    parts.append(1.0 / (1.0 + np.exp(-z[..., s:o])))
    if lay.iov:
        base = z[..., [lay.estimated.index(n) for n in lay.iov] * lay.n_occ]
        parts.append(np.exp(base + z[..., o:]))
    return np.concatenate(parts, axis=-1)
