"""Typed, validating entry points to the LSTM kernels.

The kernels in :mod:`detector.model.lstm` trust their inputs (a wrong shape there is a
segfault or silent garbage); these wrappers check shapes and dtypes once per call and say
what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from detector.model import lstm
from detector.model.params import LSTMParams

FloatArray = NDArray[np.floating]


def _check(name: str, a: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}; expected {shape} = ({what})")
    if a.dtype != dtype:
        raise ValueError(f"{name} has dtype {a.dtype}; expected {dtype} (the parameters' dtype)")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def step(
    params: LSTMParams,
    x: FloatArray,
    slots: NDArray[np.int64],
    h: FloatArray,
    c: FloatArray,
    out: FloatArray | None = None,
) -> FloatArray:
    """Advance the streams in rows ``slots`` of state tables h, c by one input each.

    x (S, n_inputs); slots (S,) distinct; h, c (capacity, layers, hidden), updated in place.
    Returns ŷ (S, n_outputs), each stream's prediction of its next input.
    """
    shape = params.shape
    S = x.shape[0] if x.ndim == 2 else -1
    _check("x", x, (S, shape.n_inputs), params.dtype, "streams, features")
    capacity = h.shape[0] if h.ndim == 3 else -1
    state_shape = (capacity, shape.layers, shape.hidden)
    _check("h", h, state_shape, params.dtype, "capacity, layers, hidden")
    _check("c", c, state_shape, params.dtype, "capacity, layers, hidden")
    if slots.shape != (S,) or slots.dtype != np.int64:
        raise ValueError(
            f"slots has shape {slots.shape} and dtype {slots.dtype}; expected ({S},) int64"
        )
    if S and (slots.min() < 0 or slots.max() >= capacity):
        raise ValueError(f"slots must lie in [0, {capacity})")
    if np.unique(slots).size != S:
        raise ValueError("slots must be distinct within one step; split repeated streams")
    if out is None:
        out = np.empty((S, shape.n_outputs), dtype=params.dtype)
    _check("out", out, (S, shape.n_outputs), params.dtype, "streams, outputs")
    lstm.lstm_step(x, slots, h, c, params.theta, shape, out)
    return out


@dataclass(slots=True)
class Workspace:
    """The arrays of one sequence forward and its backward pass, for one (steps, batch) size.

    Keep one across batches of the same size: allocating these megabytes afresh for every
    batch costs more (in page faults) than the arithmetic done in them.
    """

    hs: FloatArray  # (layers, T+1, B, H); [:, 0] is the initial state
    cs: FloatArray  # (layers, T+1, B, H)
    tanh_cs: FloatArray  # (layers, T, B, H), tanh(c_t) for the backward pass
    gates: FloatArray  # (layers, T, B, 4H), activated i, f, g, o
    q: FloatArray  # (T, B, head_hidden)
    y: FloatArray  # (T, B, n_outputs), the predictions
    dy: FloatArray  # (T, B, n_outputs), dL/dŷ
    dG: FloatArray  # (T, B, 4H), backward scratch
    dh_out: FloatArray  # (T*B, H), backward scratch
    dq: FloatArray  # (T*B, head_hidden), backward scratch

    @classmethod
    def allocate(cls, params: LSTMParams, steps: int, batch: int) -> Workspace:
        s, T, B, dtype = params.shape, steps, batch, params.dtype
        L, H, K, D = s.layers, s.hidden, s.head_hidden, s.n_outputs
        return cls(
            hs=np.empty((L, T + 1, B, H), dtype),
            cs=np.empty((L, T + 1, B, H), dtype),
            tanh_cs=np.empty((L, T, B, H), dtype),
            gates=np.empty((L, T, B, 4 * H), dtype),
            q=np.empty((T, B, K), dtype),
            y=np.empty((T, B, D), dtype),
            dy=np.empty((T, B, D), dtype),
            dG=np.empty((T, B, 4 * H), dtype),
            dh_out=np.empty((T * B, H), dtype),
            dq=np.empty((T * B, K), dtype),
        )

    def fits(self, params: LSTMParams, steps: int, batch: int) -> bool:
        s = params.shape
        return (
            self.gates.shape == (s.layers, steps, batch, 4 * s.hidden)
            and self.q.shape == (steps, batch, s.head_hidden)
            and self.y.shape == (steps, batch, s.n_outputs)
            and self.gates.dtype == params.dtype
        )


def forward(
    params: LSTMParams,
    x: FloatArray,
    h0: FloatArray | None = None,
    c0: FloatArray | None = None,
    workspace: Workspace | None = None,
) -> Workspace:
    """Run a time-major batch x (T, B, n_inputs) from initial state h0, c0 (zeros if None);
    the results are in the returned workspace (``workspace`` itself when it fits)."""
    shape = params.shape
    if x.ndim != 3:
        raise ValueError(f"x has shape {x.shape}; expected (steps, batch, {shape.n_inputs})")
    T, B, _ = x.shape
    if T < 1 or B < 1:
        raise ValueError(f"x has shape {x.shape}; expected at least one step and one sequence")
    _check("x", x, (T, B, shape.n_inputs), params.dtype, "steps, batch, features")
    L, H, dtype = shape.layers, shape.hidden, params.dtype
    h0 = np.zeros((L, B, H), dtype) if h0 is None else h0
    c0 = np.zeros((L, B, H), dtype) if c0 is None else c0
    _check("h0", h0, (L, B, H), dtype, "layers, batch, hidden")
    _check("c0", c0, (L, B, H), dtype, "layers, batch, hidden")
    ws = workspace
    if ws is None or not ws.fits(params, T, B):
        ws = Workspace.allocate(params, T, B)
    lstm.lstm_forward_train(
        x, h0, c0, params.theta, shape, ws.hs, ws.cs, ws.tanh_cs, ws.gates, ws.q, ws.y
    )
    return ws


def _check_target(params: LSTMParams, x: FloatArray, target: FloatArray, washout: int) -> None:
    """The loss kernel trusts its inputs: check them once, for both loss entry points."""
    T, B = x.shape[:2]
    _check("target", target, (T, B, params.shape.n_outputs), params.dtype, "steps, batch, outputs")
    if not 0 <= washout < T:
        raise ValueError(f"washout is {washout}; expected 0 to steps - 1 ({T - 1})")


def loss_and_grad(
    params: LSTMParams,
    x: FloatArray,
    target: FloatArray,
    washout: int = 0,
    grad: FloatArray | None = None,
    workspace: Workspace | None = None,
) -> tuple[float, FloatArray]:
    """MSE of the predictions of ``target`` (T, B, n_outputs) over steps >= washout, and its
    gradient with respect to every parameter (BPTT over the T steps, from zero state)."""
    ws = forward(params, x, workspace=workspace)
    _check_target(params, x, target, washout)
    loss = lstm.mse_loss_grad(ws.y, target, washout, ws.dy)
    if grad is None:
        grad = np.empty_like(params.theta)
    _check("grad", grad, params.theta.shape, params.dtype, "parameters")
    lstm.lstm_backward_train(
        x, ws.dy, params.theta, params.shape, ws.hs, ws.cs, ws.tanh_cs, ws.gates, ws.q, grad,
        ws.dG, ws.dh_out, ws.dq,
    )  # fmt: skip
    return float(loss), grad


def mse(
    params: LSTMParams,
    x: FloatArray,
    target: FloatArray,
    washout: int = 0,
    workspace: Workspace | None = None,
) -> float:
    """Loss only (no gradient), for validation."""
    ws = forward(params, x, workspace=workspace)
    _check_target(params, x, target, washout)
    return float(lstm.mse_loss_grad(ws.y, target, washout, ws.dy))
