"""Who enters each replicate trial and what they get: eligibility, randomization, dropout.

All replicates are drawn at once as arrays of shape ``[replicates, n]`` (no Python loop over
patients or replicates). Randomness comes from ``numpy.random.Generator`` streams derived from
the trial seed and a fixed tag per purpose (``SeedSequence([seed, tag])``), so changing, say,
the dropout hazard never changes the randomization, and the same seed gives the same trial.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from cohort.errors import CohortError
from cohort.population import generate
from cohort.population.expr import evaluate

STREAMS = {"allocation": 1, "dropout": 2, "assay": 3, "events": 4, "escalation": 5, "adaptive": 6}


class EligibilityError(CohortError, RuntimeError):
    """Too few candidates pass the inclusion/exclusion criteria."""


def rng(seed: int, purpose: str) -> np.random.Generator:
    """The generator for one purpose (see ``STREAMS``) of a trial seeded with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), STREAMS[purpose]]))


def eligible(pop: xr.Dataset, inclusion: tuple[str, ...], exclusion: tuple[str, ...]) -> np.ndarray:
    """Mask of candidates meeting every inclusion criterion and no exclusion criterion."""
    env = {k: np.asarray(v.values) for k, v in pop.data_vars.items()}
    ok = np.ones(pop.sizes["patient"], bool)
    for e in inclusion:
        ok &= evaluate(e, env).astype(bool)
    for e in exclusion:
        ok &= ~evaluate(e, env).astype(bool)
    return ok


def enroll(
    prior: str,
    count: int,
    seed: int,
    inclusion: tuple[str, ...] = (),
    exclusion: tuple[str, ...] = (),
    max_tries: int = 6,
    needed_for: str = "",
) -> xr.Dataset:
    """The first ``count`` eligible virtual patients drawn from the ``prior`` spec.

    Candidates depend only on (seed, index), so doubling the draw keeps earlier candidates and
    the enrolled cohort is reproducible. ``needed_for`` says in an error what ``count`` is made
    of (e.g. `` (5 trials x 40 patients)``)."""
    draw = count
    for _ in range(max_tries):
        pop = generate(prior, n=draw, seed=seed)
        ok = eligible(pop, inclusion, exclusion)
        if ok.sum() >= count:
            keep = np.flatnonzero(ok)[:count]
            out = pop.isel(patient=keep).assign_coords(patient=np.arange(count))
            out.attrs["eligible_fraction"] = float(ok.mean())
            return out
        rate = max(ok.mean(), 1e-3)
        draw = int(np.ceil(count / rate * 1.2)) + 100
    raise EligibilityError(
        f"only {int(ok.sum())} of {draw} candidates from {prior} meet the inclusion/exclusion "
        f"criteria; {count}{needed_for} needed. Relax [population] inclusion/exclusion."
    )


def strata_codes(pop: xr.Dataset, strata: tuple[str, ...]) -> np.ndarray:
    """Stratum index per patient: the bit pattern of the stratification expressions."""
    env = {k: np.asarray(v.values) for k, v in pop.data_vars.items()}
    code = np.zeros(pop.sizes["patient"], np.int64)
    for k, e in enumerate(strata):
        code += evaluate(e, env).astype(bool).astype(np.int64) << k
    return code


def allocate(
    strata: np.ndarray,
    ratio: tuple[int, ...],
    block_size: int,
    gen: np.random.Generator,
    n_strata: int | None = None,
) -> np.ndarray:
    """Arm index per patient, ``strata`` of shape ``[replicates, n]`` in enrolment order.
    ``n_strata``: how many strata the design has (default: ``strata.max() + 1``); given, the
    first replicates' allocations do not change when more replicates are run.

    ``block_size == 0``: simple randomization with probabilities proportional to ``ratio``.
    Otherwise permuted blocks (each block holds ``ratio`` scaled to ``block_size``), one
    independent block sequence per (replicate, stratum): within each stratum, arms stay
    balanced to within one block at every point of enrolment.
    """
    ratio_arr = np.asarray(ratio)
    reps, n = strata.shape
    if block_size == 0:
        return gen.choice(len(ratio), size=(reps, n), p=ratio_arr / ratio_arr.sum())
    pattern = np.repeat(np.arange(len(ratio)), ratio_arr * (block_size // ratio_arr.sum()))
    n_strata = int(strata.max()) + 1 if n_strata is None else int(n_strata)
    n_blocks = -(-n // block_size)
    blocks = np.broadcast_to(pattern, (reps, n_strata, n_blocks, block_size))
    seq = gen.permuted(blocks, axis=-1).reshape(reps, n_strata, n_blocks * block_size)
    onehot = strata[..., None] == np.arange(n_strata)
    rank = np.take_along_axis(np.cumsum(onehot, axis=1), strata[..., None], axis=2)[..., 0] - 1
    r_idx = np.arange(reps)[:, None]
    return seq[r_idx, strata, rank]


def dropout_times(shape: tuple[int, ...], hazard: float, gen: np.random.Generator) -> np.ndarray:
    """Time of dropout under a constant (exponential) hazard; ``inf`` when the hazard is 0."""
    if hazard <= 0:
        return np.full(shape, np.inf)
    return gen.exponential(1.0 / hazard, size=shape)
