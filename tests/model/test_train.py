"""Training lowers the error, is deterministic, and the optimiser does what Adam does."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import pytest

from detector.config import TrainingSettings
from detector.model.dataset import fit_standardization, sliding_windows, windows_from_series
from detector.model.optim import Adam, clip_grad_norm
from detector.model.params import LSTMParams, make_shape
from detector.model.train import split_windows, train


def noisy_sine(n=3000, period=50, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (np.sin(2 * np.pi * t / period) + noise * rng.standard_normal(n))[:, None]


def test_training_on_a_noisy_sine_lowers_validation_mse_tenfold():
    windows = windows_from_series([noisy_sine()], length=64, stride=8)
    settings = TrainingSettings(epochs=20, patience=5, learning_rate=3e-3, seed=0)
    initial = LSTMParams.init(
        make_shape(n_inputs=1, n_outputs=1, hidden=16, residual=False), np.random.default_rng(0)
    )
    params, report = train(windows, initial, settings)
    assert report.initial_val_loss / report.best_val_loss >= 10.0
    assert report.best_epoch >= 1
    assert [e.epoch for e in report.epochs] == list(range(1, len(report.epochs) + 1))
    # The returned weights are the best epoch's, and the caller's initial weights are untouched.
    assert not np.array_equal(params.theta, initial.theta)


def test_training_is_deterministic_for_a_seed():
    windows = windows_from_series([noisy_sine(n=800)], length=32, stride=4)
    settings = TrainingSettings(window_len=32, epochs=3, seed=7)
    shape = make_shape(n_inputs=1, n_outputs=1, hidden=8)
    runs = [
        train(windows, LSTMParams.init(shape, np.random.default_rng(7)), settings) for _ in range(2)
    ]
    assert runs[0][0].theta.tobytes() == runs[1][0].theta.tobytes()
    assert [e.val_loss for e in runs[0][1].epochs] == [e.val_loss for e in runs[1][1].epochs]


def test_early_stopping_restores_the_best_epoch():
    windows = windows_from_series([noisy_sine(n=600)], length=32, stride=4)
    # A huge learning rate makes later epochs worse: training must stop and keep the best.
    settings = TrainingSettings(
        window_len=32, epochs=40, patience=2, learning_rate=0.9, clip_norm=0.0, seed=1
    )
    _, report = train(
        windows,
        LSTMParams.init(make_shape(n_inputs=1, n_outputs=1, hidden=8), np.random.default_rng(1)),
        settings,
    )
    assert report.stopped_early
    assert report.best_val_loss == min(
        [report.initial_val_loss] + [e.val_loss for e in report.epochs]
    )


def test_split_holds_out_a_fraction_and_shifts_targets():
    w = np.arange(10 * 5 * 2, dtype=float).reshape(10, 5, 2)
    split = split_windows(w, n_outputs=1, val_fraction=0.2, rng=np.random.default_rng(0))
    assert split.x_train.shape == (8, 4, 2) and split.x_val.shape == (2, 4, 2)
    assert split.y_train.shape == (8, 4, 1)
    npt.assert_array_equal(split.y_train[:, :, 0], split.x_train[:, :, 0] + 2)  # next step
    with pytest.raises(ValueError, match="at least 2"):
        split_windows(w[:1], 1, 0.2, np.random.default_rng(0))


def test_sliding_windows_end_on_the_last_point():
    v = np.arange(10, dtype=float)[:, None]
    w = sliding_windows(v, length=4, stride=3)
    npt.assert_array_equal(w[:, :, 0], [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    assert sliding_windows(v, length=11, stride=1).shape == (0, 11, 1)


def test_standardization_survives_constant_series_and_drops_nan_windows():
    flat = np.ones((50, 1))
    assert np.isfinite(fit_standardization(flat).apply(flat)).all()
    v = noisy_sine(n=100)
    v[10] = np.nan
    w = windows_from_series([v], length=20, stride=10)
    assert np.isfinite(w).all() and len(w) == 7  # 9 windows, the 2 covering point 10 left out


def test_adam_matches_the_published_update():
    params = LSTMParams.init(
        make_shape(n_inputs=1, n_outputs=1, hidden=2), np.random.default_rng(0), dtype=np.float64
    )
    theta0 = params.theta.copy()
    opt = Adam(params, lr=0.01, weight_decay=0.1, clip_norm=0.0)
    rng = np.random.default_rng(1)
    m = np.zeros_like(theta0)
    v = np.zeros_like(theta0)
    theta = theta0.copy()
    mask = params.decay_mask()
    for step in range(1, 4):
        g = rng.standard_normal(theta.size)
        opt.update(g.copy())
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m_hat, v_hat = m / (1 - 0.9**step), v / (1 - 0.999**step)
        theta = theta - 0.01 * (m_hat / (np.sqrt(v_hat) + 1e-8) + 0.1 * mask * theta)
    npt.assert_allclose(params.theta, theta, rtol=1e-12)


def test_clip_grad_norm():
    g = np.array([3.0, 4.0])
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    npt.assert_allclose(g, [0.6, 0.8])
    g = np.array([0.3, 0.4])
    clip_grad_norm(g, 1.0)
    npt.assert_allclose(g, [0.3, 0.4])


def test_window_starts_and_usable_starts_share_one_placement():
    from detector.model.dataset import usable_starts, window_starts

    npt.assert_array_equal(window_starts(10, 4, 3), [0, 3, 6])
    assert window_starts(3, 4, 1).size == 0
    bad = np.zeros(10, bool)
    npt.assert_array_equal(usable_starts(bad, 4, 3), [0, 3, 6])
    bad[4] = True  # inside the windows starting at 3 (3..6), not 0 (0..3) or 6 (6..9)
    npt.assert_array_equal(usable_starts(bad, 4, 3), [0, 6])
    bad[:] = True
    assert usable_starts(bad, 4, 3).size == 0


def test_windows_holding_nan_are_dropped_offline():
    v = noisy_sine(n=200)
    v[100] = np.nan
    w = windows_from_series([v], length=16, stride=4)
    assert np.isfinite(w).all()
    clean = windows_from_series([noisy_sine(n=200)], length=16, stride=4)
    assert len(w) == len(clean) - 4  # the four windows over point 100


def test_validation_split_is_the_one_train_holds_out():
    from detector.model.train import evaluate_loss, validation_split

    windows = windows_from_series([noisy_sine(n=600)], length=32, stride=4)
    settings = TrainingSettings(window_len=32, epochs=1, seed=3)
    initial = LSTMParams.init(
        make_shape(n_inputs=1, n_outputs=1, hidden=8), np.random.default_rng(3)
    )
    _, report = train(windows, initial, settings)
    x_val, y_val = validation_split(windows, 1, settings)
    assert x_val.shape[0] == report.n_val_windows
    assert evaluate_loss(initial, x_val, y_val, settings.washout) == report.initial_val_loss
