"""The one check of a user's random seed (every command derives its JAX keys from it)."""

from __future__ import annotations

import numbers

MAX_SEED = 2**63 - 1  # jax.random.PRNGKey takes a C long: a larger seed raised OverflowError


def check_seed(seed: object, error: type[Exception] = ValueError, name: str = "seed") -> int:
    """``seed`` as an int, or ``error`` naming the allowed range (a seed of 2**64 - 1 gave a
    traceback from deep inside JAX, after the output store had been created; a probe)."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not (0 <= seed <= MAX_SEED)
    ):
        raise error(f"{name}: an integer from 0 to 2**63 - 1, got {seed!r}")
    return int(seed)
