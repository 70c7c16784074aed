"""LSTM parameters: sizes, named tensors over the flat vector, initialisation.

The layout itself (what lies where in ``theta``, gate order) is documented once, in
:mod:`detector.model.lstm`; :func:`tensor_layout` spells the same layout out by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from detector.model.lstm import ACTIVATION_RELU, ACTIVATION_TANH, ModelShape, param_count

HeadActivation = Literal["relu", "tanh"]
_ACTIVATION_CODES: dict[str, int] = {"relu": ACTIVATION_RELU, "tanh": ACTIVATION_TANH}
MAX_LAYERS = 4


def make_shape(
    *,
    n_inputs: int,
    n_outputs: int,
    hidden: int,
    layers: int = 1,
    head_hidden: int = 0,
    head_activation: HeadActivation = "relu",
    residual: bool = False,
) -> ModelShape:
    """Validated :class:`ModelShape`; the outputs predict the first ``n_outputs`` inputs."""
    if n_inputs < 1:
        raise ValueError(f"n_inputs is {n_inputs}; expected at least 1")
    if not 1 <= n_outputs <= n_inputs:
        raise ValueError(f"n_outputs is {n_outputs}; expected 1 to n_inputs ({n_inputs})")
    if hidden < 1:
        raise ValueError(f"hidden is {hidden}; expected at least 1")
    if not 1 <= layers <= MAX_LAYERS:
        raise ValueError(f"layers is {layers}; expected 1 to {MAX_LAYERS}")
    if head_hidden < 0:
        raise ValueError(f"head_hidden is {head_hidden}; expected 0 (no hidden layer) or more")
    if head_activation not in _ACTIVATION_CODES:
        raise ValueError(f"head_activation is {head_activation!r}; expected 'relu' or 'tanh'")
    return ModelShape(
        n_inputs=n_inputs,
        n_outputs=n_outputs,
        hidden=hidden,
        layers=layers,
        head_hidden=head_hidden,
        head_activation=_ACTIVATION_CODES[head_activation],
        residual=int(residual),
    )


def activation_name(shape: ModelShape) -> HeadActivation:
    return "relu" if shape.head_activation == ACTIVATION_RELU else "tanh"


def shape_to_dict(shape: ModelShape) -> dict[str, int | str | bool]:
    """JSON-friendly form of a shape (names instead of codes)."""
    return {
        "n_inputs": shape.n_inputs,
        "n_outputs": shape.n_outputs,
        "hidden": shape.hidden,
        "layers": shape.layers,
        "head_hidden": shape.head_hidden,
        "head_activation": activation_name(shape),
        "residual": bool(shape.residual),
    }


def shape_from_dict(d: dict[str, object]) -> ModelShape:
    """Inverse of :func:`shape_to_dict`; raises ValueError or TypeError on bad content."""
    ints = {k: d[k] for k in ("n_inputs", "n_outputs", "hidden", "layers", "head_hidden")}
    for key, value in ints.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{key} is {value!r}; expected an integer")
    activation = d["head_activation"]
    if activation not in ("relu", "tanh"):
        raise ValueError(f"head_activation is {activation!r}; expected 'relu' or 'tanh'")
    return make_shape(
        n_inputs=int(d["n_inputs"]),  # type: ignore[call-overload]
        n_outputs=int(d["n_outputs"]),  # type: ignore[call-overload]
        hidden=int(d["hidden"]),  # type: ignore[call-overload]
        layers=int(d["layers"]),  # type: ignore[call-overload]
        head_hidden=int(d["head_hidden"]),  # type: ignore[call-overload]
        head_activation=activation,
        residual=bool(d["residual"]),
    )


def tensor_layout(shape: ModelShape) -> list[tuple[str, int, tuple[int, ...]]]:
    """(name, offset, shape) of every tensor in theta, in storage order."""
    H, K, D = shape.hidden, shape.head_hidden, shape.n_outputs
    names: list[tuple[str, tuple[int, ...]]] = []
    for l in range(shape.layers):
        d_in = shape.n_inputs if l == 0 else H
        names += [(f"layer{l}.W", (d_in, 4 * H)), (f"layer{l}.U", (H, 4 * H))]
        names += [(f"layer{l}.b", (4 * H,))]
    if K > 0:
        names += [("head.V1", (H, K)), ("head.a1", (K,)), ("head.V2", (K, D))]
    else:
        names += [("head.V2", (H, D))]
    names += [("head.a2", (D,))]
    layout = []
    offset = 0
    for name, tshape in names:
        layout.append((name, offset, tshape))
        offset += int(np.prod(tshape))
    return layout


@dataclass(frozen=True, slots=True)
class LSTMParams:
    """Weights of one model group: a shape and one flat vector laid out as in model.lstm."""

    shape: ModelShape
    theta: NDArray[np.floating]

    def __post_init__(self) -> None:
        expected = param_count(self.shape)
        if self.theta.ndim != 1 or self.theta.size != expected:
            raise ValueError(f"theta has shape {self.theta.shape}; expected ({expected},)")
        if self.theta.dtype not in (np.float32, np.float64):
            raise ValueError(f"theta has dtype {self.theta.dtype}; expected float32 or float64")
        if not self.theta.flags.c_contiguous:
            raise ValueError("theta must be C-contiguous")

    @property
    def dtype(self) -> np.dtype[np.floating]:
        return self.theta.dtype

    @classmethod
    def init(
        cls,
        shape: ModelShape,
        rng: np.random.Generator,
        dtype: type[np.floating] = np.float32,
        recurrent_init: Literal["orthogonal", "xavier"] = "orthogonal",
    ) -> LSTMParams:
        """Xavier-uniform input and head weights, orthogonal (or Xavier) recurrent blocks,
        zero biases except the forget gate's, which starts at 1 so that early training
        does not forget everything (Jozefowicz et al., 2015)."""
        theta = np.zeros(param_count(shape), dtype=np.float64)
        H = shape.hidden
        for name, offset, tshape in tensor_layout(shape):
            size = int(np.prod(tshape))
            view = theta[offset : offset + size].reshape(tshape)
            kind = name.rsplit(".", 1)[1]
            if kind == "U" and recurrent_init == "orthogonal":
                for gate in range(4):
                    view[:, gate * H : (gate + 1) * H] = _orthogonal(H, rng)
            elif kind in ("W", "U"):
                # Xavier per gate block: fan-out is H, not 4H.
                view[:] = _xavier(tshape[0], H, tshape, rng)
            elif kind in ("V1", "V2"):
                view[:] = _xavier(tshape[0], tshape[1], tshape, rng)
            elif kind == "b":
                view[H : 2 * H] = 1.0
        return cls(shape, theta.astype(dtype))

    @classmethod
    def init_persistence(
        cls, shape: ModelShape, rng: np.random.Generator, dtype: type[np.floating] = np.float32
    ) -> LSTMParams:
        """An untrained model that predicts x_{t+1} = x_t: :meth:`init` with a zero output
        layer on a residual head. The cold start of a group without weights: it scores
        sensibly from the first point, and training starts from a useful forecaster."""
        if not shape.residual:
            raise ValueError("a persistence start needs a residual head")
        params = cls.init(shape, rng, dtype)
        tensors = params.tensors()
        tensors["head.V2"][:] = 0.0
        tensors["head.a2"][:] = 0.0
        return params

    def astype(self, dtype: type[np.floating]) -> LSTMParams:
        return LSTMParams(self.shape, np.ascontiguousarray(self.theta, dtype=dtype))

    def copy(self) -> LSTMParams:
        return LSTMParams(self.shape, self.theta.copy())

    def tensors(self) -> dict[str, NDArray[np.floating]]:
        """Named views into theta (writing to them writes the parameters)."""
        return {
            name: self.theta[offset : offset + int(np.prod(tshape))].reshape(tshape)
            for name, offset, tshape in tensor_layout(self.shape)
        }

    def decay_mask(self) -> NDArray[np.floating]:
        """1 for weight matrices, 0 for biases: weight decay leaves biases alone."""
        mask = np.zeros_like(self.theta)
        for _name, offset, tshape in tensor_layout(self.shape):
            if len(tshape) == 2:
                mask[offset : offset + int(np.prod(tshape))] = 1.0
        return mask


def _xavier(
    fan_in: int, fan_out: int, shape: tuple[int, ...], rng: np.random.Generator
) -> NDArray[np.float64]:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def _orthogonal(n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    a = rng.standard_normal((n, n))
    q, r = np.linalg.qr(a)
    # Sign fix makes the draw uniform over orthogonal matrices (Mezzadri, 2007).
    return q * np.sign(np.diag(r))
