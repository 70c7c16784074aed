"""Training: windows -> mini-batches -> BPTT + AdamW -> (best params, report).

Deterministic for a given seed: the validation split, the initial weights (chosen by the
caller) and the batch order all come from ``np.random.default_rng(settings.seed)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from detector.config import TrainingSettings
from detector.model import network
from detector.model.optim import Adam
from detector.model.params import LSTMParams

# Validation runs in chunks so its forward caches stay small whatever the split's size.
_EVAL_CHUNK = 1024


@dataclass(frozen=True, slots=True)
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    grad_norm: float  # mean over the epoch's batches, before clipping
    seconds: float


@dataclass(frozen=True, slots=True)
class TrainReport:
    epochs: tuple[EpochStats, ...]
    initial_val_loss: float
    best_epoch: int  # 0: no epoch beat the initial weights, which are kept
    best_val_loss: float
    stopped_early: bool
    wall_time_s: float
    n_train_windows: int
    n_val_windows: int

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["epochs"] = [asdict(e) for e in self.epochs]
        return d


@dataclass(frozen=True, slots=True)
class _Split:
    x_train: NDArray[np.floating]  # (N, T-1, D_in)
    y_train: NDArray[np.floating]  # (N, T-1, D_out)
    x_val: NDArray[np.floating]
    y_val: NDArray[np.floating]


def validation_count(n_windows: int, val_fraction: float) -> int:
    """How many of n windows are held out: the fraction, rounded, at least one, never all."""
    if n_windows < 2:
        raise ValueError(
            f"{n_windows} training window(s); at least 2 are needed (one to validate on)"
        )
    return min(n_windows - 1, max(1, round(n_windows * val_fraction)))


def split_windows(
    windows: NDArray[np.floating], n_outputs: int, val_fraction: float, rng: np.random.Generator
) -> _Split:
    """Inputs are steps 0..T-2 of each window, targets steps 1..T-1 (first n_outputs
    features); a random ``val_fraction`` of windows (at least one) is held out."""
    n = windows.shape[0]
    n_val = validation_count(n, val_fraction)
    order = rng.permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    x, y = windows[:, :-1, :], windows[:, 1:, :n_outputs]
    return _Split(x[train], y[train], x[val], y[val])


def validation_split(
    windows: NDArray[np.floating], n_outputs: int, settings: TrainingSettings
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """(inputs, targets) of the windows :func:`train` holds out for validation with these
    settings (the same seed gives the same draw), e.g. to score another model on them."""
    data = split_windows(windows, n_outputs, settings.val_fraction, _rng(settings))
    return data.x_val, data.y_val


def _rng(settings: TrainingSettings) -> np.random.Generator:
    """The one generator of a training run: it draws the split first, then batch orders."""
    return np.random.default_rng(settings.seed)


def _time_major(a: NDArray[np.floating], dtype: np.dtype) -> NDArray[np.floating]:
    return np.ascontiguousarray(a.transpose(1, 0, 2), dtype=dtype)


class _Workspaces:
    """One reusable workspace per batch size (a split has at most two: full and last)."""

    def __init__(self) -> None:
        self._by_size: dict[tuple[int, int], network.Workspace] = {}

    def get(self, params: LSTMParams, x: NDArray[np.floating]) -> network.Workspace:
        key = (x.shape[0], x.shape[1])
        if key not in self._by_size:
            self._by_size[key] = network.Workspace.allocate(params, *key)
        return self._by_size[key]


def evaluate_loss(
    params: LSTMParams,
    x: NDArray[np.floating],
    y: NDArray[np.floating],
    washout: int,
    workspaces: _Workspaces | None = None,
) -> float:
    """Mean squared error over windows x (N, T, D_in) -> targets y (N, T, D_out)."""
    workspaces = workspaces or _Workspaces()
    total, count = 0.0, 0
    for start in range(0, x.shape[0], _EVAL_CHUNK):
        xb = _time_major(x[start : start + _EVAL_CHUNK], params.dtype)
        yb = _time_major(y[start : start + _EVAL_CHUNK], params.dtype)
        ws = workspaces.get(params, xb)
        total += network.mse(params, xb, yb, washout, ws) * xb.shape[1]
        count += xb.shape[1]
    return total / count


def train(
    windows: NDArray[np.floating],
    initial: LSTMParams,
    settings: TrainingSettings,
    *,
    on_batch: Callable[[int], None] | None = None,
    on_epoch: Callable[[EpochStats, bool], None] | None = None,
) -> tuple[LSTMParams, TrainReport]:
    """Train a copy of ``initial`` on windows (N, T, D_in); return the best-on-validation
    weights and the report. ``on_batch(n)`` is told each batch's size, ``on_epoch(stats,
    improved)`` each epoch's figures (progress bars and logs live with the caller)."""
    started = time.perf_counter()
    shape = initial.shape
    if windows.ndim != 3 or windows.shape[2] != shape.n_inputs:
        raise ValueError(
            f"windows has shape {windows.shape}; expected (windows, steps, {shape.n_inputs})"
        )
    if windows.shape[1] - 1 <= settings.washout:
        raise ValueError(
            f"windows have {windows.shape[1]} steps; washout {settings.washout} leaves no target"
        )
    rng = _rng(settings)
    data = split_windows(windows, shape.n_outputs, settings.val_fraction, rng)
    params = initial.copy()
    dtype = params.dtype
    optimizer = Adam(
        params,
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
        clip_norm=settings.clip_norm,
    )
    grad = np.empty_like(params.theta)
    workspaces = _Workspaces()

    initial_val = evaluate_loss(params, data.x_val, data.y_val, settings.washout, workspaces)
    best_val, best_epoch, best_theta = initial_val, 0, params.theta.copy()
    history: list[EpochStats] = []
    stale = 0
    n_train = data.x_train.shape[0]
    for epoch in range(1, settings.epochs + 1):
        epoch_start = time.perf_counter()
        order = rng.permutation(n_train)
        loss_sum, norm_sum, batches = 0.0, 0.0, 0
        for start in range(0, n_train, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            xb = _time_major(data.x_train[idx], dtype)
            yb = _time_major(data.y_train[idx], dtype)
            ws = workspaces.get(params, xb)
            loss, _ = network.loss_and_grad(params, xb, yb, settings.washout, grad, ws)
            norm_sum += optimizer.update(grad)
            loss_sum += loss * idx.size
            batches += 1
            if on_batch is not None:
                on_batch(idx.size)
        val = evaluate_loss(params, data.x_val, data.y_val, settings.washout, workspaces)
        stats = EpochStats(
            epoch=epoch,
            train_loss=loss_sum / n_train,
            val_loss=val,
            grad_norm=norm_sum / batches,
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(stats)
        improved = bool(np.isfinite(val)) and val < best_val - settings.min_delta
        if improved:
            best_val, best_epoch, best_theta = val, epoch, params.theta.copy()
            stale = 0
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(stats, improved)
        if stale >= settings.patience:
            break
    params.theta[:] = best_theta
    report = TrainReport(
        epochs=tuple(history),
        initial_val_loss=initial_val,
        best_epoch=best_epoch,
        best_val_loss=best_val,
        stopped_early=len(history) < settings.epochs,
        wall_time_s=time.perf_counter() - started,
        n_train_windows=n_train,
        n_val_windows=data.x_val.shape[0],
    )
    return params, report
