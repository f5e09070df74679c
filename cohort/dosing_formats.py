"""Record columns from other tools' dataset formats, read or refused the same way by every
reader of dose records (``cohort simulate --dosing``, ``cohort fit``, twins).

* ``DUR`` (rxode2's ``dur``, Pmetrics' ``DUR``): an infusion's duration. A hospital export
  with ``DUR`` and no ``RATE`` was fitted as boluses without a word (a probe); it becomes
  NONMEM's ``RATE = AMT / DUR`` on dose rows (with ``F`` ≠ 1 the infusion then lasts
  ``F·DUR``, as a given RATE does in NONMEM).
* ``DATE``/``DAT1``/``DAT2``/``DAT3``: with one of them NONMEM reads ``TIME`` as the clock
  time of that date. cohort reads ``TIME`` as the time since the start, and such a file was
  fitted with a sample at 20:00 the next day placed 14 h after an 06:00 dose instead of 38 h
  (a probe): refused with how to convert.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cohort.errors import CohortWarning

DATE_COLUMNS = ("DATE", "DAT1", "DAT2", "DAT3")


def date_column_problem(columns) -> tuple[str, str] | None:
    """``(column, message)`` for a NONMEM date column among ``columns``, else None."""
    found = [c for c in DATE_COLUMNS if c in {str(x).strip().upper() for x in columns}]
    if not found:
        return None
    return found[0], (
        f"a {found[0]} column makes TIME the clock time of that date in NONMEM; cohort reads "
        "TIME as the time since the first record (in the model's time unit): write TIME as the "
        f"elapsed time (e.g. hours from the first dose across dates) and drop {found[0]}"
    )


def _numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Values (NaN where missing) and where a cell held text that is not a number."""
    raw = column
    if not pd.api.types.is_numeric_dtype(raw):
        raw = raw.where(~raw.astype(str).str.strip().isin((".", "", "nan", "NA")))
    values = pd.to_numeric(raw, errors="coerce")
    return values.to_numpy(float), (values.isna() & raw.notna()).to_numpy()


def rates_from_durations(
    df: pd.DataFrame, rows: np.ndarray | None = None
) -> tuple[pd.DataFrame, list[tuple[int, str, str]]]:
    """``df`` with a ``DUR`` column turned into ``RATE`` on dose rows (``AMT`` > 0, ``DUR``
    > 0), and the problems found as ``(row, column, message)``, rows numbered by ``rows``
    (the row the user's file gives each record; 1, 2, ... without). Without ``DUR``, ``df``
    itself."""
    rows = np.arange(1, len(df) + 1) if rows is None else np.asarray(rows)
    upper = {str(c).strip().upper(): c for c in df.columns}
    if "DUR" not in upper:
        return df, []
    dur, dur_text = _numbers(df[upper["DUR"]])
    amt, _ = _numbers(df[upper["AMT"]]) if "AMT" in upper else (np.zeros(len(df)), None)
    rate = _numbers(df[upper["RATE"]])[0] if "RATE" in upper else np.full(len(df), np.nan)
    problems = []
    for i in np.flatnonzero(dur_text | (np.isfinite(dur) & (dur < 0)) | np.isinf(dur)):
        problems.append((int(rows[i]), "DUR", "an infusion's duration must be a number >= 0"))
    timed = (np.nan_to_num(amt) > 0) & (np.nan_to_num(dur, posinf=0) > 0)
    for i in np.flatnonzero(timed & np.isfinite(rate) & (rate != 0)):
        problems.append(
            (int(rows[i]), "DUR", f"both RATE ({rate[i]:g}) and DUR ({dur[i]:g}): give one of them")
        )
    if problems:
        return df, problems
    if timed.any():  # a DUR that is not a duration (a disease's) would make infusions
        warnings.warn(
            f"records: column DUR read as infusion durations (RATE = AMT/DUR) on "
            f"{int(timed.sum())} dose row(s), e.g. row {int(rows[timed][0])}: "
            f"AMT {amt[timed][0]:g} over {dur[timed][0]:g}; rename the column if it is not",
            CohortWarning,
            stacklevel=4,
        )
    out = df.drop(columns=[upper["DUR"]])
    column = upper.get("RATE", "RATE")
    kept = out[column] if column in out else 0.0  # other rows' RATE cells as they were
    out[column] = np.where(timed, amt / np.where(timed, dur, 1.0), kept)
    return out, problems
