"""Test configuration: float64 everywhere; the CLI's persistent compilation cache off (tests
must not write to the user's cache folder; tests/test_compile_cache.py turns it on in its own
subprocesses, with a temporary folder)."""

import os

os.environ.setdefault("COHORT_NO_COMPILE_CACHE", "1")

import jax  # noqa: E402

import cohort  # noqa: E402, F401  (sets JAX_ENABLE_X64)

jax.config.update("jax_enable_x64", True)
