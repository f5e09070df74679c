"""Trial spec schema: the frozen dataclasses a validated ``experiments/*.toml`` becomes.

Parsing and validation live in :mod:`cohort.trial.spec`; these types are what the rest of
:mod:`cohort.trial` consumes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from cohort.errors import CohortError

ENDPOINT_TYPES = ("auc", "cmax", "ctrough", "value", "change", "responder", "tte")
TESTS = ("ttest", "ancova", "logrank", "responder")
SPENDING = ("obrien_fleming", "pocock")
ESTIMANDS = ("complete_case", "hypothetical")
ESCALATION = ("3+3", "boin", "crm")


class TrialSpecError(CohortError, ValueError):
    """A trial spec is invalid; the message names the file and the offending key."""


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    regimens: tuple[dict[str, Any], ...]
    dose: float
    control: bool = False


@dataclasses.dataclass(frozen=True)
class Assay:
    output: str
    proportional: float = 0.0
    additive: float = 0.0
    lloq: float = 0.0


@dataclasses.dataclass(frozen=True)
class Endpoint:
    name: str
    type: str
    output: str = ""
    start: float = 0.0
    end: float = float("inf")
    time: float = float("nan")
    baseline: float = 0.0
    of: str = ""
    above: float | None = None
    below: float | None = None
    baseline_hazard: float = 0.0
    coefficient: float = 0.0
    observed: bool = True


@dataclasses.dataclass(frozen=True)
class Test:
    endpoint: str
    test: str
    covariate: str = ""
    log: bool = False
    primary: bool = False
    direction: str = "higher"

    def describe(self) -> str:
        """How the comparison is made, for its label: ``ttest``, ``ancova on WT, log``,
        ``ttest, lower is better``: two tests of one endpoint must not share a label (their
        rows, and a sequential design's tables, were merged)."""
        parts = [f"{self.test} on {self.covariate}" if self.covariate else self.test]
        if self.log:
            parts.append("log")
        if self.direction == "lower":
            parts.append("lower is better")
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class Sequential:
    looks: tuple[float, ...]
    spending: str = "obrien_fleming"
    futility: float | None = None


@dataclasses.dataclass(frozen=True)
class Escalation:
    design: str
    toxicity: str
    target: float = 0.3
    cohort_size: int = 3
    max_patients: int = 36
    pool: int = 200
    skeleton: tuple[float, ...] = ()
    crm_estimate: str = "plugin"  # dfcrm's plug-in p_d = skeleton_d ** exp(E[a]), or posterior_mean


@dataclasses.dataclass(frozen=True)
class Adaptive:
    """Response-adaptive randomization (Thompson sampling on a binary endpoint)."""

    endpoint: str
    burn_in: int = 20
    batch: int = 10
    power: float | None = None  # None: Thall–Wathen tempering n / (2 N)
    direction: str = "higher"
    draws: int = 1000


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """A validated trial: who is enrolled, what they get, what is measured and how analysed."""

    path: str
    digest: str
    name: str
    description: str
    model: str
    method: str
    n: int
    replicates: int
    seed: int
    dtype: str
    grid_step: float
    prior: str
    inclusion: tuple[str, ...]
    exclusion: tuple[str, ...]
    arms: tuple[Arm, ...]
    ratio: tuple[int, ...]
    block_size: int
    strata: tuple[str, ...]
    times: tuple[float, ...]
    assays: tuple[Assay, ...]
    dropout_hazard: float
    estimand: str
    endpoints: tuple[Endpoint, ...]
    tests: tuple[Test, ...]
    alpha: float
    sided: int
    control: str
    sequential: Sequential | None
    power_target: float
    sample_sizes: tuple[int, ...]
    pta: tuple[tuple[str, str], ...]
    escalation: Escalation | None
    raw: dict
    adaptive: Adaptive | None = None

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    def endpoint(self, name: str) -> Endpoint:
        return next(e for e in self.endpoints if e.name == name)

    def with_(self, **changes: Any) -> TrialSpec:
        """A copy with some fields replaced (e.g. ``n`` in a sample-size search)."""
        return dataclasses.replace(self, **changes)


def to_json(spec: TrialSpec) -> str:
    """The validated spec as JSON (stored with a trial, so a store re-opens exactly the spec
    that ran, including programmatic changes made with :meth:`TrialSpec.with_`)."""
    return json.dumps(dataclasses.asdict(spec), default=str)


def from_json(text: str) -> TrialSpec:
    """Inverse of :func:`to_json`."""
    d = json.loads(text)
    d["arms"] = tuple(Arm(**{**a, "regimens": tuple(a["regimens"])}) for a in d["arms"])
    d["assays"] = tuple(Assay(**a) for a in d["assays"])
    d["endpoints"] = tuple(Endpoint(**e) for e in d["endpoints"])
    d["tests"] = tuple(Test(**t) for t in d["tests"])
    if d["sequential"] is not None:
        d["sequential"] = Sequential(
            **{**d["sequential"], "looks": tuple(d["sequential"]["looks"])}
        )
    if d.get("adaptive") is not None:
        d["adaptive"] = Adaptive(**d["adaptive"])
    if d["escalation"] is not None:
        d["escalation"] = Escalation(
            **{**d["escalation"], "skeleton": tuple(d["escalation"]["skeleton"])}
        )
    d["pta"] = tuple(tuple(p) for p in d["pta"])
    for k in ("inclusion", "exclusion", "ratio", "strata", "times", "sample_sizes"):
        d[k] = tuple(d[k])
    return TrialSpec(**d)
