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
from detector.model.lstm import ModelShape, lstm_step_rows, prefetch, prefetch_l2
from detector.model.params import LSTMParams
from detector.stream.state import (
    DIRTY,
    DT_MEAN,
    ERR_COUNT,
    ERR_EPS,
    ERR_MEAN,
    ERR_SHORT,
    ERR_SMOOTH,
    ERR_VAR,
    MARKED,
    StreamStateTable,
    TableLayout,
)
from detector.stream.threshold import (
    dynamic_epsilon,
    dynamic_keeps_last_run,
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
REPLAYED = 3  # its input offset is at or below the stream's: the state already has it

# What score_kernel returns when it refuses a batch (having changed nothing).
BAD_SLOTS = 1
NOT_FINITE = 2

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
def _reset_row(r, s, hc, ring, marks, err_ring, flags):  # type: ignore[no-untyped-def]  # pragma: no cover
    """A gap reset: the stream starts over (its offset, timestamps and count are the
    caller's business)."""
    hc[s] = 0.0
    r.x_mean[:] = 0.0
    r.x_var[:] = 0.0
    r.pred[:] = 0.0
    r.err[:] = 0.0
    r.hist = 0
    r.cooldown = 0
    ring[s] = 0.0
    marks[s] = 0
    flags[s] &= ~MARKED
    err_ring[s] = 0.0


@njit(**_KERNEL)
def _popcount(v: int) -> int:  # pragma: no cover - jitted
    n = 0
    while v:
        v &= v - 1
        n += 1
    return n


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing of row numbers


@njit(**_KERNEL)
def _wave_order(slots, order, starts, rank, keys, counts):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Group the points into waves (the k-th point of each stream in wave k), each wave in
    arrival order: wave w is order[starts[w]:starts[w + 1]]. Returns the number of waves.

    O(B): a point's rank among its stream's points comes from a small open-addressing
    table of the batch's rows (keys, counts: a power of two >= 2B entries), then a
    counting sort by rank. Scratch: order, rank (B,), starts (B + 1,).
    """
    B = slots.shape[0]
    size = keys.shape[0]
    mask = size - 1
    log2 = 0
    while (1 << log2) < size:
        log2 += 1
    bits = np.uint64(64 - log2)
    for i in range(size):
        keys[i] = -1
    n_waves = 0
    for p in range(B):
        s = slots[p]
        i = np.int64((np.uint64(s) * _GOLDEN) >> bits) & mask
        while keys[i] != s and keys[i] != -1:
            i = (i + 1) & mask
        if keys[i] == -1:
            keys[i] = s
            counts[i] = 0
        k = counts[i]
        counts[i] = k + 1
        rank[p] = k
        n_waves = max(n_waves, k + 1)
    if n_waves == 1:
        for p in range(B):
            order[p] = p
        starts[0] = 0
        starts[1] = B
        return 1
    for w in range(n_waves + 1):
        starts[w] = 0
    for p in range(B):
        starts[rank[p] + 1] += 1
    for w in range(n_waves):
        starts[w + 1] += starts[w]
    for p in range(B):  # rank[p] becomes the next free place of its wave: arrival order kept
        w = rank[p]
        order[starts[w]] = p
        starts[w] += 1
    for w in range(n_waves, 0, -1):
        starts[w] = starts[w - 1]
    starts[0] = 0
    return n_waves


@njit(**_KERNEL)
def _table_size(B: int) -> int:  # pragma: no cover - jitted
    """The smallest power of two >= 2B (and >= 2): the wave ordering's table."""
    size = 2
    while size < 2 * B:
        size *= 2
    return size


@njit(**_KERNEL)
def _pad(n: int) -> int:  # pragma: no cover - jitted
    return (n + 15) // 16 * 16  # 64 bytes of float32: every piece starts on a cache line


# Points per LSTM step: a wave is scored and stepped in chunks of this many points, so that
# the step's pre-activations (CHUNK x 4H) and gathered rows stay in the L1 cache between
# the product, the gate pass and the head; one product over a whole wave of 1024 points
# streams 512 KiB of pre-activations through L2 several times.
CHUNK = 256


@njit(**_KERNEL)
def scratch_sizes(B: int, shape: ModelShape):  # type: ignore[no-untyped-def]  # pragma: no cover
    """(floats, ints) of kernel scratch for batches of up to B points: what score_kernel
    carves out of its two workspace arrays, in this order."""
    H, K = shape.hidden, shape.head_hidden
    floats = (
        _pad(CHUNK * shape.n_inputs)  # x_chunk
        + _pad(CHUNK * shape.n_outputs)  # y
        + _pad(CHUNK * H)  # h_out: the new h of the layer stepped last
        + 2 * _pad(CHUNK * 4 * H)  # gates, tmp
        + _pad(CHUNK * K)  # q
    )
    ints = 4 * B + 1 + 2 * _table_size(B)  # order, rank, starts, keys, counts
    return floats, ints + 4 * CHUNK  # steps, points, ns, kind


# How far ahead the point loop prefetches: a point's record and LSTM rows PREFETCH_AHEAD
# points ahead, its ring and mark lines (whose place needs the record) half as far.
PREFETCH_AHEAD = 16

# What the first pass over a chunk leaves for the score pass.
_NO_SCORE = 0  # first point of its stream, or no normal-error statistics yet: score 0
_TAIL = 1  # score = tail_score(z)
_DONE = 2  # dynamic mode: score and decision made in the first pass


@njit(**_KERNEL)
def _alpha(count: float, alpha: float, inverse: float) -> float:  # pragma: no cover - jitted
    """ewm_alpha(count, alpha) without its division once count is past the span (inverse
    = 1 / alpha): the division's latency sat on every point's critical path."""
    return alpha if count >= inverse else max(1.0 / count, alpha)


@njit(**_KERNEL)
def score_kernel(  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    slots,  # (B,) int64 rows of the table
    ts,  # (B,) float64 epoch seconds
    values,  # (B, D) float64
    offsets,  # (B,) int64 input offsets (-1: none), or (0,): no replay check
    rec,  # the table's arrays (detector.stream.state)
    hc,
    ring,
    marks,
    err_ring,
    flags,
    theta,
    shape: ModelShape,
    cfg,  # ScoringConfig.vector
    fws,  # float scratch (theta's dtype), scratch_sizes(B)[0] or more
    iws,  # int64 scratch, scratch_sizes(B)[1] or more
    status,  # out (B,) int8
    gap,  # out (B,) int8
    score,  # out (B,) float64
    alert,  # out (B,) bool
    predicted,  # out (B, D) float64: ŷ_t in the input's units (NaN without a prediction)
    error,  # out (B,) float64: e_t (NaN without a prediction)
):
    """Score one batch (module docstring). Returns 0, or BAD_SLOTS / NOT_FINITE having
    changed nothing.

    A wave goes in chunks of CHUNK points, three passes each, then one LSTM step: (1)
    disorder, gaps, normalisation, error and the score's z; (2) the scores; (3) decisions,
    statistics, ring buffer. Each pass is short per point, so the CPU overlaps the
    long-latency work (square roots, divisions, erfc, log10) of several points; one long
    pass per point ran one point at a time. Points of a wave belong to distinct streams, so
    the passes may run point by point in any order.
    """
    B, D = values.shape
    capacity = rec.shape[0]
    for p in range(B):
        if slots[p] < 0 or slots[p] >= capacity:
            return BAD_SLOTS
        if not math.isfinite(ts[p]):
            return NOT_FINITE
        for d in range(D):
            if not math.isfinite(values[p, d]):
                return NOT_FINITE
    n_in = shape.n_inputs
    H, K = shape.hidden, shape.head_hidden
    W = ring.shape[1]
    w_mask = W - 1 if W & (W - 1) == 0 else -1  # n % W as a mask when W is a power of 2
    E = err_ring.shape[1]
    mode = int(cfg[C_MODE])
    threshold = cfg[C_THRESHOLD]
    warmup = int(cfg[C_WARMUP])
    refresh = int(cfg[C_DYN_REFRESH])
    hyst_k = int(cfg[C_HYST_K])
    hyst_mask = int(cfg[C_HYST_MASK])
    cooldown = int(cfg[C_COOLDOWN])
    calendar = cfg[C_CALENDAR] != 0.0
    err_alpha = cfg[C_ERR_ALPHA]
    short_alpha = cfg[C_SHORT_ALPHA]
    stats_alpha = cfg[C_STATS_ALPHA]
    stats_span = 1.0 / stats_alpha
    norm_alpha = cfg[C_NORM_ALPHA]
    norm_span = 1.0 / norm_alpha
    norm_clip = cfg[C_NORM_CLIP]
    input_clip = cfg[C_INPUT_CLIP]
    min_std = cfg[C_MIN_STD]
    min_err_std = cfg[C_MIN_ERR_STD]
    gap_factor = cfg[C_GAP_FACTOR]
    gap_reset = cfg[C_GAP_RESET] != 0.0
    inv_D = 1.0 / D
    use_offsets = offsets.shape[0] > 0

    # Scratch, in the order of scratch_sizes.
    C = CHUNK
    o = 0
    x_chunk = fws[o : o + C * n_in].reshape((C, n_in))
    o += _pad(C * n_in)
    y_chunk = fws[o : o + C * shape.n_outputs].reshape((C, shape.n_outputs))
    o += _pad(C * shape.n_outputs)
    h_out = fws[o : o + C * H].reshape((C, H))
    o += _pad(C * H)
    gates = fws[o : o + C * 4 * H].reshape((C, 4 * H))
    o += _pad(C * 4 * H)
    tmp = fws[o : o + C * 4 * H].reshape((C, 4 * H))
    o += _pad(C * 4 * H)
    q = fws[o : o + C * K].reshape((C, K))
    table = _table_size(B)
    order = iws[:B]
    rank = iws[B : 2 * B]
    starts = iws[2 * B : 3 * B + 1]
    keys = iws[4 * B + 1 : 4 * B + 1 + table]
    counts = iws[4 * B + 1 + table : 4 * B + 1 + 2 * table]
    o = 4 * B + 1 + 2 * table
    steps = iws[o : o + C]  # rows of the chunk's points that step
    points = iws[o + C : o + 2 * C]  # their places in the batch
    ns = iws[o + 2 * C : o + 3 * C]  # their stream's points before them (0 after a reset)
    kind = iws[o + 3 * C : o + 4 * C]  # _NO_SCORE, _TAIL or _DONE
    per_point = np.empty((3, C), np.float64)
    zs = per_point[0]  # the z the score maps (kind _TAIL)
    observed = per_point[1]  # what the normal-error statistics would learn
    exceed = per_point[2]  # dynamic: 1.0 if the point exceeds
    cal = np.zeros(CALENDAR_FEATURES, np.float64)
    run_max = np.empty(E // 2 + 2, np.float64)

    rec_stride = rec.strides[0]
    hc_stride = hc.strides[0]
    hc_lines = (hc_stride + 63) // 64
    ring_stride = ring.strides[0]
    ring_entry = ring.strides[1]
    marks_stride = marks.strides[0]
    ahead = PREFETCH_AHEAD
    half = PREFETCH_AHEAD // 2

    n_waves = _wave_order(slots, order, starts, rank, keys, counts)
    for w in range(n_waves):
        lo = starts[w]
        hi = starts[w + 1]
        for i in range(lo, min(lo + ahead, hi)):
            prefetch(rec, slots[order[i]] * rec_stride)
        for c0 in range(lo, hi, C):
            c1 = min(c0 + C, hi)
            # Pass 1: replays, disorder, gaps, normalisation, error, the score's input.
            m = 0  # points of the chunk that step the LSTM
            for i in range(c0, c1):
                # Prefetch the record and LSTM rows of the point `ahead` places on, and the
                # ring and mark lines of the one `half` places on (its record is here).
                if i + ahead < hi:
                    s_ahead = slots[order[i + ahead]]
                    prefetch(rec, s_ahead * rec_stride)
                    prefetch(flags, s_ahead)
                    for line in range(hc_lines):
                        prefetch_l2(hc, s_ahead * hc_stride + line * 64)
                if i + half < hi:
                    s_half = slots[order[i + half]]
                    seen = rec[s_half].seen
                    pos = seen & w_mask if w_mask >= 0 else seen % W
                    prefetch_l2(ring, s_half * ring_stride + pos * ring_entry)
                    if flags[s_half] & MARKED:
                        prefetch_l2(marks, s_half * marks_stride + (pos >> 3))
                p = order[i]
                s = slots[p]
                r = rec[s]
                t = ts[p]
                n = r.seen
                gap[p] = NO_GAP
                score[p] = 0.0
                alert[p] = False
                error[p] = np.nan
                for d in range(D):
                    predicted[p, d] = np.nan
                off = offsets[p] if use_offsets else -1
                # 0. a replay of a point the state already reflects
                if off >= 0 and off <= r.offset:
                    status[p] = REPLAYED
                    continue
                # 1. disorder and gaps
                if n > 0 and t <= r.last_ts:
                    status[p] = DROPPED
                    if off >= 0:
                        r.offset = off
                        flags[s] |= DIRTY
                    continue
                if n >= 2 and t - r.last_ts > gap_factor * r.err[DT_MEAN]:
                    if gap_reset:
                        _reset_row(r, s, hc, ring, marks, err_ring, flags)
                        n = 0
                        gap[p] = GAP_RESET
                    else:
                        gap[p] = GAP_CONTINUED
                elif n == 1:
                    r.err[DT_MEAN] = t - r.last_ts
                elif n >= 2:
                    r.err[DT_MEAN] += INTERVAL_ALPHA * ((t - r.last_ts) - r.err[DT_MEAN])
                # 2. normalise with the statistics as they were before this point
                x_m = x_chunk[m]
                sq = 0.0
                for d in range(D):
                    mu = float(r.x_mean[d])
                    sd = max(math.sqrt(float(r.x_var[d])), min_std)
                    v = values[p, d]
                    if n == 0:
                        mu = v
                    z = (v - mu) / sd
                    x_m[d] = xn = min(max(z, -input_clip), input_clip)
                    if n > 0:
                        predicted[p, d] = float(r.pred[d]) * sd + mu
                        diff = xn - float(r.pred[d])
                        sq += diff * diff
                # 3. the error, and what the score needs
                kind[m] = _NO_SCORE
                if n == 0:
                    status[p] = NO_PREDICTION
                else:
                    status[p] = SCORED
                    e = math.sqrt(sq * inv_D)
                    error[p] = e
                    count = float(r.err[ERR_COUNT])
                    spread = max(math.sqrt(float(r.err[ERR_VAR])), min_err_std)
                    if mode == MODE_LIKELIHOOD:
                        observed[m] = e
                        prior = float(r.err[ERR_SHORT])
                        short = e if n == 1 else prior + short_alpha * (e - prior)
                        r.err[ERR_SHORT] = short
                        if count > 0.0:
                            zs[m] = (short - float(r.err[ERR_MEAN])) / spread
                            kind[m] = _TAIL
                    else:
                        prior = float(r.err[ERR_SMOOTH])
                        smooth = e if n == 1 else prior + err_alpha * (e - prior)
                        r.err[ERR_SMOOTH] = smooth
                        observed[m] = smooth
                        if mode == MODE_ZSCORE:
                            if count > 0.0:
                                zs[m] = (smooth - float(r.err[ERR_MEAN])) / spread
                                kind[m] = _TAIL
                        else:  # MODE_DYNAMIC
                            k = n - 1  # index of this error in the stream's error sequence
                            e_ring = err_ring[s]
                            e_ring[k % E] = smooth
                            filled = min(k + 1, E)
                            oldest = (k + 1 - filled) % E
                            if k % refresh == 0 or r.err[ERR_EPS] <= 0.0:
                                r.err[ERR_EPS] = dynamic_epsilon(
                                    e_ring, filled, oldest, min_err_std
                                )
                            eps = float(r.err[ERR_EPS])
                            score[p] = min(0.5 * smooth / eps, 1.0) if eps > 0.0 else 0.0
                            exceeds = (
                                score[p] >= threshold
                                and smooth >= eps
                                and dynamic_keeps_last_run(
                                    e_ring, filled, oldest, eps, cfg[C_DYN_PRUNE], run_max
                                )
                            )
                            exceed[m] = 1.0 if exceeds else 0.0
                            kind[m] = _DONE
                points[m] = p
                steps[m] = s
                ns[m] = n
                m += 1

            # Pass 2: the scores.
            for j in range(m):
                if kind[j] == _TAIL:
                    score[points[j]] = tail_score(zs[j])

            # Pass 3: decisions, statistics, ring buffer and its mark.
            for j in range(m):
                p = points[j]
                s = steps[j]
                n = ns[j]
                r = rec[s]
                exceeds = False
                if n > 0:
                    warm = n >= warmup
                    exceeds = exceed[j] != 0.0 if kind[j] == _DONE else score[p] >= threshold
                    # The first half of warm-up only settles the input statistics: its
                    # errors (of a stream whose scale is still unknown) would inflate the
                    # spread for thousands of points.
                    learns = n >= warmup // 2 and (not exceeds or not warm)
                    if mode != MODE_DYNAMIC and learns:
                        count = float(r.err[ERR_COUNT]) + 1.0
                        a = _alpha(count, stats_alpha, stats_span)
                        m_err = float(r.err[ERR_MEAN])
                        delta = observed[j] - m_err
                        r.err[ERR_MEAN] = m_err + a * delta
                        r.err[ERR_VAR] = (1.0 - a) * (float(r.err[ERR_VAR]) + a * delta * delta)
                        r.err[ERR_COUNT] = count
                    history = ((int(r.hist) << 1) | (1 if exceeds else 0)) & hyst_mask
                    r.hist = history
                    if r.cooldown > 0:
                        r.cooldown -= 1
                    elif warm and exceeds and _popcount(history) >= hyst_k:
                        alert[p] = True
                        r.cooldown = cooldown
                # 6. input statistics, the model input's calendar part, ring buffer, mark
                a = _alpha(n + 1.0, norm_alpha, norm_span)
                for d in range(D):
                    mu = float(r.x_mean[d])
                    var = float(r.x_var[d])
                    v = values[p, d]
                    delta = v - mu if n > 0 else 0.0
                    if var > 0.0:
                        bound = norm_clip * math.sqrt(var)
                        delta = min(max(delta, -bound), bound)
                    r.x_mean[d] = v if n == 0 else mu + a * delta
                    r.x_var[d] = (1.0 - a) * (var + a * delta * delta)
                x_m = x_chunk[j]
                if calendar:
                    calendar_features(ts[p], cal)
                    for jj in range(CALENDAR_FEATURES):
                        x_m[D + jj] = cal[jj]
                pos = n & w_mask if w_mask >= 0 else n % W
                entry = ring[s, pos]
                for jj in range(n_in):
                    entry[jj] = x_m[jj]
                # The mark: a stream without marks (most) has nothing to clear.
                fl = flags[s] | DIRTY
                bit = np.uint8(1 << (pos & 7))
                if exceeds:
                    marks[s, pos >> 3] |= bit
                    fl |= MARKED
                elif fl & MARKED:
                    row = marks[s]
                    row[pos >> 3] &= ~bit
                    if row[pos >> 3] == 0:
                        marked = False
                        for b in range(row.shape[0]):
                            marked = marked or row[b] != 0
                        if not marked:
                            fl &= ~MARKED
                flags[s] = fl
                r.seen = n + 1
                r.last_ts = ts[p]
                if use_offsets and offsets[p] >= 0:
                    r.offset = offsets[p]

            if m > 0:  # one LSTM step for the chunk, on the rows in place (prefetched above)
                lstm_step_rows(
                    x_chunk[:m], steps[:m], hc, theta, shape, gates, tmp, q, h_out, y_chunk[:m]
                )
                for j in range(m):
                    pred = rec[steps[j]].pred
                    for d in range(shape.n_outputs):
                        pred[d] = y_chunk[j, d]
    return 0


@dataclass(slots=True)
class BatchScores:
    """Per-point results of one kernel call, indexed like the batch."""

    status: NDArray[np.int8]  # SCORED, NO_PREDICTION, DROPPED or REPLAYED
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


class Scratch:
    """The kernel's working arrays for batches of up to ``batch`` points of one model shape,
    kept on the table (``table.scratch``) across calls: fresh megabytes per call would cost
    page faults."""

    __slots__ = ("batch", "floats", "ints", "shape")

    def __init__(self, batch: int, shape: ModelShape, dtype: np.dtype) -> None:
        self.batch = batch
        self.shape = shape
        n_float, n_int = scratch_sizes(batch, shape)
        self.floats = np.empty(n_float, dtype)
        self.ints = np.empty(n_int, np.int64)

    @classmethod
    def of(cls, table: StreamStateTable, params: LSTMParams, batch: int) -> Scratch:
        """The table's scratch when it fits, else a new one (sized to a power of two)."""
        old = table.scratch
        if (
            isinstance(old, Scratch)
            and old.batch >= batch
            and old.shape == params.shape
            and old.floats.dtype == params.dtype
        ):
            return old
        new = cls(max(64, 1 << (batch - 1).bit_length()), params.shape, params.dtype)
        table.scratch = new
        return new


_NO_OFFSETS = np.empty(0, np.int64)


def score_batch(
    table: StreamStateTable,
    params: LSTMParams,
    config: ScoringConfig,
    slots: NDArray[np.int64],
    ts: NDArray[np.float64],
    values: NDArray[np.float64],
    offsets: NDArray[np.int64] | None = None,
    out: BatchScores | None = None,
) -> BatchScores:
    """Score a batch of points of one model group in one kernel call (module docstring).

    slots (B,) rows from ``table.slots``, all >= 0; ts (B,) epoch seconds; values (B, D),
    all finite (callers drop and count NaN and infinities before this point). ``offsets``
    (B,) int64, optional: each point's input offset, -1 for none; a point at or below its
    stream's offset (``table.offset_of``) is skipped as REPLAYED, and a handled point's
    offset becomes the stream's.
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
    if offsets is None:
        offsets = _NO_OFFSETS
    elif offsets.shape != (B,) or offsets.dtype != np.int64:
        raise ValueError(
            f"offsets has shape {offsets.shape} and dtype {offsets.dtype}; expected ({B},) int64"
        )
    if out is None or out.status.shape[0] != B:
        out = BatchScores.empty(B, D)
    if B == 0:
        return out
    scratch = Scratch.of(table, params, B)
    code = score_kernel(
        np.ascontiguousarray(slots),
        np.ascontiguousarray(ts),
        np.ascontiguousarray(values),
        np.ascontiguousarray(offsets),
        table.rec,
        table.hc,
        table.ring,
        table.marks,
        table.err_ring,
        table.flags,
        params.theta,
        params.shape,
        config.vector,
        scratch.floats,
        scratch.ints,
        out.status,
        out.gap,
        out.score,
        out.alert,
        out.predicted,
        out.error,
    )
    if code == BAD_SLOTS:
        raise ValueError(
            f"slots must lie in [0, {table.capacity}); refused points are dropped first"
        )
    if code == NOT_FINITE:
        raise ValueError("ts and values must be finite; drop and count the others first")
    return out
