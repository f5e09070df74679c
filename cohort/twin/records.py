"""Appending new records to twins' data: checked so an update can only add what happened
after what the twin has seen, for patients it knows."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.data import Dataset
from cohort.data.reader import (
    DUPLICATE_KEYS,
    STANDARD_COLUMNS,
    DataError,
    Problem,
    observation_kinds,
    read_table,
    validate,
)
from cohort.errors import CohortWarning
from cohort.models.base import Model
from cohort.twin.prior import TwinError, show_id


def append_records(
    data: Dataset, new: pd.DataFrame | str | Path, model: Model
) -> tuple[pd.DataFrame, np.ndarray]:
    """``data``'s records followed by ``new`` (rows ordered per patient by time, the old
    before the new at equal times), and for each row its 1-based row in ``new`` (0: a record
    seen before). Raises :class:`TwinError` naming the row of ``new`` for an unknown patient,
    a record earlier than that patient's last record, or a record the twin has already seen
    (an update applied twice); warns of a second result at the time of one already seen."""
    frame = new.copy() if isinstance(new, pd.DataFrame) else read_table(new)
    frame.columns = [str(c).strip().upper() for c in frame.columns]
    for col in ("ID", "TIME"):
        if col not in frame:
            raise TwinError(f"update records: column {col} is missing")
    if frame.empty:
        raise TwinError("update records: no rows")
    old = data.to_frame()
    try:
        checked = validate(frame, model)
    except DataError as exc:
        raise DataError(
            [Problem(p.row, p.column, f"update records: {p.message}") for p in exc.problems]
        ) from None
    _check_repeats(old, checked)  # first: an update applied again is named as such
    known = set(old["ID"].tolist())
    last = old.groupby("ID", sort=False)["TIME"].max()
    for row, pid, t in zip(checked["ROW"], checked["ID"].tolist(), checked["TIME"].tolist()):
        if pid not in known:
            raise TwinError(
                f"update record {int(row)}: ID {show_id(pid)} is not one of these twins' "
                "patients; identify new patients with Twins.identify (or add their records "
                "there)"
            )
        if t < last[pid]:
            raise TwinError(
                f"update record {int(row)} (ID {show_id(pid)}, TIME {t:g}): earlier than the "
                f"last record the twin has seen for this patient (TIME {last[pid]:g}); an "
                "update adds what happened since. Refit with the corrected full records instead"
            )
    checked = _one_kind(old, checked)
    rows = checked["ROW"].to_numpy(int)
    _warn_second_results(old, checked)
    frame = checked.drop(columns=["ROW"])
    # baseline covariates are carried on the new rows when they are missing
    cov = [c for c in old.columns if c not in frame.columns and c not in STANDARD_COLUMNS]
    if cov:
        first = old.groupby("ID", sort=False)[cov].first()
        frame = frame.join(first, on="ID")
    # dose items the earlier records did not need (day 0 without infusions): NONMEM's default
    # 0 there, not dropped from the update (its infusions ran as boluses; a review)
    for c in ("RATE", "ADDL", "II", "SS"):
        if c in frame.columns and c not in old.columns:
            old = old.assign(**{c: 0.0})
    frame = frame[[c for c in old.columns if c in frame.columns]]
    combined = pd.concat([old, frame], ignore_index=True, sort=False)
    order = {pid: k for k, pid in enumerate(pd.unique(old["ID"]))}
    key = combined["ID"].map(order).to_numpy()
    pos = np.arange(len(combined))
    idx = np.lexsort((pos, pd.to_numeric(combined["TIME"]).to_numpy(float), key))
    new_rows = np.concatenate([np.zeros(len(old), int), rows])[idx]
    return combined.iloc[idx].reset_index(drop=True), new_rows


def _one_kind(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``new`` with its observations' ``DVID`` checked: an update of several kinds is refused
    by row (twins learn from one output; a DVID column the earlier records lacked was
    dropped, and effects were pooled with concentrations without a word, a review); an
    update without DVID for twins whose observations are all of one kind takes that kind."""
    kinds = observation_kinds(new)
    found = list(kinds)
    if len(found) > 1:
        shown = ", ".join(f"DVID {k}" if k else "no DVID" for k in found)
        raise TwinError(
            f"update record {int(kinds[found[1]][0])}: observations of {len(found)} kinds "
            f"({shown}); twins learn from one output: give the records of one DVID with the "
            "doses. The twins are unchanged"
        )
    seen = [k for k in observation_kinds(old.assign(ROW=0)) if k]
    if "DVID" not in new and len(seen) == 1:
        return new.assign(DVID=seen[0])
    if len(seen) == 1 and found and found[0] and found[0] != seen[0]:
        raise TwinError(
            f"update record {int(kinds[found[0]][0])}: observations of DVID {found[0]}, where "
            f"the twins learnt from DVID {seen[0]}; twins learn from one output: give the "
            f"records of DVID {seen[0]} with the doses. The twins are unchanged"
        )
    return new


def _check_repeats(old: pd.DataFrame, new: pd.DataFrame) -> None:
    """A new record equal to one already seen (same patient, time, event, amount and value) is
    an update applied twice: refused."""
    keys = [c for c in DUPLICATE_KEYS if c in new and c in old]  # the reader's duplicates
    both = pd.concat([old[keys], new[keys]], ignore_index=True)
    again = np.flatnonzero(both.duplicated(keep="first").to_numpy()[len(old) :])
    if again.size:
        r = new.iloc[again[0]]
        every = " (every record of this update)" if again.size == len(new) else ""
        if again.size == len(old) < len(new):  # the whole history again, then new rows
            raise TwinError(
                f"update records: {again.size} of them (rows {int(r['ROW'])} to "
                f"{int(new.iloc[again[-1]]['ROW'])}) repeat every record the twin has seen "
                "(a cumulative export?); give only the records after them. The twins are "
                "unchanged"
            )
        raise TwinError(
            f"update record {int(r['ROW'])} (ID {show_id(r['ID'])}, TIME {r['TIME']:g}): the "
            f"twin has seen this record already{every}; was this update applied before? The "
            "twins are unchanged"
        )


def _warn_second_results(old: pd.DataFrame, new: pd.DataFrame) -> None:
    """A second observation at the time of one already seen, with another value (a corrected
    result?), is used as a second sample: said, naming the update's row."""
    obs_old = old[(old["EVID"] == 0) & (old["MDV"] == 0)]  # (validated: MDV is always there)
    before = obs_old.groupby(["ID", "TIME"], sort=False)["DV"].first()
    for _, r in new[(new["EVID"] == 0) & (new["MDV"] == 0)].iterrows():
        if (r["ID"], r["TIME"]) in before.index:
            warnings.warn(
                f"update record {int(r['ROW'])} (ID {show_id(r['ID'])}, TIME {r['TIME']:g}): "
                f"DV {r['DV']:g} is a second result at the time of one already seen (DV "
                f"{before[(r['ID'], r['TIME'])]:g}); both are used. To correct a result, "
                "identify the twins again from the corrected records",
                CohortWarning,
                stacklevel=4,
            )
            return
