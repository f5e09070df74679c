"""The per-observation table users compare with NONMEM's sdtab: ID, TIME, DV, PRED, IPRED,
IWRES, CWRES and each subject's η, one row per observation."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd

from cohort.inference import laplace, likelihood
from cohort.inference.layout import Layout


def observation_table(fit) -> pd.DataFrame:
    """One row per observation record of ``fit`` (a :class:`FitResult`): ``ID``, ``TIME``,
    ``DV``, ``PRED`` (typical subject, η = 0), ``IPRED`` (at the conditional modes / posterior
    means), ``IWRES`` ((DV − IPRED)/√V on the error model's scale), ``CWRES`` (Hooker et al.
    2007, FOCE linearisation at the modes), ``CENS`` (below LLOQ, M3) and ``ETA_<param>``."""
    bm = fit.bound
    p = fit.predictions()
    cw = np.asarray(
        jax.jit(lambda pop, eta: laplace.cwres(bm, pop, eta, bm.arrays))(fit.pop, fit.eta)
    )
    iwres = _iwres(fit, p)
    mask = np.asarray(p["mask"], bool)
    subj, obs = np.nonzero(mask)
    ids = np.asarray(bm.data.ids)
    cens = np.asarray(p["cens"], bool)
    table = pd.DataFrame(
        {
            "ID": ids[subj],
            "TIME": np.asarray(p["time"])[subj, obs],
            "DV": np.asarray(p["dv"])[subj, obs],
            "PRED": p["pred"][subj, obs],
            "IPRED": p["ipred"][subj, obs],
            "IWRES": np.where(cens, np.nan, iwres)[subj, obs],
            "CWRES": np.where(cens, np.nan, cw)[subj, obs],
            "CENS": cens[subj, obs].astype(int),
        }
    )
    eta = np.asarray(fit.eta)
    for k, name in enumerate(Layout(bm).eta_names):
        table[f"ETA_{name}"] = eta[subj, k]
    return table


def _iwres(fit, p: dict) -> np.ndarray:
    """(DV − IPRED)/√V on the error model's scale, ``[N, J]``."""
    kind = fit.bound.error.kind
    var = np.asarray(likelihood.residual_var(kind, np.asarray(fit.pop.sigma), p["ipred"]))
    m, y, _ = likelihood.transformed(kind, p["ipred"], p["dv"], p["dv"])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(y) - np.asarray(m)) / np.sqrt(var)


def shrinkage(fit) -> dict[str, float]:
    """NONMEM's ETASHRINKSD and EPSSHRINKSD in %: ``100 (1 − SD(η̂)/ω)`` per random effect
    (population SD over subjects, as NONMEM computes it) and ``100 (1 − RMS(IWRES))`` over the
    observations above the LLOQ (NONMEM's SD of IWRES is taken about 0, not about their mean:
    pheno's 21.198 %, where the centred SD gives 21.3 %). High η-shrinkage (above ~30 %)
    means the individual estimates say little beyond the population's, and plots of them
    against covariates mislead (Savic & Karlsson 2009). Keys ``eta_<param>`` and ``eps``."""
    bm = fit.bound
    chol = np.asarray(bm.omega_chol(fit.pop))
    omega_sd = np.sqrt(np.diag(chol @ chol.T))
    eta = np.asarray(fit.eta, dtype=float)
    out = {}
    for k, name in enumerate(Layout(bm).eta_names):
        if omega_sd[k] > 0:
            out[f"eta_{name}"] = float(100.0 * (1.0 - eta[:, k].std() / omega_sd[k]))
    p = fit.predictions()
    keep = np.asarray(p["mask"], bool) & ~np.asarray(p["cens"], bool)
    iwres = _iwres(fit, p)[keep]
    iwres = iwres[np.isfinite(iwres)]
    if iwres.size > 1:
        out["eps"] = float(100.0 * (1.0 - np.sqrt(np.mean(iwres**2))))
    return out
