"""From raw series to training windows: per-series standardisation and sliding windows.

The same windowing serves offline training (`detector train`) and online retraining
(:mod:`detector.retrain.sampler`), so a model trained either way has seen the same kind of
window: :func:`window_starts` places the windows (every ``stride`` points, the newest point
always ending one) and :func:`usable_starts` leaves out windows holding a bad point (NaN
offline; NaN or a point that scored as anomalous online). What differs is only where the
normalised values come from: offline, a series is standardised once with its own mean and
std; online, the ring buffers hold the scorer's inputs, normalised with each stream's running
(EWMA) mean and std and clipped to ``streams.input_clip``. Both are z-scores of the raw value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# A constant series has no scale; dividing by this floor keeps it at zero, not at inf.
MIN_STD = 1e-6


@dataclass(frozen=True, slots=True)
class Standardization:
    mean: NDArray[np.float64]  # (D,)
    std: NDArray[np.float64]  # (D,)

    def apply(self, values: NDArray[np.floating]) -> NDArray[np.float64]:
        return (np.asarray(values, np.float64) - self.mean) / self.std


def fit_standardization(values: NDArray[np.floating]) -> Standardization:
    """Mean and standard deviation per feature of one series (N, D), ignoring NaN."""
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"values has shape {v.shape}; expected (points, features)")
    mean = np.nanmean(v, axis=0)
    std = np.nanstd(v, axis=0)
    return Standardization(mean=mean, std=np.maximum(std, MIN_STD))


def window_starts(n_points: int, length: int, stride: int) -> NDArray[np.int64]:
    """Starts of the windows of ``length`` points cut every ``stride`` points from a series
    of ``n_points``, oldest first; the last point always ends a window, so the newest data
    is never left out. Empty when the series is shorter than one window."""
    if length < 1 or stride < 1:
        raise ValueError(f"length {length} and stride {stride} must be at least 1")
    if n_points < length:
        return np.empty(0, np.int64)
    return np.arange(n_points - length, -1, -stride, dtype=np.int64)[::-1].copy()


def usable_starts(bad: NDArray[np.bool_], length: int, stride: int) -> NDArray[np.int64]:
    """:func:`window_starts` of a series of ``bad.size`` points, without the windows that
    hold a point marked in ``bad`` (NaN, or anomalous)."""
    starts = window_starts(bad.shape[0], length, stride)
    if starts.size == 0 or not bad.any():
        return starts
    bad_before = np.concatenate(([0], np.cumsum(bad, dtype=np.int64)))
    kept: NDArray[np.int64] = starts[bad_before[starts + length] == bad_before[starts]]
    return kept


def cut_windows(
    values: NDArray[np.floating], starts: NDArray[np.int64], length: int
) -> NDArray[np.floating]:
    """(N, D) -> (len(starts), length, D): the windows beginning at ``starts``."""
    if values.ndim != 2:
        raise ValueError(f"values has shape {values.shape}; expected (points, features)")
    if starts.size == 0:
        return np.empty((0, length, values.shape[1]), values.dtype)
    view = np.lib.stride_tricks.sliding_window_view(values, length, axis=0)  # (n-L+1, D, L)
    return np.ascontiguousarray(view[starts].transpose(0, 2, 1))


def sliding_windows(values: NDArray[np.floating], length: int, stride: int) -> NDArray[np.floating]:
    """(N, D) -> (M, length, D): windows starting every ``stride`` points; the last point
    of the series always ends a window, so the newest data is never left out."""
    if values.ndim != 2:
        raise ValueError(f"values has shape {values.shape}; expected (points, features)")
    return cut_windows(values, window_starts(values.shape[0], length, stride), length)


def windows_from_series(
    series: list[NDArray[np.floating]], length: int, stride: int
) -> NDArray[np.float64]:
    """Standardise each series on its own, cut windows, drop windows holding NaN, stack."""
    parts = []
    for values in series:
        z = fit_standardization(values).apply(values)
        bad = np.asarray(~np.isfinite(z).all(axis=1), np.bool_)
        starts = usable_starts(bad, length, stride)
        parts.append(cut_windows(z, starts, length))
    if not parts:
        raise ValueError("no series given")
    return np.concatenate(parts, axis=0)
