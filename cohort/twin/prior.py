"""A digital twin's population prior: per-patient typical values from covariates, Ω and the
residual error, from a priors spec (``priors/*.toml`` with an ``[error]`` section) or from a
``cohort fit`` result.

Both sources become the same TOML-shaped description (the priors-spec format), so a twin's
prior is stored with the twin as text and rebuilt exactly when the twin is reopened. A
patient's individual log parameters are ``μᵢ + η`` with ``μᵢ = log(typical × covariate
effects)`` and ``η ~ N(0, Ω)``; parameters with a non-positive constant value (e.g. a lag of 0)
are held fixed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohort._toml import read_toml
from cohort.errors import CohortError, show_id
from cohort.models.base import Model
from cohort.population.spec import PopulationSpec, parse_spec


class TwinError(CohortError, ValueError):
    """Bad input for a digital twin; the message names the record, patient or field."""


@dataclasses.dataclass(frozen=True, eq=False)
class TwinPrior:
    """Population prior of a set of twins (build with :meth:`from_spec` or :meth:`from_fit`).

    ``names``: log-normal individual parameters (``K``), ``eta_names`` those with a random
    effect (``q``, in ``names`` order) with covariance ``omega [q, q]``; ``fixed``: model
    parameters held constant; ``error``: ``(kind, add, prop)`` residual SDs of ``output``.
    """

    model: Model
    spec: PopulationSpec
    raw: dict  # the TOML-shaped description (stored with the twin)
    names: tuple[str, ...]
    eta_names: tuple[str, ...]
    omega: np.ndarray
    fixed: dict[str, float]
    output: str
    error: tuple[str, float, float]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def covariates(self) -> tuple[str, ...]:
        """Covariate columns the prior needs per patient."""
        used = set()
        from cohort.population.expr import names_in

        for p in self.spec.parameters:
            for e in p.effects:
                if "covariate" in e.args:
                    used.add(e.args["covariate"])
                elif "expression" in e.args:
                    used |= names_in(e.args["expression"])
        return tuple(sorted(used))

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, path: str | Path) -> TwinPrior:
        """From a priors spec with an ``[error]`` section (e.g.
        ``priors/vancomycin_goti2018.toml``)."""
        raw, digest, path = read_toml(path, TwinError, "priors spec", "priors")
        return cls.from_raw(raw, str(path), digest)

    @classmethod
    def from_raw(cls, raw: dict, path: str = "<prior>", digest: str | None = None) -> TwinPrior:
        spec = parse_spec(raw, path, digest)
        if spec.model is None:
            raise TwinError(f"{path}: [population] model = ...: a twin prior names its model")
        from cohort.models import get

        model = get(spec.model)
        if spec.error is None:
            raise TwinError(
                f"{path}: a twin prior needs an [error] section (kind, add/prop SDs, output, "
                "citation): the residual error of the observations the twins learn from"
            )
        known = set(model.parameter_names)
        unknown = [p.name for p in spec.parameters if p.name not in known]
        if unknown:
            raise TwinError(
                f"{path}: parameters {unknown} are not parameters of the model {model.name!r} "
                f"({sorted(known)}): is this a prior for another model?"
            )
        output = spec.error.output or model.output_names[0]
        if output not in model.output_names:
            raise TwinError(
                f"{path}: error.output {output!r} is not an output of {model.name!r}; choose "
                f"from {list(model.output_names)}"
            )
        names, fixed = [], {}
        for p in spec.parameters:
            if p.typical > 0:
                names.append(p.name)
            elif p.effects or p.name in spec.eta_names:
                raise TwinError(
                    f"{path}: parameters.{p.name}: typical must be > 0 for a parameter with "
                    "covariate effects or a random effect (log-normal)"
                )
            else:
                fixed[p.name] = float(p.typical)
        eta = tuple(n for n in names if n in spec.eta_names)
        order = [spec.eta_names.index(n) for n in eta]
        omega = np.asarray(spec.omega, float)[np.ix_(order, order)]
        err = spec.error
        return cls(
            model, spec, raw, tuple(names), eta, omega, fixed, output, (err.kind, err.add, err.prop)
        )

    @classmethod
    def from_fit(cls, fit: Any, name: str | None = None) -> TwinPrior:
        """From a :class:`~cohort.inference.FitResult` (ML or Bayesian point estimates):
        θ, covariate effects (reference values resolved to numbers), Ω and σ; or from the
        path of a saved fit result (as :meth:`from_file`)."""
        from cohort.inference.export import prior_description

        if isinstance(fit, (str, Path)):
            return cls.from_file(fit)

        try:
            raw = prior_description(fit, name)
        except ValueError as exc:
            raise TwinError(f"from_fit: {exc}") from None
        return cls.from_raw(raw, f"<fit of {fit.bound.spec.model.name}>")

    @classmethod
    def from_file(cls, path: str | Path) -> TwinPrior:
        """From a priors spec (``.toml``) or a saved ``cohort fit`` result (``.nc``/``.zarr``,
        which carries its estimates as a prior description)."""
        path = Path(path)
        if path.suffix in (".nc", ".zarr"):
            from cohort.inference.results import load_fit

            attrs = load_fit(path)["fit_summary"].attrs
            if "prior_spec" not in attrs:
                raise TwinError(
                    f"{path}: this fit result has no prior description (fits with a transform "
                    "cannot give one; results written before cohort 0.1 neither)"
                )
            return cls.from_raw(json.loads(attrs["prior_spec"]), str(path))
        return cls.from_spec(path)

    # -- use -----------------------------------------------------------------------------------
    def log_typical(self, covariates: pd.DataFrame) -> np.ndarray:
        """``μ [N, K]``: log typical values for each row (patient) of ``covariates``."""
        from cohort.population.generate import typical_values
        from cohort.population.marginals import category_values

        n = len(covariates)
        cov = {}
        for c in self.covariates:
            if c not in covariates:
                raise TwinError(
                    f"covariate {c!r}: the prior {self.name!r} needs a {c} column in the records "
                    "(a value per patient, on its first record at least); the records have none"
                )
            x = pd.to_numeric(covariates[c], errors="coerce").to_numpy(float)
            bad = np.flatnonzero(~np.isfinite(x))
            if bad.size:
                raise TwinError(
                    f"covariate {c!r}: missing or non-numeric for patient "
                    f"{show_id(covariates.index[bad[0]])}; give a value on its first record"
                )
            cov[c] = x
        for spec in self.spec.covariates:  # a code the prior has no factor for is an error
            if spec.distribution != "categorical" or spec.name not in cov:
                continue
            codes = np.asarray(category_values(spec), float)
            bad = np.flatnonzero(~np.isin(cov[spec.name], codes))
            if bad.size:
                allowed = ", ".join(
                    f"{v:g} ({label})" for v, label in zip(codes, spec.args["categories"])
                )
                raise TwinError(
                    f"covariate {spec.name!r}: patient {show_id(covariates.index[bad[0]])} has "
                    f"{cov[spec.name][bad[0]]:g}, not one of the prior's categories: {allowed}"
                )
        values = typical_values(self.spec, cov, n)
        out = np.stack([np.asarray(values[k], float) for k in self.names], axis=1)
        bad = np.argwhere(~(out > 0) | ~np.isfinite(out))
        if bad.size:
            i, k = bad[0]
            raise TwinError(
                f"patient {show_id(covariates.index[i])}: typical {self.names[k]} = "
                f"{out[i, k]:g} from its covariates; a log-normal parameter must be > 0 (check "
                "the covariate values)"
            )
        return np.log(out)

    def to_json(self) -> str:
        """The description as JSON, tables in their order: the order of ``[parameters]`` is
        the order of the estimated parameters (sorting the keys reordered them)."""
        return json.dumps(self.raw)

    @classmethod
    def from_json(cls, text: str) -> TwinPrior:
        return cls.from_raw(json.loads(text), "<stored twin prior>")
