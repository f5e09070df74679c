"""Model registry: ``cohort.models.get(name)``; ``available()`` lists names."""

from cohort.models import glucose, pd, pk  # noqa: F401  (registers the built-in models)
from cohort.models.base import (
    LinearPK,
    Model,
    Output,
    Parameter,
    State,
    available,
    get,
    register,
)
from cohort.models.pd import PD_BLOCKS, PKPD, pkpd

__all__ = [
    "LinearPK",
    "Model",
    "Output",
    "PD_BLOCKS",
    "PKPD",
    "Parameter",
    "State",
    "available",
    "get",
    "pkpd",
    "register",
]
