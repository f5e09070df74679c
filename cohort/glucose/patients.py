"""Virtual UVA/Padova patients whose outcomes are plausible, not only their parameters.

A draw from the parameter prior (:func:`cohort.models.glucose.sample_patients`) can be
physiological at rest yet behave unlike any real patient under therapy (e.g. 50 % of the day
below 70 mg/dL on the same basal-bolus therapy the reference patients do well on). Here each
candidate is also run through a **standard day** — simglucose's validation day: meals of 45,
70 and 80 g CHO at 07:00, 12:00 and 18:00, simglucose's ``BBController`` rule with the
patient's own CR/CF, CGM every 3 min without noise — and kept only when its time in range,
time below range and mean glucose fall within the range of the 10 reference patients of its
group, widened by stated margins. A rejected patient takes its next candidate, so a patient
never depends on how many are drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable

import numpy as np
import pandas as pd

from cohort.glucose.controllers import BasalBolus
from cohort.glucose.loop import ClosedLoopOptions
from cohort.glucose.scenarios import fixed_scenario
from cohort.glucose.simulate import compile_ahead, metrics_only, run
from cohort.models.glucose.patients import Candidates, PatientSamplingError, reference_patients

STANDARD_DAY_OPTIONS = ClosedLoopOptions(period=3.0)  # Dexcom's 3-min CGM period, no noise
# Screening runs its standard days in float32: 1.5x faster than float64, and its outcomes agree
# with float64 far inside the envelope's margins (10,240 sampled adults: TIR within 0.21 %,
# mean glucose within 2e-4 mg/dL; margins 5 %, 2 % and 10 mg/dL).
SCREENING_DTYPE = "float32"


def standard_day(patients: pd.DataFrame, chunk_size: int | None = None, dtype: str = "float64"):
    """One standard day (see the module docstring) of ``patients``: the dataset of
    :func:`cohort.glucose.run`, with per-patient ``tir_70_180``, ``tbr_70``, ``mean``, ...
    computed in ``dtype``."""
    return run(
        patients,
        fixed_scenario(len(patients), 1),
        BasalBolus(),
        days=1.0,
        options=STANDARD_DAY_OPTIONS,
        chunk_size=chunk_size,
        dtype=dtype,
    )


@dataclasses.dataclass(frozen=True)
class OutcomeEnvelope:
    """Accepted standard-day outcomes: TIR 70–180 ≥ ``tir_min`` %, TBR < 70 ≤ ``tbr_max`` %,
    ``mean_min`` ≤ mean glucose ≤ ``mean_max`` mg/dL."""

    tir_min: float
    tbr_max: float
    mean_min: float
    mean_max: float

    def accepts(self, ds) -> np.ndarray:
        """Which patients of ``ds`` (a :func:`standard_day` dataset, or its metric arrays)
        pass."""
        tir, tbr, mean = (np.asarray(ds[k], float) for k in ("tir_70_180", "tbr_70", "mean"))
        ok = (tir >= self.tir_min) & (tbr <= self.tbr_max)
        ok &= (mean >= self.mean_min) & (mean <= self.mean_max)
        return ok & (np.asarray(ds["status"]) == 0)


@functools.lru_cache(maxsize=8)
def reference_envelope(
    group: str, tir_margin: float = 5.0, tbr_margin: float = 2.0, mean_margin: float = 10.0
) -> OutcomeEnvelope:
    """The range of the reference patients' standard-day outcomes, widened by the margins
    (defaults: the tolerances to which cohort reproduces simglucose per patient)."""
    day = standard_day(reference_patients(group), dtype=SCREENING_DTYPE)  # as screened
    return _envelope(day, tir_margin, tbr_margin, mean_margin)


def _envelope(ds, tir_margin: float = 5.0, tbr_margin: float = 2.0, mean_margin: float = 10.0):
    """:class:`OutcomeEnvelope` around the standard-day outcomes in ``ds`` (a dataset or
    metric arrays)."""
    tir, tbr, mean = (np.asarray(ds[k], float) for k in ("tir_70_180", "tbr_70", "mean"))
    return OutcomeEnvelope(
        max(0.0, tir.min() - tir_margin),
        min(100.0, tbr.max() + tbr_margin),
        mean.min() - mean_margin,
        mean.max() + mean_margin,
    )


def _screen(patients: pd.DataFrame, chunk: int) -> dict[str, np.ndarray]:
    """The standard day's metrics and status of ``patients`` as screening runs it: in
    :data:`SCREENING_DTYPE`, batches of ``chunk``, arrays rather than a dataset."""
    return metrics_only(
        patients, fixed_scenario(len(patients), 1), BasalBolus(), days=1.0,
        options=STANDARD_DAY_OPTIONS, chunk_size=chunk, dtype=SCREENING_DTYPE,
    )  # fmt: skip


def _compile_standard_day(group: str, chunk: int) -> None:
    """Compile the program :func:`standard_day` runs on batches of ``chunk`` patients of
    ``group`` (values do not matter: a reference patient repeated). Errors are left to the
    screening itself to raise."""
    try:
        like = reference_patients(group).iloc[np.zeros(chunk, int)].reset_index(drop=True)
        compile_ahead(
            like, fixed_scenario(chunk, 1), BasalBolus(), days=1.0,
            options=STANDARD_DAY_OPTIONS, chunk_size=chunk, dtype=SCREENING_DTYPE,
        )  # fmt: skip
    except Exception:  # noqa: BLE001
        pass


def sample_plausible(
    group: str,
    n: int,
    seed: int,
    envelope: OutcomeEnvelope | None = None,
    max_attempts: int = 32,
    shrinkage: float = 0.1,
    then: Callable[[], None] | None = None,
) -> pd.DataFrame:
    """``n`` patients of ``group`` drawn from the prior (as :func:`sample_patients`) whose
    standard-day outcomes fall within ``envelope`` (default :func:`reference_envelope`).

    Returns the patients with their standard-day ``tir_70_180``, ``tbr_70`` and ``mean`` and
    the ``attempt`` that was kept; ``df.attrs['acceptance']`` is the fraction of physiological
    candidates that passed. ``then`` runs on a background thread once the first candidates
    are drawn (``cohort glucose`` compiles its run's program there: the core that drew them
    is free until the screening program is compiled, and two compilations started together
    slowed the screening down)."""
    chunk = min(1024, max(8, 1 << (n - 1).bit_length()))
    # The screening program depends on the batch shape only: compile it on a second thread
    # while the candidates are drawn (XLA compiles on one core; the draws run on the other).
    threading.Thread(
        target=_compile_standard_day, args=(group, chunk), name="compile-screening", daemon=True
    ).start()
    cands = Candidates(group, n, seed, shrinkage, max_attempts)
    # Without an envelope, the reference patients' standard day (the default envelope) runs
    # in the first round's batches: one compiled program instead of two (a patient's day does
    # not depend on its batch, so the envelope is reference_envelope(group)'s).
    refs = None if envelope is not None else reference_patients(group)
    choice = np.full(n, -1)
    outcome = {k: np.full(n, np.nan) for k in ("tir_70_180", "tbr_70", "mean")}
    tried = passed = 0
    pending = np.arange(n)
    next_try = np.zeros(n, int)  # each patient's next attempt to consider
    while pending.size:
        n_refs = 0 if refs is None else len(refs)
        size = -(-(pending.size + n_refs) // chunk) * chunk
        share = np.full(pending.size, (size - n_refs) // pending.size)
        share[: (size - n_refs) % pending.size] += 1
        # each pending patient's physiological candidates not yet tried, in attempt order
        # (drawn as far as this round can use them)
        cands.ensure(pending, next_try[pending], share)
        if then is not None:
            threading.Thread(target=then, name="compile-ahead", daemon=True).start()
            then = None
        later = cands.ok[pending] & (np.arange(max_attempts) >= next_try[pending][:, None])
        if not later.any(axis=1).all():
            bad = int(pending[np.flatnonzero(~later.any(axis=1))[0]])
            raise PatientSamplingError(
                f"patient {bad}: no candidate in {max_attempts} attempts has plausible "
                "standard-day outcomes; raise max_attempts or widen the envelope"
            )
        # Rounds are padded to whole chunks of one size (one compiled program). The slots
        # beyond one candidate per patient take the pending patients' next candidates, so a
        # round's padding does work: with ~2/3 accepted, the last few pending patients are
        # settled in one or two rounds instead of six nearly empty ones. A patient still
        # keeps its first candidate that passes, as when candidates are tried one at a time.
        take = later & (np.cumsum(later, axis=1) <= share[:, None])
        who, attempt = np.nonzero(take)  # patient-major, attempts ascending
        batch = cands.frame.iloc[cands.row[pending[who], attempt]]
        if refs is not None:
            batch = pd.concat([batch, refs[list(batch.columns)]])
        batch = batch.iloc[np.minimum(np.arange(size), len(batch) - 1)]  # padded: one shape
        day = _screen(batch.reset_index(drop=True), chunk)
        if refs is not None:
            envelope = _envelope({k: v[who.size : who.size + n_refs] for k, v in day.items()})
            refs = None
        day = {k: v[: who.size] for k, v in day.items()}
        good = envelope.accepts(day)
        # per patient: its first passing candidate among those tried (rows are grouped by
        # patient, so the first good row of each group)
        first_row = np.searchsorted(who, np.arange(pending.size))
        rank = np.arange(who.size) - first_row[who]
        first_good = np.full(pending.size, np.iinfo(int).max)
        np.minimum.at(first_good, who[good], rank[good])
        found = first_good < np.iinfo(int).max
        row = first_row[found] + first_good[found]
        # the candidates a one-at-a-time search would have tried: up to the first pass
        tried += int(np.sum(np.where(found, first_good + 1, take.sum(axis=1))))
        passed += int(found.sum())
        values = {k: np.asarray(day[k], float) for k in outcome}
        for k in outcome:
            outcome[k][pending[found]] = values[k][row]
        choice[pending[found]] = attempt[row]
        last = np.maximum.reduceat(attempt, first_row) if who.size else attempt
        next_try[pending] = last + 1
        pending = pending[~found]
    out = cands.pick(choice)
    for k, v in outcome.items():
        out[k] = v
    out["attempt"] = choice
    out.attrs["acceptance"] = passed / tried
    out.attrs["envelope"] = dataclasses.asdict(envelope)
    return out
