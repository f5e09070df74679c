"""The Engine contract: how a cohort is solved, as an object carrying its settings.

As in diffrax (solver objects) and numpyro (kernel objects), an engine is a small immutable
value: ``ClosedForm()``, ``RK4(dt=...)`` or ``RK4(tol=...)``, ``Adaptive(rtol=..., atol=...)``.
It checks that it can solve a model and a dosing table (:meth:`Engine.validate`, called before
anything runs, so a mismatch is a clear error naming the setting), describes itself for the
provenance of every result (:meth:`Engine.describe`), and builds the batch solve the chunk loop
(:mod:`cohort.engine.batching`) runs (:meth:`Engine.batch_solve`). Adding an engine is one
module that subclasses :class:`Engine` and registers its shorthand names with
:func:`register_engine`.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from cohort.dosing import EventTable
from cohort.engine.inputs import InputError
from cohort.models.base import Model

ENGINES: dict[str, type[Engine]] = {}
# The built-in engines' modules, imported when their name is first asked for (so a closed-form
# or RK4 run never imports diffrax).
BUILTIN = {
    "closed_form": "cohort.engine.closed_form",
    "fast": "cohort.engine.fast_path",
    "rk4": "cohort.engine.fast_path",
    "diffrax": "cohort.engine.diffrax_path",
    "adaptive": "cohort.engine.diffrax_path",
}


def engine_class(name: str) -> type[Engine] | None:
    """The engine registered as ``name`` (importing a built-in one on first use)."""
    if name not in ENGINES and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    return ENGINES.get(name)


def engine_names() -> list[str]:
    return sorted({"auto", *ENGINES, *BUILTIN})


class Engine(abc.ABC):
    """Base class of the engines (frozen dataclasses: hashable, so compiled solves are cached
    per engine value)."""

    name: ClassVar[str]  # the engine's name in provenance and the ``method=`` shorthand
    default_chunk: ClassVar[int] = 10_000  # patients per batch when the user gives none

    def supports(self, model: Model) -> str | None:
        """Why this engine cannot solve ``model`` (``None``: it can)."""
        return None

    def max_devices(self, model: Model) -> int | None:
        """How many local devices a batch of ``model`` may be split over (``None``: all)."""
        return None

    def compiler_options(self, model: Model) -> dict[str, Any]:
        """XLA options for compiling this engine's batch programs (``{}``: XLA's defaults).
        They apply to every batch size, so results stay bit-identical across batches."""
        return {}

    def validate(self, model: Model, table: EventTable, params: dict[str, np.ndarray]) -> None:
        """Raise :class:`InputError` (naming the setting or record) if the run cannot work."""
        reason = self.supports(model)
        if reason:
            raise InputError(f"method: {reason}")

    @abc.abstractmethod
    def describe(self, model: Model) -> dict[str, Any]:
        """The settings that determine the result (for provenance)."""

    @abc.abstractmethod
    def batch_solve(
        self,
        model: Model,
        times: np.ndarray,
        t_first: float,
        infusion: bool,
        ss_interval: float,
        outputs: tuple[str, ...],
        dtype: str,
    ) -> Callable[[dict, dict], tuple[dict, Any]]:
        """``(params [N], events [N, R]) -> (outputs {name: [T', N]}, status [N])``, traceable
        (the caller jits, shards and batches it)."""


def register_engine(*names: str):
    """Class decorator: make ``method=name`` a shorthand for the engine's default settings."""

    def register(cls: type[Engine]) -> type[Engine]:
        for name in names:
            ENGINES[name] = cls
        return cls

    return register


def one_ss_record_per_patient(table: EventTable, engine: str) -> None:
    """The ODE engines integrate to one steady state per patient."""
    n_ss = np.sum(table.ss & (table.evid == 1), axis=1)
    if np.any(n_ss > 1):
        i = int(np.flatnonzero(n_ss > 1)[0])
        raise InputError(
            f"dosing: patient index {i} has {int(n_ss[i])} SS=1 records; the {engine} engine "
            "supports one SS=1 record per patient (the closed form supports any number)"
        )


def resolve_engine(model: Model, method: Any, options: Any = None) -> Engine:
    """The engine object a ``method=`` argument (an :class:`Engine`, a registered name or
    ``"auto"``) and the legacy ``options=`` settings object ask for."""
    if isinstance(method, Engine):
        if options is not None:
            raise InputError(
                f"options: method={method!r} already carries its settings; drop options="
            )
        engine = method
    elif not isinstance(method, str):
        raise InputError(
            f"method: expected an engine (e.g. cohort.RK4(dt=0.1)) or one of "
            f"{engine_names()}, got {type(method).__name__}"
        )
    elif method == "auto":
        if options is not None:
            if not isinstance(options, Engine):
                raise InputError(f"options: {options!r} is not an engine's settings")
            engine = options
        else:
            from cohort.engine.closed_form import ClosedForm
            from cohort.engine.diffrax_path import Adaptive

            engine = ClosedForm() if ClosedForm().supports(model) is None else Adaptive()
    elif engine_class(method) is not None:
        cls = engine_class(method)
        if options is None:
            engine = cls()
        elif isinstance(options, cls):
            engine = options
        else:
            raise InputError(
                f"options: {type(options).__name__} holds the settings of the "
                f"{getattr(options, 'name', '?')!r} engine, not of method={method!r}; pass "
                f"method={options!r} alone, or {cls.__name__}(...) settings"
            )
    else:
        raise InputError(f"method: {method!r} is not one of {engine_names()}")
    reason = engine.supports(model)
    if reason:
        raise InputError(f"method: {reason}")
    return engine
