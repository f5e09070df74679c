"""Virtual populations from prior specs (``priors/*.toml``).

Matching (``match``, ``weighted_ks``, ``MatchResult``) is imported on first use (PEP 562):
it needs scipy.stats, which ``cohort simulate`` would otherwise load for nothing."""

import importlib

from cohort.population.expr import ExpressionError
from cohort.population.generate import PopulationError, draw_candidates, generate, open_population
from cohort.population.lognormal import lognormal
from cohort.population.spec import PopulationSpec, SpecError, load_spec, parse_spec

_MATCHING = ("MatchResult", "match", "weighted_ks")

__all__ = [
    "ExpressionError",
    "MatchResult",
    "PopulationError",
    "PopulationSpec",
    "SpecError",
    "draw_candidates",
    "generate",
    "load_spec",
    "lognormal",
    "match",
    "open_population",
    "parse_spec",
    "weighted_ks",
]


def __getattr__(name: str):
    if name not in _MATCHING:
        raise AttributeError(f"module 'cohort.population' has no attribute {name!r}")
    value = getattr(importlib.import_module("cohort.population.matching"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MATCHING))
