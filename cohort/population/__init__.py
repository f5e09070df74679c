"""Virtual populations from prior specs (``priors/*.toml``)."""

from cohort.population.expr import ExpressionError
from cohort.population.generate import PopulationError, draw_candidates, generate, open_population
from cohort.population.lognormal import lognormal
from cohort.population.matching import MatchResult, match, weighted_ks
from cohort.population.spec import PopulationSpec, SpecError, load_spec, parse_spec

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
