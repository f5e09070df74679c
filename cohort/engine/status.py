"""Per-patient solve status codes stored in every result (``status`` variable)."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    OK = 0
    MAX_STEPS = 1
    NONFINITE = 2
    NEGATIVE = 3
    SOLVER_FAILED = 4
    INVALID_PARAMETERS = 5


STATUS_MEANINGS = {s.value: s.name.lower() for s in Status}
