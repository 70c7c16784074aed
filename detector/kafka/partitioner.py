"""Which partition Kafka's default partitioner gives a keyed record, for a batch of keys.

murmur2 of the key, made positive, modulo the topic's partition count, as the Java client
and aiokafka compute it. aiokafka hashes each key in pure Python (~4 µs, a quarter of what a
keyed send costs the loop); the daemon hashes a batch's alert keys here in one jitted call
and sends each alert to the partition found, which is the one a keyed send would pick.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit
from numpy.typing import NDArray

_SEED = np.uint64(0x9747B28C)
_M = np.uint64(0x5BD1E995)
_LOW32 = np.uint64(0xFFFFFFFF)
_POSITIVE = np.uint64(0x7FFFFFFF)
_S8, _S13, _S15, _S16, _S24 = (np.uint64(s) for s in (8, 13, 15, 16, 24))


@njit(cache=True, nogil=True)
def murmur2(data: NDArray[np.uint8], start: int, end: int) -> np.uint64:  # pragma: no cover
    """Kafka's murmur2 (Utils.murmur2) of data[start:end] as an unsigned 32-bit value; 32-bit
    arithmetic done in uint64 and masked after every product."""
    length = end - start
    h = (_SEED ^ np.uint64(length)) & _LOW32
    body_end = start + (length & ~3)
    for i in range(start, body_end, 4):
        k = (
            np.uint64(data[i])
            | np.uint64(data[i + 1]) << _S8
            | np.uint64(data[i + 2]) << _S16
            | np.uint64(data[i + 3]) << _S24
        )
        k = (k * _M) & _LOW32
        k ^= k >> _S24
        k = (k * _M) & _LOW32
        h = ((h * _M) & _LOW32) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= np.uint64(data[body_end + 2]) << _S16
    if extra >= 2:
        h ^= np.uint64(data[body_end + 1]) << _S8
    if extra >= 1:
        h ^= np.uint64(data[body_end])
        h = (h * _M) & _LOW32
    h ^= h >> _S13
    h = (h * _M) & _LOW32
    h ^= h >> _S15
    return h


@njit(cache=True, nogil=True)
def _partitions(  # pragma: no cover
    data: NDArray[np.uint8], ends: NDArray[np.int64], n_partitions: int, out: NDArray[np.int64]
) -> None:
    start = 0
    n = np.uint64(n_partitions)
    for i in range(ends.size):
        out[i] = np.int64((murmur2(data, start, ends[i]) & _POSITIVE) % n)
        start = ends[i]


def key_partitions(keys: Sequence[bytes], n_partitions: int) -> NDArray[np.int64]:
    """The partition of each key among ``n_partitions`` (0 .. n - 1), as a keyed send picks
    it; the keys are joined once and hashed in one call."""
    if n_partitions < 1:
        raise ValueError(f"n_partitions is {n_partitions}; expected at least 1")
    out = np.empty(len(keys), np.int64)
    if keys:
        data = np.frombuffer(b"".join(keys), np.uint8)
        ends = np.cumsum(np.fromiter(map(len, keys), np.int64, count=len(keys)))
        _partitions(data, ends, n_partitions, out)
    return out
