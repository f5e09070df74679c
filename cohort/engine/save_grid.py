"""The save-grid block scan shared by the closed-form and fixed-step engines.

Both engines walk the save grid in blocks of ``size`` points or intervals: a block in which
no patient has a change record is one straight-line body XLA fuses into one pass over the
patients; a block with a record takes the engine's record-by-record path. This module holds
that skeleton once (grid padding, per-block flags, the ``scan``/``cond`` and the reshape of
the stacked outputs); the engines supply the two block bodies.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def padded_grid(times: np.ndarray, n_items: int, size: int) -> tuple[np.ndarray, int]:
    """``(times, n_blocks)`` with ``times`` padded by repeats of its last value so that
    ``n_items`` (points or intervals) fill ``n_blocks`` whole blocks of ``size``."""
    n_blocks = -(-n_items // size)
    pad = np.full(n_blocks * size - n_items, times[-1])
    return np.concatenate([np.asarray(times, dtype=float), pad]), n_blocks


def padded_flags(flags, length: int):
    """``flags`` extended with ``False`` to ``length`` entries (padding has no records)."""
    return jnp.concatenate([flags, jnp.zeros(length - flags.shape[0], bool)])


def block_any(flags, n_blocks: int, size: int):
    """``[n_blocks]``: some entry of each block of ``size`` flags is set."""
    return jnp.any(flags.reshape(n_blocks, size), axis=1)


def scan_blocks(
    carry,
    block_event,
    plain_block: Callable,
    eventful_block: Callable,
    size: int,
):
    """Scan ``block(carry, b) -> (carry, {name: [size, ...]})`` over the blocks, taking
    ``eventful_block`` where ``block_event[b]`` and ``plain_block`` elsewhere; returns the
    final carry and outputs ``{name: [n_blocks * size, ...]}`` (padding rows included)."""
    n_blocks = block_event.shape[0]

    def block(c, b):
        return jax.lax.cond(block_event[b], eventful_block, plain_block, c, b)

    carry, out = jax.lax.scan(block, carry, jnp.arange(n_blocks))
    return carry, {o: v.reshape((n_blocks * size, *v.shape[2:])) for o, v in out.items()}
