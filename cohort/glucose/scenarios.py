"""Meal scenarios for glucose cohorts: fixed daily meals, seeded random meals, rate profiles.

A :class:`MealScenario` is per-patient meal schedules (``[N, M]`` arrays, padded with
``start = inf``) plus an optional cohort-level carbohydrate-rate profile (g/min per minute).
Meals follow simglucose's convention: eaten at ``eat_rate`` g/min (5 by default) from a whole
minute, ``announced`` meals are known to the controller at their start (for meal boluses), and
an optional open-loop ``bolus`` (U) is given over the meal's first minute.

Random meals mimic simglucose's ``RandomScenario``: each day, each meal slot occurs with a
probability (skipped meals otherwise) at a normally jittered time (truncated to the slot's
window, rounded to the minute) with a normally distributed amount in whole grams. Patient
``i`` draws from ``fold_in(PRNGKey(seed), i)``, so its meals do not depend on the cohort size.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import ndtr, ndtri

import cohort._prng as _prng
from cohort.errors import OptionError
from cohort.models.glucose import EAT_RATE

# simglucose 0.2.11 RandomScenario: breakfast, snack, lunch, snack, dinner, snack (its snack
# time SD is 30 min; 15 here until 2026-12-07, a probe)
DEFAULT_SLOTS = (
    # (mean time h, time SD min, window h, probability, mean g, SD g)
    (7.0, 60.0, (5.0, 9.0), 0.95, 45.0, 10.0),
    (9.5, 30.0, (9.0, 10.0), 0.3, 10.0, 5.0),
    (12.0, 60.0, (10.0, 14.0), 0.95, 70.0, 10.0),
    (15.0, 30.0, (14.0, 16.0), 0.3, 10.0, 5.0),
    (18.0, 60.0, (16.0, 20.0), 0.95, 80.0, 10.0),
    (21.5, 30.0, (20.0, 23.0), 0.3, 10.0, 5.0),
)
DEFAULT_MEALS = ((7.0, 45.0), (12.0, 70.0), (18.0, 80.0))  # (h, g) fixed three meals


@dataclasses.dataclass(frozen=True)
class MealScenario:
    """Meals per patient: ``start`` (min), ``grams`` (g CHO), ``eat_rate`` (g/min), ``announced``
    (bool), ``bolus`` (U, open-loop bolus with the meal), all ``[N, M]``; ``profile`` (g/min per
    minute, ``[T]``) is eaten by every patient on top (e.g. a continuous-feeding profile)."""

    start: np.ndarray
    grams: np.ndarray
    eat_rate: np.ndarray
    announced: np.ndarray
    bolus: np.ndarray
    profile: np.ndarray

    def __post_init__(self):
        shape = self.start.shape
        if len(shape) != 2:
            raise OptionError(f"meal arrays must be [patients, meals], got shape {shape}")
        for f in ("grams", "eat_rate", "announced", "bolus"):
            if getattr(self, f).shape != shape:
                raise OptionError(f"{f} has shape {getattr(self, f).shape}, start has {shape}")
        _check_meals(self)

    @property
    def n_patients(self) -> int:
        return self.start.shape[0]

    def take(self, idx: np.ndarray) -> MealScenario:
        """The scenario of patients ``idx`` (rows), same profile."""
        rows = {f: getattr(self, f)[idx] for f in ("start", "grams", "eat_rate", "announced")}
        return MealScenario(**rows, bolus=self.bolus[idx], profile=self.profile)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the scenario by name (e.g. to hash it)."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def announced_grams(self) -> np.ndarray:
        return np.where(self.announced, self.grams, 0.0)


MAX_MEAL_GRAMS = 1000.0
"""Largest carbohydrate amount of one meal: the models are calibrated on meals of up to
~200 g; 10^6 g ran "ok" at a mean glucose of thousands of mg/dL."""


def _first(mask: np.ndarray) -> str:
    i, j = np.argwhere(mask)[0]
    return f"patient {i}, meal {j}"


def _check_meals(m: MealScenario) -> None:
    """Meals a run can eat: finite amounts within reason, start times >= 0 min (``inf``, the
    padding of a patient with fewer meals, only with nothing eaten or dosed), each problem
    named with the first patient and meal that has it."""
    start, grams, bolus = m.start, m.grams, m.bolus
    for name, values, unit in (("grams", grams, "g"), ("bolus", bolus, "U")):
        if (bad := ~np.isfinite(values)).any():
            raise OptionError(
                f"meal {name}: {values[bad][0]} ({_first(bad)}); give a finite amount >= 0 {unit}"
            )
        if (bad := values < 0).any():
            raise OptionError(f"meal {name}: {values[bad][0]:g} {unit} ({_first(bad)}) is < 0")
    if (bad := grams > MAX_MEAL_GRAMS).any():
        raise OptionError(
            f"meal grams: {grams[bad][0]:g} g of carbohydrate ({_first(bad)}) is beyond any meal "
            f"(at most {MAX_MEAL_GRAMS:g} g); check the units (grams of carbohydrate)"
        )
    if (bad := np.isnan(start) | (start < 0)).any():
        raise OptionError(
            f"meal start: {start[bad][0]} ({_first(bad)}); give minutes >= 0 from the run's start"
        )
    if (bad := np.isinf(start) & ((grams > 0) | (bolus > 0))).any():
        raise OptionError(
            f"meal start: a meal that never starts (inf, {_first(bad)}) has grams or a bolus; "
            "give it a start time, or 0 g"
        )
    if not np.all(np.isfinite(m.profile)) or np.any(m.profile < 0):
        raise OptionError("meal profile: every rate must be finite and >= 0 g/min")
    if not np.all(np.isfinite(m.eat_rate)) or np.any(m.eat_rate <= 0):
        raise OptionError("eat_rate must be finite and > 0 g/min")


def _scenario(start, grams, *, eat_rate, announced, bolus=None, profile=None) -> MealScenario:
    start = np.asarray(start, float)
    grams = np.asarray(grams, float)
    return MealScenario(
        start=start,
        grams=grams,
        eat_rate=np.full(start.shape, float(eat_rate)),
        announced=np.broadcast_to(np.asarray(announced, bool), start.shape).copy(),
        bolus=np.zeros(start.shape) if bolus is None else np.broadcast_to(bolus, start.shape),
        profile=np.zeros(1) if profile is None else np.asarray(profile, float),
    )


def fixed_scenario(
    n: int,
    days: int = 1,
    meals=DEFAULT_MEALS,
    *,
    bolus=None,
    eat_rate: float = EAT_RATE,
    announced: bool = True,
) -> MealScenario:
    """The same meals every day for every patient: ``meals`` = ``[(hour, grams), ...]``.

    ``bolus`` (U per meal, same order; optional) gives open-loop boluses with the meals.
    """
    hours = np.asarray([m[0] for m in meals], float)
    grams = np.asarray([m[1] for m in meals], float)
    day = np.arange(days)[:, None] * 1440.0
    start = np.round((day + 60.0 * hours).ravel())
    b = None if bolus is None else np.tile(np.asarray(bolus, float), days)
    return _scenario(
        np.tile(start, (n, 1)),
        np.tile(np.tile(grams, days), (n, 1)),
        eat_rate=eat_rate,
        announced=announced,
        bolus=b,
    )


def single_meal(n: int, time: float, grams: float, bolus: float = 0.0) -> MealScenario:
    """One meal at ``time`` min for every patient (the DESIGN §6 cross-check scenario)."""
    return _scenario(
        np.full((n, 1), float(time)),
        np.full((n, 1), float(grams)),
        eat_rate=EAT_RATE,
        announced=True,
        bolus=np.full((n, 1), float(bolus)),
    )


def random_scenario(
    n: int,
    days: int,
    seed: int,
    slots=DEFAULT_SLOTS,
    *,
    eat_rate: float = EAT_RATE,
    announced: bool = True,
    first_patient: int = 0,
) -> MealScenario:
    """Seeded random meals per patient and day (times, amounts, skipped meals; see module).

    ``slots`` rows: ``(mean hour, time SD min, (earliest h, latest h), probability, mean g,
    SD g)``. Amounts are truncated at 0; skipped meals are padded out (``start = inf``).
    """
    k = len(slots)
    # jax.random.uniform(fold_in(PRNGKey(seed), patient), ...), hashed in numpy (no compile)
    keys = _prng.fold_in(_prng.key(seed), np.arange(first_patient, first_patient + n))
    u = _prng.uniform(keys, (days, k, 3))  # occur, time, grams
    mean_t, sd_t, window, prob, mean_g, sd_g = (np.asarray(c, dtype=object) for c in zip(*slots))
    lo = np.asarray([w[0] for w in window], float) * 60.0
    hi = np.asarray([w[1] for w in window], float) * 60.0
    mean_t = mean_t.astype(float) * 60.0
    sd_t = sd_t.astype(float)
    # truncated normal times: inverse CDF restricted to the window
    a, b = ndtr((lo - mean_t) / sd_t), ndtr((hi - mean_t) / sd_t)
    t = mean_t + sd_t * ndtri(a + u[..., 1] * (b - a))
    t = np.round(np.clip(t, lo, hi)) + 1440.0 * np.arange(days)[None, :, None]
    # whole grams, as simglucose rounds them
    g = np.maximum(np.round(mean_g.astype(float) + sd_g.astype(float) * ndtri(u[..., 2])), 0.0)
    occurs = u[..., 0] < prob.astype(float)
    start = np.where(occurs, t, np.inf).reshape(n, days * k)
    grams = np.where(occurs, g, 0.0).reshape(n, days * k)
    order = np.argsort(start, axis=1, kind="stable")
    start = np.take_along_axis(start, order, 1)
    grams = np.take_along_axis(grams, order, 1)
    keep = np.isfinite(start).any(axis=0)  # drop meal columns that nobody eats
    return _scenario(start[:, keep], grams[:, keep], eat_rate=eat_rate, announced=announced)


def profile_scenario(n: int, rate_g_per_min) -> MealScenario:
    """A cohort-level carbohydrate-rate profile: every patient eats ``rate[k]`` g/min during
    minute ``k`` (unannounced; e.g. enteral feeding or a measured meal appearance)."""
    rate = np.asarray(rate_g_per_min, float).ravel()
    empty = np.full((n, 1), np.inf)
    return _scenario(empty, np.zeros((n, 1)), eat_rate=EAT_RATE, announced=False, profile=rate)


def scenario(name: str, n: int, days: int, seed: int = 0) -> MealScenario:
    """A named scenario for the CLI: ``fixed`` (45/70/80 g at 7/12/18 h) or ``random``."""
    if name == "fixed":
        return fixed_scenario(n, days)
    if name == "random":
        return random_scenario(n, days, seed)
    raise OptionError(f"unknown scenario {name!r}; choose 'fixed' or 'random'")
