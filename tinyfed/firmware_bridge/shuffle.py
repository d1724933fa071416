"""The firmware's sample order for local training (``firmware/src/shuffle.c``), in Python.

A keyed permutation of ``0..n-1`` that needs no memory on the board: a 4-round Feistel network
on the smallest even number of bits that covers ``n``, cycle-walked back into range. The
``sim://`` board and the tests use it to visit samples in exactly the board's order.
"""

from __future__ import annotations

import numpy as np

_M = 0xFFFFFFFF


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
            f = mix32(right ^ key ^ ((rnd * 0x9E3779B9) & _M)) & mask
            left, right = right, left ^ f
        i = (left << half) | right
        if i < n:
            return i


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which the board visits its ``n`` samples in ``epoch`` (0-based)."""
    key = epoch_key(seed, epoch)
    return np.array([shuffle_index(i, n, key) for i in range(n)], dtype=np.int64)
