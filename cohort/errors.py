"""The error and warning bases every cohort module raises (nothing here imports the package).

A :class:`CohortError` is a problem with the user's input, files or environment whose message
names the flag/file/key/row and the fix; the CLI prints it as one line and exits with status 2.
Anything else reaching the CLI is a bug and keeps its traceback.
"""

from __future__ import annotations


class CohortError(Exception):
    """Base of every user-facing cohort error (input, spec, data, store)."""


class CohortWarning(UserWarning):
    """Warnings raised by cohort itself (turned into errors in the test suite)."""


class PatientsFailedWarning(CohortWarning):
    """Some patients of a run failed (status != 0, NaN outputs); the others are kept. The
    message says how many and why; the CLI prints the same in its summary instead."""


class StoreError(CohortError, RuntimeError):
    """A store cannot be created, resumed or read; the message says why and what to do."""


class OutputError(StoreError, ValueError):
    """An output path is unsafe, or exists and was not written by cohort, or is locked."""


class UnknownModelError(CohortError, KeyError):
    """A model name that is not registered (a ``KeyError`` too, for dict-like lookups)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelDefinitionError(CohortError, ValueError):
    """A model breaks the :class:`~cohort.models.Model` contract (a name used twice, an
    equation returning the wrong states, a derivative that mixes patients); the message names
    the model, the part and the fix."""


class OptionError(CohortError, ValueError):
    """An argument a function does not accept (an unknown method, guide or controller, a count
    below 1); the message names the argument and what it accepts."""


class ArgumentTypeError(CohortError, TypeError):
    """An argument of the wrong kind (a list where a table or path is expected)."""


def show_id(pid) -> str:
    """A patient ID as the user wrote it in messages (``7``, not ``np.float64(7.0)`` or
    ``7.0``: numeric ID columns are read as floats)."""
    if hasattr(pid, "item"):
        pid = pid.item()
    if isinstance(pid, float) and pid.is_integer():
        pid = int(pid)
    return repr(pid) if isinstance(pid, str) else str(pid)
