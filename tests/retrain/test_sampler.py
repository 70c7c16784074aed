"""Windows from ring buffers: anomalous windows left out, bounded, seeded, shared windowing."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import pytest

from detector.model.dataset import sliding_windows
from detector.model.train import split_windows
from detector.retrain.sampler import count_windows, windows_from_rings


def ring(n: int, n_inputs: int = 1, offset: float = 0.0) -> np.ndarray:
    """Inputs whose first column is the point's index (plus an offset naming the ring)."""
    x = np.zeros((n, n_inputs), np.float32)
    x[:, 0] = offset + np.arange(n)
    x[:, 1:] = -1.0
    return x


def test_windows_holding_an_anomalous_point_are_left_out():
    inputs = ring(20)
    anomalous = np.zeros(20, bool)
    anomalous[10] = True
    w = windows_from_rings([(inputs, anomalous)], 4, 2, 1000, np.random.default_rng(0))
    starts = w[:, 0, 0].astype(int).tolist()
    # Starts 0, 2, ..., 16; the windows from 8 and 10 hold point 10.
    assert starts == [0, 2, 4, 6, 12, 14, 16]
    assert not np.isin(w[:, :, 0], 10).any()
    # Without the flag the same call keeps every window.
    clean = windows_from_rings([(inputs, np.zeros(20, bool))], 4, 2, 1000, np.random.default_rng(0))
    assert len(clean) == 9


def test_non_finite_inputs_are_left_out_like_anomalies():
    inputs = ring(12)
    inputs[5, 0] = np.nan
    w = windows_from_rings([(inputs, np.zeros(12, bool))], 4, 4, 100, np.random.default_rng(0))
    assert np.isfinite(w).all()
    assert w[:, 0, 0].tolist() == [0.0, 8.0]


def test_one_windowing_for_rings_and_series():
    """A clean ring gives exactly the offline sliding windows of the same values."""
    inputs = ring(50, n_inputs=3)
    w = windows_from_rings([(inputs, np.zeros(50, bool))], 8, 3, 10_000, np.random.default_rng(0))
    npt.assert_array_equal(w, sliding_windows(inputs, 8, 3))
    assert count_windows(np.array([50]), 8, 3) == len(w)


def test_at_most_max_windows_drawn_uniformly_and_reproducibly():
    rings = [(ring(40, 2, offset=1000 * k), np.zeros(40, bool)) for k in range(6)]
    a = windows_from_rings(rings, 5, 1, 50, np.random.default_rng(3))
    b = windows_from_rings(rings, 5, 1, 50, np.random.default_rng(3))
    assert a.shape == (50, 5, 2) and a.dtype == np.float32
    npt.assert_array_equal(a, b)
    # Every window is a real run of consecutive points of one ring, and none is repeated.
    npt.assert_array_equal(np.diff(a[:, :, 0], axis=1), 1.0)
    firsts = a[:, 0, 0]
    assert np.unique(firsts).size == 50
    assert len({int(f) // 1000 for f in firsts}) > 1  # drawn from several rings


def test_targets_are_the_next_normalised_values():
    """train() takes steps 0..T-2 as inputs and the first n_outputs columns of 1..T-1 as
    targets: ring rows go in unchanged, calendar columns are inputs only."""
    inputs = ring(30, n_inputs=5)
    w = windows_from_rings([(inputs, np.zeros(30, bool))], 6, 6, 100, np.random.default_rng(0))
    split = split_windows(w, n_outputs=1, val_fraction=0.2, rng=np.random.default_rng(0))
    assert split.x_train.shape[2] == 5 and split.y_train.shape[2] == 1
    npt.assert_array_equal(split.y_train[:, :, 0], split.x_train[:, :, 0] + 1)


def test_short_rings_and_no_rings_give_no_windows():
    short = (ring(3), np.zeros(3, bool))
    assert windows_from_rings([short], 4, 1, 10, np.random.default_rng(0)).shape == (0, 4, 1)
    assert windows_from_rings([], 4, 1, 10, np.random.default_rng(0)).shape[0] == 0
    assert count_windows(np.array([0, 3, 4, 9]), 4, 2) == 1 + 3


def test_mismatched_rings_are_refused():
    with pytest.raises(ValueError, match="ring 1 has 2 inputs"):
        windows_from_rings(
            [(ring(9), np.zeros(9, bool)), (ring(9, 2), np.zeros(9, bool))],
            4,
            1,
            10,
            np.random.default_rng(0),
        )
    with pytest.raises(ValueError, match="expected \\(n, n_inputs\\) and \\(n,\\)"):
        windows_from_rings([(ring(9), np.zeros(8, bool))], 4, 1, 10, np.random.default_rng(0))


def test_a_ring_flagged_mostly_is_a_new_normal_and_is_used():
    """Points of a changed stream keep exceeding until the model learns them: when more
    than half of a ring is flagged its windows are used, or retraining could never adapt."""
    inputs = ring(20)
    changed = np.arange(20) >= 8  # 12 of 20 flagged: the change persists
    w = windows_from_rings([(inputs, changed)], 4, 2, 1000, np.random.default_rng(0))
    assert len(w) == 9
    recent = np.arange(20) >= 12  # 8 of 20: still left out
    w = windows_from_rings([(inputs, recent)], 4, 2, 1000, np.random.default_rng(0))
    assert w[:, -1, 0].max() < 12
    strict = windows_from_rings([(inputs, changed)], 4, 2, 1000, np.random.default_rng(0), 1.0)
    assert strict[:, -1, 0].max() < 8


@pytest.mark.parametrize("bad", [0.0, 1.01])
def test_persistent_must_be_a_fraction(bad: float) -> None:
    with pytest.raises(ValueError, match="expected a fraction in \\(0, 1\\]"):
        windows_from_rings([(ring(9), np.zeros(9, bool))], 4, 1, 10, np.random.default_rng(0), bad)
