"""JAX's threefry random stream, computed in numpy for the draws made before any simulation.

Patients, meals and population candidates are drawn from ``fold_in(PRNGKey(seed), i)`` (one
stream per patient, so a patient never depends on the batch). ``jax.random`` gives those
bits through a jitted program, and XLA compiles each shape in 0.4-0.8 s on this class of CPU:
a cold ``cohort glucose`` paid ~1.5 s of compilation for a few hundred thousand numbers that
numpy hashes in milliseconds. This module is the same function (threefry-2x32 with 20
rounds, JAX's ``fold_in`` and its partitionable ``random_bits``), bit for bit, as the tests
check against ``jax.random`` itself (normals up to scipy's erfinv, ~1e-14); jax has no
host-side implementation of it to call.
"""

from __future__ import annotations

import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)  # threefry's key-schedule constant


def _rotl(x: np.ndarray, d: int) -> np.ndarray:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32(k1, k2, x1, x2) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32 (20 rounds) of the counter pairs ``(x1, x2)`` under keys ``(k1, k2)``;
    all uint32, broadcast together."""
    k1, k2, x1, x2 = np.broadcast_arrays(*(np.asarray(v, np.uint32) for v in (k1, k2, x1, x2)))
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    # uint32 sums wrap by design; numpy says so only for scalars (0-d inputs)
    with np.errstate(over="ignore"):
        a, b = x1 + ks[0], x2 + ks[1]
        for i in range(5):
            for r in _ROTATIONS[i % 2]:
                a = a + b
                b = a ^ _rotl(b, r)
            a = a + ks[(i + 1) % 3]
            b = b + ks[(i + 2) % 3] + np.uint32(i + 1)
    return a, b


def key(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``jax.random.PRNGKey(seed)``'s two words (a seed of up to 64 bits)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return np.uint32(s >> 32), np.uint32(s & 0xFFFFFFFF)


def fold_in(keys: tuple, data) -> tuple[np.ndarray, np.ndarray]:
    """``jax.random.fold_in(key, d)`` for every ``d`` in ``data`` (uint32; keys broadcast)."""
    d = np.asarray(data).astype(np.uint32)
    return threefry2x32(keys[0], keys[1], np.zeros_like(d), d)


def bits64(keys: tuple, shape: tuple[int, ...]) -> np.ndarray:
    """``jax.random.bits(key, shape, uint64)`` for each key in ``keys`` (arrays of any shape
    ``S``): uint64 of shape ``S + shape``."""
    k1, k2 = (np.asarray(k, np.uint32)[(Ellipsis,) + (None,) * len(shape)] for k in keys)
    idx = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64).reshape(shape)
    hi, lo = threefry2x32(k1, k2, (idx >> np.uint64(32)).astype(np.uint32), idx.astype(np.uint32))
    return (hi.astype(np.uint64) << np.uint64(32)) | lo.astype(np.uint64)


def uniform(keys: tuple, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0):
    """``jax.random.uniform(key, shape, float64, low, high)`` for each key in ``keys``: bit for
    bit on [0, 1) and on (−1, 1) (the normals' range); on other ranges XLA may fuse the
    scaling into one multiply-add, 1 ulp apart at most."""
    mantissa = (bits64(keys, shape) >> np.uint64(12)) | np.float64(1.0).view(np.uint64)
    floats = mantissa.view(np.float64) - 1.0
    return np.maximum(low, floats * (high - low) + low)


def normal(keys: tuple, shape: tuple[int, ...]) -> np.ndarray:
    """``jax.random.normal(key, shape, float64)`` for each key in ``keys``: its recipe,
    √2·erfinv of a uniform in (−1, 1), on the same bits; scipy's erfinv and XLA's agree to
    ~1e-14, not to the bit."""
    from scipy import special

    return np.sqrt(2.0) * special.erfinv(uniform(keys, shape, np.nextafter(-1.0, 0.0), 1.0))
