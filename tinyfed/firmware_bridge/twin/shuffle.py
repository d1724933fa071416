"""The firmware's sample order for local training (``firmware/src/shuffle.c``), in Python.

A keyed permutation of ``0..n-1`` that needs no memory on the board: a 4-round Feistel network
on the smallest even number of bits that covers ``n``, cycle-walked back into range. The
``sim://`` board and the tests use it to visit samples in exactly the board's order.

:func:`shuffle_index` is the firmware's algorithm one index at a time (the reference);
:func:`epoch_order` computes a whole epoch with numpy ``uint32`` arithmetic (the simulator
asks for one order per simulated task, so the per-index Python loop dominated its profile).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

_M = 0xFFFFFFFF
_ROUND = 0x9E3779B9
#: Largest Feistel domain (``2**bits``) that :func:`epoch_order` permutes whole as a lookup
#: table; above it, only the indices still out of range go through the network again.
TABLE_MAX = 1 << 16


def mix32(x: int) -> int:
    x &= _M
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M
    x ^= x >> 16
    return x


def epoch_key(seed: int, epoch: int) -> int:
    return mix32((seed & _M) ^ mix32(epoch + 1))


def _bits(n: int) -> int:
    bits = 2
    while bits < 32 and (1 << bits) < n:
        bits += 2
    return bits


def shuffle_index(i: int, n: int, key: int) -> int:
    """Position ``i`` of the permutation of ``0..n-1`` under ``key`` (as the firmware computes it)."""
    half = _bits(n) // 2
    mask = (1 << half) - 1
    while True:
        left, right = i >> half, i & mask
        for rnd in range(4):
            f = mix32(right ^ key ^ ((rnd * _ROUND) & _M)) & mask
            left, right = right, left ^ f
        i = (left << half) | right
        if i < n:
            return i


def _mix32_inplace(x: np.ndarray) -> np.ndarray:
    """:func:`mix32` on a ``uint32`` array, in place (uint32 products wrap like the C ones)."""
    x ^= x >> 16
    x *= np.uint32(0x7FEB352D)
    x ^= x >> 15
    x *= np.uint32(0x846CA68B)
    x ^= x >> 16
    return x


#: ``rnd * 0x9E3779B9`` of the 4 rounds, as a column to broadcast over a round table
_ROUND_CONSTANTS = np.array([[(rnd * _ROUND) & _M] for rnd in range(4)], np.uint32)


@functools.lru_cache(maxsize=40)
def _iota(bits: int) -> np.ndarray:
    """``0 .. 2**bits - 1`` as uint32, read-only (shared by every epoch of that width)."""
    a = np.arange(1 << bits, dtype=np.uint32)
    a.flags.writeable = False
    return a


def _round_tables(half: int, key: int) -> np.ndarray:
    """The 4 round functions as ``(4, 2**half)`` tables: a round only sees ``half`` bits, so
    every index of an epoch shares these ``4 * 2**half`` mixes instead of 4 of its own."""
    f = _ROUND_CONSTANTS ^ np.uint32(key)  # the round keys, (4, 1)
    f = _mix32_inplace(f ^ _iota(half))
    f &= np.uint32((1 << half) - 1)
    return f


def _feistel(i: np.ndarray, half: int, rounds: np.ndarray) -> np.ndarray:
    """One pass of the network (no cycle walk) over a ``uint32`` array of indices."""
    left = i >> np.uint32(half)
    right = i & np.uint32((1 << half) - 1)
    for f in rounds:
        left ^= f.take(right)
        left, right = right, left
    left <<= np.uint32(half)
    left |= right
    return left


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which the board visits its ``n`` samples in ``epoch`` (0-based).

    Equal to ``[shuffle_index(i, n, epoch_key(seed, epoch)) for i in range(n)]``."""
    if n <= 0:
        return np.zeros(0, np.int64)
    key = epoch_key(seed, epoch)
    bits = _bits(n)
    half = bits // 2
    rounds = _round_tables(half, key)
    network: Callable[[np.ndarray], np.ndarray]
    if (1 << bits) <= TABLE_MAX:
        # Permute the whole domain once; a pass of the network is then a table lookup.
        table = _feistel(_iota(bits), half, rounds)
        network = table.take
    else:
        network = functools.partial(_feistel, half=half, rounds=rounds)
    out = network(np.arange(n, dtype=np.uint32))
    walk = np.flatnonzero(out >= n)  # cycle walk: only the indices still out of range go again
    while walk.size:
        out[walk] = network(out[walk])
        walk = walk[out[walk] >= n]
    return out.astype(np.int64)
