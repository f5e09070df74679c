"""Insulin controllers for closed-loop cohorts: pure control laws on ``[N]`` arrays.

Each controller is a frozen dataclass (its tuning) with ``init(patients, basal, period)`` giving
a NamedTuple state (per-patient constants included) and ``__call__(state, obs, t) ->
(state, rate)``, the **total** insulin rate in U/min, basal included (see
:mod:`cohort.glucose.loop` for the convention). Patient-specific therapy parameters follow
clinical rules of thumb from the basal rate when not given: total daily insulin
``TDI = tdi_factor·1440·basal`` (basal ≈ half of TDI), carb ratio ``CR = 500/TDI`` g/U, correction
factor ``CF = 1800/TDI`` mg/dL/U.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cohort.errors import OptionError
from cohort.glucose.loop import Observation
from cohort.models.base import Tree


class Therapy(NamedTuple):
    """Per-patient therapy constants (``[N]``): basal U/min, CR g/U, CF mg/dL/U."""

    basal: jax.Array
    carb_ratio: jax.Array
    correction_factor: jax.Array


def therapy(
    basal,
    tdi_factor: float = 2.0,
    carb_ratio: float | None = None,
    cf: float | None = None,
    patients: Tree | None = None,
) -> Therapy:
    """Each patient's therapy: a fixed ``carb_ratio``/``cf`` if given, else the patient's own
    ``CR``/``CF`` (e.g. simglucose's ``Quest.csv`` for the reference patients, sampled with
    :func:`cohort.models.glucose.sample_patients`) where finite, else the rules of thumb from
    the basal rate."""
    patients = patients or {}
    tdi = tdi_factor * 1440.0 * basal

    def pick(fixed, own, rule):
        if fixed is not None:
            return jnp.full_like(basal, fixed)
        if own in patients:
            return jnp.where(jnp.isfinite(patients[own]), patients[own], rule)
        return rule

    return Therapy(basal, pick(carb_ratio, "CR", 500.0 / tdi), pick(cf, "CF", 1800.0 / tdi))


def _check_positive(controller, *names: str) -> None:
    """Tuning values that divide or scale insulin must be finite and > 0 (``None``: the
    patient's own or the rule of thumb): a carb ratio of 0 gave every patient NaN, a negative
    one quietly dosed the wrong way."""
    for name in names:
        value = getattr(controller, name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value > 0)
        ):
            raise OptionError(
                f"{type(controller).__name__}.{name}: must be a finite number > 0, got {value!r}"
            )


@dataclasses.dataclass(frozen=True)
class OpenLoop:
    """Basal only: the patient's steady-state basal rate, whatever the glucose."""

    name = "open-loop"

    def init(self, patients: Tree, basal, period: float) -> Therapy:
        return therapy(basal)

    def __call__(self, state: Therapy, obs: Observation, t):
        return state, state.basal


@dataclasses.dataclass(frozen=True)
class BasalBolus:
    """Basal plus a bolus for each announced meal: ``carbs/CR`` and, if CGM is above
    ``correction_threshold``, ``(CGM - target)/CF``: simglucose's ``BBController``, with the
    patient's own CR/CF where known (see :func:`therapy`).

    Timing as simglucose's: the bolus is delivered over the first control period after the
    meal started (the controller reacts to the meal it saw eaten); ``prebolus=True`` gives it
    instead over the period in which the meal starts (up to one period before eating)."""

    target: float = 140.0
    correction_threshold: float = 150.0
    tdi_factor: float = 2.0
    carb_ratio: float | None = None
    correction_factor: float | None = None
    prebolus: bool = False
    name = "basal-bolus"

    def __post_init__(self):
        _check_positive(
            self, "target", "correction_threshold", "tdi_factor", "carb_ratio",
            "correction_factor",
        )  # fmt: skip

    def init(self, patients: Tree, basal, period: float) -> tuple[Therapy, float]:
        th = therapy(basal, self.tdi_factor, self.carb_ratio, self.correction_factor, patients)
        return th, period

    def __call__(self, state, obs: Observation, t):
        th, period = state
        carbs = obs.meal_announced if self.prebolus else obs.meal_started
        correction = jnp.where(
            obs.cgm > self.correction_threshold, (obs.cgm - self.target) / th.correction_factor, 0
        )
        bolus = jnp.where(carbs > 0, carbs / th.carb_ratio + correction, 0.0)
        return state, th.basal + bolus / period


class PIDState(NamedTuple):
    basal: jax.Array
    integral: jax.Array  # mg/dL·min
    previous: jax.Array  # mg/dL, last CGM
    period: float


@dataclasses.dataclass(frozen=True)
class PID:
    """PID on CGM, relative to basal: ``rate = basal·max(0, 1 + kp·e + ki·∫e + kd·de/dt)`` with
    ``e = CGM - target`` (mg/dL). Gains are per mg/dL, so they scale with each patient's basal
    (a proxy for insulin sensitivity). The integral is clamped to ``±integral_limit`` (no
    wind-up during suspension or long hyperglycaemia). No meal announcement is used."""

    target: float = 120.0
    kp: float = 0.01
    ki: float = 2e-5
    kd: float = 2.0
    integral_limit: float = 1e4
    name = "pid"

    def __post_init__(self):
        _check_positive(self, "target", "integral_limit")

    def init(self, patients: Tree, basal, period: float) -> PIDState:
        zero = jnp.zeros_like(basal)
        return PIDState(basal, zero, patients["Gb"] + zero, period)

    def __call__(self, state: PIDState, obs: Observation, t):
        e = obs.cgm - self.target
        lim = self.integral_limit
        integral = jnp.clip(state.integral + e * state.period, -lim, lim)
        slope = (obs.cgm - state.previous) / state.period
        gain = 1.0 + self.kp * e + self.ki * integral + self.kd * slope
        rate = state.basal * jnp.maximum(gain, 0.0)
        return state._replace(integral=integral, previous=obs.cgm), rate


class HybridState(NamedTuple):
    therapy: Therapy
    previous: jax.Array  # mg/dL, last CGM
    trend: jax.Array  # mg/dL/min, smoothed CGM slope
    iob: jax.Array  # U, insulin on board above basal
    period: float


@dataclasses.dataclass(frozen=True)
class HybridClosedLoop:
    """Model-free predictive hybrid closed loop: meal boluses as :class:`BasalBolus`, plus an
    automatic correction planned on a glucose prediction, re-planned every period (receding
    horizon, MPC-like without an explicit model).

    Each period: the CGM slope is smoothed (``trend``), glucose is predicted ``horizon`` min
    ahead linearly; the correction insulin ``(G_pred - target)/CF - IOB`` (if positive) is
    spread over ``spread`` min; basal is scaled down linearly from 1 at ``target`` to 0 at
    ``suspend_below`` (predictive low-glucose suspend). Insulin on board above basal decays
    exponentially with ``iob_time`` min (a one-compartment proxy of insulin action).
    """

    target: float = 120.0
    horizon: float = 30.0
    spread: float = 60.0
    suspend_below: float = 80.0
    iob_time: float = 120.0
    smoothing: float = 0.5
    tdi_factor: float = 2.0
    name = "hybrid"

    def __post_init__(self):
        _check_positive(self, "target", "horizon", "spread", "iob_time", "tdi_factor")
        if not 0 <= self.smoothing < 1:
            raise OptionError(
                f"HybridClosedLoop.smoothing: must be in [0, 1), got {self.smoothing!r}"
            )
        if not self.suspend_below < self.target:
            raise OptionError(
                f"HybridClosedLoop.suspend_below ({self.suspend_below!r}) must be below target "
                f"({self.target!r})"
            )

    def init(self, patients: Tree, basal, period: float) -> HybridState:
        zero = jnp.zeros_like(basal)
        th = therapy(basal, self.tdi_factor, patients=patients)
        return HybridState(th, patients["Gb"] + zero, zero, zero, period)

    def __call__(self, state: HybridState, obs: Observation, t):
        th, period = state.therapy, state.period
        slope = (obs.cgm - state.previous) / period
        trend = self.smoothing * state.trend + (1.0 - self.smoothing) * slope
        predicted = obs.cgm + self.horizon * trend
        needed = (predicted - self.target) / th.correction_factor - state.iob
        correction = jnp.maximum(needed, 0.0) / self.spread
        span = self.target - self.suspend_below
        basal_factor = jnp.clip((predicted - self.suspend_below) / span, 0.0, 1.0)
        bolus = obs.meal_announced / th.carb_ratio
        rate = basal_factor * th.basal + correction + bolus / period
        decay = jnp.exp(-period / self.iob_time)
        iob = state.iob * decay + (rate - th.basal) * period
        return HybridState(th, obs.cgm, trend, iob, period), rate


CONTROLLERS = {
    "open-loop": OpenLoop,
    "basal-bolus": BasalBolus,
    "pid": PID,
    "hybrid": HybridClosedLoop,
}


def controller(name: str, **tuning):
    """A controller by CLI name (``open-loop``, ``basal-bolus``, ``pid``, ``hybrid``)."""
    if name not in CONTROLLERS:
        raise OptionError(f"unknown controller {name!r}; choose from {sorted(CONTROLLERS)}")
    return CONTROLLERS[name](**tuning)
