"""Re-derive every stream's h, c and next prediction under new weights from its ring buffer.

After a model swap the stored h and c were computed by the old weights; stepping the new
model on from them mixes two models. Instead each stream's buffered inputs (its last
min(seen, W) model inputs, oldest first; the write position is ``seen % W``) are replayed
through the new model from zero state, and the stream's stored prediction is the head's
output after the newest input, exactly as the scoring kernel writes ``pred`` (it takes
``y_out`` of :func:`~detector.model.lstm.lstm_step` after stepping the point's input).

Vectorised over streams: streams are sorted by buffered points, most first, and aligned on
their newest input, so at every step the streams that take part are a prefix of that order
and one batched ``lstm_step`` advances them all.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from detector.model.lstm import ModelShape, lstm_step
from detector.model.params import LSTMParams
from detector.stream.state import StreamStateTable

# Streams per kernel call: bounds the scratch (h, c of a chunk, and lstm_step's per call)
# and keeps one chunk's state in cache across the W steps.
REPLAY_CHUNK = 4096


@njit(cache=True, nogil=True)
def _replay_chunk(ring, seen, slots, theta, shape: ModelShape, h, c, y):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Replay table rows ``slots`` (sorted by buffered points, most first, all > 0) from
    zero state; row n of h, c (S, layers, H) and y (S, D_out) receives stream slots[n]'s."""
    S = slots.shape[0]
    W = ring.shape[1]
    n_max = min(seen[slots[0]], W)
    x_t = np.empty((S, ring.shape[2]), theta.dtype)
    rows = np.arange(S)
    h[:] = 0.0
    c[:] = 0.0
    m = 0  # streams taking part: those with at least n_max - j buffered points
    for j in range(n_max):
        while m < S and min(seen[slots[m]], W) >= n_max - j:
            m += 1
        for n in range(m):
            s = slots[n]
            # Step j is point j - (n_max - k) of the stream's k buffered points, which lie
            # at ring positions (seen - k ...) % W: position (seen - n_max + j) % W.
            x_t[n] = ring[s, (seen[s] - n_max + j) % W]
        lstm_step(x_t[:m], rows[:m], h, c, theta, shape, y[:m])


def replay_state(
    table: StreamStateTable,
    params: LSTMParams,
    slots: NDArray[np.int64] | None = None,
    chunk: int = REPLAY_CHUNK,
) -> int:
    """Recompute h, c and pred of rows ``slots`` (default: every stream of the table) by
    running each stream's ring buffer through ``params``; returns the streams replayed.

    A stream without buffered points keeps its (zero) state. ``params`` must have the
    table's dtype and sizes (what :meth:`ModelGroup.swap_model` stores).
    """
    lay, shape = table.layout, params.shape
    found = (shape.layers, shape.hidden, shape.n_inputs, shape.n_outputs)
    expected = (lay.layers, lay.hidden, lay.n_inputs, lay.n_values)
    if found != expected:
        raise ValueError(f"model (layers, hidden, inputs, outputs) = {found}; table {expected}")
    if params.dtype != np.dtype(lay.dtype):
        raise ValueError(f"model dtype {params.dtype}; the table holds {lay.dtype}")
    if chunk < 1:
        raise ValueError(f"chunk is {chunk}; expected at least 1")
    if slots is None:
        slots = table.live_slots()
    slots = np.asarray(slots, np.int64)
    if np.unique(slots).size != slots.size:
        raise ValueError("slots must be distinct")
    if slots.size and (slots.min() < 0 or slots.max() >= table.capacity):
        raise ValueError(f"slots must lie in [0, {table.capacity})")
    buffered = np.minimum(table.seen[slots], lay.buffer_len)
    slots = slots[buffered > 0]
    slots = slots[np.argsort(-buffered[buffered > 0], kind="stable")]
    size = min(chunk, slots.size)
    h = np.empty((size, lay.layers, lay.hidden), params.dtype)
    c = np.empty_like(h)
    y = np.empty((size, lay.n_values), params.dtype)
    for lo in range(0, slots.size, chunk):
        rows = np.ascontiguousarray(slots[lo : lo + chunk])
        n = rows.size
        _replay_chunk(table.ring, table.seen, rows, params.theta, shape, h[:n], c[:n], y[:n])
        write_state(table, rows, h[:n], c[:n])
        table.pred[rows] = y[:n]
    return int(slots.size)


def write_state(
    table: StreamStateTable,
    slots: NDArray[np.int64],
    h: NDArray[np.floating],
    c: NDArray[np.floating],
) -> None:
    """Store h and c (S, layers, H) of rows ``slots`` (``table.h`` and ``table.c`` are views
    of the table's state block, so this writes through)."""
    table.h[slots] = h
    table.c[slots] = c


def read_state(
    table: StreamStateTable, slots: NDArray[np.int64]
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Copies of h and c (S, layers, H) of rows ``slots``."""
    return table.h[slots], table.c[slots]
