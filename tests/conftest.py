"""Test configuration: float64 everywhere (cohort enables x64 on import)."""

import jax

import cohort  # noqa: F401  (enables x64)

jax.config.update("jax_enable_x64", True)
