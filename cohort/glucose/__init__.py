"""Glucose-control analysis: glycaemic outcome metrics (time in range, risk indices, CVGA),
meal scenarios, insulin controllers and closed-loop cohort runs (:func:`run`)."""

from cohort.glucose.controllers import (
    PID,
    BasalBolus,
    HybridClosedLoop,
    OpenLoop,
    controller,
)
from cohort.glucose.loop import ClosedLoopOptions
from cohort.glucose.metrics import (
    CVGA_LETTERS,
    CVGA_ZONES,
    cvga,
    cvga_counts,
    glycemic_metrics,
    risk_function,
    time_weights,
)
from cohort.glucose.scenarios import (
    MealScenario,
    fixed_scenario,
    profile_scenario,
    random_scenario,
    scenario,
    single_meal,
)
from cohort.glucose.sensor import Sensor
from cohort.glucose.simulate import run

__all__ = [
    "CVGA_LETTERS",
    "CVGA_ZONES",
    "PID",
    "BasalBolus",
    "ClosedLoopOptions",
    "HybridClosedLoop",
    "MealScenario",
    "OpenLoop",
    "Sensor",
    "controller",
    "cvga",
    "cvga_counts",
    "fixed_scenario",
    "glycemic_metrics",
    "profile_scenario",
    "random_scenario",
    "risk_function",
    "run",
    "scenario",
    "single_meal",
    "time_weights",
]
