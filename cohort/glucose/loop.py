"""Closed-loop cohort simulation: controller, sensor and pump in the loop of a batched RK4.

The whole cohort advances together in one ``lax.scan`` over control periods (e.g. the 5-min
CGM/pump period). At the start of each period every patient's sensor is read, the controller
(a pure function on ``[N]`` arrays) chooses an insulin rate, the pump quantises it, and the
rate is held (zero-order hold) while fixed RK4 steps of ``dt`` (1 min by default) integrate the
model's 13 physiological states, one ``[N]`` array each (structure of arrays).

Meal memory is simglucose's own: the meal size ``Dbar`` that shapes gastric emptying is updated
at whole minutes (stomach content at the start of an eating bout plus the food eaten since, the
current minute's included) and held within the minute, so it is a per-patient carry of the loop
rather than the continuous bookkeeping states that the model's ``rhs`` needs for adaptive
solvers. Parameter-only subexpressions are computed once per solve (``model.derived``) and the
emptying coefficients once per minute (``model.gastric``).

Insulin convention: the controller returns the **total** insulin rate in U/min, basal
included, and the model is run with ``basal_scale = 0`` so that every unit of insulin comes from
the controller (an open-loop controller returns ``basal = u2ss·BW/6000``, which reproduces the
model's default basal delivery). Meals are per-patient schedules eaten like simglucose does
(``eat_rate`` g/min for whole minutes, the remainder in one more minute) plus an optional
cohort-level meal-rate profile per minute; scenario boluses (open-loop boluses given with a
meal) are delivered over the meal's first minute, like simglucose's one-step bolus.

There is no data-dependent control flow across patients (the finer steps of eating minutes are
selected per patient), so a patient's trajectory does not depend on the rest of the batch;
sensor noise is keyed by a global patient id for the same reason.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from cohort.engine.common import track_extremes
from cohort.engine.stepping import rk4_step_rolled
from cohort.errors import OptionError
from cohort.glucose.sensor import Sensor, initial_state, read_sensor
from cohort.models.base import State, Tree
from cohort.models.glucose.uva_padova import basal_insulin_rate


class Observation(NamedTuple):
    """What a controller sees at the start of a control period (``[N]`` arrays)."""

    cgm: jax.Array  # mg/dL, sensor glucose
    meal_announced: jax.Array  # g CHO of announced meals starting within this period
    meal_started: jax.Array  # g CHO of announced meals that started in the previous period


class Controller(Protocol):
    """``init`` builds the per-patient controller state; ``__call__`` is the pure control law
    ``(state, observation, t) -> (state, insulin rate U/min)`` on ``[N]`` arrays."""

    def init(self, patients: Tree, basal: jax.Array, period: float) -> Any:
        """``patients``: model parameters and therapy settings (``CR`` g/U, ``CF`` mg/dL/U;
        NaN where not given) as ``[N]`` arrays; ``basal`` U/min."""

    def __call__(self, state: Any, obs: Observation, t: jax.Array) -> tuple[Any, jax.Array]: ...


class MealInputs(NamedTuple):
    """Meal schedule arrays ``[N, M]`` (pad with ``start = inf``) and a cohort profile ``[T]``.

    ``start`` min, ``grams`` g CHO, ``eat_rate`` g/min, ``announced`` g CHO announced to the
    controller (0 for unannounced meals), ``bolus`` U given with the meal over its first minute,
    ``profile`` g/min eaten by every patient during minute ``k`` (``profile[k]``).
    """

    start: jax.Array
    grams: jax.Array
    eat_rate: jax.Array
    announced: jax.Array
    bolus: jax.Array
    profile: jax.Array


@dataclasses.dataclass(frozen=True)
class ClosedLoopOptions:
    """``period`` control/CGM period (whole minutes), ``dt`` RK4 step (min; divides 1 min, so
    meal minutes and control periods start on step boundaries), ``eating_substeps`` RK4 steps
    per ``dt`` step while a patient is eating (see :func:`solve_closed_loop`), ``sensor``
    (``None``: the controller sees ``Gsub`` exactly), ``pump_increment`` (U; ``None`` or 0:
    no quantisation, as the CLI's ``--pump-increment 0``), ``max_rate`` (U/min)."""

    period: float = 5.0
    dt: float = 1.0
    eating_substeps: int = 4
    sensor: Sensor | None = None
    pump_increment: float | None = None
    max_rate: float = math.inf

    def __post_init__(self):
        inc = self.pump_increment
        if inc is not None and not (math.isfinite(inc) and inc >= 0):
            raise OptionError(f"pump_increment: a number of units >= 0 or None, got {inc!r}")
        if inc == 0:  # no quantisation (it divided by 0: every patient NaN)
            object.__setattr__(self, "pump_increment", None)
        if not self.max_rate > 0:
            raise OptionError(f"max_rate: must be > 0 U/min (inf: no limit), got {self.max_rate!r}")

    def steps_per_minute(self) -> int:
        """RK4 steps per minute (validates ``dt``, ``period`` and ``eating_substeps``)."""
        per_minute = 1.0 / self.dt if self.dt > 0 else 0.0
        if not 0 < self.dt <= 1.0 or abs(per_minute - round(per_minute)) > 1e-9:
            raise OptionError(f"dt ({self.dt}) must divide 1 min")
        if self.period < 1 or abs(self.period - round(self.period)) > 1e-9:
            raise OptionError(f"period ({self.period}) must be a whole number of minutes")
        if self.eating_substeps < 1 or int(self.eating_substeps) != self.eating_substeps:
            raise OptionError(f"eating_substeps ({self.eating_substeps}) must be an integer >= 1")
        return round(per_minute)


class _Eating(NamedTuple):
    """Per-meal eating windows: ``rate`` g/min until ``full_end``, then ``rest`` g for 1 min."""

    start: jax.Array
    full_end: jax.Array
    rate: jax.Array
    rest: jax.Array
    profile: jax.Array


def eating_windows(meals: MealInputs) -> _Eating:
    """simglucose's eating: whole minutes at ``eat_rate``, the remainder in one more minute."""
    full = jnp.floor(meals.grams / meals.eat_rate + 1e-12)
    rest = meals.grams - full * meals.eat_rate
    return _Eating(meals.start, meals.start + full, meals.eat_rate, rest, meals.profile)


def meal_rate(w: _Eating, t_mid):
    """Carbohydrate eaten (mg/min) during the minute containing ``t_mid`` (all patients)."""
    eating = (t_mid >= w.start) & (t_mid < w.full_end)
    finishing = (t_mid >= w.full_end) & (t_mid < w.full_end + 1.0)
    grams_per_min = jnp.where(eating, w.rate, 0.0) + jnp.where(finishing, w.rest, 0.0)
    minute = jnp.floor(t_mid).astype(jnp.int32)
    n_prof = w.profile.shape[0]
    prof = jnp.where(minute < n_prof, w.profile[jnp.clip(minute, 0, n_prof - 1)], 0.0)
    return 1000.0 * (jnp.sum(grams_per_min, axis=-1) + prof)


def _bolus_rate(meals: MealInputs, t_mid):
    window = (t_mid >= meals.start) & (t_mid < meals.start + 1.0)
    return jnp.sum(jnp.where(window, meals.bolus, 0.0), axis=-1)


def _announced(meals: MealInputs, t, period: float):
    due = (meals.start >= t) & (meals.start < t + period)
    return jnp.sum(jnp.where(due, meals.announced, 0.0), axis=-1)


def _quantise(rate, residual, period: float, increment: float | None):
    """Deliver whole pump increments; the undelivered remainder carries to the next period
    (so the mean delivery is unbiased)."""
    if increment is None:
        return rate, residual
    amount = rate * period + residual
    delivered = jnp.floor(amount / increment + 1e-9) * increment
    return delivered / period, amount - delivered


class MealMemoryModel(Protocol):
    """What the stepper needs of a model (:class:`cohort.models.glucose.UvaPadova`): the
    physiological states, parameter-only coefficients, the emptying coefficients of a meal
    size and the right-hand side given them (``uva_padova.physiology_rhs``)."""

    states: tuple[State, ...]
    physiology_states: tuple[str, ...]

    def initial(self, p: Tree) -> Tree: ...

    def output(self, name: str, y: Tree, p: Tree) -> Any: ...

    def derived(self, p: Tree) -> Tree: ...

    def gastric(self, dbar: Any, d: Tree) -> Tree: ...

    def physiology_rhs(self, y: Tree, d: Tree, g: Tree, meal: Any, insulin: Any) -> Any: ...


def _rk4(model: MealMemoryModel, y: Tree, d: Tree, g: Tree, meal, insulin, h: float, steps: int):
    """``steps`` classical RK4 steps of ``h`` min with meal, insulin and meal size held."""

    def f(yy):
        return model.physiology_rhs(yy, d, g, meal, insulin)[0]

    def one(_, y):
        return rk4_step_rolled(f, y, h)

    return one(0, y) if steps == 1 else jax.lax.fori_loop(0, steps, one, y)


class _MealMemory(NamedTuple):
    """simglucose's meal bookkeeping, updated at whole minutes: stomach content at the start of
    the current (or last) eating bout, carbohydrate eaten since (this minute's included), and
    whether the patient ate during the previous minute."""

    q0: jax.Array  # mg
    eaten: jax.Array  # mg
    eating: jax.Array  # bool


def _remember_meal(m: _MealMemory, y: Tree, meal) -> tuple[_MealMemory, jax.Array]:
    """Update the memory for a minute eating ``meal`` mg/min; return it and ``Dbar`` (mg)."""
    eating = meal > 0
    starts = eating & ~m.eating
    q0 = jnp.where(starts, y["qsto1"] + y["qsto2"], m.q0)
    eaten = jnp.where(starts, 0.0, m.eaten) + jnp.where(eating, meal, 0.0)
    return _MealMemory(q0, eaten, eating), q0 + eaten


@functools.partial(
    jax.jit, static_argnames=("model", "controller", "options", "n_periods", "gsub", "dtype")
)
def solve_closed_loop(
    model: MealMemoryModel,
    controller: Controller,
    options: ClosedLoopOptions,
    n_periods: int,
    p: Tree,
    meals: MealInputs,
    noise: jax.Array,
    therapy: Tree | None = None,
    gsub: str = "Gsub",
    dtype: str = "float64",
):
    """Run ``n_periods`` control periods for a batch; ``p`` holds ``[N]`` parameter arrays,
    ``therapy`` the patients' therapy settings for the controller (``CR``, ``CF``), ``noise``
    ``[N, count]`` the standard normals of each patient's CGM noise
    (:func:`cohort.glucose.sensor.knot_normals`; ``[N, 0]`` without noise).

    Each minute: the meal memory is updated (simglucose's discrete ``Dbar``), then the
    physiology advances by RK4 steps of ``dt`` with meal, insulin and ``Dbar`` held, so the
    right-hand side is smooth inside every step. While a patient eats, gastric emptying
    switches sharply within the minute (``Dbar`` jumps by the minute's food and the stomach
    content sweeps through ``b·Dbar``); those minutes are integrated with ``eating_substeps``
    times finer steps, for the eaters only: gathered into a batch of ``ceil(N/8)`` when that
    many or fewer eat (random meal times), in several such batches otherwise (simultaneous
    meals), so a patient's trajectory does not depend on the rest of the batch.

    Returns ``(outputs, finite, min_scaled)``: ``outputs`` maps ``Gsub``, ``CGM`` and
    ``insulin`` (U/min delivered, mean over the period starting at each time; the last entry
    is the rate the controller would choose next) to ``[n_periods + 1, N]`` arrays at times
    ``0, period, ...``; ``finite`` and ``min_scaled`` are the fast path's health checks.
    """
    period = round(options.period)
    per_minute = options.steps_per_minute()
    h = 1.0 / per_minute
    fine = int(options.eating_substeps)
    p = dict(p)
    basal = basal_insulin_rate({**p, "basal_scale": 1.0})
    p["basal_scale"] = jnp.zeros_like(p["basal_scale"])
    names = model.physiology_states
    d = model.derived(p)
    y0 = {s: v for s, v in model.initial(p).items() if s in names}
    fdt = basal.dtype
    n = basal.shape[0]
    z = jnp.asarray(noise, fdt).T  # time-major: a block's knots are one slice
    windows = eating_windows(meals)
    nonneg = {st.name for st in model.states if st.nonnegative and st.name in names}
    zeros = jnp.zeros(n, fdt)
    few = -(-n // 8)  # eating patients refined as a gathered batch (random meal times)

    def extremes(lo, hi, y):
        return track_extremes(lo, hi, y, names, nonneg)

    def decide(y, sensor_state, ctrl_state, residual, k):
        t = (k * period).astype(fdt)
        g = model.output(gsub, y, p)
        sensor_state, cgm = read_sensor(options.sensor, period, sensor_state, g, z, k)
        obs = Observation(cgm, _announced(meals, t, period), _announced(meals, t - period, period))
        ctrl_state, rate = controller(ctrl_state, obs, t)
        rate = jnp.clip(rate, 0.0, options.max_rate)
        rate, residual = _quantise(rate, residual, period, options.pump_increment)
        return g, cgm, sensor_state, ctrl_state, rate, residual

    def minute(j, c, k, rate):
        y, memory, delivered = c
        t_mid = (k * period + j).astype(fdt) + 0.5
        meal = meal_rate(windows, t_mid)
        insulin = rate + _bolus_rate(meals, t_mid)
        memory, dbar = _remember_meal(memory, y, meal)
        g = model.gastric(dbar, d)

        # Every patient takes the coarse steps; the eaters' are then replaced by fine ones
        # (two copies of the RK4 code in the program: compilation time grows with each).
        yc = _rk4(model, y, d, g, meal, insulin, h, per_minute)

        if fine > 1:
            # The eaters' minutes are recomputed in gathered batches of at most `few`: one
            # batch when meal times are spread out (random meals), up to eight when the whole
            # cohort eats at once. One copy of the fine RK4 in the program (an extra branch
            # refining everyone cost ~0.45 s of XLA compilation), and none runs when no one eats.
            def refine(state):
                yy, todo = state
                idx = jnp.nonzero(todo, size=few, fill_value=n)[0]
                take = functools.partial(jnp.take, indices=idx, mode="clip")
                yf = _rk4(
                    model,
                    {s: take(v) for s, v in y.items()},
                    {s: take(v) for s, v in d.items()},
                    {s: take(v) for s, v in g.items()},
                    take(meal),
                    take(insulin),
                    h / fine,
                    per_minute * fine,
                )
                yy = {s: yy[s].at[idx].set(yf[s], mode="drop") for s in yy}
                return yy, todo.at[idx].set(False, mode="drop")

            y, _ = jax.lax.while_loop(lambda st: jnp.any(st[1]), refine, (yc, memory.eating))
        else:
            y = yc
        # simglucose's gating stops a compartment at zero; RK4 can step past it (glucose driven
        # to 0 by an overdose), so project back instead of flagging the patient
        y = {s: jnp.maximum(v, 0.0) if s in nonneg else v for s, v in y.items()}
        return y, memory, delivered + insulin

    def period_step(c, k):
        y, memory, sensor_state, ctrl_state, residual, lo, hi = c
        g, cgm, sensor_state, ctrl_state, rate, residual = decide(
            y, sensor_state, ctrl_state, residual, k
        )
        y_end, memory, delivered = jax.lax.fori_loop(
            0, period, lambda j, c: minute(j, c, k, rate), (y, memory, zeros)
        )
        # Step n_periods only reads the sensor and asks the controller (the last record): its
        # period is integrated and dropped, so the program holds one copy of that code.
        live = k < n_periods
        y = {s: jnp.where(live, y_end[s], y[s]) for s in y}
        lo, hi = extremes(lo, hi, y)
        rec = {gsub: g, "CGM": cgm, "insulin": jnp.where(live, delivered / period, rate)}
        return (y, memory, sensor_state, ctrl_state, residual, lo, hi), rec

    ctrl0 = controller.init({**p, **(therapy or {})}, basal, float(period))
    lo, hi = extremes(zeros, zeros, y0)
    memory = _MealMemory(zeros, zeros, jnp.zeros(n, bool))
    carry = (y0, memory, initial_state(n, fdt), ctrl0, zeros, lo, hi)
    ks = jnp.arange(n_periods + 1, dtype=jnp.int32)
    carry, recs = jax.lax.scan(period_step, carry, ks)
    y, *_, lo, hi = carry
    out = {k: v.astype(dtype) for k, v in recs.items()}
    finite = jnp.isfinite(lo) & jnp.isfinite(hi)
    for s in names:
        finite = finite & jnp.isfinite(y[s])
    return out, finite, lo / jnp.maximum(hi, 1e-30)
