"""The float32 activations (vectorisable exp) against float64 libm; float64 is libm itself."""

from __future__ import annotations

import math

import numpy as np
import numpy.testing as npt
import pytest
from numba import njit

from detector.model.lstm import sigmoid, tanh


# Not cached: numba's cache is keyed on this file alone, so a cached copy would keep testing
# the activations as they were when it was compiled, whatever lstm.py says now.
@njit(cache=False)
def apply_both(x, sig_out, tanh_out):  # type: ignore[no-untyped-def]
    for k in range(x.size):
        sig_out[k] = sigmoid(x[k])
        tanh_out[k] = tanh(x[k])


def run(x):
    s, t = np.empty_like(x), np.empty_like(x)
    apply_both(x, s, t)
    return s, t


def test_float32_activations_are_within_1e_6_of_float64_everywhere():
    x32 = np.concatenate([np.linspace(-40, 40, 400_001), [-1e30, -1e-30, 0.0, 1e-30, 1e30]])
    x32 = x32.astype(np.float32)
    s, t = run(x32)
    x = x32.astype(np.float64)  # the exact value of what the float32 functions were given
    with np.errstate(over="ignore"):  # exp(1e30) = inf gives σ = 0 exactly, as it should
        exact_s = 1.0 / (1.0 + np.exp(-x))
    exact_t = np.tanh(x)
    assert np.abs(s - exact_s).max() < 1e-6
    assert np.abs(t - exact_t).max() < 1e-6
    assert s.min() >= 0.0 and s.max() <= 1.0
    assert t.min() >= -1.0 and t.max() <= 1.0


def test_float32_activations_keep_their_symmetries():
    x = np.linspace(0, 20, 10_001).astype(np.float32)
    s_pos, t_pos = run(x)
    s_neg, t_neg = run(-x)
    npt.assert_allclose(s_pos + s_neg, 1.0, atol=1e-6)
    npt.assert_allclose(t_pos, -t_neg, atol=1e-6)
    assert np.all(np.diff(s_pos) >= 0) and np.all(np.diff(t_pos) >= 0)  # monotone


def test_float64_activations_are_libm():
    x = np.linspace(-30, 30, 10_001)
    s, t = run(x)
    npt.assert_allclose(s, 1.0 / (1.0 + np.exp(-x)), rtol=1e-15, atol=1e-300)
    npt.assert_allclose(t, np.tanh(x), rtol=1e-15, atol=1e-300)


@pytest.mark.parametrize("x", [-800.0, -3.0, 0.0, 0.5, 40.0])
def test_python_bodies_used_without_jit(x):
    assert sigmoid(x) == pytest.approx(0.0 if x < -700 else 1.0 / (1.0 + math.exp(-x)))
    assert tanh(x) == pytest.approx(math.tanh(x))
