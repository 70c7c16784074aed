"""Adam with decoupled weight decay (AdamW) and global gradient-norm clipping."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit
from numpy.typing import NDArray

from detector.model.params import LSTMParams


@njit(cache=True, nogil=True)
def clip_grad_norm(grad, max_norm):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Scale grad in place so its L2 norm is at most max_norm; return the norm before."""
    total = 0.0
    for k in range(grad.size):
        total += grad[k] * grad[k]
    norm = np.sqrt(total)
    if max_norm > 0.0 and norm > max_norm:
        scale = max_norm / (norm + 1e-12)
        for k in range(grad.size):
            grad[k] *= scale
    return norm


@njit(cache=True, nogil=True)
def adam_update(theta, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decay_mask):  # type: ignore[no-untyped-def]  # pragma: no cover
    """One AdamW update of theta in place (Kingma & Ba 2015; Loshchilov & Hutter 2019).

    step counts from 1. Weight decay applies where decay_mask is 1 (weights, not biases).
    """
    bias1 = 1.0 - beta1**step
    bias2 = 1.0 - beta2**step
    for k in range(theta.size):
        g = grad[k]
        m[k] = beta1 * m[k] + (1.0 - beta1) * g
        v[k] = beta2 * v[k] + (1.0 - beta2) * g * g
        m_hat = m[k] / bias1
        v_hat = v[k] / bias2
        theta[k] -= lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * decay_mask[k] * theta[k])


@dataclass(slots=True)
class Adam:
    """Optimiser state for one parameter vector; ``update`` changes the params in place."""

    params: LSTMParams
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # 0 disables clipping
    step: int = 0
    m: NDArray[np.floating] = field(init=False)
    v: NDArray[np.floating] = field(init=False)
    _decay_mask: NDArray[np.floating] = field(init=False)

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr is {self.lr}; expected a positive finite number")
        self.m = np.zeros_like(self.params.theta)
        self.v = np.zeros_like(self.params.theta)
        self._decay_mask = self.params.decay_mask()

    def update(self, grad: NDArray[np.floating]) -> float:
        """Clip grad (in place), apply one step; return the gradient norm before clipping."""
        norm = float(clip_grad_norm(grad, self.clip_norm))
        self.step += 1
        adam_update(
            self.params.theta,
            grad,
            self.m,
            self.v,
            self.step,
            self.lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            self._decay_mask,
        )
        return norm
