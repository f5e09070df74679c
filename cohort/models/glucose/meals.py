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


def meal_records(
    time: float | Iterable[float], grams: float | Iterable[float], eat_rate: float = EAT_RATE
) -> pd.DataFrame:
    """Meals of ``grams`` CHO starting at ``time`` (min), eaten like simglucose does.

    simglucose eats ``eat_rate`` g in each whole minute and the remainder in one more minute, so
    a meal becomes an infusion at ``eat_rate`` g/min for ``floor(grams/eat_rate)`` minutes plus,
    if needed, a one-minute infusion of the remainder (contiguous: one eating bout).
    """
    if not eat_rate > 0:
        raise ValueError(f"eat_rate must be > 0 g/min, got {eat_rate}")
    rows = []
    for t, g in _pairs(time, grams):
        full = int(np.floor(g / eat_rate + 1e-12))
        rest = g - full * eat_rate
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
