"""Initial estimates without hand-set values: a scan of the naive pooled objective, multi-start.

NONMEM needs ``$THETA`` initial values; nlmixr2, pharmpy and Pumas compute them (non-compartmental
analysis per subject). NCA needs rich single-dose profiles, which sparse or multiple-dose designs
(e.g. NONMEM's pheno: 2-3 samples per neonate between repeated doses) do not have. What every
design has is the naive pooled objective (all random effects at zero): cheap, and evaluated here
for hundreds of candidate typical values in one vectorised batch. Candidates are spread
log-uniformly (a Sobol sequence) over two decades either side of the starting values, which
covers a per-kg parameterisation starting from a per-70-kg default; the best few distinct ones
are the starts of a multi-start fit.

Flip-flop: for an oral model, ``KA`` and the elimination rate ``CL/V`` can swap and fit the data
almost equally well. As NONMEM users assume by convention, candidates with absorption faster
than elimination are preferred; :func:`mirror` gives the other mode so a fit can report it.
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from cohort.inference.problem import BoundModel, Pop

SPREAD = np.log(100.0)  # candidates within ×/÷ 100 of the starting typical values
N_CANDIDATES = 512


def oral_names(bm: BoundModel) -> tuple[int, int, int] | None:
    """Indices in ``theta`` of (KA, CL, V) for a one-compartment oral model estimated on its
    own parameters (no transform), else None."""
    lp = bm.spec.model.linear_pk
    if bm.spec.transform is not None or lp is None or lp.ka is None or lp.n_cmt != 1:
        return None
    names = [p.name for p in bm.spec.params]
    wanted = (lp.ka, lp.cl, lp.volumes[0])
    if not all(n in names for n in wanted):
        return None
    return tuple(names.index(n) for n in wanted)  # type: ignore[return-value]


def absorbs_faster(bm: BoundModel, theta: np.ndarray) -> np.ndarray:
    """Whether each row of log typical values ``theta [B, P]`` has KA > CL/V (True where the
    model is not one-compartment oral)."""
    idx = oral_names(bm)
    if idx is None:
        return np.ones(len(theta), bool)
    ka, cl, v = idx
    return theta[:, ka] > theta[:, cl] - theta[:, v]


def mirror(bm: BoundModel, pop: Pop) -> Pop | None:
    """The other flip-flop mode of a one-compartment oral fit: KA' = CL/V, V' = CL/KA (the same
    typical profile shape with absorption and elimination swapped), or None."""
    idx = oral_names(bm)
    if idx is None:
        return None
    ka, cl, v = idx
    theta = np.array(pop.theta, float)
    new_ka = theta[cl] - theta[v]
    new_v = theta[cl] - theta[ka]
    theta[ka], theta[v] = new_ka, new_v
    return pop._replace(theta=theta)


def candidates(bm: BoundModel, base: Pop, n: int = N_CANDIDATES, seed: int = 0) -> np.ndarray:
    """Log typical values ``[n + 1, P]``: ``base`` first, then a scrambled Sobol spread of the
    free ones over ±``SPREAD`` around it."""
    theta = np.asarray(base.theta, float)
    free = np.array([k for k, p in enumerate(bm.spec.params) if not p.fixed], int)
    out = np.repeat(theta[None], n + 1, axis=0)
    if free.size:
        u = scipy.stats.qmc.Sobol(free.size, scramble=True, seed=seed).random(n)
        out[1:, free] = theta[free] + (2.0 * u - 1.0) * SPREAD
    return out


def best_starts(
    bm: BoundModel, base: Pop, evaluate, k: int = 3, seed: int = 0
) -> tuple[list[Pop], dict]:
    """The ``k`` best distinct candidates by the pooled objective ``evaluate(pops) -> OFV [B]``
    (absorption faster than elimination preferred), and a summary of the scan."""
    theta = candidates(bm, base, seed=seed)
    pops = [base._replace(theta=t) for t in theta]
    ofv = np.asarray(evaluate(pops), float)
    ok = np.isfinite(ofv)
    preferred = ok & absorbs_faster(bm, theta)
    pool = preferred if preferred.any() else ok
    if not pool.any():
        return [base], {"candidates": len(theta), "finite": 0}
    order = np.flatnonzero(pool)[np.argsort(ofv[pool])]
    chosen: list[int] = []
    for i in order:  # distinct: at least a factor 1.5 apart in some typical value
        if all(np.max(np.abs(theta[i] - theta[j])) > np.log(1.5) for j in chosen):
            chosen.append(int(i))
        if len(chosen) == k:
            break
    summary = {
        "candidates": len(theta),
        "finite": int(ok.sum()),
        "best_pooled_ofv": float(ofv[chosen[0]]),
        "start_pooled_ofv": float(ofv[0]),
    }
    return [pops[i] for i in chosen], summary
