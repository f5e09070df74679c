"""The numpyro hierarchical model of a bound NLME, and its NUTS and SVI fits.

Sites: ``log_<P>`` (log typical values), ``beta_<P>~<cov>``
(covariate coefficients on the log scale), ``omega_<P>`` (IIV SDs), ``corr_chol`` (LKJ, full Ω
only), ``sigma_add``/``sigma_prop`` and, per subject, ``z`` (non-centred: η = L z) or ``phi``
(centred: the individual log parameters themselves, better when subjects are data-rich).
Failed ODE solves give a ``-inf`` log density (never NaN), which NUTS rejects as a divergence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import scipy.linalg
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from cohort.errors import OptionError
from cohort.inference.layout import Layout
from cohort.inference.likelihood import LOG_2PI
from cohort.inference.problem import BoundModel, Pop

PARAMETERIZATIONS = ("noncentered", "centered")


@dataclasses.dataclass(frozen=True)
class Priors:
    """Prior scales: log typical values ``N(log init, typical_sd)`` unless a Param sets its own;
    covariate coefficients ``N(0, beta_sd)``; IIV SDs ``HalfNormal(omega_scale)``; additive SD
    ``HalfNormal(add_scale)`` (None: the SD of the data); proportional SD
    ``HalfNormal(prop_scale)``; LKJ concentration ``lkj``."""

    typical_sd: float = 2.0
    beta_sd: float = 1.0
    omega_scale: float = 1.0
    add_scale: float | None = None
    prop_scale: float = 0.5
    lkj: float = 2.0


def _prior_locs(bm: BoundModel, priors: Priors) -> tuple[np.ndarray, np.ndarray]:
    base = bm.default_pop()
    locs, scales = [], []
    for k, p in enumerate(bm.spec.params):
        if p.prior is not None:
            locs.append(np.log(p.prior[0]))
            scales.append(p.prior[1])
        else:
            locs.append(float(base.theta[k]))
            scales.append(priors.typical_sd)
    return np.asarray(locs), np.asarray(scales)


def build_model(
    bm: BoundModel, priors: Priors = Priors(), parameterization: str = "noncentered"
) -> Callable:
    """A numpyro model function ``model(arrays)`` for ``bm`` (arrays: ``bm.arrays``)."""
    if parameterization not in PARAMETERIZATIONS:
        raise OptionError(f"parameterization must be one of {PARAMETERIZATIONS}")
    layout = Layout(bm)
    base = bm.default_pop()
    spec = bm.spec
    locs, scales = _prior_locs(bm, priors)
    dv = np.asarray(bm.arrays["dv"])[np.asarray(bm.arrays["mask"])]
    if spec.error.kind == "log-additive":
        add_scale = priors.add_scale or 1.0
    else:
        add_scale = priors.add_scale or float(np.std(dv)) or 1.0
    q = bm.n_eta
    theta_names = [f"log_{spec.params[k].name}" for k in layout.theta_free]
    beta_names = [f"beta_{bm.effects[g].label}" for g in layout.gamma_free]
    omega_names = [f"omega_{layout.eta_names[i]}" for i in layout.omega_free]
    sigma_names = [("sigma_add", "sigma_prop")[i] for i in layout.sigma_free]

    def assemble(sites: dict) -> Pop:  # by stacking: no scatter ops in the gradient graph
        def merge(values, free, names):
            pos = {int(k): n for k, n in zip(free, names)}
            if not len(values):
                return jnp.asarray(values)
            return jnp.stack([sites[pos[k]] if k in pos else values[k] for k in range(len(values))])

        theta = merge(base.theta, layout.theta_free, theta_names)
        gamma = merge(base.gamma, layout.gamma_free, beta_names)
        omega = merge(base.omega, layout.omega_free, omega_names)
        corr = sites["corr_chol"] if layout.full else base.corr
        sigma = merge(base.sigma, layout.sigma_free, sigma_names)
        return Pop(theta, gamma, omega, corr, sigma)

    # Whole compiled units: numpyro also runs the model eagerly (guide setup, init checks),
    # where op-by-op dispatch would compile hundreds of tiny kernels one at a time.
    @jax.jit
    def centred_prior(sites, features):
        pop = assemble(sites)
        n = features.shape[0]
        logp = bm.log_params(pop, jnp.zeros((n, q)), features)
        mean = jnp.stack([logp[:, k] for k in bm.iiv], axis=-1)  # slices, not a gather
        return mean, bm.omega_chol(pop)

    @jax.jit
    def loglik(sites, latent, arrays):
        pop = assemble(sites)
        prior = 0.0
        # diagonal Ω: elementwise scaling (no triangular solves or matmuls in the gradient)
        if parameterization == "noncentered":
            eta = latent @ bm.omega_chol(pop).T if layout.correlated else latent * pop.omega
        else:  # the N(mean, Ω) prior of the centred individual parameters, written out
            mean, chol = centred_prior(sites, arrays["features"])
            eta = latent - mean
            if layout.correlated:
                white = jax.scipy.linalg.solve_triangular(chol, eta.T, lower=True)
                logdet = jnp.sum(jnp.log(jnp.diag(chol)))
            else:
                white, logdet = eta / pop.omega, jnp.sum(jnp.log(pop.omega))
            prior = -0.5 * jnp.sum(white**2) - eta.shape[0] * (logdet + 0.5 * q * LOG_2PI)
        f, ok = bm.predict(pop, eta, arrays)
        ll = bm.loglik_obs(pop.sigma, f, arrays)
        return prior + jnp.sum(jnp.where(ok, jnp.sum(ll, axis=1), -jnp.inf))

    def model(arrays):
        sites = {}
        for k, name in zip(layout.theta_free, theta_names):
            sites[name] = numpyro.sample(name, dist.Normal(locs[k], scales[k]))
        for name in beta_names:
            sites[name] = numpyro.sample(name, dist.Normal(0.0, priors.beta_sd))
        for name in omega_names:
            sites[name] = numpyro.sample(name, dist.HalfNormal(priors.omega_scale))
        if layout.full:
            sites["corr_chol"] = numpyro.sample("corr_chol", dist.LKJCholesky(q, priors.lkj))
        scale = {"sigma_add": add_scale, "sigma_prop": priors.prop_scale}
        for name in sigma_names:
            sites[name] = numpyro.sample(name, dist.HalfNormal(scale[name]))
        n = arrays["time"].shape[0]
        with numpyro.plate("subject", n):
            if parameterization == "noncentered":
                latent = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([q]).to_event(1))
            else:  # flat here; its Gaussian prior is part of the compiled log density below
                flat = dist.ImproperUniform(constraints.real, (), event_shape=(q,))
                latent = numpyro.sample("phi", flat)
        numpyro.factor("loglik", loglik(sites, latent, arrays))

    return model


def init_values(
    bm: BoundModel, pop: Pop, eta: np.ndarray, parameterization: str
) -> dict[str, jnp.ndarray]:
    """Site values that reproduce ``pop`` and the modes ``eta`` (e.g. from the ML fit)."""
    layout = Layout(bm)
    spec = bm.spec
    pop = Pop(*(np.asarray(a, dtype=float) for a in pop))  # numpy: no eager JAX ops
    values = {f"log_{spec.params[k].name}": pop.theta[k] for k in layout.theta_free}
    values.update({f"beta_{bm.effects[g].label}": pop.gamma[g] for g in layout.gamma_free})
    values.update({f"omega_{layout.eta_names[i]}": pop.omega[i] for i in layout.omega_free})
    if layout.full:
        values["corr_chol"] = pop.corr
    for i in layout.sigma_free:
        values[("sigma_add", "sigma_prop")[i]] = pop.sigma[i]
    eta = np.asarray(eta, dtype=float)
    if parameterization == "noncentered":
        chol = bm.omega_chol(pop)
        values["z"] = scipy.linalg.solve_triangular(chol, eta.T, lower=True).T
    else:
        mean = bm.log_params(pop, np.zeros_like(eta), np.asarray(bm.features, dtype=float))
        values["phi"] = mean[:, list(bm.iiv)] + eta
    return values


def _support(name: str):
    if name.startswith(("omega_", "sigma_")):
        return constraints.positive
    if name == "corr_chol":
        return constraints.corr_cholesky
    return constraints.real


def _unconstrain(name: str, value) -> np.ndarray:
    """The unconstrained value of a site (numpy for the common supports)."""
    support = _support(name)
    if support is constraints.positive:
        return np.log(np.asarray(value, dtype=float))
    if support is constraints.real:
        return np.asarray(value, dtype=float)
    return np.asarray(biject_to(support).inv(jnp.asarray(value)))


def chain_inits(values: dict, n_chains: int, seed: int = 0, jitter: float = 0.1) -> dict:
    """Unconstrained per-chain starting points ``[chains, ...]``: ``values`` plus small
    independent jitter, so chains start apart (R-hat stays meaningful) but inside the same
    mode. Plain numpy (no eager JAX ops to compile)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, v in sorted(values.items()):
        u = _unconstrain(name, v)
        out[name] = u[None] + jitter * rng.normal(size=(n_chains, *u.shape))
    return out


START_ERROR = (
    "the log density at the starting values is not finite: a prediction failed there "
    "(for ODE models raise ode_options.max_steps or loosen rtol/atol) or the data are "
    "impossible under the starting values; give better inits"
)


def check_start(model: Callable, arrays: dict, values: dict) -> None:
    """Raise if the log density at the starting values is not finite (e.g. every ODE solve of
    a subject fails there): numpyro would otherwise leave the chain stuck at that point."""
    from numpyro.infer.util import log_density

    value = jax.jit(lambda v: log_density(model, (arrays,), {}, v)[0])(values)
    if not bool(jnp.isfinite(value)):
        raise OptionError(START_ERROR)
