"""Population and individual inference (NLME) with numpyro: ML (FOCE-I/Laplace), NUTS, SVI."""

from cohort.inference.bayes import Priors
from cohort.inference.diagnostics import Gates
from cohort.inference.fit import METHODS, fit
from cohort.inference.problem import BoundModel, Pop, bind
from cohort.inference.results import FitResult, load_fit
from cohort.inference.spec import NLME, Covariate, ErrorModel, Param, SpecError

__all__ = [
    "METHODS",
    "NLME",
    "BoundModel",
    "Covariate",
    "ErrorModel",
    "FitResult",
    "load_fit",
    "Gates",
    "Param",
    "Pop",
    "Priors",
    "SpecError",
    "bind",
    "fit",
]
