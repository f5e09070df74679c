"""Dose–PTA curves: probability of target attainment over a sweep of doses.

The reference arm's regimens are scaled to each dose (amounts proportionally; timing kept),
every virtual patient of one pool is simulated at every dose (one vectorized cohort), and each
``[[pta]]`` target expression is evaluated on the endpoints. Using the same patients at every
dose makes the curve monotone wherever the target is monotone in exposure, without Monte Carlo
noise between doses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cohort.population.expr import evaluate, names_in
from cohort.trial.schema import Arm, TrialSpec, TrialSpecError
from cohort.trial.spec import load


def check_dose_pta(spec: TrialSpec, doses, reference: str | None = None) -> Arm:
    """The arm whose regimens a dose sweep scales; refuses a spec without a ``[[pta]]``
    target or such an arm, and doses that are not finite and > 0, before anything is run."""
    if not spec.pta:
        raise TrialSpecError(
            f"{spec.path}: a PTA dose sweep (--pta-doses) needs at least one [[pta]] target "
            "(endpoint, and threshold or window) in the spec"
        )
    given = np.atleast_1d(np.asarray(doses, float))
    bad = given[~(np.isfinite(given) & (given > 0))].tolist()
    if bad or given.size == 0:
        raise TrialSpecError(f"{spec.path}: PTA sweep doses must be finite and > 0, got {bad}")
    ref = next(
        (a for a in spec.arms if a.name == reference or (reference is None and a.dose > 0)), None
    )
    if ref is None or not ref.regimens or ref.dose <= 0:
        named = f"arm {reference!r}" if reference is not None else "an arm"
        raise TrialSpecError(
            f"{spec.path}: a PTA dose sweep scales the regimens of {named} with a dose > 0; "
            "the spec has none: give an arm a dose and regimens"
        )
    return ref


def dose_pta(
    spec: TrialSpec | str | Path,
    doses: list[float] | np.ndarray,
    reference: str | None = None,
    pool: int = 1000,
    seed: int | None = None,
) -> pd.DataFrame:
    """PTA per target and dose (columns ``target``, ``dose``, ``pta``, ``n``).

    ``reference`` names the arm whose regimens are scaled (default: the first arm with a dose
    > 0); a dose ``d`` multiplies every amount by ``d / reference.dose``."""
    from cohort.trial.run import potential_outcomes

    if not isinstance(spec, TrialSpec):
        spec = load(spec)
    ref = check_dose_pta(spec, doses, reference)
    arms = tuple(
        Arm(
            f"{d:g}",
            tuple({**g, "amt": float(g["amt"]) * d / ref.dose} for g in ref.regimens),
            float(d),
        )
        for d in doses
    )
    values = potential_outcomes(spec.with_(arms=arms, ratio=(1,) * len(arms)), pool, seed)
    rows = []
    for name, target in spec.pta:
        hit = evaluate(target, values) > 0
        known = np.ones(hit.shape, bool)
        for k in names_in(target):
            known &= np.isfinite(values[k])
        for i, d in enumerate(doses):
            n = int(known[i].sum())
            rows.append(
                {
                    "target": name,
                    "dose": float(d),
                    "pta": float(hit[i][known[i]].mean()) if n else np.nan,
                    "n": n,
                }
            )
    return pd.DataFrame(rows)
