"""Posterior draws -> population parameters, individual parameters, predictions, InferenceData.

Every population variable is named (``CL``, ``log_CL``, ``omega_CL``, ``sigma_add`` ...) and
carries ``units``; individual values are ``<P>_ind`` on dims ``(chain, draw, subject)``.
"""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np

from cohort.inference import likelihood
from cohort.inference.layout import Layout
from cohort.inference.problem import BoundModel, Pop, array_module

INTERNAL_SITES = ("z", "phi", "corr_chol")


def pops_from_samples(bm: BoundModel, samples: dict) -> Pop:
    """A :class:`Pop` whose leaves have a leading draw axis ``[S, ...]`` (flat samples);
    numpy for numpy samples, JAX inside traced code (assembled by stacking, no scatters)."""
    layout = Layout(bm)
    base = bm.default_pop()
    xp = array_module(*samples.values())
    n = next(iter(samples.values())).shape[0]

    def column(values, free, name_of, k):
        if k in free:
            return xp.asarray(samples[name_of(k)], dtype=float)
        return xp.full((n,), float(values[k]))

    def stacked(values, free, name_of):
        free = {int(k) for k in free}
        if not len(values):
            return xp.zeros((n, 0))
        return xp.stack([column(values, free, name_of, k) for k in range(len(values))], axis=1)

    theta = stacked(base.theta, layout.theta_free, lambda k: f"log_{bm.spec.params[k].name}")
    gamma = stacked(base.gamma, layout.gamma_free, lambda g: f"beta_{bm.effects[g].label}")
    omega = stacked(base.omega, layout.omega_free, lambda i: f"omega_{layout.eta_names[i]}")
    corr = samples["corr_chol"] if layout.full else xp.tile(base.corr, (n, 1, 1))
    sigma = stacked(np.zeros(2), layout.sigma_free, lambda i: ("sigma_add", "sigma_prop")[i])
    return Pop(theta, gamma, omega, corr, sigma)


def etas_from_samples(bm: BoundModel, samples: dict, pops: Pop) -> jnp.ndarray:
    """Random effects ``[S, N, q]`` from non-centred ``z`` or centred ``phi`` draws (numpy
    for numpy input)."""
    xp = array_module(*samples.values(), *pops)
    if "z" in samples:  # η = z Lᵀ per draw
        return xp.einsum("snj,sij->sni", samples["z"], bm.omega_chol(pops))
    mean = _log_params_draws(bm, pops, xp.zeros_like(samples["phi"]))
    return samples["phi"] - xp.stack([mean[..., k] for k in bm.iiv], axis=-1)


def _log_params_draws(bm: BoundModel, pops: Pop, etas):
    """``log P [S, N, K]`` for draws of the population (leaves ``[S, ...]``) and ``etas
    [S, N, q]``."""
    xp = array_module(*pops, etas)
    features = xp.asarray(bm.features, dtype=float)
    cols = []
    for k in range(len(bm.spec.params)):
        v = pops.theta[:, k, None] + xp.zeros(etas.shape[:2])
        for g, e in enumerate(bm.effects):
            if e.k == k:
                v = v + pops.gamma[:, g, None] * features[None, :, e.c]
        if k in bm.iiv:
            v = v + etas[..., bm.iiv.index(k)]
        cols.append(v)
    return xp.stack(cols, axis=-1)


def individual_params(bm: BoundModel, pops: Pop, etas: jnp.ndarray) -> dict:
    """Estimated individual parameters ``{name: [S, N]}`` (natural scale)."""
    xp = array_module(*pops, etas)
    logp = _log_params_draws(bm, pops, etas)
    return {p.name: xp.exp(logp[..., k]) for k, p in enumerate(bm.spec.params)}


def posterior_predictive(bm: BoundModel, pops: Pop, etas: jnp.ndarray, key) -> tuple:
    """Individual predictions and simulated observations ``[S, N, J]`` for each draw; ``key``
    is a JAX key or an integer seed (then the residual deviates come from numpy, which keeps
    a PRNG out of the compiled program)."""
    if isinstance(key, (int, np.integer)):
        shape = (np.shape(etas)[0], *np.shape(bm.arrays["time"]))
        eps = np.random.default_rng(key).standard_normal(shape)
    else:
        eps = jax.random.normal(key, (np.shape(etas)[0], *np.shape(bm.arrays["time"])))
    return _predictive(bm, pops, etas, eps)


def _predictive(bm: BoundModel, pops: Pop, etas, eps):
    @jax.jit
    def run(pops, etas, eps):
        preds, ok = jax.vmap(lambda p, e: bm.predict(p, e))(pops, etas)
        sims = jax.vmap(lambda p, f, z: likelihood.simulate_dv_eps(bm.error.kind, p.sigma, f, z))(
            pops, preds, eps
        )
        return preds, sims, ok

    return run(pops, etas, eps)


def to_inference_data(
    bm: BoundModel,
    samples: dict,
    diverging: np.ndarray | None,
    attrs: dict,
    predictive_draws: int = 200,
    seed: int = 0,
) -> az.InferenceData:
    """An arviz InferenceData with named, unit-annotated population and individual variables,
    observed data, sampler statistics and a posterior predictive group."""
    layout = Layout(bm)
    n_chain, n_draw = next(iter(samples.values())).shape[:2]
    # numpy throughout: a compiled program here would be compiled anew for every fit
    flat = {k: np.reshape(np.asarray(v), (-1, *v.shape[2:])) for k, v in samples.items()}
    pops = pops_from_samples(bm, flat)
    etas = etas_from_samples(bm, flat, pops)
    report, individual = layout.report(pops), individual_params(bm, pops, etas)
    units = layout.units()

    def shaped(x):
        x = np.asarray(x)
        return x.reshape(n_chain, n_draw, *x.shape[1:])

    posterior = {k: shaped(v) for k, v in report.items()}
    for name, v in individual.items():
        posterior[f"{name}_ind"] = shaped(v)
    posterior["eta"] = shaped(etas)
    ids = np.asarray(bm.data.ids)
    coords = {"subject": ids, "eta_dim": list(layout.eta_names)}
    dims = {f"{p.name}_ind": ["subject"] for p in bm.spec.params}
    dims["eta"] = ["subject", "eta_dim"]
    obs = bm.data.observations
    observed = {"dv": np.where(obs.mask, obs.dv, np.nan)}
    constant = {"time": obs.time, "mask": obs.mask, "cens": obs.cens, "row": obs.row}
    obs_dims = {k: ["subject", "obs"] for k in ("dv", "time", "mask", "cens", "row", "ipred")}
    sample_stats = {"diverging": diverging} if diverging is not None else None
    groups = {}
    stride = max(1, (n_chain * n_draw) // max(1, predictive_draws))
    take = np.arange(0, n_chain * n_draw, stride)
    if predictive_draws and n_draw * n_chain:
        sub = jax.tree_util.tree_map(lambda x: np.asarray(x)[take], pops)
        preds, sims, _ = posterior_predictive(bm, sub, np.asarray(etas)[take], int(seed))
        mask = obs.mask[None]
        groups["posterior_predictive"] = {
            "dv": np.where(mask, np.asarray(sims), np.nan)[None],
            "ipred": np.where(mask, np.asarray(preds), np.nan)[None],
        }
    idata = az.from_dict(
        posterior=posterior,
        observed_data=observed,
        constant_data=constant,
        sample_stats=sample_stats,
        coords={**coords, "obs": np.arange(obs.time.shape[1])},
        dims={**dims, **obs_dims},
        attrs={k: str(v) if isinstance(v, (dict, list, tuple)) else v for k, v in attrs.items()},
        **groups,
    )
    for name in idata.posterior.data_vars:
        base = name[:-4] if name.endswith("_ind") else name
        if base in units:
            idata.posterior[name].attrs["units"] = units[base]
    return idata


def population_names(bm: BoundModel) -> list[str]:
    """Names of the estimated population quantities (no fixed ones, no log duplicates)."""
    layout = Layout(bm)
    fixed = layout.fixed_names()
    return [n for n in layout.report(bm.default_pop()) if n not in fixed]
