"""Response-adaptive randomization: Thompson sampling on a binary endpoint.

Simulation makes this cheap and exact: every patient is simulated under *every* arm (potential
outcomes, one vectorized cohort of arms x replicates x patients), so the adaptive rule only
has to pick which potential outcome each patient reveals. After a block-randomized burn-in,
patients enrol in batches; before each batch the Beta(1, 1)-Bernoulli posterior of every arm's
response rate (from the patients already enrolled whose outcome is known, i.e. outcomes are
assumed available before the next batch) gives P(arm is best) by Monte Carlo, and the batch is
randomized with probabilities proportional to ``P(best)^c``, ``c = n / (2 N)`` (Thall & Wathen
2007) unless a fixed power is given. All replicates advance together as arrays.
"""

from __future__ import annotations

import numpy as np

from cohort.trial.schema import Adaptive


def thompson(
    rule: Adaptive,
    outcome: np.ndarray,
    initial: np.ndarray,
    gen: np.random.Generator,
) -> np.ndarray:
    """Arm per patient ``[replicates, n]`` given potential outcomes ``[arms, replicates, n]``
    (1 response, 0 none, NaN unknown, e.g. dropout) and the burn-in allocation ``initial``."""
    n_arms, reps, n = outcome.shape
    arm = initial.copy()
    rows = np.arange(reps)[:, None]
    start = min(rule.burn_in, n)
    while start < n:
        stop = min(start + rule.batch, n)
        past = arm[:, :start]
        y = outcome[past, rows, np.arange(start)[None, :]]
        if rule.direction == "lower":
            y = 1.0 - y
        known = np.isfinite(y)
        hit = np.stack([((past == a) & known & (y > 0)).sum(1) for a in range(n_arms)], 1)
        seen = np.stack([((past == a) & known).sum(1) for a in range(n_arms)], 1)
        draws = gen.beta(
            1.0 + hit[..., None], 1.0 + (seen - hit)[..., None], (reps, n_arms, rule.draws)
        )
        best = np.argmax(draws, axis=1)  # [reps, draws]
        p_best = np.stack([(best == a).mean(1) for a in range(n_arms)], 1)
        c = rule.power if rule.power is not None else start / (2.0 * n)
        w = p_best**c
        w /= w.sum(1, keepdims=True)
        u = gen.random((reps, stop - start))
        arm[:, start:stop] = (
            (u[..., None] > np.cumsum(w, 1)[:, None, :]).sum(-1).clip(max=n_arms - 1)
        )
        start = stop
    return arm
