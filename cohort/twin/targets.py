"""Clinical targets evaluated on posterior draws: probability of target attainment (PTA).

A target names a model output, the times it needs, how it summarises a trajectory into one
number per draw (a level, an AUC, a minimum), and the window ``[lo, hi]`` that counts as
attained. Forecasts report each target's distribution and PTA; dose recommendations optimise
them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cohort.data.dataset import just_before
from cohort.twin.prior import TwinError


@dataclasses.dataclass(frozen=True)
class Target:
    """Base: ``output`` summarised over ``times()``; attained when ``lo <= value <= hi``."""

    output: str
    lo: float = -np.inf
    hi: float = np.inf

    name = "target"

    def times(self) -> np.ndarray:
        raise NotImplementedError

    def value(self, xp, y):
        """The summary of ``y [..., len(times())]`` (numpy or jax.numpy as ``xp``)."""
        raise NotImplementedError

    def attained(self, v):
        return (v >= self.lo) & (v <= self.hi)

    def units(self, output_units: str, time_units: str) -> str:
        """The units of :meth:`value` for an output in ``output_units``."""
        return output_units

    @property
    def label(self) -> str:
        lo = "" if np.isneginf(self.lo) else f"{self.lo:g} <= "
        hi = "" if np.isposinf(self.hi) else f" <= {self.hi:g}"
        return f"{lo}{self.name}{hi}"

    def _check(self):
        if not self.lo < self.hi:
            raise TwinError(f"{type(self).__name__}: lo must be < hi, got {self.lo}, {self.hi}")


@dataclasses.dataclass(frozen=True)
class Level(Target):
    """The output at ``time``, before any dose given at that time: a trough at a dose time is
    the pre-dose level (a peak: give a time after the infusion ends)."""

    time: float = 0.0

    def __post_init__(self):
        self._check()

    @property
    def name(self) -> str:
        return f"{self.output}@{self.time:g}"

    def times(self):
        return just_before(np.array([float(self.time)]))

    def value(self, xp, y):
        return y[..., 0]


@dataclasses.dataclass(frozen=True)
class AUC(Target):
    """The area under ``output`` over ``[start, end]`` (e.g. vancomycin AUC24 in mg·h/L), by
    composite Simpson's rule on ``points`` (odd) equally spaced times: relative error below
    1e-4 for a 24 h vancomycin window with the default 97 points (15 min apart; the kinks at
    infusion starts and ends limit it to second order there)."""

    start: float = 0.0
    end: float = 24.0
    points: int = 97

    def __post_init__(self):
        self._check()
        if not self.end > self.start:
            raise TwinError(f"AUC: end must be after start, got {self.start}, {self.end}")
        if self.points < 3 or self.points % 2 == 0:
            raise TwinError("AUC: points must be odd and >= 3 (Simpson's rule)")

    @property
    def name(self) -> str:
        return f"AUC_{self.output}[{self.start:g},{self.end:g}]"

    def times(self):
        return np.linspace(self.start, self.end, self.points)

    def units(self, output_units: str, time_units: str) -> str:
        return f"{output_units}·{time_units}" if output_units else time_units

    def value(self, xp, y):
        h = (self.end - self.start) / (self.points - 1)
        inner = 4.0 * xp.sum(y[..., 1:-1:2], axis=-1) + 2.0 * xp.sum(y[..., 2:-1:2], axis=-1)
        return h / 3.0 * (y[..., 0] + y[..., -1] + inner)


@dataclasses.dataclass(frozen=True)
class Minimum(Target):
    """The lowest value of ``output`` on ``[start, end]`` (e.g. glucose below 70 mg/dL:
    ``Minimum("glucose", lo=70)`` attains when the minimum stays at or above 70), over
    ``points`` equally spaced times and a hair before each (:func:`just_before`): a trough
    before a bolus given at one of them counts (the level after the dose alone overstated a
    minimum-concentration target: P 0.90 against the pre-dose level's 0.69)."""

    start: float = 0.0
    end: float = 24.0
    points: int = 241

    def __post_init__(self):
        self._check()

    @property
    def name(self) -> str:
        return f"min_{self.output}[{self.start:g},{self.end:g}]"

    def times(self):
        grid = np.linspace(self.start, self.end, self.points)
        return np.column_stack([just_before(grid), grid]).ravel()

    def value(self, xp, y):
        return xp.min(y, axis=-1)


def parse_target(text: str) -> Target:
    """From the CLI: ``auc:OUTPUT:START:END:LO:HI``, ``level:OUTPUT:TIME:LO:HI`` or
    ``min:OUTPUT:START:END:LO`` (empty LO/HI: unbounded), e.g. ``auc:conc:48:72:400:600``."""
    parts = text.split(":")

    def num(s, default):
        return default if s == "" else float(s)

    try:
        kind = parts[0].lower()
        if kind == "auc" and len(parts) == 6:
            return AUC(
                parts[1],
                num(parts[4], -np.inf),
                num(parts[5], np.inf),
                start=float(parts[2]),
                end=float(parts[3]),
            )
        if kind == "level" and len(parts) == 5:
            return Level(
                parts[1], num(parts[3], -np.inf), num(parts[4], np.inf), time=float(parts[2])
            )
        if kind == "min" and len(parts) in (5, 6):
            hi = num(parts[5], np.inf) if len(parts) == 6 else np.inf
            return Minimum(
                parts[1], num(parts[4], -np.inf), hi, start=float(parts[2]), end=float(parts[3])
            )
    except TwinError as exc:  # a well-formed target with a wrong value (e.g. LO > HI)
        raise TwinError(f"--target {text!r}: {exc}") from None
    except ValueError:  # a number that is not one
        pass
    raise TwinError(
        f"--target {text!r}: use auc:OUTPUT:START:END:LO:HI, level:OUTPUT:TIME:LO:HI or "
        "min:OUTPUT:START:END:LO (leave LO or HI empty for no bound)"
    )
