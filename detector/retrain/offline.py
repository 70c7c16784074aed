"""Offline training data for a model group (`detector train --publish`).

The windows are cut by the same functions as online ones (model.dataset.usable_starts via
:func:`cut_group_windows`), from inputs built the way the scorer builds its ring rows:
normalised values clipped to ``streams.input_clip``, then the calendar features when the
group uses them. The one difference is the normalisation: a file's series is standardised
once with its own mean and std, where a live stream uses its running (EWMA) mean and std;
both are z-scores of the raw value, so a model trained on either kind of window serves the
other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from detector.errors import InputFileError
from detector.io.series_files import Series
from detector.model.dataset import cut_windows, fit_standardization, usable_starts
from detector.stream.pipeline import ModelGroup
from detector.stream.scoring import CALENDAR_FEATURES, calendar_features


def calendar_inputs(timestamps: NDArray[np.float64]) -> NDArray[np.float64]:
    """(N,) epoch seconds -> (N, 4): the scorer's calendar features of each point."""
    out = np.empty((timestamps.shape[0], CALENDAR_FEATURES), np.float64)
    for i, ts in enumerate(timestamps.tolist()):
        calendar_features(ts, out[i])
    return out


def group_inputs(series: Series, group: ModelGroup, input_clip: float) -> list[NDArray[np.float64]]:
    """A file's series as the model inputs of ``group``'s streams: one stream per field
    (per-field layout) or one stream of the group's fields in order (vector layout)."""
    names = series.feature_names
    if group.settings.layout == "vector":
        missing = [f for f in group.field_names if f not in names]
        if missing:
            raise InputFileError(
                f"series {series.name} lacks the fields {missing} of group {group.name!r}"
            )
        streams = [series.values[:, [names.index(f) for f in group.field_names]]]
    else:
        streams = [series.values[:, [d]] for d in range(series.values.shape[1])]
    calendar = calendar_inputs(series.timestamps) if group.config.calendar else None
    out = []
    for values in streams:
        z = np.clip(fit_standardization(values).apply(values), -input_clip, input_clip)
        out.append(z if calendar is None else np.concatenate([z, calendar], axis=1))
    return out


def cut_group_windows(
    inputs: Sequence[NDArray[np.floating]], window_len: int, stride: int
) -> NDArray[np.float64]:
    """Windows of every stream's inputs (N, T, n_inputs), leaving out those holding NaN."""
    parts = []
    for x in inputs:
        starts = usable_starts(
            np.asarray(~np.isfinite(x).all(axis=1), np.bool_), window_len, stride
        )
        parts.append(np.asarray(cut_windows(x, starts, window_len), np.float64))
    if not parts:
        raise ValueError("no series given")
    return np.concatenate(parts, axis=0)
