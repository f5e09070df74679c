"""Glucose-control analysis: glycaemic outcome metrics (time in range, risk indices, CVGA)."""

from cohort.glucose.metrics import (
    CVGA_LETTERS,
    CVGA_ZONES,
    cvga,
    cvga_counts,
    glycemic_metrics,
    risk_function,
    time_weights,
)

__all__ = [
    "CVGA_LETTERS",
    "CVGA_ZONES",
    "cvga",
    "cvga_counts",
    "glycemic_metrics",
    "risk_function",
    "time_weights",
]
