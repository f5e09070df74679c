"""Run NUTS and SVI on the numpyro model of a bound NLME (draws grouped by chain)."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import constrain_fn, potential_energy

from cohort.errors import CohortWarning, OptionError
from cohort.inference.bayes import START_ERROR, Priors, build_model, chain_inits
from cohort.inference.problem import BoundModel

GUIDES = ("normal", "multivariate", "lowrank")
CHAIN_METHODS = ("vectorized", "parallel", "sequential")


@dataclasses.dataclass
class Draws:
    """Posterior draws ``{site: [chain, draw, ...]}`` with sampler statistics."""

    samples: dict
    diverging: np.ndarray | None
    seconds: float
    method: str
    info: dict


def _chain_method(requested: str | None, chains: int) -> str:
    """Default: ``parallel`` when JAX has a device per chain (on CPU: ``XLA_FLAGS=
    --xla_force_host_platform_device_count=N`` set before JAX starts, as ``cohort fit`` does)
    and more than one core, else ``vectorized`` (all chains in one program, ~2× faster than
    numpyro's fallback of running them one after another)."""
    devices = jax.local_device_count()
    if requested is None:
        cores = os.cpu_count() or 1
        return "parallel" if devices >= chains > 1 and cores > 1 else "vectorized"
    if requested not in CHAIN_METHODS:
        raise OptionError(f"chain_method must be one of {CHAIN_METHODS}, got {requested!r}")
    if requested == "parallel" and devices < chains:
        warnings.warn(
            f"chain_method='parallel' needs {chains} devices but JAX sees {devices}; numpyro "
            "would silently run the chains one after another, so they run vectorized. Set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={chains} before importing JAX "
            "to run them in parallel on CPU cores",
            CohortWarning,
            stacklevel=3,
        )
        return "vectorized"
    return requested


def run_nuts(
    bm: BoundModel,
    init: dict,
    *,
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    chain_method: str | None = None,
    seed: int = 0,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    parameterization: str = "noncentered",
    priors: Priors = Priors(),
    progress_bar: bool = False,
) -> Draws:
    """NUTS from ``init`` (constrained site values), each chain jittered around it.

    The sampler gets the model's potential with the data closed over as constants (XLA folds
    the data-only parts of the likelihood, such as masks, dose timing and compartment
    selection, out of every leapfrog step; passing the data as model arguments kept them in
    and cost ~2× per step); draws are mapped back to the constrained sites in one compiled
    call.
    """
    model = build_model(bm, priors, parameterization)
    arrays = bm.arrays

    def potential(z):
        return potential_energy(model, (arrays,), {}, z)

    starts = chain_inits(init, chains, seed)
    first = jax.jit(potential)({k: v[0] for k, v in starts.items()})
    if not np.isfinite(float(first)):
        raise OptionError(START_ERROR)
    kernel = NUTS(
        potential_fn=potential, target_accept_prob=target_accept, max_tree_depth=max_tree_depth
    )
    method = _chain_method(chain_method, chains)
    mcmc = MCMC(
        kernel,
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method=method,
        progress_bar=progress_bar,
    )
    if chains == 1:
        starts = {k: v[0] for k, v in starts.items()}
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), init_params=starts, extra_fields=("diverging", "num_steps"))
    unconstrained = mcmc.get_samples(group_by_chain=True)
    samples = jax.device_get(
        jax.jit(lambda u: constrain_fn(model, (arrays,), {}, u, batch_ndims=2))(unconstrained)
    )
    seconds = time.perf_counter() - t0
    extra = mcmc.get_extra_fields(group_by_chain=True)
    diverging = np.asarray(extra["diverging"])
    samples = {k: np.asarray(v) for k, v in samples.items()}
    info = {
        "chain_method": method,
        "parameterization": parameterization,
        "mean_leapfrog_steps": float(np.mean(extra["num_steps"])),
    }
    return Draws(samples, diverging, seconds, "nuts", info)


def _gaussian_guide(kind: str, dim: int, rank: int, loc0, init_scale: float, seed: int):
    """Initial parameters, sampler and entropy of a Gaussian over the unconstrained latents:
    ``normal`` (diagonal), ``multivariate`` (full Cholesky factor) or ``lowrank``
    (``W Wᵀ + diag σ²``); scales are kept positive through ``softplus``."""
    inv_softplus = float(np.log(np.expm1(init_scale)))
    params = {"loc": jnp.asarray(loc0), "diag": jnp.full(dim, inv_softplus)}
    if kind == "multivariate":
        params["tril"] = jnp.zeros((dim, dim))
    elif kind == "lowrank":
        rng = np.random.default_rng([seed, 1])
        params["factor"] = jnp.asarray(1e-3 * init_scale * rng.standard_normal((dim, rank)))

    def draw(par, eps):  # eps [..., dim] (+ [..., rank] for lowrank)
        sd = jax.nn.softplus(par["diag"])
        if kind == "normal":
            return par["loc"] + sd * eps[..., :dim]
        if kind == "multivariate":
            chol = jnp.tril(par["tril"], -1) + jnp.diag(sd)
            return par["loc"] + eps[..., :dim] @ chol.T
        return par["loc"] + sd * eps[..., :dim] + eps[..., dim:] @ par["factor"].T

    def entropy(par):  # up to the constant dim/2·log(2πe)
        sd = jax.nn.softplus(par["diag"])
        if kind != "lowrank":
            return jnp.sum(jnp.log(sd))
        w = par["factor"] / sd[:, None]
        small = jnp.eye(w.shape[1]) + w.T @ w  # matrix determinant lemma
        return jnp.sum(jnp.log(sd)) + 0.5 * jnp.linalg.slogdet(small)[1]

    n_eps = dim + (rank if kind == "lowrank" else 0)
    return params, draw, entropy, n_eps


GRADIENT_CHECK_DRAWS = 64


def run_svi(
    bm: BoundModel,
    init: dict,
    *,
    guide: str = "multivariate",
    steps: int = 10_000,
    learning_rate: float = 0.01,
    draws: int = 1000,
    seed: int = 0,
    rank: int | None = None,
    priors: Priors = Priors(),
) -> Draws:
    """Stochastic variational inference (Adam via optax) from ``init``; ``guide`` is
    ``normal`` (mean field), ``multivariate`` (full covariance) or ``lowrank``: a Gaussian on
    the unconstrained latents (numpyro's AutoNormal / AutoMultivariateNormal /
    AutoLowRankMultivariateNormal family), fitted by maximising the one-sample ELBO with the
    Gaussian entropy in closed form. The potential comes from numpyro's
    ``potential_energy``; optimisation and the posterior draws each run as one compiled
    program (no eager model runs to set up a guide, no per-step host work)."""
    if guide not in GUIDES:
        raise OptionError(f"guide must be one of {list(GUIDES)}, got {guide!r}")
    model = build_model(bm, priors, "noncentered")
    start = {k: v[0] for k, v in chain_inits(init, 1, jitter=0.0).items()}
    names = sorted(start)
    shapes = {k: start[k].shape for k in names}
    sizes = [int(np.prod(shapes[k])) for k in names]
    loc0 = np.concatenate([start[k].ravel() for k in names])
    dim = loc0.size
    rank_ = rank if rank is not None else max(1, int(round(np.sqrt(dim))))
    params, draw, entropy, n_eps = _gaussian_guide(
        guide, dim, rank_, loc0, 0.1 if guide == "normal" else 0.01, seed
    )

    def unflatten(u):
        out, k = {}, 0
        for name, n in zip(names, sizes):
            out[name] = u[..., k : k + n].reshape(u.shape[:-1] + shapes[name])
            k += n
        return out

    arrays = bm.arrays  # closed over: constants XLA folds into each step (see run_nuts)

    def loss(par, eps):
        u = draw(par, eps)
        energy = potential_energy(model, (arrays,), {}, unflatten(u))
        return energy - entropy(par)

    schedule = optax.exponential_decay(learning_rate, steps, 0.1)
    optim = optax.chain(optax.clip_by_global_norm(100.0), optax.adam(schedule))

    @jax.jit
    def optimise(par, noise, noise_draws, noise_check):  # fit, draws and check: one program
        def step(carry, eps):
            par, state = carry
            value, grads = jax.value_and_grad(loss)(par, eps)
            updates, state = optim.update(grads, state, par)
            return (optax.apply_updates(par, updates), state), value

        (par, _), losses = jax.lax.scan(step, (par, optim.init(par)), noise)
        u = unflatten(draw(par, noise_draws))
        # the ELBO's gradient at the result, over fresh noise: ~0 at an optimum
        grads = jax.vmap(lambda eps: jax.grad(loss)(par, eps))(noise_check)
        flat = jnp.concatenate(
            [g.reshape(noise_check.shape[0], -1) for g in jax.tree.leaves(grads)], 1
        )
        return losses, constrain_fn(model, (arrays,), {}, u, batch_ndims=1), flat

    # The Monte Carlo noise comes from numpy (seeded): a JAX PRNG (threefry) inside the
    # compiled step would dominate its compile time, and the whole stream is small.
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    noise = rng.standard_normal((steps, n_eps))
    losses, sites, grads = jax.device_get(
        optimise(
            params,
            noise,
            rng.standard_normal((draws, n_eps)),
            rng.standard_normal((GRADIENT_CHECK_DRAWS, n_eps)),
        )
    )
    grads = np.asarray(grads)
    gradient_z = np.abs(grads.mean(0)) / (
        grads.std(0, ddof=1) / np.sqrt(GRADIENT_CHECK_DRAWS) + 1e-12
    )
    if not np.isfinite(losses[0]):  # the first draw sits within ~1 % of the start
        raise OptionError(START_ERROR)
    samples = {k: np.asarray(v)[None] for k, v in sites.items()}
    seconds = time.perf_counter() - t0
    losses = np.asarray(losses)
    width = max(1, steps // 10)
    tail, before = losses[-width:], losses[-2 * width : -width]
    info = {
        "guide": guide,
        "final_loss": float(np.mean(tail)),
        "loss_sd": float(np.std(tail)),
        "steps": steps,
        # how much the loss still fell between the last two tenths of the steps, and that
        # difference's standard error (the one-sample ELBO is noisy): a fit still descending
        # is not converged (see fit.svi_unconverged)
        "loss_drift": float(np.mean(before) - np.mean(tail)) if before.size else float("inf"),
        "loss_drift_se": float(
            np.sqrt(np.var(before) / max(before.size, 1) + np.var(tail) / tail.size)
        ),
        # the largest |mean| / standard error of the ELBO gradient's coordinates at the
        # result (fresh noise): far from zero, the guide has not reached its optimum
        "max_gradient_z": float(np.max(gradient_z, initial=0.0)),
    }
    return Draws(samples, None, seconds, "svi", info)


def stack_chains(samples: dict) -> dict:
    """``[chain, draw, ...] -> [chain * draw, ...]``."""
    return {k: jnp.reshape(v, (-1, *v.shape[2:])) for k, v in samples.items()}
