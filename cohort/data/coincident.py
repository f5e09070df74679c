"""Observations that fall on a dose implied by ADDL/II: said, because their meaning is easy to
miss.

NONMEM (PREDPP) gives an additional dose before an observation record at the same time, so
such an observation is predicted just after that dose (mrgsolve's default record sort does the
same, to match it). A trough sampled at the scheduled dose time and coded that way is fitted
as a peak, with nothing in the output to say so. An explicit dose record written after the
observation is read in file order (pre-dose), as NONMEM reads records.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cohort.errors import CohortWarning


def warn_observations_at_additional_doses(records: pd.DataFrame, stacklevel: int) -> None:
    """Warn once, naming the rows, about observations (EVID 0, MDV 0) whose TIME is that of
    an ADDL-implied dose of the same subject. ``records``: the validated rows (``ROW`` = the
    1-based input row)."""
    if "ADDL" not in records or "II" not in records:
        return
    addl = records["ADDL"].fillna(0).to_numpy(float)
    ii = records["II"].fillna(0).to_numpy(float)
    repeats = records["EVID"].isin((1, 4)).to_numpy() & (addl >= 1) & (ii > 0)
    if not repeats.any():
        return
    doses = records.loc[repeats, ["ID", "TIME", "ADDL", "II", "ROW"]]
    obs = records.loc[(records["EVID"] == 0) & (records["MDV"] == 0), ["ID", "TIME", "ROW"]]
    pairs = obs.merge(doses, on="ID", suffixes=("", "_dose"))
    if pairs.empty:
        return
    k = np.round((pairs["TIME"] - pairs["TIME_dose"]) / pairs["II"])
    implied = pairs["TIME_dose"] + k * pairs["II"]
    close = np.abs(pairs["TIME"] - implied) <= 1e-9 * np.maximum(1.0, np.abs(pairs["TIME"]))
    hit = pairs[(k >= 1) & (k <= pairs["ADDL"]) & close]
    if hit.empty:
        return
    rows = pd.unique(hit["ROW"])
    first = hit.iloc[0]
    shown = ", ".join(str(int(r)) for r in rows[:5]) + (" ..." if rows.size > 5 else "")
    warnings.warn(
        f"record(s) {shown} ({rows.size} in all): an observation at the time of an additional "
        f"dose (row {int(first['ROW_dose'])}: ADDL/II, here TIME {first['TIME']:g}) is "
        "predicted just after that dose, as NONMEM does; for a trough taken before the dose, "
        "write that dose as its own record after the observation, or give the observation an "
        "earlier time",
        CohortWarning,
        stacklevel=stacklevel,
    )
