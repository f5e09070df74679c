"""Appending new records to twins' data: checked so an update can only add what happened
after what the twin has seen, for patients it knows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cohort.data import Dataset
from cohort.data.reader import STANDARD_COLUMNS, DataError, Problem, read_table, validate
from cohort.models.base import Model
from cohort.twin.prior import TwinError, show_id


def append_records(data: Dataset, new: pd.DataFrame | str | Path, model: Model) -> pd.DataFrame:
    """``data``'s records followed by ``new`` (rows ordered per patient by time, the old
    before the new at equal times). Raises :class:`TwinError` naming the row (1-based, of
    ``new``) for an unknown patient or a record earlier than that patient's last record."""
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
    frame = checked.drop(columns=["ROW"])
    # baseline covariates are carried on the new rows when they are missing
    cov = [c for c in old.columns if c not in frame.columns and c not in STANDARD_COLUMNS]
    if cov:
        first = old.groupby("ID", sort=False)[cov].first()
        frame = frame.join(first, on="ID")
    frame = frame[[c for c in old.columns if c in frame.columns]]
    combined = pd.concat([old, frame], ignore_index=True, sort=False)
    order = {pid: k for k, pid in enumerate(pd.unique(old["ID"]))}
    key = combined["ID"].map(order).to_numpy()
    pos = np.arange(len(combined))
    idx = np.lexsort((pos, pd.to_numeric(combined["TIME"]).to_numpy(float), key))
    return combined.iloc[idx].reset_index(drop=True)
