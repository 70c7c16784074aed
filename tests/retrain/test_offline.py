"""Offline inputs for a group (train --publish) are built like the scorer's ring rows."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt

from detector.config import GroupSettings, Settings
from detector.io.series_files import Series
from detector.retrain.offline import calendar_inputs, cut_group_windows, group_inputs
from detector.stream.pipeline import Pipeline
from detector.stream.scoring import calendar_features


def test_calendar_inputs_are_the_scorers():
    ts = 1_700_000_000 + 3671.0 * np.arange(50)
    expected = np.empty((50, 4))
    for i, t in enumerate(ts):
        calendar_features(float(t), expected[i])
    npt.assert_array_equal(calendar_inputs(ts), expected)


def test_group_inputs_per_field_vector_and_calendar():
    settings = Settings(
        groups=[
            GroupSettings(name="vec", match=["v*"], layout="vector", fields=["b", "a"]),
            GroupSettings(name="cal", match=["c*"], calendar=True),
        ]
    )
    vec, cal, default = Pipeline(settings, "t").groups
    rng = np.random.default_rng(0)
    values = rng.normal(5, 2, (40, 2))
    values[0, 0] = 1e6  # beyond input_clip after standardising
    series = Series("s", ("a", "b"), 1e9 + 60.0 * np.arange(40), values)
    (x,) = group_inputs(series, vec, input_clip=3.0)
    assert x.shape == (40, 2) and np.abs(x).max() <= 3.0
    npt.assert_allclose(x[1:, 0], (values[1:, 1] - values[:, 1].mean()) / values[:, 1].std())
    per_field = group_inputs(series, default, input_clip=10.0)
    assert [p.shape for p in per_field] == [(40, 1), (40, 1)]
    with_calendar = group_inputs(series, cal, input_clip=10.0)
    assert with_calendar[0].shape == (40, 5)
    npt.assert_array_equal(with_calendar[0][:, 1:], calendar_inputs(series.timestamps))
    w = cut_group_windows(with_calendar, 8, 4)
    assert w.shape == (2 * 9, 8, 5)
