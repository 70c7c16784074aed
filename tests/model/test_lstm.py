"""The Numba LSTM against the NumPy reference, finite differences, and itself (stream == batch)."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import pytest
from numba import njit

from detector.model import lstm, network
from detector.model.params import LSTMParams, make_shape, tensor_layout
from tests.reference import lstm_numpy as ref

SHAPES = {
    "1 layer, D=1, linear head": dict(n_inputs=1, n_outputs=1, hidden=5, layers=1),
    "2 layers, D=3, relu head": dict(
        n_inputs=3, n_outputs=3, hidden=4, layers=2, head_hidden=6, head_activation="relu"
    ),
    "3 layers, D=3, tanh head, residual, 2 outputs": dict(
        n_inputs=3,
        n_outputs=2,
        hidden=4,
        layers=3,
        head_hidden=3,
        head_activation="tanh",
        residual=True,
    ),
    "1 layer, D=3, residual": dict(n_inputs=3, n_outputs=3, hidden=6, layers=1, residual=True),
    # H = 32: the products in the time loop run on full register tiles (lstm._matmul), and
    # the second layer's 32 inputs are projected by one product before its time loop.
    "2 layers, H=32, D=2": dict(n_inputs=2, n_outputs=2, hidden=32, layers=2),
}
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}


def make_params(kwargs, dtype, seed=0) -> LSTMParams:
    params = LSTMParams.init(make_shape(**kwargs), np.random.default_rng(seed), dtype=np.float64)
    # Perturb the biases too, so that no term of the equations is tested at zero.
    params.theta[:] += 0.1 * np.random.default_rng(seed + 1).standard_normal(params.theta.size)
    return params.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", SHAPES)
def test_forward_equals_numpy_reference(case, dtype):
    params = make_params(SHAPES[case], dtype)
    x = np.random.default_rng(2).standard_normal((7, 4, params.shape.n_inputs)).astype(dtype)
    comp = network.forward(params, x)
    y_ref, h_ref, c_ref = ref.forward(params.tensors(), params.shape, x)
    npt.assert_allclose(comp.y, y_ref, **TOL[dtype])
    npt.assert_allclose(comp.hs[:, -1], h_ref, **TOL[dtype])
    npt.assert_allclose(comp.cs[:, -1], c_ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", SHAPES)
def test_forward_from_nonzero_state_equals_reference(case, dtype):
    params = make_params(SHAPES[case], dtype)
    L, H = params.shape.layers, params.shape.hidden
    rng = np.random.default_rng(3)
    h0 = (0.5 * rng.standard_normal((L, 2, H))).astype(dtype)
    c0 = rng.standard_normal((L, 2, H)).astype(dtype)
    x = rng.standard_normal((5, 2, params.shape.n_inputs)).astype(dtype)
    comp = network.forward(params, x, h0, c0)
    y_ref, h_ref, _ = ref.forward(params.tensors(), params.shape, x, h0, c0)
    npt.assert_allclose(comp.y, y_ref, **TOL[dtype])
    npt.assert_allclose(comp.hs[:, -1], h_ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", SHAPES)
def test_batched_steps_equal_sequence_forward(case, dtype):
    """Stream == batch: T calls of the in-place step give the states and outputs of one forward.

    The streams sit at scattered rows of a larger table; the other rows must not change.
    """
    params = make_params(SHAPES[case], dtype)
    T, B = 9, 5
    L, H = params.shape.layers, params.shape.hidden
    x = np.random.default_rng(4).standard_normal((T, B, params.shape.n_inputs)).astype(dtype)
    seq = network.forward(params, x)

    capacity = 20
    slots = np.array([17, 3, 8, 0, 11], dtype=np.int64)
    rng = np.random.default_rng(5)
    h = rng.standard_normal((capacity, L, H)).astype(dtype)
    c = rng.standard_normal((capacity, L, H)).astype(dtype)
    h[slots] = 0.0
    c[slots] = 0.0
    untouched = np.setdiff1d(np.arange(capacity), slots)
    h_other, c_other = h[untouched].copy(), c[untouched].copy()
    for t in range(T):
        y_t = network.step(params, np.ascontiguousarray(x[t]), slots, h, c)
        npt.assert_allclose(y_t, seq.y[t], **TOL[dtype])
    npt.assert_allclose(h[slots].transpose(1, 0, 2), seq.hs[:, -1], **TOL[dtype])
    npt.assert_allclose(c[slots].transpose(1, 0, 2), seq.cs[:, -1], **TOL[dtype])
    npt.assert_array_equal(h[untouched], h_other)
    npt.assert_array_equal(c[untouched], c_other)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("washout", [0, 2])
def test_bptt_gradient_equals_central_finite_differences(case, washout):
    params = make_params(SHAPES[case] | {"hidden": 3}, np.float64)
    T, B = 5, 2
    rng = np.random.default_rng(6)
    x = rng.standard_normal((T, B, params.shape.n_inputs))
    target = rng.standard_normal((T, B, params.shape.n_outputs))
    loss, grad = network.loss_and_grad(params, x, target, washout)
    assert loss == pytest.approx(ref.mse(params.tensors(), params.shape, x, target, washout))

    eps = 1e-6
    fd = np.empty_like(params.theta)
    theta = params.theta
    for k in range(theta.size):
        saved = theta[k]
        theta[k] = saved + eps
        up = ref.mse(params.tensors(), params.shape, x, target, washout)
        theta[k] = saved - eps
        down = ref.mse(params.tensors(), params.shape, x, target, washout)
        theta[k] = saved
        fd[k] = (up - down) / (2 * eps)
    for name, offset, tshape in tensor_layout(params.shape):
        part = slice(offset, offset + int(np.prod(tshape)))
        assert relative_error(grad[part], fd[part]) < 1e-6, name
        assert np.linalg.norm(fd[part]) > 0, f"{name}: the check would pass vacuously"


def test_bptt_gradient_with_full_tiles_equals_finite_differences():
    """The finite-difference check above at H = 32, on a sample of the parameters: that test
    sets H = 3, where every product in the time loop takes _matmul's edge loops, and its
    layers all take the narrow-input path. Here B = 6 gives four tiled rows and two edge rows.
    """
    params = make_params(SHAPES["2 layers, H=32, D=2"], np.float64)
    T, B = 3, 6
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, params.shape.n_inputs))
    target = rng.standard_normal((T, B, params.shape.n_outputs))
    _, grad = network.loss_and_grad(params, x, target)
    eps = 1e-6
    theta = params.theta
    for name, offset, tshape in tensor_layout(params.shape):
        size = int(np.prod(tshape))
        for k in offset + rng.choice(size, size=min(size, 6), replace=False):
            saved = theta[k]
            theta[k] = saved + eps
            up = ref.mse(params.tensors(), params.shape, x, target)
            theta[k] = saved - eps
            down = ref.mse(params.tensors(), params.shape, x, target)
            theta[k] = saved
            fd = (up - down) / (2 * eps)
            assert grad[k] == pytest.approx(fd, rel=1e-5, abs=1e-9), (name, k - offset)


@pytest.mark.parametrize("case", SHAPES)
def test_kernels_without_kept_tanh_c_equal_the_training_pair(case):
    """lstm_forward and lstm_backward (the signatures other code calls) compute tanh(c_t)
    themselves; they must give exactly what lstm_forward_train + lstm_backward_train give."""
    params = make_params(SHAPES[case], np.float32)
    shape, theta = params.shape, params.theta
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 4, shape.n_inputs)).astype(np.float32)
    target = rng.standard_normal((6, 4, shape.n_outputs)).astype(np.float32)
    _, grad_train = network.loss_and_grad(params, x, target, washout=1)
    ws = network.Workspace.allocate(params, 6, 4)
    h0 = np.zeros((shape.layers, 4, shape.hidden), np.float32)
    lstm.lstm_forward(x, h0, h0, theta, shape, ws.hs, ws.cs, ws.gates, ws.q, ws.y)
    lstm.mse_loss_grad(ws.y, target, 1, ws.dy)
    grad = np.empty_like(theta)
    lstm.lstm_backward(
        x, ws.dy, theta, shape, ws.hs, ws.cs, ws.gates, ws.q, grad, ws.dG, ws.dh_out, ws.dq
    )
    npt.assert_array_equal(grad, grad_train)


# Not cached: numba's cache is keyed on this file alone, so a cached copy would keep testing
# _matmul as it was when compiled. Jitted, because called from Python _matmul is np.dot.
@njit(cache=False)
def matmul_jitted(a, b, c):  # type: ignore[no-untyped-def]
    lstm._matmul(a, b, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_transposed", [False, True])
@pytest.mark.parametrize(
    ("M", "K", "N"),
    [(64, 32, 128), (64, 128, 32), (8, 5, 64), (6, 3, 33), (3, 7, 40), (5, 4, 7), (4, 0, 32)],
)
def test_matmul_equals_numpy(M, K, N, a_transposed, dtype):
    """Register tiles, the edge columns, the edge rows, and both at once; a may be a
    transposed view, as in the backward pass."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((K, M)).T if a_transposed else rng.standard_normal((M, K))
    a = a.astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    c = np.full((M, N), np.nan, dtype)
    matmul_jitted(a, b, c)
    # Rounding grows with the K terms summed, and sums of standard normals can cancel.
    atol = 4 * np.finfo(dtype).eps * max(K, 1)
    npt.assert_allclose(c, a.astype(np.float64) @ b, rtol=TOL[dtype]["rtol"], atol=atol)


@pytest.mark.parametrize("case", SHAPES)
def test_jitted_views_match_named_layout(case):
    params = make_params(SHAPES[case], np.float64)
    named = params.tensors()
    for l in range(params.shape.layers):
        W, U, b = lstm.layer_views(params.theta, params.shape, l)
        npt.assert_array_equal(W, named[f"layer{l}.W"])
        npt.assert_array_equal(U, named[f"layer{l}.U"])
        npt.assert_array_equal(b, named[f"layer{l}.b"])
    V1, a1, V2, a2 = lstm.head_views(params.theta, params.shape)
    npt.assert_array_equal(V2, named["head.V2"])
    npt.assert_array_equal(a2, named["head.a2"])
    if params.shape.head_hidden:
        npt.assert_array_equal(V1, named["head.V1"])
        npt.assert_array_equal(a1, named["head.a1"])
    _, last_offset, last_shape = tensor_layout(params.shape)[-1]
    assert last_offset + int(np.prod(last_shape)) == lstm.param_count(params.shape)


def test_init_sets_forget_bias_and_orthogonal_recurrent_blocks():
    params = LSTMParams.init(
        make_shape(n_inputs=2, n_outputs=2, hidden=8, layers=2),
        np.random.default_rng(0),
        dtype=np.float64,
    )
    t = params.tensors()
    H = 8
    for l in range(2):
        b = t[f"layer{l}.b"]
        npt.assert_array_equal(b[H : 2 * H], 1.0)
        npt.assert_array_equal(np.delete(b, np.s_[H : 2 * H]), 0.0)
        for gate in range(4):
            block = t[f"layer{l}.U"][:, gate * H : (gate + 1) * H]
            npt.assert_allclose(block.T @ block, np.eye(H), atol=1e-12)


def test_init_is_deterministic_for_a_seed():
    shape = make_shape(n_inputs=1, n_outputs=1, hidden=4)
    a = LSTMParams.init(shape, np.random.default_rng(42))
    b = LSTMParams.init(shape, np.random.default_rng(42))
    npt.assert_array_equal(a.theta, b.theta)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_inputs=0, n_outputs=1, hidden=4), "n_inputs is 0"),
        (dict(n_inputs=2, n_outputs=3, hidden=4), "n_outputs is 3"),
        (dict(n_inputs=1, n_outputs=1, hidden=4, layers=5), "layers is 5"),
        (dict(n_inputs=1, n_outputs=1, hidden=4, head_activation="gelu"), "head_activation"),
    ],
)
def test_make_shape_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_shape(**kwargs)


def test_step_wrapper_names_the_wrong_shape_and_dtype():
    params = make_params(SHAPES["1 layer, D=3, residual"], np.float32)
    h = np.zeros((4, 1, 6), np.float32)
    c = np.zeros((4, 1, 6), np.float32)
    slots = np.array([0, 1], np.int64)
    with pytest.raises(ValueError, match=r"x has shape \(2, 2\); expected \(2, 3\)"):
        network.step(params, np.zeros((2, 2), np.float32), slots, h, c)
    with pytest.raises(ValueError, match="x has dtype float64"):
        network.step(params, np.zeros((2, 3)), slots, h, c)
    with pytest.raises(ValueError, match="distinct"):
        network.step(params, np.zeros((2, 3), np.float32), np.array([1, 1]), h, c)
    with pytest.raises(ValueError, match=r"slots must lie in \[0, 4\)"):
        network.step(params, np.zeros((2, 3), np.float32), np.array([0, 4]), h, c)


@pytest.mark.parametrize("loss", [network.mse, network.loss_and_grad])
def test_both_loss_entry_points_check_target_and_washout(loss):
    params = make_params(SHAPES["3 layers, D=3, tanh head, residual, 2 outputs"], np.float32)
    x = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"target has shape \(4, 2, 3\); expected \(4, 2, 2\)"):
        loss(params, x, np.zeros((4, 2, 3), np.float32))
    with pytest.raises(ValueError, match="washout is 4"):
        loss(params, x, np.zeros((4, 2, 2), np.float32), 4)


# --------------------------------------------------------------------------- streaming rows
ROW_SHAPES = {
    **SHAPES,
    # H = 32, one input: the scoring kernel's shape (full register tiles, bias and x W in
    # the tiles' start, the head as one dot product per row).
    "1 layer, H=32, D=1, residual": dict(
        n_inputs=1, n_outputs=1, hidden=32, layers=1, residual=True
    ),
    # H = 64: the gate pass in two blocks of lstm._CELL_UNITS per row.
    "1 layer, H=64, D=1": dict(n_inputs=1, n_outputs=1, hidden=64, layers=1),
    # More than _FOLD_INPUT_MAX inputs: the first layer's input goes through _matmul.
    "1 layer, H=8, D=6": dict(n_inputs=6, n_outputs=2, hidden=8, layers=1),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ROW_SHAPES)
def test_step_on_table_rows_equals_numpy_reference(case, dtype):
    """lstm_step_rows steps rows of one (capacity, layers, 2, H) table in place: equal to
    the loop-by-loop NumPy step from the same state; other rows untouched. S = 37 streams:
    whole tiles of four rows and an edge of one."""
    params = make_params(ROW_SHAPES[case], dtype)
    shape = params.shape
    L, H, S, capacity = shape.layers, shape.hidden, 37, 60
    rng = np.random.default_rng(10)
    hc = (0.5 * rng.standard_normal((capacity, L, 2, H))).astype(dtype)
    rows = rng.choice(capacity, size=S, replace=False).astype(np.int64)
    x = rng.standard_normal((S, shape.n_inputs)).astype(dtype)
    before = hc.copy()
    y = np.full((S, shape.n_outputs), np.nan, dtype)
    scratch = lstm.step_scratch(S, shape, params.theta)
    lstm.lstm_step_rows(x, rows, hc, params.theta, shape, *scratch, y)

    h0 = before[rows, :, 0].transpose(1, 0, 2)  # (L, S, H)
    c0 = before[rows, :, 1].transpose(1, 0, 2)
    y_ref, h_ref, c_ref = ref.forward(params.tensors(), shape, x[None], h0, c0)
    npt.assert_allclose(y, y_ref[0], **TOL[dtype])
    npt.assert_allclose(hc[rows, :, 0].transpose(1, 0, 2), h_ref, **TOL[dtype])
    npt.assert_allclose(hc[rows, :, 1].transpose(1, 0, 2), c_ref, **TOL[dtype])
    others = np.setdiff1d(np.arange(capacity), rows)
    npt.assert_array_equal(hc[others], before[others])


@njit(cache=False)
def gates_rows_jitted(table, rows, col, U, x, W, b, c):  # type: ignore[no-untyped-def]
    lstm._gates_rows(table, rows, col, U, x, W, b, c)


@njit(cache=False)
def matmul_rows_jitted(table, rows, col, b, c):  # type: ignore[no-untyped-def]
    lstm._matmul_rows(table, rows, col, b, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("M", "H", "D"), [(8, 32, 1), (7, 32, 2), (6, 5, 1), (3, 9, 4), (0, 8, 1)])
def test_products_on_table_rows_equal_numpy(M, H, D, dtype):
    """bias + x W + h U with h gathered from table rows (tiles, edge rows, edge columns)."""
    rng = np.random.default_rng(11)
    table = rng.standard_normal((20, 3 * H)).astype(dtype)
    rows = rng.choice(20, size=M, replace=False).astype(np.int64)
    U = rng.standard_normal((H, 4 * H)).astype(dtype)
    W = rng.standard_normal((D, 4 * H)).astype(dtype)
    b = rng.standard_normal(4 * H).astype(dtype)
    x = rng.standard_normal((M, D)).astype(dtype)
    h = table[rows, H : 2 * H].astype(np.float64)
    atol = 8 * np.finfo(dtype).eps * H
    c = np.full((M, 4 * H), np.nan, dtype)
    gates_rows_jitted(table, rows, H, U, x, W, b, c)
    npt.assert_allclose(c, b + x.astype(np.float64) @ W + h @ U, rtol=TOL[dtype]["rtol"], atol=atol)
    c[:] = np.nan
    matmul_rows_jitted(table, rows, H, U, c)
    npt.assert_allclose(c, h @ U, rtol=TOL[dtype]["rtol"], atol=atol)


@njit(cache=False)
def neg_exp_all(x, out):  # type: ignore[no-untyped-def]
    for i in range(x.shape[0]):
        out[i] = lstm.neg_exp(x[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_neg_exp_is_exp_of_minus_x_clamped(dtype):
    x = np.concatenate([np.linspace(-30, 30, 200_001), [-50.0, 0.0, 50.0]]).astype(dtype)
    out = np.empty_like(x)
    neg_exp_all(x, out)
    limit = 18.0 if dtype == np.float32 else 40.0
    want = np.exp(-np.clip(x.astype(np.float64), -limit, limit))
    npt.assert_allclose(out, want, rtol=3e-7 if dtype == np.float32 else 1e-15)


@njit(cache=False)
def dot_rows_jitted(a, v, bias, x, y):  # type: ignore[no-untyped-def]
    lstm._dot_rows(a, v, bias, x, y, 0)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [1, 5, 32, 37])
def test_dot_rows_equals_numpy(K, dtype, residual):
    """y = a v + bias (+ x: the residual head's input, when x has rows)."""
    rng = np.random.default_rng(12)
    a = rng.standard_normal((9, K)).astype(dtype)
    v = rng.standard_normal(K).astype(dtype)
    x = rng.standard_normal((9 if residual else 0, 1)).astype(dtype)
    bias = dtype(0.25)
    y = np.full((9, 1), np.nan, dtype)
    dot_rows_jitted(a, v, bias, x, y)
    want = a.astype(np.float64) @ v + 0.25 + (x[:, 0] if residual else 0.0)
    npt.assert_allclose(y[:, 0], want, rtol=TOL[dtype]["rtol"],
                        atol=4 * np.finfo(dtype).eps * (K + 2))  # fmt: skip
