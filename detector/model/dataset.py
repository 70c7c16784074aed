"""From raw series to training windows: per-series standardisation and sliding windows.

The same windowing serves offline training (`detector train`) and online retraining, so a
model trained either way has seen the same kind of input.
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


def sliding_windows(values: NDArray[np.floating], length: int, stride: int) -> NDArray[np.floating]:
    """(N, D) -> (M, length, D): windows starting every ``stride`` points; the last point
    of the series always ends a window, so the newest data is never left out."""
    if values.ndim != 2:
        raise ValueError(f"values has shape {values.shape}; expected (points, features)")
    n = values.shape[0]
    if n < length:
        return np.empty((0, length, values.shape[1]), values.dtype)
    starts = np.arange(n - length, -1, -stride)[::-1]
    view = np.lib.stride_tricks.sliding_window_view(values, length, axis=0)  # (n-L+1, D, L)
    return np.ascontiguousarray(view[starts].transpose(0, 2, 1))


def windows_from_series(
    series: list[NDArray[np.floating]], length: int, stride: int
) -> NDArray[np.float64]:
    """Standardise each series on its own, cut windows, drop windows holding NaN, stack."""
    parts = []
    for values in series:
        z = fit_standardization(values).apply(values)
        w = sliding_windows(z, length, stride)
        parts.append(w[np.isfinite(w).all(axis=(1, 2))])
    if not parts:
        raise ValueError("no series given")
    return np.concatenate(parts, axis=0)
