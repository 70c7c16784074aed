"""Loop-by-loop NumPy LSTM, written straight from the equations in DESIGN.md.

Deliberately naive and independent of the kernels' fused layout: each gate has its own
matrix acting on z = [h_{t-1}, x_t], every stream and step is a separate matrix-vector
product. Slow, obviously right, and the yardstick for every kernel test.
"""

from __future__ import annotations

import numpy as np

from detector.model.lstm import ACTIVATION_RELU, ModelShape

GATES = ("i", "f", "g", "o")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def gate_matrices(tensors: dict[str, np.ndarray], shape: ModelShape, l: int) -> dict[str, tuple]:
    """Per gate: (W_gate acting on z = [h, x] with shape (H, H + D_l), b_gate (H,))."""
    H = shape.hidden
    W, U, b = tensors[f"layer{l}.W"], tensors[f"layer{l}.U"], tensors[f"layer{l}.b"]
    out = {}
    for k, name in enumerate(GATES):
        cols = slice(k * H, (k + 1) * H)
        out[name] = (np.concatenate([U[:, cols], W[:, cols]], axis=0).T, b[cols])
    return out


def head(tensors: dict[str, np.ndarray], shape: ModelShape, h_top: np.ndarray, x_t: np.ndarray):
    if shape.head_hidden > 0:
        pre = tensors["head.V1"].T @ h_top + tensors["head.a1"]
        hidden = np.maximum(pre, 0.0) if shape.head_activation == ACTIVATION_RELU else np.tanh(pre)
        y = tensors["head.V2"].T @ hidden + tensors["head.a2"]
    else:
        y = tensors["head.V2"].T @ h_top + tensors["head.a2"]
    if shape.residual:
        y = y + x_t[: shape.n_outputs]
    return y


def cell(gm: dict[str, tuple], x_t: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray):
    """One LSTM step of one stream: the six equations of DESIGN.md."""
    z = np.concatenate([h_prev, x_t])
    i_t = sigmoid(gm["i"][0] @ z + gm["i"][1])
    f_t = sigmoid(gm["f"][0] @ z + gm["f"][1])
    g_t = np.tanh(gm["g"][0] @ z + gm["g"][1])
    o_t = sigmoid(gm["o"][0] @ z + gm["o"][1])
    c_t = f_t * c_prev + i_t * g_t
    h_t = o_t * np.tanh(c_t)
    return h_t, c_t


def forward(tensors, shape: ModelShape, x: np.ndarray, h0=None, c0=None):
    """x (T, B, D_in) -> (y (T, B, D_out), h_T (L, B, H), c_T (L, B, H))."""
    T, B, _ = x.shape
    L, H = shape.layers, shape.hidden
    gms = [gate_matrices(tensors, shape, l) for l in range(L)]
    h = np.zeros((L, B, H), x.dtype) if h0 is None else h0.copy()
    c = np.zeros((L, B, H), x.dtype) if c0 is None else c0.copy()
    y = np.zeros((T, B, shape.n_outputs), x.dtype)
    for t in range(T):
        for n in range(B):
            inp = x[t, n]
            for l in range(L):
                h[l, n], c[l, n] = cell(gms[l], inp, h[l, n], c[l, n])
                inp = h[l, n]
            y[t, n] = head(tensors, shape, h[L - 1, n], x[t, n])
    return y, h, c


def mse(tensors, shape: ModelShape, x, target, washout: int = 0) -> float:
    y, _, _ = forward(tensors, shape, x)
    return float(np.mean((y[washout:] - target[washout:]) ** 2))
