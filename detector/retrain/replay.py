"""Re-derive streams' h, c and next prediction under new weights from their ring buffers.

After a model swap the stored h and c were computed by the old weights; stepping the new
model on from them mixes two models. Instead each stream's buffered inputs (its last
min(seen, W) model inputs, oldest first; the write position is ``seen % W``) are replayed
through the new model from zero state, and the stream's stored prediction is the head's
output after the newest input, exactly as the scoring kernel writes ``pred`` (it takes
``y_out`` of :func:`~detector.model.lstm.lstm_step_rows` after stepping the point's input).

The kernel, :func:`replay_rows`, is more general: row k steps its inputs at ring positions
``start[k] .. stop[k] - 1`` (mod W), from zero state or from the h and c the row holds. A
full replay is ``start = seen - min(seen, W)``, ``stop = seen``, from zero; a catch-up after
new points (:mod:`detector.retrain.staged_swap`) starts where the last replay stopped.

Vectorised over rows: rows are sorted by steps, most first, and aligned on their last
input, so at every step the rows that take part are a prefix of that order and one batched
``lstm_step_rows`` advances them all.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from detector.model.lstm import ModelShape, lstm_step_rows, step_scratch
from detector.model.params import LSTMParams
from detector.stream.half import half_value
from detector.stream.state import StreamStateTable

# Rows per batched step: bounds the scratch and keeps one chunk's state in cache across its
# steps.
REPLAY_CHUNK = 4096


@njit(cache=True, nogil=True)
def replay_rows(ring, rows, start, stop, fresh, theta, shape: ModelShape, hc, pred, chunk):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Step rows ``rows`` (distinct) of ``hc`` (capacity, layers, 2, H) in place through
    their inputs ``ring[row, p % W]`` (float16 bits in int16: ``table.ring_bits(rows)``)
    for p in ``start[k] .. stop[k] - 1``; a ``fresh`` row starts from zero state.
    ``pred[row]`` receives the output after the row's last input (a fresh row without
    inputs: zero state and zero prediction; any other row without inputs is left alone).
    Runs without the GIL: ``ring`` may be written meanwhile at positions no row reads."""
    W = ring.shape[1]
    steps = stop - start
    order = np.argsort(-steps, kind="mergesort")
    for lo in range(0, rows.shape[0], chunk):
        ids = order[lo : lo + chunk]
        S = ids.shape[0]
        r = np.empty(S, np.int64)
        for k in range(S):
            r[k] = rows[ids[k]]
            if fresh[ids[k]]:
                hc[r[k]] = 0.0
                if steps[ids[k]] == 0:
                    pred[r[k]] = 0.0
        n_max = steps[ids[0]]
        if n_max <= 0:
            continue
        gates, tmp, q, h_out = step_scratch(S, shape, theta)
        x = np.empty((S, ring.shape[2]), theta.dtype)
        y = np.empty((S, pred.shape[1]), theta.dtype)
        m = 0  # rows taking part: those with at least n_max - j steps left
        for j in range(n_max):
            while m < S and steps[ids[m]] >= n_max - j:
                m += 1
            for k in range(m):
                # Aligned on the last input: step j reads position stop - (n_max - j).
                at = (stop[ids[k]] - n_max + j) % W
                for i in range(x.shape[1]):
                    x[k, i] = half_value(ring[r[k], at, i])
            lstm_step_rows(x[:m], r[:m], hc, theta, shape, gates, tmp, q, h_out, y[:m])
        for k in range(m):
            pred[r[k]] = y[k]


def check_replayable(table: StreamStateTable, params: LSTMParams) -> None:
    """ValueError unless ``params`` has the table's dtype and sizes (what
    :meth:`ModelGroup.swap_model` stores)."""
    lay, shape = table.layout, params.shape
    found = (shape.layers, shape.hidden, shape.n_inputs, shape.n_outputs)
    expected = (lay.layers, lay.hidden, lay.n_inputs, lay.n_values)
    if found != expected:
        raise ValueError(f"model (layers, hidden, inputs, outputs) = {found}; table {expected}")
    if params.dtype != np.dtype(lay.dtype):
        raise ValueError(f"model dtype {params.dtype}; the table holds {lay.dtype}")


def replay_state(
    table: StreamStateTable,
    params: LSTMParams,
    slots: NDArray[np.int64] | None = None,
    chunk: int = REPLAY_CHUNK,
) -> int:
    """Recompute h, c and pred of rows ``slots`` (default: every stream of the table) by
    running each stream's ring buffer through ``params`` from zero state; returns the
    streams replayed. A stream without buffered points keeps its (zero) state."""
    check_replayable(table, params)
    if chunk < 1:
        raise ValueError(f"chunk is {chunk}; expected at least 1")
    if slots is None:
        slots = table.live_slots()
    slots = np.asarray(slots, np.int64)
    if np.unique(slots).size != slots.size:
        raise ValueError("slots must be distinct")
    if slots.size and (slots.min() < 0 or slots.max() >= table.capacity):
        raise ValueError(f"slots must lie in [0, {table.capacity})")
    seen = table.seen[slots]
    slots = slots[seen > 0]
    seen = seen[seen > 0]
    start = seen - np.minimum(seen, table.layout.buffer_len)
    fresh = np.ones(slots.size, np.bool_)
    theta, shape = params.theta, params.shape
    ring = table.ring_bits(slots)
    replay_rows(ring, slots, start, seen, fresh, theta, shape, table.hc, table.pred, chunk)
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
