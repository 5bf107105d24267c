"""Grain's global-shuffle permutation (`grain.experimental.index_shuffle`), for a whole array of indexes at once.

`grain.MapDataset.shuffle(seed)` places element `k` of epoch `e` at `index_shuffle(k, max_index=n - 1,
seed=(seed + e) % 2**32, rounds=4)`: a Simon-style Feistel cipher on a block of `B` bits (`B` the
even number of bits of `n - 1`, at least 16) with round keys from `std::seed_seq{seed}`, walked in
cycles until the value is at most `max_index` (Rogaway's cycle-walking cipher). Grain computes it one
index per Python call, about 10 us each: for a batch of 1024 records that is as much CPU as reading
them. `index_shuffle` here gives the same numbers for a NumPy array of indexes with a few array
operations per round, so a batch's positions cost microseconds; tests/test_streaming_feed.py checks it
against Grain's own function.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

MIN_BLOCK_BITS = 16
_MASK32 = 0xFFFFFFFF


def seed_seq_keys(seed: int, count: int) -> list[int]:
    """`count` 32-bit words of C++'s `std::seed_seq{seed}.generate(...)` (the algorithm the standard fixes)."""
    n = count
    out = [0x8B8B8B8B] * n
    seeds = [seed & _MASK32]
    s = len(seeds)
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p = (n - t) // 2
    q = p + t
    m = max(s + 1, n)

    def mix(x: int) -> int:
        return x ^ (x >> 27)

    for k in range(m):
        r1 = (1664525 * mix(out[k % n] ^ out[(k + p) % n] ^ out[(k - 1) % n])) & _MASK32
        r2 = (r1 + (s if k == 0 else (k % n + seeds[k - 1] if k <= s else k % n))) & _MASK32
        out[(k + p) % n] = (out[(k + p) % n] + r1) & _MASK32
        out[(k + q) % n] = (out[(k + q) % n] + r2) & _MASK32
        out[k % n] = r2
    for k in range(m, m + n):
        r3 = (1566083941 * mix((out[k % n] + out[(k + p) % n] + out[(k - 1) % n]) & _MASK32)) & _MASK32
        r4 = (r3 - k % n) & _MASK32
        out[(k + p) % n] ^= r3
        out[(k + q) % n] ^= r4
        out[k % n] = r4
    return out


def block_bits(max_index: int) -> int:
    """Bits of the cipher's block for a permutation of [0, max_index] (Grain's rule: even, at least 16)."""
    bits = math.ceil(math.log2(max_index))
    return max(bits + bits % 2, MIN_BLOCK_BITS)


TABLE_BITS = 20  # blocks up to this size are encrypted once per seed into a table (at most 4 MiB)


def _encryptor(word: int, seed: int, rounds: int) -> Any:
    """The cipher on blocks of `2 * word` bits, as a function of an array of values (Simon rounds, Grain's keys)."""
    dtype = np.uint32 if word <= 16 else np.uint64  # a block of up to 32 bits fits 32-bit words
    mask, w = dtype((1 << word) - 1), dtype(word)
    keys = [dtype(k & ((1 << word) - 1)) for k in seed_seq_keys(seed, rounds)]
    one, two, eight = dtype(1), dtype(2), dtype(8)
    back1, back2, back8 = dtype(word - 1), dtype(word - 2), dtype(word - 8)

    def f(x: np.ndarray) -> np.ndarray:  # Simon's round function on `word`-bit words
        r1 = ((x << one) | (x >> back1)) & mask
        r8 = ((x << eight) | (x >> back8)) & mask
        r2 = ((x << two) | (x >> back2)) & mask
        return (r1 & r8) ^ r2

    def encrypt(value: np.ndarray) -> np.ndarray:
        value = np.asarray(value, dtype)
        left, right = (value >> w) & mask, value & mask
        for i in range(0, rounds, 2):
            left ^= f(right) ^ keys[i]
            right ^= f(left) ^ keys[i + 1]
        return (left << w) | right

    return encrypt


@functools.lru_cache(maxsize=4)
def _table(word: int, seed: int, rounds: int) -> np.ndarray:
    """The cipher of every value of a small block, so a cycle walk is one lookup per step."""
    table = _encryptor(word, seed, rounds)(np.arange(1 << (2 * word), dtype=np.uint32))
    table.flags.writeable = False
    return table


def index_shuffle(indexes: np.ndarray, max_index: int, seed: int, rounds: int = 4) -> np.ndarray:
    """Positions of `indexes` (each in [0, max_index]) in Grain's permutation of [0, max_index] for `seed`.

    Equals `[grain.experimental.index_shuffle(i, max_index=max_index, seed=seed, rounds=rounds) for i in
    indexes]` as int64. `rounds` must be even and at least 4, as for Grain.
    """
    if max_index == 0:
        return np.zeros(np.shape(indexes), np.int64)
    if rounds < 4 or rounds % 2:
        raise ValueError(f"rounds must be an even number >= 4 (got {rounds})")
    word, seed = block_bits(int(max_index)) // 2, int(seed) & _MASK32
    if 2 * word <= TABLE_BITS:
        table = _table(word, seed, rounds)
        encrypt = lambda values: table[values]  # noqa: E731
        out = table[np.asarray(indexes, np.int64) & ((1 << (2 * word)) - 1)]  # as the cipher, bits above the block drop
    else:
        encrypt = _encryptor(word, seed, rounds)
        out = encrypt(indexes)
    limit = out.dtype.type(max_index)
    walking = np.flatnonzero(out > limit)
    while len(walking):  # cycle walking: encrypt again until inside [0, max_index]
        again = encrypt(out[walking])
        out[walking] = again
        walking = walking[again > limit]
    return out.astype(np.int64)
