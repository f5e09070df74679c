"""NONMEM-style records for meals and insulin, in the units of the ``uva_padova`` model.

Meals are infusions of carbohydrate (mg at mg/min) into ``qsto1``; insulin is given in U into
``Isc1``. The result is a :class:`pandas.DataFrame` with ``TIME, EVID, AMT, RATE, CMT`` that
``cohort.simulate`` accepts as dosing (add an ``ID`` column for per-patient records).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

EAT_RATE = 5.0  # g/min, simglucose's T1DPatient.EAT_RATE
_COLUMNS = ["TIME", "EVID", "AMT", "RATE", "CMT"]


def _pairs(time, amount) -> list[tuple[float, float]]:
    t = np.atleast_1d(np.asarray(time, dtype=float))
    a = np.broadcast_to(np.atleast_1d(np.asarray(amount, dtype=float)), t.shape)
    if np.any(~np.isfinite(t)) or np.any(~np.isfinite(a)) or np.any(a < 0):
        raise ValueError("times and amounts must be finite, amounts >= 0")
    return list(zip(t.tolist(), a.tolist()))


def _bout(grams, eat_rate):
    """``(whole minutes at eat_rate, grams left for one more minute)`` of an eating bout:
    simglucose eats ``min(EAT_RATE, planned)`` each minute."""
    full = np.floor(grams / eat_rate + 1e-12)
    return full, grams - full * eat_rate


def eating_minutes(grams, eat_rate):
    """Minutes an eating bout of ``grams`` lasts: whole minutes plus one for the remainder."""
    full, rest = _bout(grams, eat_rate)
    return full + (rest > 1e-12)


def queued_meals(start, grams, eat_rate=EAT_RATE) -> np.ndarray:
    """The grams each meal's eating bout takes when meals queue as in simglucose.

    simglucose adds a meal to the food still planned and eats at most ``eat_rate`` g a minute
    (``T1DPatient._announce_meal``): a meal that starts while an earlier one is being eaten
    extends that bout instead of being eaten beside it at twice the rate. Returns grams shaped
    like ``start`` (``[M]`` or ``[N, M]``, any order): a bout's total at the meal that starts
    it, 0 at the meals merged into it; meals that do not overlap keep their own grams. The
    bout keeps its first meal's ``eat_rate``. Boluses and announcements stay with their meals.
    """
    start = np.asarray(start, float)
    grams = np.asarray(grams, float)
    rate = np.broadcast_to(np.asarray(eat_rate, float), start.shape)
    flat = start.ndim == 1
    s, g, r = (np.atleast_2d(x) for x in (start, grams, rate))
    order = np.argsort(s, axis=1, kind="stable")
    s, g, r = (np.take_along_axis(x, order, 1) for x in (s, g, r))
    out = g.copy()
    rows = np.arange(s.shape[0])
    head = np.zeros(s.shape[0], int)  # column (in time order) of the current bout's first meal
    for k in range(1, s.shape[1]):
        end = s[rows, head] + eating_minutes(out[rows, head], r[rows, head])
        merge = s[:, k] < end  # still eating the bout when this meal starts
        out[rows[merge], head[merge]] += g[merge, k]
        out[merge, k] = 0.0
        head = np.where(merge, head, k)
    result = np.empty_like(out)
    np.put_along_axis(result, order, out, 1)
    return result[0] if flat else result


def meal_records(
    time: float | Iterable[float], grams: float | Iterable[float], eat_rate: float = EAT_RATE
) -> pd.DataFrame:
    """Meals of ``grams`` CHO starting at ``time`` (min), eaten like simglucose does.

    simglucose eats ``eat_rate`` g in each whole minute and the remainder in one more minute, so
    a meal becomes an infusion at ``eat_rate`` g/min for ``floor(grams/eat_rate)`` minutes plus,
    if needed, a one-minute infusion of the remainder (contiguous: one eating bout). Meals that
    overlap queue (:func:`queued_meals`): a meal starting while one is eaten extends its bout.
    """
    if not eat_rate > 0:
        raise ValueError(f"eat_rate must be > 0 g/min, got {eat_rate}")
    pairs = _pairs(time, grams)
    if len(pairs) > 1:
        t_all, g_all = (np.asarray(c) for c in zip(*pairs))
        pairs = list(zip(t_all.tolist(), queued_meals(t_all, g_all, eat_rate).tolist()))
    rows = []
    for t, g in pairs:
        full, rest = _bout(g, eat_rate)
        full = int(full)
        if full:
            rows.append((t, 1, 1000.0 * full * eat_rate, 1000.0 * eat_rate, "qsto1"))
        if rest > 1e-12:
            rows.append((t + full, 1, 1000.0 * rest, 1000.0 * rest, "qsto1"))
    return _frame(rows)


def insulin_records(
    time: float | Iterable[float], units: float | Iterable[float], duration: float = 1.0
) -> pd.DataFrame:
    """Insulin boluses of ``units`` U at ``time`` (min), each delivered over ``duration`` min.

    simglucose delivers a bolus as an insulin rate held for one 1-minute step, hence the
    default; ``duration=0`` gives an instantaneous bolus (a jump of ``Isc1``).
    """
    if duration < 0:
        raise ValueError(f"duration must be >= 0 min, got {duration}")
    rows = [
        (t, 1, u, (u / duration) if duration > 0 else 0.0, "Isc1")
        for t, u in _pairs(time, units)
        if u > 0
    ]
    return _frame(rows)


def _frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=_COLUMNS)
    return df.sort_values("TIME", kind="stable").reset_index(drop=True)


def combine(*records: pd.DataFrame) -> pd.DataFrame:
    """Merge record frames (meals, insulin) into one frame sorted by (``ID``,) ``TIME``."""
    df = pd.concat(records, ignore_index=True)
    keys = ["ID", "TIME"] if "ID" in df else ["TIME"]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def record_notes(table, *, bolus_meals: bool) -> list[str]:
    """What a glucose model's dose records most likely got wrong, for :meth:`Model.
    record_notes`: meals in grams where mg are read, insulin doses of hundreds of units (mg or
    pmol?), and with ``bolus_meals`` a meal given as a bolus (UVA/Padova's gastric emptying
    then runs at its fastest: 38 mg/dL above the same meal eaten at 5 g/min, a probe)."""
    names = list(table.state_names)
    dose = (table.evid == 1) & (table.amt > 0)
    meal = dose & (table.cmt == names.index("qsto1"))
    insulin = dose & (table.cmt == names.index("Isc1"))
    notes = []

    def first(mask) -> str:
        i, k = (int(x[0]) for x in np.nonzero(mask))
        return f"patient {i + 1} at {table.time[i, k]:g} min, AMT {table.amt[i, k]:g}"

    # a record's duration in min (0: a bolus); meal_records' last piece of a bout may hold
    # under 1 g at the eating rate, which is fine
    minutes = np.where(table.rate > 0, table.amt / np.where(table.rate > 0, table.rate, 1), 0)
    small = meal & (table.amt < 1000.0) & (table.rate < 100.0)
    if small.any():
        notes.append(
            f"{int(small.sum())} meal record(s) into qsto1 below 1 g ({first(small)} mg): meals "
            "are in mg of carbohydrate (45 g = 45000 mg), not g"
        )
    big = insulin & (table.amt > 100.0) & (minutes <= 60.0)  # a bolus, not a day's basal
    if big.any():
        notes.append(
            f"{int(big.sum())} insulin record(s) into Isc1 above 100 U ({first(big)} U): insulin "
            "is in U (rates in U/min); check the units"
        )
    bolus = meal & (table.rate == 0)
    if bolus_meals and bolus.any():
        notes.append(
            f"{int(bolus.sum())} meal(s) given as a bolus into qsto1 ({first(bolus)} mg): eaten "
            "at once, which sets gastric emptying to its fastest; give meals as infusions (RATE "
            "in mg/min; simglucose eats at 5000 mg/min), e.g. with "
            "cohort.models.glucose.meal_records"
        )
    return notes
