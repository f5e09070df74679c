"""Simulated patients with known parameters, for validating twins (tests, benchmarks, the MIPD
study): covariates and individual parameters drawn from a twin prior's population, a dosing
regimen, and observations with the prior's residual error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cohort.dosing import Regimen, regimens_frame
from cohort.twin.prior import TwinPrior


def simulate_records(
    prior: TwinPrior,
    n: int,
    times: Sequence[float],
    regimen: Regimen,
    seed: int = 0,
    lloq: float = 0.1,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """NONMEM-style records (one dose record per patient as ``regimen``, observations at
    ``times`` with the prior's residual error) and the true individual parameters. IDs are
    1..n. A measurement below the assay's ``lloq`` is reported as a laboratory does: below
    the limit (``CENS`` 1, ``DV`` the limit, ``LLOQ``; fitted with M3), not as a number."""
    from cohort.engine.simulate import simulate
    from cohort.population import generate

    if prior.spec.path.startswith("<"):
        raise ValueError("simulate_records needs a prior read from a priors spec file")
    pop = generate(prior.spec.path, n=n, seed=seed)
    truth = {k: pop[k].to_numpy() for k in prior.model.parameter_names}
    times = np.asarray(times, float)
    sim = simulate(prior.model, truth, regimen, times, outputs=[prior.output])
    f = sim[prior.output].to_numpy()
    kind, add, prop = prior.error
    eps = np.random.default_rng(seed + 100).standard_normal(f.shape)
    if kind == "log-additive":
        y = f * np.exp(add * eps)
    else:
        y = f + np.sqrt(add**2 + (prop * f) ** 2) * eps
    below = y < lloq
    y = np.where(below, lloq, y)
    dose = regimens_frame([regimen], prior.model.dose_targets)
    ids = np.arange(1, n + 1)
    doses = pd.concat([dose] * n, ignore_index=True).assign(ID=ids, DV=np.nan)
    obs = pd.DataFrame(
        {
            "ID": np.repeat(ids, len(times)),
            "TIME": np.tile(times, n),
            "EVID": 0,
            "AMT": 0.0,
            "RATE": 0.0,
            "ADDL": 0,
            "II": 0.0,
            "SS": 0,
            # observed in the prior's output (the dose's CMT is the depot for oral models)
            "CMT": prior.output,
            "DV": y.ravel(),
            "CENS": below.ravel().astype(int),
            "LLOQ": float(lloq),
        }
    )
    records = pd.concat([doses, obs], ignore_index=True)
    for c in prior.covariates:
        records[c] = pop[c].to_numpy()[records["ID"].to_numpy() - 1]
    records = records.sort_values(
        ["ID", "TIME", "EVID"], ascending=[True, True, False], kind="stable"
    ).reset_index(drop=True)
    return records, truth
