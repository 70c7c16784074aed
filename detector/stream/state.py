"""Per-stream state of one model group and one partition, as tables of rows.

Row ``slot`` of every array belongs to one stream; there is never a Python object per
stream, so the scoring kernel reads and writes whole batches of rows. What one row holds:

    rec         one record, the scalars the kernel touches for every point, packed so that
                a point costs few cache lines (256 bytes at D = 1 in float32: always a
                whole number of lines, and the array starts on a line):
        last_ts     timestamp of the last accepted point, epoch seconds (float64)
        err         (ERR_COLUMNS,) error and interval statistics, columns named below
        x_mean      (D,) running mean of the raw input (robust EWMA)
        x_var       (D,) running variance of the raw input
        pred        (D,) the prediction of the next input, in normalised units
        x_min       (D,) the smallest raw input so far (novelty score: values never seen)
        x_max       (D,) the largest raw input so far
        peaks       (PEAKS_COLUMNS,) the tail of the stream's prediction errors (peaks over a
                    threshold: scoring, step 4), columns named below; with the fields
                    above it fills the record's first cache line at D = 1 in float32
        seen        points accepted since the stream started or was reset (int32; past
                    SEEN_LIMIT it steps back by a whole number of ring lengths)
        hist        bit k: the point k steps ago exceeded the threshold (uint16)
        shift_run   the stream's level-shift run (int8): +-points in a row beyond
                    streams.level_shift_std std above (+) or below (-) the mean, counted
                    from a value far outside the stream's earlier range; 0: none (scoring,
                    step 6)
        cooldown    points left of the last alert's escalation window (uint16): while
                    more than escalation_window - cooldown are left the stream does not
                    alert, then only on a score above alert_score (scoring, step 5)
        alert_score the last alert's score, in 1/ALERT_SCORE_SCALE (uint16)
        season_mean (SEASON_BINS,) the daily profile: per bin of the time of day, the
                    EWMA of the normalised input, in 1/SEASON_MEAN_SCALE (int16)
        season_dev  (SEASON_BINS,) per bin, the EWMA of |x̃ - profile|, in
                    1/SEASON_DEV_SCALE (uint8; 0: the bin was never visited)
        season      (SEASON_COLUMNS,) the seasonal score's statistics, columns named below
                    (the seasonal fields fill the record's second cache line, which the
                    kernel touches only when the seasonal score is on)
        tail        (TAIL, n_inputs) float16: the newest model inputs, written here first
                    and into the ring TAIL at a time (below)
    hc          (layers, 2, H)  the LSTM's h (``hc[:, :, 0]``) and c (``hc[:, :, 1]``), one
                                contiguous block of whole cache lines, stepped in place
    ring        (W, n_inputs)   the last W model inputs (normalised values, calendar
                                features) at half precision (detector.stream.half)
    marks       (ceil(W / 8),)  bit i: ring entry i was written by a point that exceeded
                                the threshold, not by the seasonal score alone
                                (retraining leaves those out)
    err_ring    (E,)            dynamic threshold only: the last E smoothed errors
    flags       ()              bit DIRTY: changed since the last ``take_dirty``; bit MARKED:
                                some mark is set (else the kernel need not touch ``marks``
                                for a point that does not exceed); bits IN_WAVE and
                                OFFSET_SET: the kernel's, within one call. Not saved:
                                MARKED is recomputed from the marks on restore
    last_seen   ()              wall-clock time of the last point, for idle eviction (not saved)
    offset      ()              input offset of the last point handled, -1 before any: a
                                point at or below it is a replay and is skipped (Kafka,
                                DESIGN.md "Changelog"). Out of the record: only Kafka mode
                                reads it, and in the record it cost every point a 2nd line

The ring's write position is ``seen % W``, so it needs no column of its own. Input ``p``
(the stream's p-th point, from 0) goes to ``tail[p % TAIL]``; the kernel copies the tail
into the ring when it completes (at the point p = k * TAIL, before writing it), so the
ring lacks at most the TAIL newest inputs, and those are in the record the point touches
anyway. At a million streams, writing the ring (a gigabyte at W = 256 in float32) at every
point cost more than all the rest of the state together (bench/README.md); now a stream's
ring takes one line per TAIL points. Code that reads the ring calls
``flush_tail`` first (``ring_window``, ``ring_windows`` and the serialisers do), and code
that writes it calls ``refill_tail`` after. ``h``, ``c`` and every record field are also
attributes (NumPy views), e.g. ``table.seen[slot]``.
Serialised rows (``stream_bytes``, ``to_bytes``; format version 9) hold every field above
but the tail (it is refilled from the ring), flags and last_seen, packed (_row_dtype),
whatever the in-memory layout. Versions 2 to 8 are still read (rings before 6 are rounded
to half precision; a cooldown running before 7 stays a plain one; before 8 hist had 32
bits, of which the low 16 are kept, and no level-shift run is under way; before 9 the error
tail starts afresh, and version 5 to 8's ``pick``, a forecast choice since removed, is
dropped); version 2 has
no x_min, x_max: the range restarts as the mean +- RESTORED_RANGE_STD std.

Stream ids live in a byte arena (UTF-8), found through an open-addressing hash table
(linear probing on a seeded 64-bit hash, verified byte for byte, so distinct ids never
share a row) that jitted code probes for a whole batch at once: no dict, no Python string
and no int object per stream, and a batch's lookups overlap their cache misses.

Capacity grows by doubling (amortised O(1) per new stream, no copy per stream) up to
``max_streams``; beyond that new streams are refused and counted, so a cardinality explosion
upstream costs a counter, not the process. Freed rows are reused.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from numba import njit
from numba.extending import overload
from numpy.typing import NDArray

from detector.errors import StateFormatError
from detector.model.lstm import prefetch

# Columns of the record's ``err``. Each mode uses at most four statistics, so two columns
# serve two modes each (a table's mode cannot change between dynamic and the others: only
# dynamic tables have an error window).
ERR_SMOOTH = 0  # s_t: EWMA of the prediction error (zscore, dynamic)
ERR_SHORT = 0  # likelihood: the short-term mean of e_t, in place of s_t (unused there)
ERR_MEAN = 1  # mean of the normal-error distribution (zscore: of s_t; likelihood: of e_t)
ERR_EPS = 1  # dynamic: the current threshold on s_t (0 until first computed)
ERR_VAR = 2  # variance of the normal-error distribution
ERR_COUNT = 3  # updates of ERR_MEAN/ERR_VAR so far (early EWMA weights are 1/count)
DT_MEAN = 4  # the stream's usual interval between points, seconds (EWMA)
ERR_COLUMNS = 5

# Columns of the record's ``peaks``: the generalized Pareto tail of the prediction error's
# magnitude above a high quantile u (detector.stream.scoring, step 4).
PEAKS_U = 0  # u, the stream's (1 - scoring.peaks_quantile) quantile of e_t, tracked online
PEAKS_M1 = 1  # mean of the excesses e_t - u over the points with e_t > u
PEAKS_M2 = 2  # mean of their squares
PEAKS_N = 3  # excesses seen so far (early weights are 1 / n)
PEAKS_COLUMNS = 4

# The daily profile (detector.stream.scoring, seasonal score): bins of the time of day, and
# the fixed-point scales its per-bin mean and deviation are stored in.
SEASON_BINS = 16
SEASON_MEAN_SCALE = 2048.0  # int16: x̃ in [-16, 16) to 1/2048 (x̃ is clipped to +-input_clip)
SEASON_DEV_SCALE = 64.0  # uint8: 1/64 to 255/64
# uint16: an alert's score in [0, 1] to 1/65535; with the cooldown count beside it in 16 bits
# too, the pair fills the int32 the count alone took, and the record stays three lines.
ALERT_SCORE_SCALE = 65535.0
MAX_ESCALATION_WINDOW = 0xFFFF  # points: the cooldown count's uint16
# Columns of the record's ``season``.
SEASON_SHORT = 0  # short-term mean of the seasonal deviation u_t
SEASON_MEAN = 1  # mean and variance of u_t (learn as ERR_MEAN and ERR_VAR do, same weights)
SEASON_VAR = 2
SEASON_R2 = 3  # mean of (x̃_t - profile)²: the share of the input's variance left unexplained
SEASON_COLUMNS = 4

# Bits of ``flags``.
DIRTY = 1
MARKED = 2
IN_WAVE = 4  # the scoring kernel's, set and cleared within one call
# The scoring kernel's, set and cleared within one call: a point of this call moved the
# stream's offset, so a later point at that same offset is of the same message (an Influx
# or Telegraf message holds several points of a stream), not a replay.
OFFSET_SET = 8

# Model inputs per record tail: the ring is written TAIL inputs at a time (module docstring).
# 32 float16 inputs fill one cache line at n_inputs = 1.
TAIL = 32

# ``seen`` is an int32. A stream that reaches SEEN_LIMIT points steps back by seen_rewind(W),
# a whole number of ring lengths and tails: the ring's write position (seen % W) and the
# tail's run on unbroken and every warm-up test (seen against a few thousand at most) still
# holds. (The dynamic threshold's error window, at seen % E, restarts its order once unless
# E divides the step: a power of two does.)
SEEN_LIMIT = 1 << 30


@njit(cache=True, nogil=True)
def seen_rewind(buffer_len: int) -> int:  # pragma: no cover - jitted (the scoring kernel's too)
    a, b = buffer_len, TAIL
    while b:
        a, b = b, a % b
    period = buffer_len // a * TAIL  # lcm(W, TAIL)
    return (SEEN_LIMIT // 2 // period) * period


@njit(cache=True, nogil=True)
def copy_tail(ring, rec_h, s, c_tail, n, to_ring):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    """Row ``s``, ``n`` points seen: the inputs its tail holds that the ring may lack (those
    since the tail's start, ((n - 1) // TAIL) * TAIL, that are among the last W), from the
    tail into the ring (``to_ring``); back, every input of the last TAIL that the ring
    holds, so that the tail's places before its start hold the round before as they did
    when the row was saved (the persistence forecast reads the last few inputs). The tail
    is read through the records as int16 (``rec_h``, the tail from column ``c_tail``).
    Oldest first, so that with W < TAIL the newest input of a ring place is the one left
    there. The scoring kernel calls it when a tail completes; flush_tail and refill_tail
    for any rows."""
    W, n_in = ring.shape[1], ring.shape[2]
    lo = max((n - 1) // TAIL * TAIL if to_ring else n - TAIL, n - W, 0)
    to = lo % W
    for p in range(lo, n):
        at = c_tail + (p % TAIL) * n_in
        for j in range(n_in):
            if to_ring:
                ring[s, to, j] = rec_h[s, at + j]
            else:
                rec_h[s, at + j] = ring[s, to, j]
        to = to + 1 if to + 1 < W else 0


@njit(cache=True, nogil=True)
def copy_tails_rows(ring, rec_h, c_tail, seen, slots, to_ring):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    for s in slots:
        copy_tail(ring, rec_h, s, c_tail, seen[s], to_ring)


def wrapped_seen(seen: NDArray[np.int64], buffer_len: int) -> NDArray[np.int64]:
    """Saved counts (int64 on the wire) as the int32 field keeps them."""
    step = seen_rewind(buffer_len)
    over = seen >= SEEN_LIMIT
    return np.where(over, seen - ((seen - SEEN_LIMIT) // step + 1) * step, seen)


_INITIAL_CAPACITY = 1024
_LINE = 64  # bytes of a cache line: records and rows start on one
MAX_KEY_BYTES = 0xFFFF  # a stream id's UTF-8 bytes; the arena stores lengths in 16 bits


class TableLayout(NamedTuple):
    """Sizes of every row; two tables with the same layout can exchange state."""

    layers: int
    hidden: int
    n_values: int  # D: values per point (1 unless the group uses the vector layout)
    n_inputs: int  # D plus calendar features
    buffer_len: int  # W
    error_window: int  # E (dynamic threshold), 0 otherwise
    dtype: str  # "float32" or "float64"


def record_dtype(layout: TableLayout) -> np.dtype:
    """The in-memory record of one row (module docstring), padded to whole cache lines."""
    f = np.dtype(layout.dtype).newbyteorder("<")
    D = layout.n_values
    fields: list[tuple[str, np.dtype, tuple[int, ...]]] = [
        ("last_ts", np.dtype("<f8"), ()),
        ("err", f, (ERR_COLUMNS,)),
        ("x_mean", f, (D,)),
        ("x_var", f, (D,)),
        ("pred", f, (D,)),
        ("x_min", f, (D,)),
        ("x_max", f, (D,)),
        ("peaks", f, (PEAKS_COLUMNS,)),
        ("seen", np.dtype("<i4"), ()),
        ("hist", np.dtype("<u2"), ()),
        ("shift_run", np.dtype("i1"), ()),
        ("cooldown", np.dtype("<u2"), ()),
        ("alert_score", np.dtype("<u2"), ()),
        ("season_mean", np.dtype("<i2"), (SEASON_BINS,)),
        ("season_dev", np.dtype("u1"), (SEASON_BINS,)),
        ("season", f, (SEASON_COLUMNS,)),
        ("tail", np.dtype("<f2"), (TAIL, layout.n_inputs)),
    ]
    names, formats, offsets = [], [], []
    at = 0
    for name, dtype, shape in fields:
        at = -(-at // dtype.itemsize) * dtype.itemsize  # aligned: the kernel's views need it
        names.append(name)
        formats.append((dtype, shape) if shape else dtype)
        offsets.append(at)
        at += dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    size = -(-at // _LINE) * _LINE
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": size})


def _row_dtype(layout: TableLayout, version: int = 9) -> np.dtype:
    """One row as serialised: packed, little-endian, in this field order (format version 9;
    version 8 has pick in place of peaks, version 7 also hist in a uint32 and no shift_run,
    version 6 also the cooldown count in an int32 and no alert_score, version 5 also the
    ring in the table's float type, version 4 also lacks pick, version 3 also the seasonal
    fields, version 2 also x_min and x_max)."""
    f = np.dtype(layout.dtype).newbyteorder("<")
    L, H, D = layout.layers, layout.hidden, layout.n_values
    value_range = [("x_min", f, (D,)), ("x_max", f, (D,))] if version >= 3 else []
    seasonal = (
        [
            ("season_mean", "<i2", (SEASON_BINS,)),
            ("season_dev", "u1", (SEASON_BINS,)),
            ("season", f, (SEASON_COLUMNS,)),
        ]
        if version >= 4
        else []
    )
    return np.dtype(
        [
            ("h", f, (L, H)),
            ("c", f, (L, H)),
            ("x_mean", f, (D,)),
            ("x_var", f, (D,)),
            ("pred", f, (D,)),
            *value_range,
            ("ring", "<f2" if version >= 6 else f, (layout.buffer_len, layout.n_inputs)),
            ("marks", np.uint8, (_mark_bytes(layout.buffer_len),)),
            ("err", f, (ERR_COLUMNS,)),
            ("err_ring", f, (layout.error_window,)),
            ("last_ts", "<f8"),
            ("seen", "<i8"),
            ("offset", "<i8"),
            *([("hist", "<u2"), ("shift_run", "i1")] if version >= 8 else [("hist", "<u4")]),
            *([("cooldown", "<u2"), ("alert_score", "<u2")] if version >= 7 else []),
            *([("cooldown", "<i4")] if version < 7 else []),
            *seasonal,
            *([("pick", f)] if 5 <= version <= 8 else []),
            *([("peaks", f, (PEAKS_COLUMNS,))] if version >= 9 else []),
        ]
    )


def _mark_bytes(buffer_len: int) -> int:
    return (buffer_len + 7) // 8


def _aligned_zeros(shape: tuple[int, ...], dtype: np.dtype) -> NDArray[np.generic]:
    """np.zeros whose data starts on a cache line (malloc gives 16 bytes: a 256-byte row
    would then span five lines instead of four)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(n + _LINE, np.uint8)
    start = -raw.ctypes.data % _LINE
    return raw[start : start + n].view(dtype).reshape(shape)


# Versioned header of serialised state: magic, format version, the layout.
_MAGIC = b"DST"
# 9: peaks, no pick; 8: shift_run, hist in 16 bits; 7: alert_score, the cooldown count in 16
# bits; 6: the ring in float16; 5: pick; 4: the daily profile; 3: x_min, x_max; 2: offset,
# ring marks, shared err columns.
_VERSION = 9
# Versions this build restores (older rings are rounded to half precision; before 9 the
# error tail starts afresh, before 4 the daily profile starts empty; before 7 a running
# cooldown stays a plain one; before 8 no level-shift run is under way).
_READS = (2, 3, 4, 5, 6, 7, 8, 9)
# A version-2 row has no value range: it restarts as x_mean +- this many std, so a restored
# stream does not call its first points "never seen".
RESTORED_RANGE_STD = 4.0
_HEADER = struct.Struct("<3sBHHHHIIB")  # magic, version, L, H, D, n_inputs, W, E, dtype code
_DTYPE_CODES = {"float32": 4, "float64": 8}
_COUNT = struct.Struct("<I")
_KEY_LEN = struct.Struct("<H")

# ------------------------------------------------------------------------------ stream index
# Counters shared with the jitted index functions, in one int64 array.
_ARENA_USED = 0  # bytes of the arena in use (live keys and garbage)
_ARENA_GARBAGE = 1  # bytes of removed keys, reclaimed by compaction
_LIVE = 2  # streams in the table
_HIGH_WATER = 3  # rows ever handed out: rows >= this one have never been used
_N_FREE = 4  # freed rows on the free stack
_N_COUNTERS = 5

_EMPTY = -1  # an empty bucket of the hash table; a free row's key_meta
_LEN_BITS = 16  # key_meta = arena offset << 16 | key length

_FNV_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)

# The index kernels: numba, arrays typed by what the table holds (NDArray[...] below).
_index_kernel = njit(cache=True, nogil=True, error_model="numpy")


_MASK64 = (1 << 64) - 1


def _hash(data: NDArray[np.uint8], start: int, end: int, seed: np.uint64) -> np.uint64:
    """Seeded 64-bit hash of data[start:end] (FNV-1a per byte, then MurmurHash3's fmix64).
    The seed is drawn per table, so ids cannot be chosen to collide in every process.
    Jitted code runs the overload below (uint64 arithmetic wraps); this body, with Python
    ints, only with NUMBA_DISABLE_JIT=1."""
    h = int(seed)
    for i in range(start, end):
        h = ((h ^ int(data[i])) * int(_FNV_PRIME)) & _MASK64
    for mix in (_MIX1, _MIX2):
        h = ((h ^ (h >> 33)) * int(mix)) & _MASK64
    return np.uint64(h ^ (h >> 33))


@overload(_hash, jit_options={"error_model": "numpy"})
def _hash_impl(data, start, end, seed):  # type: ignore[no-untyped-def]  # pragma: no cover
    def hash_u64(data, start, end, seed):  # type: ignore[no-untyped-def]
        h = seed
        for i in range(start, end):
            h = (h ^ np.uint64(data[i])) * _FNV_PRIME
        h ^= h >> _S33
        h *= _MIX1
        h ^= h >> _S33
        h *= _MIX2
        h ^= h >> _S33
        return h

    return hash_u64


@_index_kernel
def _same_key(  # pragma: no cover
    data: NDArray[np.uint8], start: int, end: int, arena: NDArray[np.uint8], meta: int
) -> bool:
    n = end - start
    if meta & 0xFFFF != n:
        return False
    off = meta >> _LEN_BITS
    for i in range(n):  # noqa: SIM110 (all() of a generator does not compile in numba)
        if arena[off + i] != data[start + i]:
            return False
    return True


@_index_kernel
def _probe(  # pragma: no cover
    data: NDArray[np.uint8],
    start: int,
    end: int,
    h: np.uint64,
    ix_hash: NDArray[np.uint64],
    ix_slot: NDArray[np.int32],
    key_meta: NDArray[np.int64],
    arena: NDArray[np.uint8],
) -> int:
    """The row of the id data[start:end] (hash h), or -1."""
    mask = ix_hash.shape[0] - 1
    i = np.int64(h & np.uint64(mask))
    while True:
        s = ix_slot[i]
        if s < 0:
            return -1
        if ix_hash[i] == h and _same_key(data, start, end, arena, key_meta[s]):
            return int(s)
        i = (i + 1) & mask


@_index_kernel
def index_find(  # pragma: no cover
    data: NDArray[np.uint8],
    ends: NDArray[np.int64],
    seed: np.uint64,
    ix_hash: NDArray[np.uint64],
    ix_slot: NDArray[np.int32],
    key_meta: NDArray[np.int64],
    arena: NDArray[np.uint8],
    out: NDArray[np.int64],
    hashes: NDArray[np.uint64],
    last_seen: NDArray[np.float64],
    now: float,
) -> int:
    """out[p] = the row of id p, or -1 if unknown; hashes[p] = its hash. Id p is
    data[ends[p-1]:ends[p]] (from 0 for p = 0). Known rows get last_seen = now unless
    last_seen is empty (a lookup that is not a point). Returns the number of unknown ids.

    In stages over the whole batch, each prefetching what the next one reads (bucket, key
    record, key bytes), so that the cache misses of different ids overlap.
    """
    B = ends.shape[0]
    mask = ix_hash.shape[0] - 1
    start = 0
    for p in range(B):
        end = ends[p]
        h = _hash(data, start, end, seed)
        hashes[p] = h
        i = np.int64(h & np.uint64(mask))
        prefetch(ix_hash, i * 8)
        prefetch(ix_slot, i * 4)
        start = end
    for p in range(B):
        h = hashes[p]
        i = np.int64(h & np.uint64(mask))
        found = -1
        while True:
            s = ix_slot[i]
            if s < 0:
                break
            if ix_hash[i] == h:
                found = int(s)
                break
            i = (i + 1) & mask
        out[p] = found
        if found >= 0:
            prefetch(key_meta, found * 8)
    for p in range(B):
        if out[p] >= 0:
            prefetch(arena, key_meta[out[p]] >> _LEN_BITS)
    missing = 0
    touch = last_seen.shape[0] > 0
    start = 0
    for p in range(B):
        end = ends[p]
        s = out[p]
        if s >= 0 and not _same_key(data, start, end, arena, key_meta[s]):
            # Another id with the same 64-bit hash: probe on, comparing bytes.
            s = _probe(data, start, end, hashes[p], ix_hash, ix_slot, key_meta, arena)
            out[p] = s
        if s < 0:
            missing += 1
        elif touch:
            last_seen[s] = now
        start = end
    return missing


@_index_kernel
def index_insert(  # pragma: no cover
    data: NDArray[np.uint8],
    ends: NDArray[np.int64],
    hashes: NDArray[np.uint64],
    out: NDArray[np.int64],
    ix_hash: NDArray[np.uint64],
    ix_slot: NDArray[np.int32],
    key_meta: NDArray[np.int64],
    arena: NDArray[np.uint8],
    free: NDArray[np.int64],
    counters: NDArray[np.int64],
    max_streams: int,
    new: NDArray[np.int64],
) -> tuple[int, int]:
    """Give every id p with out[p] < 0 a row (the same row to repeats of one id), unless
    the table holds max_streams streams: then out[p] stays -1. The caller has made room:
    capacity for every new row, arena bytes for every new key. Writes the new rows into
    ``new`` and returns (their number, ids refused)."""
    mask = ix_hash.shape[0] - 1
    n_new = 0
    refused = 0
    for p in range(ends.shape[0]):
        if out[p] >= 0:
            continue
        start = ends[p - 1] if p > 0 else 0
        end = ends[p]
        h = hashes[p]
        s = _probe(data, start, end, h, ix_hash, ix_slot, key_meta, arena)
        if s < 0:
            if counters[_LIVE] >= max_streams:
                refused += 1
                continue
            if counters[_N_FREE] > 0:
                counters[_N_FREE] -= 1
                s = free[counters[_N_FREE]]
            else:
                s = counters[_HIGH_WATER]
                counters[_HIGH_WATER] += 1
            off = counters[_ARENA_USED]
            for k in range(end - start):
                arena[off + k] = data[start + k]
            counters[_ARENA_USED] += end - start
            key_meta[s] = (off << _LEN_BITS) | (end - start)
            i = np.int64(h & np.uint64(mask))
            while ix_slot[i] >= 0:
                i = (i + 1) & mask
            ix_hash[i] = h
            ix_slot[i] = s
            counters[_LIVE] += 1
            new[n_new] = s
            n_new += 1
        out[p] = s
    return n_new, refused


@_index_kernel
def index_remove(  # pragma: no cover
    slots: NDArray[np.int64],
    seed: np.uint64,
    ix_hash: NDArray[np.uint64],
    ix_slot: NDArray[np.int32],
    key_meta: NDArray[np.int64],
    arena: NDArray[np.uint8],
    free: NDArray[np.int64],
    counters: NDArray[np.int64],
) -> None:
    """Forget the streams of rows ``slots`` (live, distinct) and free the rows.

    Linear probing without tombstones: the entries after a removed one move back into the
    hole when their home bucket allows it (Knuth, TAOCP vol. 3, algorithm 6.4R).
    """
    mask = ix_hash.shape[0] - 1
    for s in slots:
        meta = key_meta[s]
        off = meta >> _LEN_BITS
        n = meta & 0xFFFF
        h = _hash(arena, off, off + n, seed)
        i = np.int64(h & np.uint64(mask))
        while ix_slot[i] != s:
            i = (i + 1) & mask
        ix_slot[i] = _EMPTY
        j = i
        while True:
            j = (j + 1) & mask
            if ix_slot[j] < 0:
                break
            home = np.int64(ix_hash[j] & np.uint64(mask))
            stays = (i < home <= j) if i <= j else (i < home or home <= j)
            if not stays:
                ix_hash[i] = ix_hash[j]
                ix_slot[i] = ix_slot[j]
                ix_slot[j] = _EMPTY
                i = j
        key_meta[s] = _EMPTY
        free[counters[_N_FREE]] = s
        counters[_N_FREE] += 1
        counters[_ARENA_GARBAGE] += n
        counters[_LIVE] -= 1


@_index_kernel
def index_rebuild(  # pragma: no cover
    seed: np.uint64,
    key_meta: NDArray[np.int64],
    arena: NDArray[np.uint8],
    high_water: int,
    ix_hash: NDArray[np.uint64],
    ix_slot: NDArray[np.int32],
) -> None:
    """Fill an empty hash table (ix_slot all -1) with every live row."""
    mask = ix_hash.shape[0] - 1
    for s in range(high_water):
        meta = key_meta[s]
        if meta < 0:
            continue
        off = meta >> _LEN_BITS
        h = _hash(arena, off, off + (meta & 0xFFFF), seed)
        i = np.int64(h & np.uint64(mask))
        while ix_slot[i] >= 0:
            i = (i + 1) & mask
        ix_hash[i] = h
        ix_slot[i] = s


@_index_kernel
def arena_compact(  # pragma: no cover
    key_meta: NDArray[np.int64], arena: NDArray[np.uint8], high_water: int, out: NDArray[np.uint8]
) -> int:
    """Copy the live keys into ``out`` in row order, updating key_meta; returns bytes used."""
    at = 0
    for s in range(high_water):
        meta = key_meta[s]
        if meta < 0:
            continue
        off = meta >> _LEN_BITS
        n = meta & 0xFFFF
        for k in range(n):
            out[at + k] = arena[off + k]
        key_meta[s] = (at << _LEN_BITS) | n
        at += n
    return at


def encode_ids(streams: Sequence[str]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """The ids' UTF-8 bytes end to end, and where each one ends. Lone surrogates (which
    JSON can carry) are kept as such ("surrogatepass"), so every str has its own bytes."""
    joined = "".join(streams)
    data = joined.encode("utf-8", "surrogatepass")
    n = len(streams)
    if len(data) == len(joined):  # all ASCII: one byte per character
        lengths = np.fromiter(map(len, streams), np.int64, count=n)
    else:
        lengths = np.fromiter(
            (len(s.encode("utf-8", "surrogatepass")) for s in streams), np.int64, count=n
        )
    if n and int(lengths.max()) > MAX_KEY_BYTES:
        raise ValueError(f"a stream id is longer than {MAX_KEY_BYTES} bytes in UTF-8")
    return np.frombuffer(data, np.uint8), np.cumsum(lengths)


class StreamIds(Sequence[str]):
    """Stream ids in the form the table's index reads (``encode_ids``): UTF-8 bytes end to
    end and where each id ends. A batch decoded straight from bytes (``formats.scan_native``)
    arrives like this, and an id becomes a str only when asked for (an alert's, say)."""

    __slots__ = ("data", "ends")

    def __init__(self, data: NDArray[np.uint8], ends: NDArray[np.int64]) -> None:
        self.data = data
        self.ends = ends

    def __len__(self) -> int:
        return int(self.ends.shape[0])

    def __getitem__(self, i: int) -> str:  # type: ignore[override]  # no slices
        i = range(len(self))[i]  # IndexError and negative places as for a list
        start = int(self.ends[i - 1]) if i > 0 else 0
        return _decode(self.data[start : int(self.ends[i])].tobytes())

    def __iter__(self) -> Iterator[str]:
        text = self.data.tobytes()
        start = 0
        for end in self.ends.tolist():
            yield _decode(text[start:end])
            start = end


def _decode(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")


class SlotIndex:
    """``table.slot_of``: a read-only mapping stream id -> row (keys and values in row order)."""

    __slots__ = ("_table",)

    def __init__(self, table: StreamStateTable) -> None:
        self._table = table

    def __getitem__(self, stream: str) -> int:
        slot = self._table._find(stream)
        if slot < 0:
            raise KeyError(stream)
        return slot

    def get(self, stream: str, default: int | None = None) -> int | None:
        slot = self._table._find(stream)
        return default if slot < 0 else slot

    def __contains__(self, stream: object) -> bool:
        return isinstance(stream, str) and self._table._find(stream) >= 0

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> list[str]:
        return [self._table.key_of(s) for s in self._table.live_slots().tolist()]

    def values(self) -> NDArray[np.int64]:
        return self._table.live_slots()

    def items(self) -> list[tuple[str, int]]:
        return [(self._table.key_of(s), s) for s in self._table.live_slots().tolist()]


class StreamStateTable:
    """State of every stream of one model group in one partition."""

    __slots__ = (
        "_arena",
        "_counters",
        "_free",
        "_ix_hash",
        "_ix_slot",
        "_key_meta",
        "_removed",
        "_seed",
        "err_ring",
        "flags",
        "hc",
        "last_seen",
        "layout",
        "marks",
        "max_streams",
        "offset",
        "rec",
        "refused",
        "ring",
        "scratch",
    )

    rec: NDArray[np.void]
    _key_meta: NDArray[np.int64]  # per row: arena offset << 16 | key length, -1 if free
    hc: NDArray[np.floating]
    ring: NDArray[np.floating]
    marks: NDArray[np.uint8]
    err_ring: NDArray[np.floating]
    flags: NDArray[np.uint8]
    last_seen: NDArray[np.float64]
    offset: NDArray[np.int64]

    def __init__(
        self, layout: TableLayout, max_streams: int, initial_capacity: int = _INITIAL_CAPACITY
    ) -> None:
        if layout.dtype not in _DTYPE_CODES:
            raise ValueError(f"dtype is {layout.dtype!r}; expected 'float32' or 'float64'")
        if max_streams < 1:
            raise ValueError(f"max_streams is {max_streams}; expected at least 1")
        self.layout = layout
        self.max_streams = max_streams
        self.refused = 0  # points of new streams turned away because the table was full
        self.scratch: object = None  # owned by detector.stream.scoring: reused per call
        self._removed: dict[str, None] = {}  # evicted or removed since take_removed
        self._seed = np.uint64(int.from_bytes(os.urandom(8), "little"))
        self._counters = np.zeros(_N_COUNTERS, np.int64)
        self._arena = np.zeros(16 << 10, np.uint8)
        self._free = np.zeros(64, np.int64)
        capacity = max(1, min(initial_capacity, max_streams))
        self._allocate_rows(capacity)
        self._ix_hash, self._ix_slot = self._empty_index(capacity)

    # ------------------------------------------------------------------ arrays

    def _arrays(self, capacity: int) -> dict[str, NDArray[np.generic]]:
        lay = self.layout
        f = np.dtype(lay.dtype)
        return {
            "rec": _aligned_zeros((capacity,), record_dtype(lay)),
            "hc": _aligned_zeros((capacity, lay.layers, 2, lay.hidden), f),
            "ring": _aligned_zeros((capacity, lay.buffer_len, lay.n_inputs), np.dtype(np.float16)),
            "marks": np.zeros((capacity, _mark_bytes(lay.buffer_len)), np.uint8),
            "err_ring": np.zeros((capacity, lay.error_window), f),
            "flags": np.zeros(capacity, np.uint8),
            "last_seen": np.zeros(capacity, np.float64),
            "offset": np.zeros(capacity, np.int64),
            "_key_meta": np.full(capacity, _EMPTY, np.int64),
        }

    def _allocate_rows(self, capacity: int) -> None:
        for name, array in self._arrays(capacity).items():
            setattr(self, name, array)

    @staticmethod
    def _empty_index(capacity: int) -> tuple[NDArray[np.uint64], NDArray[np.int32]]:
        size = 1 << max(4, (2 * capacity - 1).bit_length())  # load factor <= 1/2
        return np.zeros(size, np.uint64), np.full(size, _EMPTY, np.int32)

    def _grow(self, needed: int) -> None:
        old_capacity = self.capacity
        capacity = min(max(needed, 2 * old_capacity), self.max_streams)
        used = int(self._counters[_HIGH_WATER])
        for name, new in self._arrays(capacity).items():
            # Untouched tails stay unbacked by memory until used (zeros, not copies).
            new[:used] = getattr(self, name)[:used]
            setattr(self, name, new)
        self._ix_hash, self._ix_slot = self._empty_index(capacity)
        index_rebuild(self._seed, self._key_meta, self._arena, used, self._ix_hash, self._ix_slot)

    # ------------------------------------------------------------------ views by field

    @property
    def capacity(self) -> int:
        return int(self.rec.shape[0])

    @property
    def h(self) -> NDArray[np.floating]:
        """(capacity, layers, H) view of hc."""
        return self.hc[:, :, 0]

    @property
    def c(self) -> NDArray[np.floating]:
        return self.hc[:, :, 1]

    @property
    def last_ts(self) -> NDArray[np.float64]:
        return self.rec["last_ts"]

    @property
    def seen(self) -> NDArray[np.int32]:
        return self.rec["seen"]

    @property
    def err(self) -> NDArray[np.floating]:
        return self.rec["err"]

    @property
    def x_mean(self) -> NDArray[np.floating]:
        return self.rec["x_mean"]

    @property
    def x_var(self) -> NDArray[np.floating]:
        return self.rec["x_var"]

    @property
    def pred(self) -> NDArray[np.floating]:
        return self.rec["pred"]

    @property
    def x_min(self) -> NDArray[np.floating]:
        return self.rec["x_min"]

    @property
    def season_mean(self) -> NDArray[np.int16]:
        return self.rec["season_mean"]

    @property
    def season_dev(self) -> NDArray[np.uint8]:
        return self.rec["season_dev"]

    @property
    def season(self) -> NDArray[np.floating]:
        return self.rec["season"]

    @property
    def x_max(self) -> NDArray[np.floating]:
        return self.rec["x_max"]

    @property
    def hist(self) -> NDArray[np.uint16]:
        return self.rec["hist"]

    @property
    def shift_run(self) -> NDArray[np.int8]:
        return self.rec["shift_run"]

    @property
    def cooldown(self) -> NDArray[np.uint16]:
        return self.rec["cooldown"]

    @property
    def alert_score(self) -> NDArray[np.uint16]:
        return self.rec["alert_score"]

    @property
    def peaks(self) -> NDArray[np.floating]:
        return self.rec["peaks"]

    @property
    def tail(self) -> NDArray[np.float16]:
        return self.rec["tail"]

    def flush_tail(self, slots: NDArray[np.int64]) -> None:
        """Copy the inputs the tails of rows ``slots`` hold into the ring, so that the ring
        holds each row's last min(seen, W) inputs. Idempotent (the kernel later copies the
        same bits there); call it between kernel calls, on the thread that runs them."""
        self._copy_tails(slots, to_ring=True)

    def refill_tail(self, slots: NDArray[np.int64]) -> None:
        """The inverse of flush_tail: after the ring of rows ``slots`` was written (restore,
        tests), their tails take the inputs of the ring that belong there."""
        self._copy_tails(slots, to_ring=False)

    def ring_bits(self, slots: NDArray[np.int64]) -> NDArray[np.int16]:
        """The ring as float16 bits in int16 (Numba has no float16), for jitted readers,
        once the tails of rows ``slots`` are flushed into it (flush_tail's rules)."""
        self.flush_tail(slots)
        return self.ring.view(np.int16)

    def _copy_tails(self, slots: NDArray[np.int64], to_ring: bool) -> None:
        rec_h = self.rec.view(np.int16).reshape(self.rec.shape[0], -1)  # float16 bits
        c_tail = self.rec.dtype.fields["tail"][1] // 2  # type: ignore[index]
        seen = self.rec["seen"]
        ring = self.ring.view(np.int16)
        copy_tails_rows(ring, rec_h, c_tail, seen, np.asarray(slots, np.int64), to_ring)

    # ------------------------------------------------------------------ streams

    def __len__(self) -> int:
        return int(self._counters[_LIVE])

    def __contains__(self, stream: object) -> bool:
        return isinstance(stream, str) and self._find(stream) >= 0

    def __iter__(self) -> Iterator[str]:
        return iter(self.slot_of.keys())

    def __repr__(self) -> str:
        return (
            f"StreamStateTable(streams={len(self)}, capacity={self.capacity}, "
            f"max_streams={self.max_streams}, refused={self.refused})"
        )

    @property
    def slot_of(self) -> SlotIndex:
        """Mapping stream id -> row."""
        return SlotIndex(self)

    def live_slots(self) -> NDArray[np.int64]:
        """Rows in use, ascending."""
        used = int(self._counters[_HIGH_WATER])
        return np.flatnonzero(self._key_meta[:used] >= 0)

    def row_keys(self, slots: NDArray[np.int64]) -> NDArray[np.int64]:
        """An identity of each row's current stream: it changes when the row is freed and
        given to another stream (the key's place in the arena; a compaction changes it
        too, which only makes a caller treat the row as new)."""
        return self._key_meta[slots]

    def blank_hc(self) -> NDArray[np.floating]:
        """Zeros shaped, typed and aligned like ``hc`` (a model swap's shadow state)."""
        return _aligned_zeros(self.hc.shape, self.hc.dtype)  # type: ignore[return-value]

    def adopt_hc(self, hc: NDArray[np.floating]) -> None:
        """Take ``hc`` (from :meth:`blank_hc`, same capacity) as every row's h and c."""
        if hc.shape != self.hc.shape or hc.dtype != self.hc.dtype:
            raise ValueError(f"hc is {hc.shape} {hc.dtype}; the table's {self.hc.shape}")
        self.hc = hc

    def key_of(self, slot: int) -> str:
        """The stream id of a row in use."""
        meta = int(self._key_meta[slot])
        if meta < 0:
            raise KeyError(f"row {slot} holds no stream")
        off = meta >> _LEN_BITS
        return _decode(self._arena[off : off + (meta & 0xFFFF)].tobytes())

    def _key_bytes(self, slot: int) -> bytes:
        meta = int(self._key_meta[slot])
        off = meta >> _LEN_BITS
        return self._arena[off : off + (meta & 0xFFFF)].tobytes()

    def _find(self, stream: str) -> int:
        data, ends = encode_ids([stream])
        out = np.empty(1, np.int64)
        hashes = np.empty(1, np.uint64)
        index_find(
            data,
            ends,
            self._seed,
            self._ix_hash,
            self._ix_slot,
            self._key_meta,
            self._arena,
            out,
            hashes,
            np.empty(0, np.float64),  # a lookup is not a point: last_seen stays
            0.0,
        )
        return int(out[0])

    def slots(self, streams: Sequence[str], now: float) -> NDArray[np.int64]:
        """The row of each stream, creating rows for new streams; -1 where refused.

        A refused stream (the table is at ``max_streams``) is counted in ``refused`` for
        each of its points; its points never reach the kernel. A new stream's row counts
        as changed (``take_dirty``).
        """
        n = len(streams)
        out = np.empty(n, np.int64)
        if n == 0:
            return out
        if isinstance(streams, StreamIds):
            data, ends = streams.data, streams.ends
        else:
            data, ends = encode_ids(streams)
        hashes = np.empty(n, np.uint64)
        missing = index_find(
            data,
            ends,
            self._seed,
            self._ix_hash,
            self._ix_slot,
            self._key_meta,
            self._arena,
            out,
            hashes,
            self.last_seen,
            now,
        )
        if missing:
            self._insert(data, ends, hashes, out, int(missing), now)
        return out

    def _insert(
        self,
        data: NDArray[np.uint8],
        ends: NDArray[np.int64],
        hashes: NDArray[np.uint64],
        out: NDArray[np.int64],
        missing: int,
        now: float,
    ) -> None:
        c = self._counters
        fresh = max(0, missing - int(c[_N_FREE]))  # rows that may come from past high water
        if c[_HIGH_WATER] + fresh > self.capacity and self.capacity < self.max_streams:
            self._grow(int(c[_HIGH_WATER]) + fresh)
        unknown = out < 0
        key_bytes = int(np.diff(ends, prepend=0)[unknown].sum())
        if c[_ARENA_USED] + key_bytes > self._arena.size:
            self._reserve_arena(key_bytes)
        new = np.empty(missing, np.int64)
        n_new, refused = index_insert(
            data,
            ends,
            hashes,
            out,
            self._ix_hash,
            self._ix_slot,
            self._key_meta,
            self._arena,
            self._free,
            c,
            self.max_streams,
            new,
        )
        self.refused += int(refused)
        new = new[:n_new]
        self._clear(new)
        self.flags[new] = DIRTY
        self.last_seen[new] = now
        if self._removed:  # back after an eviction: its new state supersedes the tombstone
            for slot in new.tolist():
                self._removed.pop(self.key_of(slot), None)

    def _reserve_arena(self, more: int) -> None:
        c = self._counters
        live = int(c[_ARENA_USED] - c[_ARENA_GARBAGE])
        size = max(2 * (live + more), 16 << 10)
        arena = np.zeros(size, np.uint8)
        if c[_ARENA_GARBAGE]:
            c[_ARENA_USED] = arena_compact(self._key_meta, self._arena, int(c[_HIGH_WATER]), arena)
            c[_ARENA_GARBAGE] = 0
        else:
            arena[: c[_ARENA_USED]] = self._arena[: c[_ARENA_USED]]
        self._arena = arena

    def _clear(self, slots: NDArray[np.int64]) -> None:
        self.rec[slots] = np.zeros((), self.rec.dtype)
        self.offset[slots] = -1
        self.hc[slots] = 0
        self.ring[slots] = 0
        self.marks[slots] = 0
        self.err_ring[slots] = 0

    def remove(self, stream: str) -> None:
        """Forget a stream (reported by ``take_removed``); KeyError if it is not here."""
        slot = self._find(stream)
        if slot < 0:
            raise KeyError(stream)
        self._remove_slots(np.array([slot], np.int64), [stream])

    def _remove_slots(self, slots: NDArray[np.int64], streams: list[str]) -> None:
        c = self._counters
        if c[_N_FREE] + slots.size > self._free.size:
            free = np.zeros(max(2 * self._free.size, int(c[_N_FREE]) + slots.size), np.int64)
            free[: c[_N_FREE]] = self._free[: c[_N_FREE]]
            self._free = free
        index_remove(
            slots, self._seed, self._ix_hash, self._ix_slot, self._key_meta, self._arena,
            self._free, c,
        )  # fmt: skip
        self.flags[slots] = 0
        self._removed.update(dict.fromkeys(streams))

    def evict_idle(self, now: float, ttl_s: float) -> list[str]:
        """Forget streams without a point for more than ``ttl_s`` seconds; returns them."""
        used = int(self._counters[_HIGH_WATER])
        idle = np.flatnonzero((self._key_meta[:used] >= 0) & (self.last_seen[:used] < now - ttl_s))
        evicted = [self.key_of(s) for s in idle.tolist()]
        if evicted:
            self._remove_slots(idle, evicted)
        return evicted

    def take_dirty(self) -> list[str]:
        """Streams whose row changed (a point handled, or the row created) since the last
        call or since the table was created or restored; clears the marks."""
        return [self.key_of(s) for s in self._take_dirty_slots().tolist()]

    def _take_dirty_slots(self) -> NDArray[np.int64]:
        used = int(self._counters[_HIGH_WATER])
        changed = np.flatnonzero(self.flags[:used] & DIRTY)
        self.flags[changed] &= 0xFF ^ DIRTY
        return changed

    def take_removed(self) -> list[str]:
        """Streams evicted or removed since the last call (and not back since): the
        changelog's tombstones. Call it before ``take_dirty``."""
        removed = list(self._removed)
        self._removed.clear()
        return removed

    def offset_of(self, stream: str) -> int:
        """The input offset of the stream's last handled point, -1 before any."""
        return int(self.offset[self.slot_of[stream]])

    def ring_window(
        self, stream_or_slot: str | int
    ) -> tuple[NDArray[np.floating], NDArray[np.bool_]]:
        """The stream's buffered model inputs (n, n_inputs), oldest first, n = min(seen, W),
        and for each whether the point that wrote it exceeded the threshold."""
        slot = self.slot_of[stream_or_slot] if isinstance(stream_or_slot, str) else stream_or_slot
        W = self.layout.buffer_len
        self.flush_tail(np.array([slot], np.int64))
        seen = int(self.rec["seen"][slot])
        n = min(seen, W)
        pos = (seen - n + np.arange(n)) % W
        marks = (self.marks[slot, pos >> 3] >> (pos & 7).astype(np.uint8)) & 1
        return self.ring[slot, pos].astype(self.layout.dtype), marks.astype(np.bool_)

    def ring_windows(
        self, slots: NDArray[np.int64]
    ) -> tuple[NDArray[np.floating], NDArray[np.bool_], NDArray[np.int64]]:
        """Copies of rows' rings in one gather: inputs (S, W, n_inputs), oldest first and
        aligned on the newest, the flags of :meth:`ring_window` (S, W), and how many of the
        last entries are buffered inputs (min(seen, W)); the entries before those are
        not inputs."""
        W = self.layout.buffer_len
        self.flush_tail(slots)
        seen = self.rec["seen"][slots]
        pos = (seen[:, None] - W + np.arange(W)) % W
        rows = slots[:, None]
        marks = (self.marks[rows, pos >> 3] >> (pos & 7).astype(np.uint8)) & 1
        inputs = self.ring[rows, pos].astype(self.layout.dtype)
        return inputs, marks.astype(np.bool_), np.minimum(seen, W)

    # ------------------------------------------------------------------ serialisation

    def _header(self) -> bytes:
        lay = self.layout
        return _HEADER.pack(
            _MAGIC,
            _VERSION,
            lay.layers,
            lay.hidden,
            lay.n_values,
            lay.n_inputs,
            lay.buffer_len,
            lay.error_window,
            _DTYPE_CODES[lay.dtype],
        )

    def _pack_rows(self, slots: NDArray[np.int64]) -> NDArray[np.void]:
        self.flush_tail(slots)
        rows = np.empty(slots.size, _row_dtype(self.layout))
        for name in rows.dtype.names or ():
            rows[name] = getattr(self, name)[slots]
        return rows

    def _unpack_rows(self, slots: NDArray[np.int64], rows: NDArray[np.void]) -> None:
        names = rows.dtype.names or ()
        # Converted below, each written once (the cooldown count of format 2 to 6 is int32,
        # hist of 2 to 7 uint32), or dropped (pick, format 5 to 8).
        converted = {"ring", "seen", "hist", "pick"} | (
            {"cooldown"} if "alert_score" not in names else set()
        )
        for name in names:
            if name not in converted:
                getattr(self, name)[slots] = rows[name]
        # Before version 6, rings in float64 too: half precision through float32 (half.py).
        self.ring[slots] = rows["ring"].astype(np.float32)
        self.seen[slots] = wrapped_seen(rows["seen"], self.layout.buffer_len)
        # Before version 8 in 32 bits: hysteresis_n is now at most 16.
        self.hist[slots] = rows["hist"] & 0xFFFF
        self.refill_tail(slots)
        if "shift_run" not in names:  # format version 2 to 7: no level-shift run under way
            self.shift_run[slots] = 0
        if "alert_score" not in names:  # format version 2 to 6: a plain cooldown
            # runs out: nothing scores above the top, so the stream escalates on nothing.
            self.cooldown[slots] = np.minimum(rows["cooldown"], MAX_ESCALATION_WINDOW)
            self.alert_score[slots] = ALERT_SCORE_SCALE
        if "peaks" not in names:  # format version 2 to 8: the error tail starts afresh
            self.peaks[slots] = 0
        if "season" not in names:  # format version 2 or 3: the daily profile starts empty
            self.season_mean[slots] = 0
            self.season_dev[slots] = 0
            self.season[slots] = 0
        if "x_min" not in names:  # format version 2: no value range saved
            spread = RESTORED_RANGE_STD * np.sqrt(rows["x_var"])
            self.x_min[slots] = rows["x_mean"] - spread
            self.x_max[slots] = rows["x_mean"] + spread

    def _restored(self, slots: NDArray[np.int64]) -> None:
        """Flags of rows just loaded: not changed since, MARKED as their marks say."""
        self.flags[slots] = np.where(self.marks[slots].any(axis=1), MARKED, 0)

    def row_size(self) -> int:
        """Bytes of one serialised row (without header or key)."""
        return _row_dtype(self.layout).itemsize

    def stream_bytes(self, stream: str) -> bytes:
        """One stream's state as versioned bytes (a changelog record's value)."""
        slot = np.array([self.slot_of[stream]], np.int64)
        return self._header() + self._pack_rows(slot).tobytes()

    def take_dirty_states(self) -> list[tuple[str, bytes]]:
        """:meth:`take_dirty` with each stream's :meth:`stream_bytes`, packed in one pass
        (a checkpoint of a million streams cannot afford a gather per stream)."""
        changed = self._take_dirty_slots()
        rows = memoryview(self._pack_rows(changed).tobytes())
        header, size = self._header(), self.row_size()
        return [
            (self.key_of(slot), header + rows[i * size : (i + 1) * size])
            for i, slot in enumerate(changed.tolist())
        ]

    def restore_stream(self, stream: str, data: bytes, now: float) -> None:
        """Load bytes from :meth:`stream_bytes` into ``stream``'s row (created if new).

        Raises StateFormatError if the bytes are damaged or were written for another layout.
        The row does not count as changed (``take_dirty``): the changelog holds this state.
        """
        view, version = self._check_header(memoryview(data), what=f"state of stream {stream!r}")
        row = _row_dtype(self.layout, version)
        if len(view) != row.itemsize:
            raise StateFormatError(
                f"state of stream {stream!r} has {len(view)} bytes after its header; "
                f"expected {row.itemsize}"
            )
        slots = self.slots([stream], now)
        if slots[0] < 0:
            raise StateFormatError(f"table is full ({self.max_streams} streams); {stream!r}")
        self._unpack_rows(slots, np.frombuffer(view, row))
        self._restored(slots)

    def to_bytes(self) -> bytes:
        """Every stream's state: header, count, then (key length, key, row) per stream."""
        slots = self.live_slots()
        rows = memoryview(self._pack_rows(slots).tobytes())
        size = self.row_size()
        parts: list[bytes | memoryview] = [self._header(), _COUNT.pack(slots.size)]
        for i, slot in enumerate(slots.tolist()):
            key = self._key_bytes(slot)
            parts += [_KEY_LEN.pack(len(key)), key, rows[i * size : (i + 1) * size]]
        return b"".join(parts)

    @classmethod
    def from_bytes(
        cls, data: bytes, max_streams: int, now: float, layout: TableLayout | None = None
    ) -> StreamStateTable:
        """Rebuild a table from :meth:`to_bytes`; ``layout``, when given, must match."""
        view = memoryview(data)
        if len(view) < _HEADER.size:
            raise StateFormatError(f"table state is {len(view)} bytes, shorter than its header")
        found, version = _layout_from_header(view[: _HEADER.size], "table state")
        if layout is not None and layout != found:
            raise StateFormatError(f"table state has layout {found}; expected {layout}")
        view = view[_HEADER.size :]
        if len(view) < _COUNT.size:
            raise StateFormatError("table state is truncated before its stream count")
        (count,) = _COUNT.unpack(view[: _COUNT.size])
        if count > max_streams:
            raise StateFormatError(f"table state holds more than {max_streams} streams")
        table = cls(found, max_streams, initial_capacity=max(count, 1))
        offset = _COUNT.size
        row = _row_dtype(found, version)
        row_size = row.itemsize
        keys: list[str] = []
        rows: list[memoryview] = []
        for i in range(count):
            if len(view) < offset + _KEY_LEN.size:
                raise StateFormatError(f"table state is truncated at stream {i} of {count}")
            (key_len,) = _KEY_LEN.unpack(view[offset : offset + _KEY_LEN.size])
            offset += _KEY_LEN.size
            end = offset + key_len + row_size
            if len(view) < end:
                raise StateFormatError(f"table state is truncated at stream {i} of {count}")
            try:
                keys.append(_decode(bytes(view[offset : offset + key_len])))
            except UnicodeDecodeError:
                raise StateFormatError(f"table state: stream {i} has a corrupt key") from None
            rows.append(view[offset + key_len : end])
            offset = end
        if offset != len(view):
            raise StateFormatError(f"table state has {len(view) - offset} stray trailing bytes")
        slots = table.slots(keys, now)
        table._unpack_rows(slots, np.frombuffer(b"".join(rows), row))
        table._restored(slots)
        return table

    def _check_header(self, view: memoryview, what: str) -> tuple[memoryview, int]:
        """The bytes after the header, and their format version."""
        if len(view) < _HEADER.size:
            raise StateFormatError(f"{what} is {len(view)} bytes, shorter than its header")
        found, version = _layout_from_header(view[: _HEADER.size], what)
        if found != self.layout:
            raise StateFormatError(f"{what} has layout {found}; this table has {self.layout}")
        return view[_HEADER.size :], version


def _layout_from_header(header: memoryview, what: str) -> tuple[TableLayout, int]:
    magic, version, L, H, D, n_in, W, E, code = _HEADER.unpack(header)
    if magic != _MAGIC:
        raise StateFormatError(f"{what} does not start with {_MAGIC!r}; not detector state")
    if version not in _READS:
        raise StateFormatError(
            f"{what} has format version {version}; this build reads "
            f"{' or '.join(map(str, _READS))} only (streams start afresh)"
        )
    dtypes = {v: k for k, v in _DTYPE_CODES.items()}
    if code not in dtypes:
        raise StateFormatError(f"{what} has unknown dtype code {code}")
    return TableLayout(L, H, D, n_in, W, E, dtypes[code]), version
