"""The one kernel per batch and model group: normalise, score, alert, step, predict, buffer.

For every point, in arrival order per stream (DESIGN.md, "the hot path"):

1. A point not newer than its stream's last one is dropped (status DROPPED). A gap longer
   than ``gap_factor`` usual intervals resets the stream (policy "reset": it starts over as a
   new stream, warm-up included) or is noted and passed (policy "continue").
2. x_t is normalised with the stream's running mean and std (before this point updates them)
   and clipped to +-input_clip: x̃_t = (x_t - μ) / σ.
3. The error against the prediction made at the previous step, in normalised units, is
   e_t = sqrt(mean_d (x̃_t,d - ŷ_t,d)²), smoothed: s_t = s_{t-1} + α_e (e_t - s_{t-1}).
4. A score in [0, 1] by mode (see :mod:`detector.stream.threshold` for the scale):
   zscore      tail_score((s_t - m) / v), m and v² the running mean and variance of s_t;
   likelihood  tail_score((ē_t - m) / v), ē_t the short-term mean of e_t, m and v² of e_t;
   dynamic     0.5 s_t / eps (capped at 1), eps the stream's dynamic threshold, and a run
               above eps that pruning removes does not exceed.
   The point exceeds when score >= threshold. The normal-error statistics (m, v²) learn
   only from points that do not exceed (all points during warm-up), and not in the first
   half of warm-up, while the input statistics are still settling.
5. It alerts when it exceeds, the stream is past warm-up, at least k of its last n points
   exceeded, and no cooldown runs; an alert starts a cooldown of ``cooldown`` points.
6. The input statistics learn x_t, robustly: a deviation beyond norm_clip std counts as
   norm_clip std. The model input [x̃_t, calendar features] enters the ring buffer and one
   LSTM step; the head writes ŷ_{t+1}.

Points of one batch are processed in waves: wave k holds the k-th point of every stream in
the batch, so every wave is one batched LSTM step over distinct rows and a stream's points
still go strictly in order. The result equals processing the points one by one
(tests/reference/stream_scoring.py is that one-by-one version, and the tests compare them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit
from numpy.typing import NDArray

from detector.config import ScoringSettings, StreamSettings
from detector.model.lstm import ModelShape, lstm_step
from detector.model.params import LSTMParams
from detector.stream.state import (
    DT_MEAN,
    ERR_COUNT,
    ERR_EPS,
    ERR_MEAN,
    ERR_SHORT,
    ERR_SMOOTH,
    ERR_VAR,
    StreamStateTable,
    TableLayout,
)
from detector.stream.threshold import (
    dynamic_epsilon,
    dynamic_keeps_last_run,
    ewm_alpha,
    tail_score,
)

_KERNEL = dict(cache=True, nogil=True, error_model="numpy")

MODE_ZSCORE = 0
MODE_DYNAMIC = 1
MODE_LIKELIHOOD = 2
MODES = {"zscore": MODE_ZSCORE, "dynamic": MODE_DYNAMIC, "likelihood": MODE_LIKELIHOOD}

# Per-point status.
SCORED = 0
NO_PREDICTION = 1  # the stream's first point (or first after a reset): nothing to compare
DROPPED = 2  # not newer than the stream's last point

# Per-point gap flag.
NO_GAP = 0
GAP_RESET = 1
GAP_CONTINUED = 2

CALENDAR_FEATURES = 4  # sin/cos of the hour of day and of the day of week
INTERVAL_ALPHA = 2.0 / (50 + 1)  # the usual interval is an EWMA over ~50 intervals
_DAY = 86_400.0
_TWO_PI = 2.0 * math.pi

# Indices into the configuration vector the kernel reads (Numba freezes globals, so runtime
# settings travel as data).
C_MODE = 0
C_THRESHOLD = 1
C_WARMUP = 2
C_ERR_ALPHA = 3
C_STATS_ALPHA = 4
C_MIN_ERR_STD = 5
C_SHORT_ALPHA = 6
C_DYN_REFRESH = 7
C_DYN_PRUNE = 8
C_HYST_K = 9
C_HYST_MASK = 10
C_COOLDOWN = 11
C_NORM_ALPHA = 12
C_NORM_CLIP = 13
C_INPUT_CLIP = 14
C_MIN_STD = 15
C_GAP_FACTOR = 16
C_GAP_RESET = 17
C_CALENDAR = 18
N_CONFIG = 19


def span_alpha(span: int) -> float:
    """EWMA weight of a span, as in pandas: 2 / (span + 1)."""
    return 2.0 / (span + 1.0)


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """The settings the kernel needs, as the float64 vector it reads."""

    vector: NDArray[np.float64]

    @classmethod
    def from_settings(
        cls, scoring: ScoringSettings, streams: StreamSettings, calendar: bool
    ) -> ScoringConfig:
        v = np.zeros(N_CONFIG, np.float64)
        v[C_MODE] = MODES[scoring.mode]
        v[C_THRESHOLD] = scoring.threshold
        v[C_WARMUP] = scoring.warmup
        v[C_ERR_ALPHA] = span_alpha(scoring.error_span)
        v[C_STATS_ALPHA] = span_alpha(scoring.stats_span)
        v[C_MIN_ERR_STD] = scoring.min_error_std
        v[C_SHORT_ALPHA] = span_alpha(scoring.short_span)
        v[C_DYN_REFRESH] = scoring.dynamic_refresh
        v[C_DYN_PRUNE] = scoring.dynamic_prune
        v[C_HYST_K] = scoring.hysteresis_k
        v[C_HYST_MASK] = (1 << scoring.hysteresis_n) - 1
        v[C_COOLDOWN] = scoring.cooldown
        v[C_NORM_ALPHA] = span_alpha(streams.norm_span)
        v[C_NORM_CLIP] = streams.norm_clip
        v[C_INPUT_CLIP] = streams.input_clip
        v[C_MIN_STD] = streams.min_std
        v[C_GAP_FACTOR] = streams.gap_factor
        v[C_GAP_RESET] = streams.gap_policy == "reset"
        v[C_CALENDAR] = calendar
        v.flags.writeable = False
        return cls(v)

    @property
    def mode(self) -> int:
        return int(self.vector[C_MODE])

    @property
    def calendar(self) -> bool:
        return bool(self.vector[C_CALENDAR])


@njit(**_KERNEL)
def calendar_features(ts: float, out) -> None:  # type: ignore[no-untyped-def]  # pragma: no cover
    """sin/cos of the UTC hour of day and day of week (Monday 0) as phases, into out[0:4]."""
    day_phase = (ts % _DAY) / _DAY
    # 1970-01-01 was a Thursday (3 with Monday = 0).
    week_phase = ((math.floor(ts / _DAY) + 3.0) % 7.0 + day_phase) / 7.0
    out[0] = math.sin(_TWO_PI * day_phase)
    out[1] = math.cos(_TWO_PI * day_phase)
    out[2] = math.sin(_TWO_PI * week_phase)
    out[3] = math.cos(_TWO_PI * week_phase)


@njit(**_KERNEL)
def _reset_row(s, h, c, x_mean, x_var, pred, ring, err, err_ring, hist, cooldown):  # type: ignore[no-untyped-def]  # pragma: no cover
    h[s] = 0.0
    c[s] = 0.0
    x_mean[s] = 0.0
    x_var[s] = 0.0
    pred[s] = 0.0
    ring[s] = 0.0
    err[s] = 0.0
    err_ring[s] = 0.0
    hist[s] = 0
    cooldown[s] = 0


@njit(**_KERNEL)
def _popcount(v: int) -> int:  # pragma: no cover - jitted
    n = 0
    while v:
        v &= v - 1
        n += 1
    return n


@njit(**_KERNEL)
def _wave_order(slots):  # type: ignore[no-untyped-def]  # pragma: no cover
    """(order, starts): points grouped by wave (k-th point of each stream in wave k), each
    wave in arrival order; wave w is order[starts[w]:starts[w + 1]]."""
    B = slots.shape[0]
    by_slot = np.argsort(slots, kind="mergesort")  # stable: arrival order within a stream
    rank = np.empty(B, np.int64)
    n_waves = 0
    for i in range(B):
        p = by_slot[i]
        if i > 0 and slots[by_slot[i - 1]] == slots[p]:
            rank[p] = rank[by_slot[i - 1]] + 1
        else:
            rank[p] = 0
        n_waves = max(n_waves, rank[p] + 1)
    starts = np.zeros(n_waves + 1, np.int64)
    for p in range(B):
        starts[rank[p] + 1] += 1
    for w in range(n_waves):
        starts[w + 1] += starts[w]
    fill = starts[:-1].copy()
    order = np.empty(B, np.int64)
    for p in range(B):  # counting sort by rank keeps arrival order inside a wave
        order[fill[rank[p]]] = p
        fill[rank[p]] += 1
    return order, starts


@njit(**_KERNEL)
def score_kernel(  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    slots,  # (B,) int64 rows of the table, every one >= 0
    ts,  # (B,) float64 epoch seconds
    values,  # (B, D) float64, all finite
    h,
    c,
    x_mean,
    x_var,
    pred,
    ring,
    err,
    err_ring,
    last_ts,
    seen,
    hist,
    cooldown,  # the table's arrays (detector.stream.state)
    theta,
    shape: ModelShape,
    cfg,  # ScoringConfig.vector
    status,  # out (B,) int8
    gap,  # out (B,) int8
    score,  # out (B,) float64
    alert,  # out (B,) bool
    predicted,  # out (B, D) float64: ŷ_t in the input's units (NaN without a prediction)
    error,  # out (B,) float64: e_t (NaN without a prediction)
):
    B, D = values.shape
    n_in = shape.n_inputs
    W = ring.shape[1]
    E = err_ring.shape[1]
    mode = int(cfg[C_MODE])
    threshold = cfg[C_THRESHOLD]
    warmup = int(cfg[C_WARMUP])
    refresh = int(cfg[C_DYN_REFRESH])
    hyst_k = int(cfg[C_HYST_K])
    hyst_mask = int(cfg[C_HYST_MASK])
    calendar = cfg[C_CALENDAR] != 0.0
    dtype = theta.dtype

    x_wave = np.empty((B, n_in), dtype)
    y_wave = np.empty((B, shape.n_outputs), dtype)
    step_slots = np.empty(B, np.int64)
    xn = np.empty(D, np.float64)
    cal = np.zeros(CALENDAR_FEATURES, np.float64)
    run_max = np.empty(E // 2 + 2, np.float64)

    order, starts = _wave_order(slots)
    for w in range(starts.shape[0] - 1):
        m = 0  # points of this wave that step the LSTM
        for i in range(starts[w], starts[w + 1]):
            p = order[i]
            s = slots[p]
            t = ts[p]
            n = seen[s]
            gap[p] = NO_GAP
            score[p] = 0.0
            alert[p] = False
            error[p] = np.nan
            predicted[p] = np.nan

            # 1. disorder and gaps
            if n > 0 and t <= last_ts[s]:
                status[p] = DROPPED
                continue
            if n >= 2 and t - last_ts[s] > cfg[C_GAP_FACTOR] * err[s, DT_MEAN]:
                if cfg[C_GAP_RESET] != 0.0:
                    _reset_row(s, h, c, x_mean, x_var, pred, ring, err, err_ring, hist, cooldown)
                    n = 0
                    gap[p] = GAP_RESET
                else:
                    gap[p] = GAP_CONTINUED
            elif n == 1:
                err[s, DT_MEAN] = t - last_ts[s]
            elif n >= 2:
                err[s, DT_MEAN] += INTERVAL_ALPHA * ((t - last_ts[s]) - err[s, DT_MEAN])

            # 2. normalise with the statistics as they were before this point
            sq = 0.0
            for d in range(D):
                mu = float(x_mean[s, d])
                sd = max(math.sqrt(float(x_var[s, d])), cfg[C_MIN_STD])
                v = values[p, d]
                if n == 0:
                    mu = v
                z = (v - mu) / sd
                xn[d] = min(max(z, -cfg[C_INPUT_CLIP]), cfg[C_INPUT_CLIP])
                if n > 0:
                    predicted[p, d] = float(pred[s, d]) * sd + mu
                    diff = xn[d] - float(pred[s, d])
                    sq += diff * diff

            # 3.-5. error, score, decision
            if n == 0:
                status[p] = NO_PREDICTION
            else:
                status[p] = SCORED
                e = math.sqrt(sq / D)
                error[p] = e
                smooth = (
                    e
                    if n == 1
                    else err[s, ERR_SMOOTH] + cfg[C_ERR_ALPHA] * (e - err[s, ERR_SMOOTH])
                )
                err[s, ERR_SMOOTH] = smooth
                warm = n >= warmup
                count = err[s, ERR_COUNT]
                m_err = float(err[s, ERR_MEAN])
                v_err = float(err[s, ERR_VAR])
                spread = max(math.sqrt(v_err), cfg[C_MIN_ERR_STD])
                observed = float(smooth)  # the value the normal-error statistics describe
                exceeds = False
                if mode == MODE_ZSCORE:
                    if count > 0.0:
                        score[p] = tail_score((float(smooth) - m_err) / spread)
                    exceeds = score[p] >= threshold
                elif mode == MODE_LIKELIHOOD:
                    observed = e
                    short = (
                        e
                        if n == 1
                        else err[s, ERR_SHORT] + cfg[C_SHORT_ALPHA] * (e - err[s, ERR_SHORT])
                    )
                    err[s, ERR_SHORT] = short
                    if count > 0.0:
                        score[p] = tail_score((float(short) - m_err) / spread)
                    exceeds = score[p] >= threshold
                else:  # MODE_DYNAMIC
                    k = n - 1  # index of this error in the stream's error sequence
                    err_ring[s, k % E] = smooth
                    filled = min(k + 1, E)
                    oldest = (k + 1 - filled) % E
                    if k % refresh == 0 or err[s, ERR_EPS] <= 0.0:
                        err[s, ERR_EPS] = dynamic_epsilon(
                            err_ring[s], filled, oldest, cfg[C_MIN_ERR_STD]
                        )
                    eps = float(err[s, ERR_EPS])
                    score[p] = min(0.5 * float(smooth) / eps, 1.0) if eps > 0.0 else 0.0
                    exceeds = (
                        score[p] >= threshold
                        and float(smooth) >= eps
                        and dynamic_keeps_last_run(
                            err_ring[s], filled, oldest, eps, cfg[C_DYN_PRUNE], run_max
                        )
                    )
                # The first half of warm-up only settles the input statistics: its errors
                # (of a stream whose scale is still unknown) would inflate the spread for
                # thousands of points.
                learns = n >= warmup // 2 and (not exceeds or not warm)
                if mode != MODE_DYNAMIC and learns:
                    count += 1.0
                    a = ewm_alpha(count, cfg[C_STATS_ALPHA])
                    delta = observed - m_err
                    err[s, ERR_MEAN] = m_err + a * delta
                    err[s, ERR_VAR] = (1.0 - a) * (v_err + a * delta * delta)
                    err[s, ERR_COUNT] = count
                history = ((int(hist[s]) << 1) | (1 if exceeds else 0)) & hyst_mask
                hist[s] = history
                if cooldown[s] > 0:
                    cooldown[s] -= 1
                elif warm and exceeds and _popcount(history) >= hyst_k:
                    alert[p] = True
                    cooldown[s] = int(cfg[C_COOLDOWN])

            # 6. input statistics, ring buffer, the model input of this wave
            a = ewm_alpha(n + 1.0, cfg[C_NORM_ALPHA])
            for d in range(D):
                mu = float(x_mean[s, d])
                var = float(x_var[s, d])
                delta = values[p, d] - mu if n > 0 else 0.0
                if var > 0.0:
                    bound = cfg[C_NORM_CLIP] * math.sqrt(var)
                    delta = min(max(delta, -bound), bound)
                x_mean[s, d] = values[p, d] if n == 0 else mu + a * delta
                x_var[s, d] = (1.0 - a) * (var + a * delta * delta)
            for d in range(D):
                x_wave[m, d] = xn[d]
            if calendar:
                calendar_features(t, cal)
                for j in range(CALENDAR_FEATURES):
                    x_wave[m, D + j] = cal[j]
            ring[s, n % W] = x_wave[m]
            seen[s] = n + 1
            last_ts[s] = t
            step_slots[m] = s
            m += 1

        if m > 0:
            lstm_step(x_wave[:m], step_slots[:m], h, c, theta, shape, y_wave[:m])
            for j in range(m):
                pred[step_slots[j]] = y_wave[j]


@dataclass(slots=True)
class BatchScores:
    """Per-point results of one kernel call, indexed like the batch."""

    status: NDArray[np.int8]  # SCORED, NO_PREDICTION or DROPPED
    gap: NDArray[np.int8]  # NO_GAP, GAP_RESET or GAP_CONTINUED
    score: NDArray[np.float64]
    alert: NDArray[np.bool_]
    predicted: NDArray[np.float64]  # (B, D)
    error: NDArray[np.float64]

    @classmethod
    def empty(cls, n: int, n_values: int) -> BatchScores:
        return cls(
            status=np.empty(n, np.int8),
            gap=np.empty(n, np.int8),
            score=np.empty(n, np.float64),
            alert=np.empty(n, np.bool_),
            predicted=np.empty((n, n_values), np.float64),
            error=np.empty(n, np.float64),
        )


def check_compatible(lay: TableLayout, params: LSTMParams, config: ScoringConfig) -> None:
    """Raise ValueError unless the model and the scoring settings fit a table layout."""
    shape = params.shape
    calendar = CALENDAR_FEATURES if config.calendar else 0
    expected = (lay.layers, lay.hidden, lay.n_values, lay.n_values + calendar)
    found = (shape.layers, shape.hidden, shape.n_outputs, shape.n_inputs)
    if found != expected or lay.n_inputs != expected[3]:
        raise ValueError(
            f"model (layers, hidden, outputs, inputs) = {found}; the table needs {expected}"
        )
    if params.dtype != np.dtype(lay.dtype):
        raise ValueError(f"model dtype {params.dtype}; the table holds {lay.dtype}")
    if (lay.error_window > 0) != (config.mode == MODE_DYNAMIC):
        raise ValueError("the table has an error window exactly when the mode is dynamic")


def score_batch(
    table: StreamStateTable,
    params: LSTMParams,
    config: ScoringConfig,
    slots: NDArray[np.int64],
    ts: NDArray[np.float64],
    values: NDArray[np.float64],
    out: BatchScores | None = None,
) -> BatchScores:
    """Score a batch of points of one model group in one kernel call (module docstring).

    slots (B,) rows from ``table.slots``, all >= 0; ts (B,) epoch seconds; values (B, D),
    all finite (callers drop and count NaN and infinities before this point).
    """
    check_compatible(table.layout, params, config)
    B = slots.shape[0]
    D = table.layout.n_values
    if slots.dtype != np.int64 or slots.ndim != 1:
        raise ValueError(
            f"slots has dtype {slots.dtype} and {slots.ndim} dims; expected (B,) int64"
        )
    if ts.shape != (B,) or ts.dtype != np.float64:
        raise ValueError(f"ts has shape {ts.shape} and dtype {ts.dtype}; expected ({B},) float64")
    if values.shape != (B, D) or values.dtype != np.float64:
        raise ValueError(
            f"values has shape {values.shape} and dtype {values.dtype}; "
            f"expected ({B}, {D}) float64 = (points, values per point)"
        )
    if B and (slots.min() < 0 or slots.max() >= table.capacity):
        raise ValueError(
            f"slots must lie in [0, {table.capacity}); refused points are dropped first"
        )
    if not (np.isfinite(ts).all() and np.isfinite(values).all()):
        raise ValueError("ts and values must be finite; drop and count the others first")
    if out is None or out.status.shape[0] != B:
        out = BatchScores.empty(B, D)
    if B == 0:
        return out
    score_kernel(
        np.ascontiguousarray(slots),
        np.ascontiguousarray(ts),
        np.ascontiguousarray(values),
        table.h,
        table.c,
        table.x_mean,
        table.x_var,
        table.pred,
        table.ring,
        table.err,
        table.err_ring,
        table.last_ts,
        table.seen,
        table.hist,
        table.cooldown,
        params.theta,
        params.shape,
        config.vector,
        out.status,
        out.gap,
        out.score,
        out.alert,
        out.predicted,
        out.error,
    )
    return out
