"""Test configuration: float64 everywhere; the CLI's persistent compilation cache off (tests
must not write to the user's cache folder; tests/test_compile_cache.py turns it on in its own
subprocesses, with a temporary folder)."""

import os

import pytest

os.environ.setdefault("COHORT_NO_COMPILE_CACHE", "1")

import jax  # noqa: E402

import cohort  # noqa: E402, F401  (sets JAX_ENABLE_X64)

jax.config.update("jax_enable_x64", True)


_DEVICE_ENV = ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")


@pytest.fixture(autouse=True)
def _restore_device_environment():
    """The CLI asks for CPU devices through the environment at its entry (e.g. one per NUTS
    chain); a command run in-process must not leak that into later tests' subprocesses."""
    before = {k: os.environ.get(k) for k in _DEVICE_ENV}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
