"""Convergence gates (R-hat, ESS, divergences) and the ka/ke flip-flop check, with warnings.

Gates follow Vehtari et al. (2021): rank-normalised split R-hat < 1.01 and bulk/tail ESS of at
least 100 per chain for every population quantity; any divergent transition is reported. A
chain whose absorption rate sits below the slowest disposition rate while the others sit above
is in the ka/ke mirror mode (DESIGN §7) and is flagged by index.
"""

from __future__ import annotations

import dataclasses
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from cohort.engine import linear
from cohort.errors import CohortWarning
from cohort.inference.problem import BoundModel


@dataclasses.dataclass(frozen=True)
class Gates:
    """Thresholds: ``r_hat`` (max), ``ess_per_chain`` (min bulk and tail ESS per chain),
    ``divergences`` (max count)."""

    r_hat: float = 1.01
    ess_per_chain: float = 100.0
    divergences: int = 0


def summary(idata: az.InferenceData, names: list[str], units: dict) -> pd.DataFrame:
    """arviz summary (mean, sd, 90 % HDI, ESS, R-hat) of ``names`` with a units column.

    With one chain (SVI's guide draws, a one-chain NUTS run) R-hat is undefined and is NaN;
    arviz's log line saying so ("Shape validation failed ... chains=2") is silenced, since
    the NaN and the fit's own convergence gates already say it."""
    import logging

    single = idata.posterior.sizes.get("chain", 1) < 2
    # arviz logs through its own Logger instance (``arviz._log``), not logging's registry
    log = getattr(az, "_log", None) or logging.getLogger("arviz")
    level = log.level
    if single:
        log.setLevel(logging.ERROR)
    try:
        table = az.summary(idata, var_names=names, hdi_prob=0.9, round_to="none")
    finally:
        log.setLevel(level)
    table["units"] = [units.get(n.split("[")[0], "") for n in table.index]
    return table


def check(idata: az.InferenceData, table: pd.DataFrame, gates: Gates, n_chains: int) -> list[str]:
    """Messages for every gate that fails (empty when all pass)."""
    problems = []
    if n_chains > 1:
        bad = table.index[table["r_hat"] > gates.r_hat].tolist()
        if bad:
            worst = float(table["r_hat"].max())
            problems.append(f"R-hat > {gates.r_hat} for {bad} (max {worst:.3f})")
    need = gates.ess_per_chain * n_chains
    low = table.index[(table["ess_bulk"] < need) | (table["ess_tail"] < need)].tolist()
    if low:
        problems.append(
            f"bulk or tail ESS < {need:.0f} for {low} (min bulk "
            f"{float(table['ess_bulk'].min()):.0f}, "
            f"min tail {float(table['ess_tail'].min()):.0f}); "
            "run longer (more draws and warmup: --draws/--warmup) or reparameterise (in Python, "
            "cohort.fit(..., parameterization='centered') for data-rich subjects)"
        )
    if "sample_stats" in idata and "diverging" in idata.sample_stats:
        n_div = int(idata.sample_stats["diverging"].sum())
        if n_div > gates.divergences:
            problems.append(f"{n_div} divergent transitions; raise target_accept or reparameterise")
    return problems


def flip_flop_chains(bm: BoundModel, idata: az.InferenceData) -> list[int]:
    """Indices of chains whose typical absorption rate is on the other side of the slowest
    disposition rate than the majority of chains (oral linear PK only)."""
    model = bm.spec.model
    lp = model.linear_pk
    if lp is None or lp.depot is None or idata.posterior.sizes["chain"] < 2:
        return []
    post = idata.posterior
    theta = np.stack([post[f"log_{p.name}"].median("draw").values for p in bm.spec.params], 1)
    params = bm.model_params(jnp.asarray(theta))  # typical values per chain

    def side(p):
        rates, _, _ = linear.modes(model, p)
        slowest = jnp.min(-rates[:-1])  # disposition modes; the last one is the depot
        return p[lp.ka] > slowest

    above = np.asarray(jax.vmap(side)(params))
    majority = above.sum() * 2 >= above.size
    return [int(c) for c in np.flatnonzero(above != majority)]


def warn(problems: list[str], what: str) -> None:
    """Raise a :class:`CohortWarning` listing the failed gates."""
    if not problems:
        return

    warnings.warn(f"{what}: " + "; ".join(problems), CohortWarning, stacklevel=3)
