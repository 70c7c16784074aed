"""The kernel's float16 conversions equal NumPy's (the reference the ring is read back with)."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import pytest
from numba import njit

from detector.stream.half import half_bits, half_value


@njit(cache=False)
def _encode(x, out):  # type: ignore[no-untyped-def]
    for i in range(x.shape[0]):
        out[i] = half_bits(x[i])


@njit(cache=False)
def _decode(bits, out):  # type: ignore[no-untyped-def]
    for i in range(bits.shape[0]):
        out[i] = half_value(bits[i])


def _values(dtype: type) -> np.ndarray:
    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, 1.0, -10.0, 65504.0, 65520.0, 1e6, -1e6, 2.0**-24, 2.0**-25, 3 * 2.0**-26]
    halfway = (np.arange(-2048, 2049) + 0.5) / 1024  # ties between neighbouring float16 values
    return np.concatenate(
        [edges, halfway, rng.standard_normal(20_000) * 3, rng.standard_normal(2000) * 1e-5]
    ).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kernels_rounding_is_numpys_through_float32(dtype: type) -> None:
    x = _values(dtype)
    with np.errstate(over="ignore"):
        want = x.astype(np.float32).astype(np.float16)
    bits = np.empty(x.size, np.int16)
    _encode(x, bits)
    npt.assert_array_equal(bits, want.view(np.int16))
    back = np.empty(x.size, np.float32)
    _decode(bits, back)
    npt.assert_array_equal(back, want.astype(np.float32))
    assert [half_bits(v) for v in x[:50]] == bits[:50].tolist()
    assert [half_value(b) for b in bits[:50]] == back[:50].tolist()


def test_nan_and_infinity_survive() -> None:
    x = np.array([np.inf, -np.inf, np.nan], np.float32)
    bits = np.empty(3, np.int16)
    _encode(x, bits)
    back = np.empty(3, np.float32)
    _decode(bits, back)
    assert back[0] == np.inf and back[1] == -np.inf and np.isnan(back[2])
