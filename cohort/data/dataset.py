"""The validated dataset: NONMEM records plus the arrays that inference and simulation need.

Observations are padded per subject to ``[n_subjects, max_obs]`` arrays (with a mask), so a
likelihood is one vectorized expression over every subject; doses go to the engine's padded
:class:`~cohort.dosing.EventTable` through the dosing module's own validation.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohort.data.reader import (
    STANDARD_COLUMNS,
    DataError,
    Problem,
    as_data_error,
    dose_frame,
    read_table,
    rows_of_kind,
    validate,
)
from cohort.dosing import DosingError, EventTable, event_table
from cohort.dosing_formats import DATE_COLUMNS
from cohort.errors import CohortWarning
from cohort.models.base import Model


@dataclasses.dataclass(frozen=True)
class Observations:
    """Observations padded per subject, arrays ``[n_subjects, max_obs]``.

    ``time`` is padded with each subject's last observation time (so it stays non-decreasing,
    as ODE save times must); ``mask`` marks real observations; ``cens`` those below the LLOQ
    (likelihood M3, ``lloq`` holds the limit); ``row`` the 1-based data row (0 for padding);
    ``before_dose`` those recorded before a dose at the same time (NONMEM reads records in
    order: a trough sampled at a dose time and written before that dose is pre-dose).
    """

    time: np.ndarray
    dv: np.ndarray
    mask: np.ndarray
    cens: np.ndarray
    lloq: np.ndarray
    row: np.ndarray
    before_dose: np.ndarray

    @property
    def count(self) -> np.ndarray:
        return self.mask.sum(axis=1)

    def prediction_times(self) -> np.ndarray:
        """Where the model is evaluated: ``time``, or just before it (see
        :func:`just_before`) for an observation recorded before a dose at its time."""
        return np.where(self.before_dose, just_before(self.time), self.time)


def just_before(t):
    """A time a hair before ``t`` (1e-6 time units, or 1e-9 relative for very late times):
    the level before any dose at ``t`` (a trough), which a right-continuous solution would
    give only after the dose. Close enough that a smooth level changes far below any assay
    error, far enough to stay distinct in float64 (the precision of fits and twins)."""
    t = np.asarray(t, float)
    return t - np.maximum(1e-6, 1e-9 * np.abs(t))


def _before_same_time_dose(rec: pd.DataFrame) -> pd.Series:
    """Per record: whether a dose record (EVID 1 or 4) of the same subject and TIME follows it
    in the file."""
    dose = rec["EVID"].isin((1, 4))
    order = pd.Series(np.arange(len(rec)), index=rec.index)
    last_dose = order.where(dose).groupby([rec["ID"], rec["TIME"]], sort=False).transform("max")
    return order < last_dose.fillna(-1)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A validated NONMEM-style dataset (build it with :func:`read_nonmem`).

    ``records`` holds the normalised rows (``ROW`` = 1-based input row); ``covariate_names``
    the numeric non-standard columns; ``model`` the model the compartments were checked
    against (None until one is given).
    """

    records: pd.DataFrame
    covariate_names: tuple[str, ...]
    model: Model | None = None

    # -- sizes and subjects --------------------------------------------------------------------
    @functools.cached_property
    def ids(self) -> np.ndarray:
        return pd.unique(self.records["ID"].to_numpy())

    @property
    def n_subjects(self) -> int:
        return len(self.ids)

    @property
    def n_observations(self) -> int:
        return int(self.observations.mask.sum())

    def __repr__(self) -> str:
        model = self.model.name if self.model is not None else None
        return (
            f"Dataset({self.n_subjects} subjects, {self.n_observations} observations, "
            f"{int(self.records['EVID'].isin((1, 4)).sum())} dose records, "
            f"covariates={list(self.covariate_names)}, model={model!r})"
        )

    def with_model(self, model: Model) -> Dataset:
        """The same data checked against ``model`` (compartments, dose records)."""
        if model is self.model:
            return self
        rows = self.records["ROW"].to_numpy()
        try:
            checked = validate(_as_input(self.records), model)
        except DataError as exc:  # report the rows of the original input
            raise DataError(
                [
                    Problem(int(rows[p.row - 1]) if p.row else None, p.column, p.message)
                    for p in exc.problems
                ]
            ) from None
        checked["ROW"] = rows
        return Dataset(checked, self.covariate_names, model)

    def subset(self, ids: Any) -> Dataset:
        """The records of the subjects ``ids`` (in data order)."""
        keep = self.records["ID"].isin(np.atleast_1d(ids))
        if not keep.any():
            raise DataError([Problem(None, "ID", f"no subject with ID in {ids!r}")])
        return Dataset(self.records[keep].reset_index(drop=True), self.covariate_names, self.model)

    # -- arrays --------------------------------------------------------------------------------
    @functools.cached_property
    def covariates(self) -> pd.DataFrame:
        """Baseline (first-record) covariate values, one row per subject (index ``ID``)."""
        frame = self.records[["ID", *self.covariate_names]]
        return frame.groupby("ID", sort=False).first().reindex(self.ids)

    def time_varying(self, columns: tuple[str, ...] | list[str]) -> list[str]:
        """The ``columns`` whose value changes within some subject (missing values aside)."""
        frame = self.records[["ID", *columns]]
        varying = frame.groupby("ID", sort=False).nunique(dropna=True).max()
        return [c for c in columns if varying.get(c, 1) > 1]

    @functools.cached_property
    def observations(self) -> Observations:
        rec = self.records
        obs = rec[(rec["EVID"] == 0) & (rec["MDV"] == 0)]
        index = {pid: k for k, pid in enumerate(self.ids)}
        subj = obs["ID"].map(index).to_numpy()
        n = self.n_subjects
        counts = np.bincount(subj, minlength=n)
        width = max(1, int(counts.max(initial=0)))
        slot = obs.groupby("ID", sort=False).cumcount().to_numpy()
        time = np.zeros((n, width))
        arrays = {
            "dv": np.zeros((n, width)),
            "mask": np.zeros((n, width), bool),
            "cens": np.zeros((n, width), bool),
            "lloq": np.zeros((n, width)),
            "row": np.zeros((n, width), np.int64),
            "before_dose": np.zeros((n, width), bool),
        }
        time[subj, slot] = obs["TIME"].to_numpy()
        arrays["dv"][subj, slot] = obs["DV"].to_numpy()
        arrays["mask"][subj, slot] = True
        arrays["cens"][subj, slot] = obs["CENS"].to_numpy() == 1
        arrays["lloq"][subj, slot] = np.nan_to_num(obs["LLOQ"].to_numpy(), nan=0.0)
        arrays["row"][subj, slot] = obs["ROW"].to_numpy()
        arrays["before_dose"][subj, slot] = _before_same_time_dose(rec)[obs.index]
        # Pad times with the subject's last observation time (non-decreasing save times).
        last = np.where(counts > 0, time[np.arange(n), np.maximum(counts - 1, 0)], 0.0)
        pad = ~arrays["mask"]
        time = np.where(pad, last[:, None], time)
        return Observations(time=time, **arrays)

    def event_table(self, model: Model | None = None) -> EventTable:
        """Doses as the engine's padded event table (one row per subject, data order)."""
        model = self._model(model)
        try:
            return event_table(
                dose_frame(self.records, model), model.state_names, model.dose_targets
            )
        except DosingError as exc:
            raise as_data_error(exc) from None

    def to_frame(self) -> pd.DataFrame:
        """The normalised NONMEM records (``DV`` NaN where missing) without the ROW column."""
        return self.records.drop(columns=["ROW"]).copy()

    def _model(self, model: Model | None) -> Model:
        model = model or self.model
        if model is None:
            raise DataError(
                [Problem(None, "CMT", "no model given; pass model= to read_nonmem or here")]
            )
        return model


def _as_input(records: pd.DataFrame) -> pd.DataFrame:
    """Records back in input form (CENS/LLOQ only where meaningful)."""
    frame = records.drop(columns=["ROW"])
    if not (frame["CENS"] == 1).any():
        frame = frame.drop(columns=["CENS", "LLOQ"])
    return frame


def read_nonmem(
    source: str | Path | pd.DataFrame,
    model: Model | str | None = None,
    *,
    drop: tuple[str, ...] | list[str] = (),
    dvid: Any = None,
) -> Dataset:
    """Read and validate a NONMEM-style dataset from a file or a pandas DataFrame.

    Columns: ``ID TIME DV AMT`` (required), ``EVID MDV CMT RATE ADDL II SS`` (NONMEM defaults
    when absent), ``BLQ``/``CENS`` (1 = below the limit of quantification) with ``LLOQ`` (or DV
    holding the limit), ``DVID`` (the kind of each observation); every other numeric column is a
    covariate. ``drop`` names columns to ignore (e.g. text comments). ``dvid`` (a number or a
    text label such as ``"cp"``) keeps only the observations of that ``DVID`` (dose records are
    all kept), as NONMEM's ``IGNORE=(DVID.NE.1)``: a fit compares every observation with one
    model output. With ``model`` the compartments and dose records are checked against it.
    Raises :class:`DataError` listing every problem with row and column.
    """
    if isinstance(model, str):
        from cohort.models import get

        model = get(model)
    if isinstance(source, pd.DataFrame):
        raw = source.copy()
    else:
        raw = read_table(source)
    upper = {c: str(c).strip().upper() for c in raw.columns}
    dropped = {str(d).upper() for d in drop}
    raw = raw[[c for c in raw.columns if upper[c] not in dropped]]
    raw = raw.drop(columns=_text_columns(raw, upper))
    # a control stream's data (cohort.inference.nonmem marks it): $PK says what DUR is
    durations = not (isinstance(source, pd.DataFrame) and source.attrs.get("nonmem_items"))
    try:
        records = validate(raw, model, durations, dvid)
    except DataError as exc:
        if not isinstance(source, pd.DataFrame):  # the file named, as its rows are
            exc.args = (f"{source}: {exc.args[0]}",)
        raise
    covariates = tuple(c for c in records.columns if c not in STANDARD_COLUMNS | {"ROW"})
    return Dataset(records, covariates, model)


def observations_of_kind(records: pd.DataFrame, dvid: Any) -> pd.DataFrame:
    """``records`` (validated) without the observations whose ``DVID`` is not ``dvid`` (every
    dose and other event record is kept)."""
    keep = rows_of_kind(records, dvid)
    return records[keep].reset_index(drop=True)


# Columns the reader interprets (a date column is refused there, not dropped as text here).
READ_COLUMNS = STANDARD_COLUMNS | {"C", "DUR", *DATE_COLUMNS}


def _text_columns(raw: pd.DataFrame, upper: dict) -> list:
    """Columns other than NONMEM's own (and the comment flag C) that hold text in most of
    their cells (STUDY, SEX as M/F, ANALYTE): not covariates. They are left out with a
    warning naming them (a column of numbers with a few text cells is kept, so that its
    typos are reported by row)."""
    out = []
    for col in raw.columns:
        if upper[col] in READ_COLUMNS or raw[col].dtype.kind in "biuf":
            continue
        cells = raw[col].astype(str).str.strip()
        given = raw[col].notna() & ~cells.isin(["", "."])
        text = given & pd.to_numeric(cells, errors="coerce").isna()
        if given.any() and text.sum() >= 0.5 * given.sum():
            i = int(np.flatnonzero(text.to_numpy())[0])
            warnings.warn(
                f"dataset: column {upper[col]} holds text (e.g. {cells.iloc[i]!r} on row "
                f"{i + 1}), so it is not a covariate and is left out; recode it as numbers "
                "(e.g. 0/1) to use it",
                CohortWarning,
                stacklevel=3,
            )
            out.append(col)
    return out
