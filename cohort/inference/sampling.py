"""Run NUTS and SVI on the numpyro model of a bound NLME (draws grouped by chain)."""

from __future__ import annotations

import dataclasses
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO, init_to_value
from numpyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from numpyro.optim import optax_to_numpyro

from cohort.inference.bayes import Priors, build_model, chain_inits, check_start
from cohort.inference.problem import BoundModel

GUIDES = {
    "normal": AutoNormal,
    "multivariate": AutoMultivariateNormal,
    "lowrank": AutoLowRankMultivariateNormal,
}
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
    devices = jax.local_device_count()
    if requested is None:
        return "parallel" if devices >= chains > 1 else "vectorized"
    if requested not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {requested!r}")
    if requested == "parallel" and devices < chains:
        import cohort

        warnings.warn(
            f"chain_method='parallel' needs {chains} devices but JAX sees {devices}; numpyro "
            "would silently run the chains one after another, so they run vectorized. Set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={chains} before importing JAX "
            "to run them in parallel on CPU cores",
            cohort.CohortWarning,
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
    """NUTS from ``init`` (constrained site values), each chain jittered around it."""
    model = build_model(bm, priors, parameterization)
    check_start(model, bm.arrays, init)
    kernel = NUTS(model, target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    method = _chain_method(chain_method, chains)
    mcmc = MCMC(
        kernel,
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method=method,
        progress_bar=progress_bar,
    )
    key_init, key_run = jax.random.split(jax.random.PRNGKey(seed))
    starts = chain_inits(init, chains, key_init)
    if chains == 1:
        starts = {k: v[0] for k, v in starts.items()}
    t0 = time.perf_counter()
    mcmc.run(key_run, bm.arrays, init_params=starts, extra_fields=("diverging", "num_steps"))
    samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
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
    ``normal`` (mean field), ``multivariate`` (full covariance) or ``lowrank``."""
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {list(GUIDES)}, got {guide!r}")
    model = build_model(bm, priors, "noncentered")
    check_start(model, bm.arrays, init)
    kwargs = {"init_loc_fn": init_to_value(values=init)}
    if guide == "lowrank" and rank is not None:
        kwargs["rank"] = rank
    if guide != "normal":
        kwargs["init_scale"] = 0.01
    auto = GUIDES[guide](model, **kwargs)
    schedule = optax.exponential_decay(learning_rate, steps, 0.1)
    optim = optax_to_numpyro(optax.chain(optax.clip_by_global_norm(100.0), optax.adam(schedule)))
    svi = SVI(model, auto, optim, Trace_ELBO())
    key_fit, key_draw = jax.random.split(jax.random.PRNGKey(seed))
    t0 = time.perf_counter()
    result = svi.run(key_fit, steps, bm.arrays, progress_bar=False)
    sites = auto.sample_posterior(key_draw, result.params, sample_shape=(draws,))
    samples = {k: np.asarray(v)[None] for k, v in jax.block_until_ready(sites).items()}
    seconds = time.perf_counter() - t0
    losses = np.asarray(result.losses)
    tail = losses[-max(1, steps // 10) :]
    info = {
        "guide": guide,
        "final_loss": float(np.mean(tail)),
        "loss_sd": float(np.std(tail)),
        "steps": steps,
    }
    return Draws(samples, None, seconds, "svi", info)


def stack_chains(samples: dict) -> dict:
    """``[chain, draw, ...] -> [chain * draw, ...]``."""
    return {k: jnp.reshape(v, (-1, *v.shape[2:])) for k, v in samples.items()}
