"""Training windows from the streams' ring buffers (the online twin of model.dataset).

A ring holds a stream's last W model inputs, oldest first: the normalised values (the first
``n_outputs`` columns) then any calendar features. A training window is ``window_len``
consecutive inputs; :func:`detector.model.train.train` takes steps 0..T-2 as inputs and the
first ``n_outputs`` columns of steps 1..T-1 as targets, so the ring's rows go in unchanged.
Windows are placed by the same :func:`~detector.model.dataset.usable_starts` that cuts
offline windows, here leaving out every window that holds a point which scored over the
threshold (or a non-finite input): an anomaly must not become what the model expects.

Except when it persists. The scorer's error statistics do not learn from points that exceed
the threshold, so after a change of behaviour (a new level, a new seasonality) a stream's
points keep exceeding until the model learns the new behaviour; leaving them out would mean
it never does. So a ring in which more than ``persistent`` of the buffered points are flagged
(``retraining.persistent_fraction``, default half) is taken as a stream whose normal has
changed: its flags are ignored and its windows are used. Transient anomalies (a spike, an
incident shorter than W/2 points) stay out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from detector.model.dataset import usable_starts

Ring = tuple[NDArray[np.floating], NDArray[np.bool_]]  # (inputs (n, n_inputs), anomalous (n,))


def count_windows(n_points: NDArray[np.integer], window_len: int, stride: int) -> int:
    """Windows that rings of ``n_points`` points give at most (none flagged anomalous)."""
    n = np.asarray(n_points, np.int64)
    full = n[n >= window_len]
    return int(((full - window_len) // stride + 1).sum())


def windows_from_rings(
    rings: Sequence[Ring],
    window_len: int,
    stride: int,
    max_windows: int,
    rng: np.random.Generator,
    persistent: float = 0.5,
) -> NDArray[np.floating]:
    """(N, window_len, n_inputs) windows cut from the rings, anomalous ones left out
    (unless more than ``persistent`` of a ring is flagged: module docstring); when more
    than ``max_windows`` are usable, a uniform sample of ``max_windows`` of them (without
    replacement, drawn from ``rng``), in ring order. The inputs are copied: the result
    stays valid while the scorer goes on writing the rings."""
    if max_windows < 1:
        raise ValueError(f"max_windows is {max_windows}; expected at least 1")
    if not 0 < persistent <= 1:
        raise ValueError(f"persistent is {persistent}; expected a fraction in (0, 1]")
    which: list[NDArray[np.int64]] = []
    starts: list[NDArray[np.int64]] = []
    n_inputs, dtype = -1, np.dtype(np.float32)
    for i, (inputs, anomalous) in enumerate(rings):
        if inputs.ndim != 2 or anomalous.shape != (inputs.shape[0],):
            raise ValueError(
                f"ring {i}: inputs {inputs.shape} and anomalous {anomalous.shape}; "
                "expected (n, n_inputs) and (n,)"
            )
        if n_inputs < 0:
            n_inputs, dtype = inputs.shape[1], inputs.dtype
        elif inputs.shape[1] != n_inputs:
            raise ValueError(f"ring {i} has {inputs.shape[1]} inputs; ring 0 has {n_inputs}")
        flagged = np.asarray(anomalous, np.bool_)
        if flagged.size and flagged.mean() > persistent:
            flagged = np.zeros_like(flagged)  # the stream's normal has changed
        bad = flagged | ~np.isfinite(inputs).all(axis=1)
        s = usable_starts(bad, window_len, stride)
        if s.size:
            which.append(np.full(s.size, i, np.int64))
            starts.append(s)
    if not starts:
        return np.empty((0, window_len, max(n_inputs, 0)), dtype)
    ring_of, start_of = np.concatenate(which), np.concatenate(starts)
    if ring_of.size > max_windows:
        keep = np.sort(rng.choice(ring_of.size, size=max_windows, replace=False))
        ring_of, start_of = ring_of[keep], start_of[keep]
    out = np.empty((ring_of.size, window_len, n_inputs), dtype)
    offsets = np.arange(window_len)
    # One gather per ring (not per window): fancy indexing copies the rows out.
    bounds = np.flatnonzero(np.diff(ring_of)) + 1
    for lo, hi in zip(
        np.concatenate(([0], bounds)).tolist(),
        np.concatenate((bounds, [ring_of.size])).tolist(),
        strict=True,
    ):
        inputs = rings[int(ring_of[lo])][0]
        out[lo:hi] = inputs[start_of[lo:hi, None] + offsets]
    return out
