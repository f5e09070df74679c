"""Diagnostic figures of a fit: goodness of fit, visual predictive check, individual profiles.

matplotlib with the Agg backend (files only, nothing is shown). Bayesian fits are plotted at
their posterior means; the VPC draws population parameters from the posterior when there is
one and simulates new subjects on the observed design either way.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cohort.errors import show_id
from cohort.inference import laplace, likelihood  # noqa: E402
from cohort.inference.posterior import pops_from_samples  # noqa: E402
from cohort.inference.results import FitResult  # noqa: E402
from cohort.store import claim_file, report_directory  # noqa: E402
from cohort.store.figures import save_figure  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    return save_figure(fig, path, dpi=100)


def _units(fit: FitResult) -> tuple[str, str]:
    spec = fit.bound.spec
    out = next((o.units for o in spec.model.outputs if o.name == spec.output), "")
    return out, spec.model.time_units


def gof(fit: FitResult, path: str | Path) -> Path:
    """DV vs PRED and IPRED (identity lines), CWRES vs time and vs PRED."""
    p = fit.predictions()
    keep = p["mask"] & ~p["cens"]
    cw = np.asarray(
        jax.jit(lambda pop, eta: laplace.cwres(fit.bound, pop, eta, fit.bound.arrays))(
            fit.pop, fit.eta
        )
    )
    dv_u, t_u = _units(fit)
    fig, axes = plt.subplots(2, 2, figsize=(9, 8))
    for ax, key, label in ((axes[0, 0], "pred", "PRED"), (axes[0, 1], "ipred", "IPRED")):
        x, y = p[key][keep], p["dv"][keep]
        ax.scatter(x, y, s=12, alpha=0.7)
        lim = [0.0, float(max(x.max(initial=0), y.max(initial=0))) * 1.05]
        ax.plot(lim, lim, "k--", lw=1)
        ax.set_xlabel(f"{label} [{dv_u}]")
        ax.set_ylabel(f"DV [{dv_u}]")
    for ax, x, label in (
        (axes[1, 0], p["time"][keep], f"time [{t_u}]"),
        (axes[1, 1], p["pred"][keep], f"PRED [{dv_u}]"),
    ):
        ax.scatter(x, cw[keep], s=12, alpha=0.7)
        ax.axhline(0.0, color="k", lw=1)
        for h in (-2, 2):
            ax.axhline(h, color="k", lw=0.8, ls=":")
        ax.set_xlabel(label)
        ax.set_ylabel("CWRES")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{fit.bound.spec.model.name}: goodness of fit ({fit.method})")
    return _save(fig, path)


def _population_draws(fit: FitResult, n: int, key):
    """``n`` population parameter sets: posterior draws, or the point estimate repeated."""
    if fit.idata is None:
        return jax.tree_util.tree_map(
            lambda x: jnp.broadcast_to(jnp.asarray(x), (n, *np.shape(x))), fit.pop
        )
    post = fit.idata.posterior
    names = [k for k in post.data_vars]
    flat = {}
    for k in names:
        v = post[k].values
        flat[k] = v.reshape(-1, *v.shape[2:])
    pops = pops_from_samples(fit.bound, _sites(fit, flat))
    idx = jax.random.choice(key, pops.theta.shape[0], (n,))
    return jax.tree_util.tree_map(lambda x: x[idx], pops)


def _sites(fit: FitResult, flat: dict) -> dict:
    """Posterior variables renamed to the model's sample sites (log_, beta_, omega_, sigma_)."""
    bm = fit.bound
    out = {k: v for k, v in flat.items() if k.startswith(("log_", "omega_", "sigma_"))}
    for e in bm.effects:
        if e.label in flat:
            v = flat[e.label]
            out[f"beta_{e.label}"] = np.log1p(v) if e.kind == "binary" else v
    if "corr_chol" not in out and any(k.startswith("corr_") for k in flat):
        out["corr_chol"] = np.linalg.cholesky(_corr_matrix(fit, flat))
    return out


def _corr_matrix(fit: FitResult, flat: dict) -> np.ndarray:
    names = [fit.bound.spec.params[k].name for k in fit.bound.iiv]
    n = next(iter(flat.values())).shape[0]
    corr = np.tile(np.eye(len(names)), (n, 1, 1))
    for i in range(len(names)):
        for j in range(i):
            corr[:, i, j] = corr[:, j, i] = flat[f"corr_{names[j]}_{names[i]}"]
    return corr


def simulate_study(fit: FitResult, n_sim: int = 200, seed: int = 0) -> np.ndarray:
    """``n_sim`` replicate studies on the observed design, new subjects each: ``[R, N, J]``."""
    bm = fit.bound
    key_pop, key_eta, key_eps = jax.random.split(jax.random.PRNGKey(seed), 3)
    pops = _population_draws(fit, n_sim, key_pop)
    z = jax.random.normal(key_eta, (n_sim, bm.n_subjects, bm.n_eta))

    def one(pop, zr, key):
        eta = zr @ bm.omega_chol(pop).T
        f, _ = bm.predict(pop, eta)
        return likelihood.simulate_dv(bm.error.kind, pop.sigma, f, key)

    keys = jax.random.split(key_eps, n_sim)
    return np.asarray(jax.jit(jax.vmap(one))(pops, z, keys))


def _time_bins(t: np.ndarray, bins: int) -> np.ndarray:
    """The VPC bin of each observation time, bins numbered 0.. with none empty: one bin per
    time where the design has few distinct (nominal) times, else ``bins`` quantile bins. With
    nominal times, quantile edges fell between samples (1, 4, 8, *10*, 12, ...) and left a
    bin empty, and the VPC raised on it."""
    distinct = np.unique(t)
    if distinct.size <= 2 * bins:
        return np.searchsorted(distinct, t)
    edges = np.unique(np.quantile(t, np.linspace(0, 1, bins + 1)))
    label = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    return np.unique(label, return_inverse=True)[1]  # renumbered without the empty bins


def vpc(
    fit: FitResult,
    path: str | Path,
    n_sim: int = 200,
    bins: int = 8,
    seed: int = 0,
    quantiles: tuple[float, float, float] = (0.05, 0.5, 0.95),
) -> Path:
    """Observed 5/50/95th percentiles per time bin against simulated 90 % intervals."""
    obs = fit.bound.data.observations
    keep = obs.mask & ~obs.cens
    sims = simulate_study(fit, n_sim, seed)
    t = obs.time[keep]
    which = _time_bins(t, bins)
    n_bins = int(which.max()) + 1
    centres = np.array([np.median(t[which == b]) for b in range(n_bins)])
    observed = np.array([np.quantile(obs.dv[keep][which == b], quantiles) for b in range(n_bins)])
    sim_q = np.array(
        [[np.quantile(s[keep][which == b], quantiles) for b in range(n_bins)] for s in sims]
    )  # [R, bins, quantiles]
    dv_u, t_u = _units(fit)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(t, obs.dv[keep], s=8, color="0.5", alpha=0.6, label="observed")
    colours = ("tab:blue", "tab:red", "tab:blue")
    for k, q in enumerate(quantiles):
        lo, hi = np.quantile(sim_q[:, :, k], [0.05, 0.95], axis=0)
        ax.fill_between(centres, lo, hi, color=colours[k], alpha=0.2)
        ax.plot(
            centres,
            observed[:, k],
            color=colours[k],
            lw=2,
            label=f"observed {int(q * 100)}th percentile",
        )
    ax.set_xlabel(f"time [{t_u}]")
    ax.set_ylabel(f"{fit.bound.spec.output} [{dv_u}]")
    ax.set_title(f"VPC: {n_sim} simulated studies, 90 % intervals of simulated percentiles")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def individual(fit: FitResult, path: str | Path, max_subjects: int = 12, points: int = 200) -> Path:
    """Observations with individual (IPRED) and population (PRED) curves per subject."""
    bm = fit.bound
    obs = bm.data.observations
    n = min(bm.n_subjects, max_subjects)
    curves = fit.curves(points)
    grid, ipred, pred = (curves[k].values for k in ("TIME", "IPRED", "PRED"))
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    ids = np.asarray(bm.data.ids)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        m = obs.mask[i]
        ax.scatter(obs.time[i][m], obs.dv[i][m], s=10, color="k", zorder=3)
        ax.plot(grid[i], ipred[i], color="tab:blue", label="IPRED")
        ax.plot(grid[i], pred[i], color="tab:orange", ls="--", label="PRED")
        ax.set_title(f"ID {show_id(ids[i])}", fontsize=9)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def report(
    fit: FitResult, directory: str | Path, n_sim: int = 200, *, overwrite: bool = False
) -> list[Path]:
    """Write ``gof.png``, ``vpc.png``, ``individual.png``, ``summary.csv``,
    ``individual.csv``, ``sdtab.csv`` (one row per observation: PRED, IPRED, IWRES, CWRES, η)
    and ``curves.csv`` (PRED and IPRED on a dense grid per subject) to ``directory`` (new, or
    cohort's own: files there are replaced only with ``overwrite``)."""
    directory = report_directory(directory, overwrite=overwrite, flag="--report")
    names = ("gof.png", "vpc.png", "individual.png", "summary.csv", "individual.csv")
    gof_p, vpc_p, ind_p, summary, table = (
        claim_file(directory, name, overwrite=overwrite) for name in names
    )
    sdtab = claim_file(directory, "sdtab.csv", overwrite=overwrite)
    curves_csv = claim_file(directory, "curves.csv", overwrite=overwrite)
    paths = [gof(fit, gof_p), vpc(fit, vpc_p, n_sim=n_sim), individual(fit, ind_p)]
    fit.summary.to_csv(summary)
    fit.individual.to_csv(table)
    fit.observation_table().to_csv(sdtab, index=False)
    curves = fit.curves()
    frame = curves[["TIME", "PRED", "IPRED"]].to_dataframe().reset_index()
    frame = frame.rename(columns={"subject": "ID"}).drop(columns="point")
    frame.to_csv(curves_csv, index=False)
    return [*paths, summary, table, sdtab, curves_csv]
