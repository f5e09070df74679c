"""Why patients of a result failed, in words a user can act on: one line per status kind with
its meaning and fix, and for ``invalid_parameters`` which parameter is out of bounds, for how
many patients and the first one's value. :func:`~cohort.engine.simulate.simulate` warns with
these lines (a Python user got NaN patients without a word), the CLI prints them."""

from __future__ import annotations

import warnings

import numpy as np

from cohort.engine.inputs import outside_bounds
from cohort.engine.status import STATUS_MEANINGS, STATUS_MESSAGES, Status
from cohort.errors import PatientsFailedWarning


def failure_reasons(model, ds, status: np.ndarray) -> list[str]:
    """One line per failure kind: what it means and what to do (the parameters out of bounds
    by name)."""
    lines = []
    for code in sorted(set(status[status != 0].tolist())):
        count = int((status == code).sum())
        name = STATUS_MEANINGS.get(code, str(code))
        lines.append(f"{name} ({count:,}): {STATUS_MESSAGES.get(Status(code), '')}".rstrip(": "))
        if code == Status.INVALID_PARAMETERS:
            lines += [f"  {x}" for x in _invalid_parameters(model, ds, status)]
    return lines


def warn_failed(model, ds, stacklevel: int):
    """``ds``, after a :class:`PatientsFailedWarning` if some of its patients failed (a
    Python user got NaN patients without a word)."""
    status = np.asarray(ds["status"])
    if (status != 0).any():
        warnings.warn(
            f"{int((status != 0).sum()):,} of {status.size:,} patients failed (status != 0, "
            "NaN outputs; the others are kept): "
            + "; ".join(line.strip() for line in failure_reasons(model, ds, status)),
            PatientsFailedWarning,
            stacklevel=stacklevel + 1,
        )
    return ds


def _invalid_parameters(model, ds, status: np.ndarray, show: int = 4) -> list[str]:
    """Which parameters put patients out of bounds (status ``invalid_parameters``): the
    bound, how many patients and the first offender's value, so the user can fix the
    population (e.g. a log-normal spread pushing a fraction above 1)."""
    bad = status == Status.INVALID_PARAMETERS
    lines = []
    explained = np.zeros(bad.shape, bool)  # patients with a parameter out of bounds
    for q in model.parameters:
        if not bad.any() or q.name not in ds:
            continue
        v = np.asarray(ds[q.name].values, float)
        out = bad & outside_bounds(q, v)
        explained |= out
        if out.any():
            i = int(np.flatnonzero(out)[0])
            lines.append(
                f"{q.name} outside [{q.lower:g}, {q.upper:g}]"
                + (f" {q.units}" if q.units not in ("1", "") else "")
                + f" for {int(out.sum()):,} "
                f"patient(s) (e.g. {patient_label(ds, i)}: {v[i]:.4g})"
            )
    for name in sorted(k for k in ds.data_vars if str(k).startswith("D_")):
        v = np.asarray(ds[name].values, float)
        out = bad & ~(np.isfinite(v) & (v > 0))
        if not out.any():  # the other reason: longer than II at steady state
            out = bad & ~explained
            if out.any():
                i = int(np.flatnonzero(out)[0])
                lines.append(
                    f"{name} (modelled infusion duration of RATE=-2 doses) longer than the "
                    f"SS=1 dose's II for {int(out.sum()):,} patient(s) (e.g. "
                    f"{patient_label(ds, i)}: {v[i]:.4g})"
                )
            continue
        if out.any():
            i = int(np.flatnonzero(out)[0])
            lines.append(
                f"{name} (modelled infusion duration of RATE=-2 doses) not > 0 for "
                f"{int(out.sum()):,} patient(s) (e.g. {patient_label(ds, i)}: {v[i]:.4g})"
            )
    return lines[:show] + ([f"... and {len(lines) - show} more"] if len(lines) > show else [])


def patient_label(ds, i: int) -> str:
    """How a user finds patient index ``i``: its ID from the input files where the result
    keeps one, else its 0-based index."""
    if "ID" in ds.variables:
        pid = ds["ID"].values[i]
        return f"ID {pid:g}" if isinstance(pid, (float, np.floating)) else f"ID {pid}"
    return f"patient {i}"
