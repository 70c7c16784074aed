"""The one kernel per batch and model group: normalise, score, alert, step, predict, buffer.

For every point, in arrival order per stream (DESIGN.md, "the hot path"):

0. A point whose input offset is below its stream's, or equal to it while no point of this
   call set it (it was applied before the state was saved; Kafka replay), is skipped:
   status REPLAYED, nothing of the stream changes. Otherwise, once handled (scored, first
   of its stream, or dropped), its offset (when >= 0) becomes the stream's. (A message may
   hold several points of one stream, all at its offset; its points are always in one
   call, and a state is saved only between calls.)
1. A point not newer than its stream's last one is dropped (status DROPPED). A gap longer
   than ``gap_factor`` usual intervals resets the stream (policy "reset": it starts over as a
   new stream, warm-up included) or is noted and passed (policy "continue").
2. x_t is normalised with the stream's running mean and std (before this point updates them),
   clipped to +-input_clip and rounded to half precision, as the ring keeps it
   (detector.stream.half): x̃_t = (x_t - μ) / σ. Calendar features are rounded alike, so
   the model steps on exactly the inputs that training and replays read back. x_t is first
   rounded to the precision of the state table, in which μ, σ² and the range are kept.
3. The error against the prediction made at the previous step, in normalised units, is
   e_t = sqrt(mean_d (x̃_t,d - ŷ_t,d)²), smoothed: s_t = s_{t-1} + α_e (e_t - s_{t-1}).
   ŷ_t is the model's prediction (``forecast = "model"``), or with ``forecast =
   "persistence"`` the stream's previous input x̃_{t-1} (from the record's tail): the
   baseline every evaluation compares the model with.
4. A score in [0, 1] by mode (see :mod:`detector.stream.threshold` for the scale):
   zscore      tail_score((s_t - m) / v), m and v² the running mean and variance of s_t;
   likelihood  tail_score((ē_t - m) / v), ē_t the short-term mean of e_t, m and v² of e_t;
   dynamic     0.5 s_t / eps (capped at 1), eps the stream's dynamic threshold, and a run
               above eps that pruning removes does not exceed.
   With ``peaks_quantile`` q > 0 (zscore and likelihood) the score is at least the peaks
   score of e_t: its tail probability under the generalized Pareto tail of the stream's
   errors above their (1 - q) quantile u (:mod:`detector.stream.threshold`), once that tail
   has seen PEAKS_MIN_EXCESSES errors above u; u and the tail learn e_t with the
   normal-error statistics (below). One large error scores at once, where the likelihood's
   short-term mean dilutes it, and on the stream's own scale: a stream whose errors are
   mostly tiny with rare large steps (a stepped signal) has a heavy tail, where a step is
   ordinary, and Gaussian noise a light one, where a spike of a few noise widths is not.
   With ``novelty_scale`` c > 0 the score is at least the novelty score r / (r + c), where
   r = max_d max(x_t,d - hi_d, lo_d - x_t,d, 0) / max(hi_d - lo_d, min_std) is how far x_t
   lies outside the range [lo, hi] of the stream's earlier raw values, in units of that
   range (values never seen before; Numenta's "spatial anomaly", the idea of CAD OSE's
   novel contexts), once the stream has run a day (its points before this one times its
   usual interval; before, its range lacks phases of its daily cycle). The range learns
   every point, anomalies included (step 6), so a recurring excursion is novel once. The
   dynamic mode's point also exceeds when the novelty score reaches the threshold.
   With ``seasonal`` (one value per point, likelihood and zscore modes), the score is also
   at least the seasonal score: a daily profile keeps, per bin b of SEASON_BINS of the
   time of day (UTC), the EWMA m_b of x̃ and d_b of |x̃ - m_b| (weight SEASON_ALPHA per
   visit); u_t = |x̃_t - m_b| / max(d_b, SEASON_DEV_FLOOR) scores as the likelihood does
   (its short-term mean against its own running mean and variance), but only while the
   profile explains at least ``seasonal_gate`` of the input's variance: the running mean
   of (x̃_t - m_b)² is at most 1 - seasonal_gate (x̃ has variance about 1), and once the
   stream has run ``seasonal_warmup_days`` (its points before this one times its usual
   interval): before a day has passed a bin holds only the same day's points, so its
   deviation is a short-term one, the prediction error's business. It sees what
   a predictor with a memory of W points cannot: a daily peak that does not come, or
   comes too low. The weight is per visit, not per day: at 5-minute data a bin has 18
   visits a day, so its first points of the day meet the level the bin ended on the day
   before, and later ones the bin's last hour or so. (Weighting per day, a profile over
   many days, scored 4-5 NAB points lower on nab-dev: it loses the level changes that the
   per-visit profile sees at bin entries.) A bin's first visit only sets m_b. A point that
   exceeds by its seasonal score alone alerts, but its ring entry is not marked (step 6):
   the mark keeps from the model what it would learn wrongly, and such a point is ordinary
   to the model (its value in the stream's range, its short-term course as predicted; the
   model sees no time of day unless ``calendar`` is on). So the seasonal score leaves the
   model's training windows, and with them every retrained model and its predictions, as
   they are without it (a few changed marks are enough to change every later retrained
   model).
   The point exceeds when score >= threshold. The normal-error statistics (m, v²) learn
   from every point (``stats_learn_all``, as Numenta's anomaly likelihood does: a stream
   whose large errors recur learns that they are normal), or else only from points that do
   not exceed (all points during warm-up); not in the first half of warm-up, while the
   input statistics are still settling.
5. It alerts when it exceeds, the stream is past warm-up, at least k of its last n points
   exceeded, and its last alert is more than ``escalation_window`` points back, or more
   than ``cooldown`` points back and scored less than this point (an escalation: the
   stream got worse). So after an alert the stream is silent for ``cooldown`` points, and
   until ``escalation_window`` only a higher score alerts (flagged ``escalated``): an
   ordinary noisy stream alerts once per episode, and a false alert does not hide a worse
   anomaly behind a long cooldown (on nab-dev a plain cooldown of 100 points hid 2 labelled
   windows; production's own alerts score 2.5 NAB points higher under this rule: README,
   Evaluation).
6. The input statistics learn x_t, robustly: a deviation beyond norm_clip std counts as
   norm_clip std; the range [lo, hi] widens to take x_t in (done in the first pass).
   Unless x_t ends a level shift (one value per point, ``level_shift_points`` B > 0): the
   stream counts a run of points with x̃ beyond +-``level_shift_std`` (K) on one side,
   started only by a value beyond the earlier range [lo, hi] by more than K std, once the
   stream has run a day (so a recurring excursion starts none once seen, nor does a
   noise extreme at the range's edge, nor the first day's phases of a daily cycle); its
   B-th point moves the mean to x_t (the variance stays) and re-expresses the run's
   inputs relative to its own (x̃_i - x̃_t; x̃_t becomes 0) in the tail and the ring, so
   that persistence and the model see the new level, not a jump. Why: clipped at
   norm_clip std, each point of a shift multiplies the variance by about 1 + a
   norm_clip² (a the EWMA weight) until the mean has caught up, which at a shift of 30
   std takes days; all the while every error is small in input units, and the stream is
   blind (README, Scoring). The inflated variance is kept: resetting it, or freezing it
   during a run, scored lower on nab-dev.
   The model input [x̃_t, calendar features] enters the ring buffer (through the record's
   tail, which is copied into the ring TAIL inputs at a time), with a mark when
   the point exceeded (retraining leaves marked inputs out; not by the seasonal score
   alone, step 4), and one LSTM step; the head
   writes ŷ_{t+1}. The stream's row counts as changed (``table.take_dirty``).

Points of one batch are processed in waves: wave k holds the k-th point of every stream in
the batch (a point whose stream already has one in the wave waits for the next), so every
wave is one batched LSTM step over distinct rows and a stream's points still go strictly in
order. The result equals processing the points one by one (tests/reference/stream_scoring.py
is that one-by-one version, and the tests compare them).

How it is fast (bench/README.md, "stream_score"): a wave goes in chunks of CHUNK points,
in three short passes (inputs and error; scores; decisions and statistics) so that the CPU
overlaps the long-latency arithmetic of several points, then one LSTM step on the table's
rows in place (lstm_step_rows: register-tiled products, no gather or scatter). The first
pass prefetches each point's record, LSTM rows and flags a few points ahead, and the ring
line its tail goes to when it completes: at a million streams every one of them is a cache
miss. The records are read as plain 2-d views (record_views); scratch lives on the table.
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
from detector.stream.half import half_bits, half_value
from detector.stream.state import (
    ALERT_SCORE_SCALE,
    DIRTY,
    DT_MEAN,
    ERR_COLUMNS,
    ERR_COUNT,
    ERR_EPS,
    ERR_MEAN,
    ERR_SHORT,
    ERR_SMOOTH,
    ERR_VAR,
    IN_WAVE,
    MARKED,
    OFFSET_SET,
    PEAKS_COLUMNS,
    PEAKS_M1,
    PEAKS_M2,
    PEAKS_N,
    PEAKS_U,
    SEASON_BINS,
    SEASON_COLUMNS,
    SEASON_DEV_SCALE,
    SEASON_MEAN,
    SEASON_MEAN_SCALE,
    SEASON_R2,
    SEASON_SHORT,
    SEASON_VAR,
    SEEN_LIMIT,
    TAIL,
    StreamStateTable,
    TableLayout,
    copy_tail,
    seen_rewind,
)
from detector.stream.threshold import (
    PEAKS_MIN_EXCESSES,
    dynamic_epsilon,
    dynamic_keeps_last_run,
    peaks_factors,
    peaks_learn,
    peaks_score,
    tail_scores,
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
C_NOVELTY = 19
C_LEARN_ALL = 20
C_SEASONAL = 21
C_SEASON_GATE = 22
C_SEASON_WARMUP = 23
C_PERSISTENCE = 24
C_ESCALATION = 25
C_SHIFT_POINTS = 26
C_SHIFT_STD = 27
C_PEAKS_Q = 28
N_CONFIG = 29

# The seasonal score's fixed constants (module docstring).
SEASON_ALPHA = 0.1  # EWMA weight of a bin's mean and deviation per visit
SEASON_DEV_FLOOR = 0.25  # of d_b, in normalised units
_NO_SEASON = -1.0  # u of a point without a seasonal deviation


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
        v[C_ESCALATION] = scoring.escalation_window
        v[C_NORM_ALPHA] = span_alpha(streams.norm_span)
        v[C_NORM_CLIP] = streams.norm_clip
        v[C_INPUT_CLIP] = streams.input_clip
        v[C_SHIFT_POINTS] = streams.level_shift_points
        v[C_SHIFT_STD] = streams.level_shift_std
        v[C_MIN_STD] = streams.min_std
        v[C_GAP_FACTOR] = streams.gap_factor
        v[C_GAP_RESET] = streams.gap_policy == "reset"
        v[C_CALENDAR] = calendar
        v[C_NOVELTY] = scoring.novelty_scale
        v[C_LEARN_ALL] = scoring.stats_learn_all
        v[C_SEASONAL] = scoring.seasonal
        v[C_SEASON_GATE] = scoring.seasonal_gate
        v[C_SEASON_WARMUP] = scoring.seasonal_warmup_days * _DAY
        v[C_PERSISTENCE] = scoring.forecast == "persistence"
        v[C_PEAKS_Q] = scoring.peaks_quantile
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
def _reset_row(s, rec_f, rec_w, rec_h, rec_b, cols, hc, ring, marks, err_ring, flags):  # type: ignore[no-untyped-def]  # pragma: no cover
    """A gap reset: the stream starts over (its offset, timestamps and count are the
    caller's business)."""
    D = cols[F_X_VAR] - cols[F_X_MEAN]
    for k in range(ERR_COLUMNS):
        rec_f[s, cols[F_ERR] + k] = 0.0
    for d in range(D):
        rec_f[s, cols[F_X_MEAN] + d] = 0.0
        rec_f[s, cols[F_X_VAR] + d] = 0.0
        rec_f[s, cols[F_PRED] + d] = 0.0
        rec_f[s, cols[F_X_MIN] + d] = 0.0
        rec_f[s, cols[F_X_MAX] + d] = 0.0
    rec_h[s, cols[F_HIST]] = 0
    rec_b[s, cols[F_SHIFT_RUN]] = 0
    rec_h[s, cols[F_COOLDOWN]] = 0  # so alert_score is not read before it is written again
    for k in range(PEAKS_COLUMNS):
        rec_f[s, cols[F_PEAKS] + k] = 0.0
    for k in range(SEASON_BINS):
        rec_h[s, cols[F_SEASON_MEAN] + k] = 0
        rec_b[s, cols[F_SEASON_DEV] + k] = 0
    for k in range(SEASON_COLUMNS):
        rec_f[s, cols[F_SEASON] + k] = 0.0
    for k in range(TAIL * ring.shape[2]):
        rec_h[s, cols[F_TAIL] + k] = 0
    hc[s] = 0.0
    ring[s] = 0
    marks[s] = 0
    flags[s] &= 0xFF ^ MARKED
    err_ring[s] = 0.0


@njit(**_KERNEL)
def alert_level(score: float) -> int:  # pragma: no cover - jitted
    """An alert's score as the uint16 the record keeps (round down): a later point
    escalates when its own level is higher (alert_view.alerts_at uses this one too)."""
    return min(max(math.floor(score * ALERT_SCORE_SCALE), 0), int(ALERT_SCORE_SCALE))


@njit(**_KERNEL)
def _escalates(score: float, stored: int) -> bool:  # pragma: no cover - jitted
    """Whether a point scoring ``score`` is above the alert whose level the record keeps
    (uint16 bits in an int16 column). The kernel's rule keeps the plain cooldown's if /
    elif shape and calls this: a first form, with the level computed in the loop body and
    the conditions nested, ran the benchmark at 4.3-5.1 M points/s against 5.7-6.1 M
    (bench/stream_score.py, three runs each)."""
    return bool(alert_level(score) > (stored & 0xFFFF))


@njit(**_KERNEL)
def _season_mean_q(v: float) -> int:  # pragma: no cover - jitted
    """x̃ as the int16 of a profile bin's mean (round half up)."""
    return min(max(math.floor(v * SEASON_MEAN_SCALE + 0.5), -32767), 32767)


@njit(**_KERNEL)
def _season_dev_q(v: float) -> int:  # pragma: no cover - jitted
    """A deviation as the uint8 of a visited bin (at least 1: 0 means never visited)."""
    return min(max(math.floor(v * SEASON_DEV_SCALE + 0.5), 1), 255)


@njit(**_KERNEL)
def _shift_run_step(run: int, xn: float, starts: bool, bound: float) -> int:  # pragma: no cover
    """A stream's level-shift run after a point whose normalised input is xn: one more
    point beyond +-bound on the run's side, a new run only where the point ``starts`` one
    (far outside the stream's earlier range, after its first day), else none."""
    if xn > bound:
        return run + 1 if run > 0 else (1 if starts else 0)
    if xn < -bound:
        return run - 1 if run < 0 else (-1 if starts else 0)
    return 0


@njit(**_KERNEL)
def _rebase_run(x_chunk, j, rec_h, ring, s, c_tail, n, length, clip):  # type: ignore[no-untyped-def]  # pragma: no cover
    """A level shift at the stream's point n, the last of a run of ``length`` (D == 1):
    the run's inputs become relative to this one's, x̃_i - x̃_n (clipped, half precision;
    this one 0), in the tail, in the ring where already copied there (so that a restore
    refills the same), and in the chunk the LSTM steps on. Relative to the last input, not
    by the shift of the mean: inputs beyond +-clip lost how far beyond they were, and a run
    is level, so they are near it."""
    last = float(x_chunk[j, 0])
    x_chunk[j, 0] = 0.0
    W, n_in = ring.shape[1], ring.shape[2]
    copied = (n - 1) // TAIL * TAIL  # the inputs before this one are in the ring
    for k in range(1, length):
        i = n - k
        at = c_tail + (i % TAIL) * n_in
        moved = min(max(float(half_value(rec_h[s, at])) - last, -clip), clip)
        rec_h[s, at] = half_bits(moved)
        if i < copied and k <= W:
            ring[s, i % W, 0] = rec_h[s, at]


@njit(**_KERNEL)
def _popcount(v: int) -> int:  # pragma: no cover - jitted
    n = 0
    while v:
        v &= v - 1
        n += 1
    return n


@njit(**_KERNEL)
def _pad(n: int) -> int:  # pragma: no cover - jitted
    return (n + 15) // 16 * 16  # 64 bytes of float32: every piece starts on a cache line


# Points per LSTM step: a wave is scored and stepped in chunks of this many points, so that
# the step's pre-activations (CHUNK x 4H) and gathered rows stay in the L1 cache between
# the product, the gate pass and the head; one product over a whole wave of 1024 points
# streams 512 KiB of pre-activations through L2 several times.
CHUNK = 256


@njit(**_KERNEL)
def scratch_sizes(B: int, shape: ModelShape, E: int):  # type: ignore[no-untyped-def]  # pragma: no cover
    """(floats, ints) of kernel scratch for batches of up to B points and an error window
    of E: what score_kernel carves out of its two workspace arrays, in this order."""
    H, K = shape.hidden, shape.head_hidden
    floats = (
        _pad(CHUNK * shape.n_inputs)  # x_chunk
        + _pad(CHUNK * shape.n_outputs)  # y
        + _pad(CHUNK * H)  # h_out: the new h of the layer stepped last
        + 2 * _pad(CHUNK * 4 * H)  # gates, tmp
        + _pad(CHUNK * K)  # q
    )
    ints = 2 * B + 4 * CHUNK  # this wave, next wave; steps, points, ns, kind
    doubles = 12 * CHUNK + CALENDAR_FEATURES + E // 2 + 2  # zs, observed, exceed, tails, novel,
    # s_z, s_u, s_r, s_tail, far_out, errs, peak, cal, run_max
    return floats, ints + doubles


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
    rec_f,  # the table's records as float (the table's dtype), float64, int64 and int32
    rec_d,  # columns (record_views); cols: where each field starts in its view
    rec_q,
    rec_w,
    rec_h,  # ... and int16 and uint8 (the daily profile)
    rec_b,
    cols,
    stream_offsets,  # the table's other arrays (detector.stream.state)
    hc,
    ring,  # float16 bits (int16)
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
    escalated,  # out (B,) bool: an alert within the last one's escalation window
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
    capacity = rec_f.shape[0]
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
    seen_step = seen_rewind(W)
    E = err_ring.shape[1]
    mode = int(cfg[C_MODE])
    threshold = cfg[C_THRESHOLD]
    warmup = int(cfg[C_WARMUP])
    refresh = int(cfg[C_DYN_REFRESH])
    hyst_k = int(cfg[C_HYST_K])
    hyst_mask = int(cfg[C_HYST_MASK])
    escalation = int(cfg[C_ESCALATION])
    # The record's cooldown column counts down the escalation window; above this, the
    # stream is within the cooldown proper.
    escalate_below = escalation - int(cfg[C_COOLDOWN])
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
    novelty_scale = cfg[C_NOVELTY]
    novelty = novelty_scale > 0.0
    peaks_q = cfg[C_PEAKS_Q]
    peaks = peaks_q > 0.0 and mode != MODE_DYNAMIC
    peaks_up, peaks_down = peaks_factors(peaks_q)  # what the tail's u is multiplied by
    persistence = cfg[C_PERSISTENCE] != 0.0  # the baseline forecast instead of the model's
    shift_points = int(cfg[C_SHIFT_POINTS])
    shift_std = cfg[C_SHIFT_STD]
    level_shifts = shift_points > 0 and D == 1
    # The input in the record's precision: its statistics (mean, variance, range) are kept
    # in it, so a value equal to an earlier one must compare equal to what they stored
    # (float32: 0.066 is stored as 0.0659999996; against the float64 value it would leave a
    # constant stream a variance of ~1e-20 that then caps the variance's growth through
    # norm_clip, and make it "novel" by 4e-10 over a range of 0).
    stored = rec_f.dtype.type
    learn_all = cfg[C_LEARN_ALL] != 0.0
    # The seasonal score: one value per point, and not with the dynamic threshold.
    seasonal = cfg[C_SEASONAL] != 0.0 and D == 1 and mode != MODE_DYNAMIC
    season_r2_max = 1.0 - cfg[C_SEASON_GATE]
    season_warmup = cfg[C_SEASON_WARMUP]  # seconds of the stream's life before it scores
    bins_per_s = SEASON_BINS / _DAY
    inv_D = 1.0 / D
    use_offsets = offsets.shape[0] > 0
    c_last_ts, c_seen = cols[F_LAST_TS], cols[F_SEEN]
    c_err, c_xmean, c_xvar, c_pred = cols[F_ERR], cols[F_X_MEAN], cols[F_X_VAR], cols[F_PRED]
    c_hist, c_cooldown = cols[F_HIST], cols[F_COOLDOWN]
    c_run = cols[F_SHIFT_RUN]
    c_peaks = cols[F_PEAKS]
    c_alert_score = cols[F_ALERT_SCORE]
    c_xmin, c_xmax = cols[F_X_MIN], cols[F_X_MAX]
    c_smean, c_sdev, c_season = cols[F_SEASON_MEAN], cols[F_SEASON_DEV], cols[F_SEASON]
    c_tail = cols[F_TAIL]

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
    order = iws[:B]  # the points of this wave, in arrival order
    later = iws[B : 2 * B]  # the points put off to the next wave
    o = 2 * B
    steps = iws[o : o + C]  # rows of the chunk's points that step
    points = iws[o + C : o + 2 * C]  # their places in the batch
    ns = iws[o + 2 * C : o + 3 * C]  # their stream's points before them (0 after a reset)
    kind = iws[o + 3 * C : o + 4 * C]  # _NO_SCORE, _TAIL or _DONE
    # float64 scratch, in the int64 array's memory (no allocation per call)
    f64 = iws[o + 4 * C :].view(np.float64)
    zs = f64[:C]  # the z the score maps (kind _TAIL)
    observed = f64[C : 2 * C]  # what the normal-error statistics would learn
    exceed = f64[2 * C : 3 * C]  # dynamic: 1.0 if the point exceeds
    tails = f64[3 * C : 4 * C]  # tail_score of each zs
    novel = f64[4 * C : 5 * C]  # r (pass 1), then the novelty score r / (r + c) (pass 2)
    s_z = f64[5 * C : 6 * C]  # seasonal: the z its score maps (below -30: none), then
    # (pass 2) the point's score without it: what the ring's mark goes by
    s_u = f64[6 * C : 7 * C]  # seasonal: u_t (_NO_SEASON: none, nothing to learn)
    s_r = f64[7 * C : 8 * C]  # seasonal: |x̃_t - m_b|
    s_tail = f64[8 * C : 9 * C]
    far_out = f64[9 * C : 10 * C]  # 1.0: the value lies beyond the stream's earlier range
    # by more than level_shift_std std (a level-shift run starts only on such a point)
    errs = f64[10 * C : 11 * C]  # e_t, what the error's tail learns
    peak = f64[11 * C : 12 * C]  # the peaks score of e_t (0: not beyond u)
    cal = f64[12 * C : 12 * C + CALENDAR_FEATURES]
    run_max = f64[12 * C + CALENDAR_FEATURES : 12 * C + CALENDAR_FEATURES + E // 2 + 2]

    rec_stride = rec_q.strides[0]
    # The lines of a record to prefetch ahead: up to the tail (whose line the point writes
    # is prefetched once its `seen` is known), without the seasonal score not the daily
    # profile's either (the fields from season_mean on: an int16 column).
    tail_at = c_tail * 2  # bytes into the record
    rec_used = tail_at if seasonal else cols[F_SEASON_MEAN] * 2
    rec_lines = (rec_used + 63) // 64
    hc_stride = hc.strides[0]
    hc_lines = (hc_stride + 63) // 64
    ring_stride = ring.strides[0]
    ring_entry = ring.strides[1]
    marks_stride = marks.strides[0]
    ahead = PREFETCH_AHEAD
    half = PREFETCH_AHEAD // 2

    # Waves: a point whose stream already has a point in this wave is put off to the next
    # one (flag IN_WAVE), so wave k holds the k-th point of each stream, in arrival order.
    for p in range(B):
        order[p] = p
    hi = B  # points in this wave
    while hi > 0:
        n_later = 0
        for i in range(min(ahead, hi)):
            for line in range(rec_lines):
                prefetch(rec_q, slots[order[i]] * rec_stride + line * 64)
        i = 0  # the next point of the wave
        while i < hi:
            # Pass 1: replays, disorder, gaps, normalisation, error, the score's input,
            # until the chunk has CHUNK points that step the LSTM.
            m = 0  # points of the chunk that step the LSTM
            seasonal_z = 0  # of them, points with a seasonal score (an open gate): most
            # chunks have none, and then pass 2 skips the seasonal tail scores
            while i < hi and m < C:
                i += 1  # (this point is order[i - 1]; `continue` moves on)
                # Prefetch the record and LSTM rows of the point `ahead` places on, and the
                # ring line its tail goes to and the mark line of the one `half` places on
                # (its record is here).
                if i - 1 + ahead < hi:
                    s_ahead = slots[order[i - 1 + ahead]]
                    for line in range(rec_lines):
                        prefetch(rec_q, s_ahead * rec_stride + line * 64)
                    prefetch(flags, s_ahead)
                    for line in range(hc_lines):
                        prefetch_l2(hc, s_ahead * hc_stride + line * 64)
                if i - 1 + half < hi:
                    s_half = slots[order[i - 1 + half]]
                    seen = rec_w[s_half, c_seen]
                    pos = seen & w_mask if w_mask >= 0 else seen % W
                    row_at = s_half * rec_stride + tail_at
                    prefetch(rec_q, row_at + (seen % TAIL) * n_in * 2)
                    if seen > 0 and persistence:  # the persistence forecast's input
                        prefetch(rec_q, row_at + ((seen - 1) % TAIL) * n_in * 2)
                    if seen % TAIL == 0 and seen > 0:
                        done = seen - TAIL  # the first input the tail holds
                        at = done & w_mask if w_mask >= 0 else done % W
                        prefetch_l2(ring, s_half * ring_stride + at * ring_entry)
                    if flags[s_half] & MARKED:
                        prefetch_l2(marks, s_half * marks_stride + (pos >> 3))
                p = order[i - 1]
                s = slots[p]
                if flags[s] & IN_WAVE:
                    later[n_later] = p
                    n_later += 1
                    continue
                flags[s] |= IN_WAVE
                t = ts[p]
                n = rec_w[s, c_seen]
                gap[p] = NO_GAP
                score[p] = 0.0
                alert[p] = False
                escalated[p] = False
                error[p] = np.nan
                for d in range(D):
                    predicted[p, d] = np.nan
                off = offsets[p] if use_offsets else -1
                # 0. a replay of a point the state already reflects
                if off >= 0 and (
                    off < stream_offsets[s]
                    or (off == stream_offsets[s] and not flags[s] & OFFSET_SET)
                ):
                    status[p] = REPLAYED
                    continue
                # 1. disorder and gaps
                if n > 0 and t <= rec_d[s, c_last_ts]:
                    status[p] = DROPPED
                    if off >= 0:
                        stream_offsets[s] = off
                        flags[s] |= DIRTY | OFFSET_SET
                    continue
                if n >= 2 and t - rec_d[s, c_last_ts] > gap_factor * rec_f[s, c_err + DT_MEAN]:
                    if gap_reset:
                        _reset_row(
                            s, rec_f, rec_w, rec_h, rec_b, cols, hc, ring, marks, err_ring, flags
                        )
                        n = 0
                        gap[p] = GAP_RESET
                    else:
                        gap[p] = GAP_CONTINUED
                elif n == 1:
                    rec_f[s, c_err + DT_MEAN] = t - rec_d[s, c_last_ts]
                elif n >= 2:
                    rec_f[s, c_err + DT_MEAN] += INTERVAL_ALPHA * (
                        (t - rec_d[s, c_last_ts]) - rec_f[s, c_err + DT_MEAN]
                    )
                # 2. normalise with the statistics as they were before this point; how far
                # outside the range of earlier values x_t lies (r), and the range takes it in
                sq = 0.0
                r = 0.0
                far = False
                for d in range(D):
                    mu = float(rec_f[s, c_xmean + d])
                    sd = max(math.sqrt(float(rec_f[s, c_xvar + d])), min_std)
                    v = float(stored(values[p, d]))
                    lo = float(rec_f[s, c_xmin + d])
                    up = float(rec_f[s, c_xmax + d])
                    if n == 0:
                        mu = v
                        lo = up = v
                    outside = max(v - up, lo - v)
                    if outside > 0.0:
                        r = max(r, outside / max(up - lo, min_std))
                        far = far or outside > shift_std * sd
                        rec_f[s, c_xmin + d] = min(lo, v)
                        rec_f[s, c_xmax + d] = max(up, v)
                    elif n == 0:
                        rec_f[s, c_xmin + d] = v
                        rec_f[s, c_xmax + d] = v
                    z = min(max((v - mu) / sd, -input_clip), input_clip)
                    x_chunk[m, d] = xn = float(half_value(half_bits(z)))
                    if n > 0:
                        if persistence:  # the previous input, from the record's tail
                            y_t = float(half_value(rec_h[s, c_tail + ((n - 1) % TAIL) * n_in + d]))
                        else:
                            y_t = float(rec_f[s, c_pred + d])
                        predicted[p, d] = y_t * sd + mu
                        diff = xn - y_t
                        sq += diff * diff
                # 3. the error, and what the score needs
                kind[m] = _NO_SCORE
                zs[m] = 0.0
                s_z[m] = -40.0
                s_u[m] = _NO_SEASON
                # Novelty once the stream has run a day: before, its range lacks phases of
                # its daily cycle, and noise sets new extremes by chance.
                novel[m] = (
                    r if n > 0 and novelty and n * float(rec_f[s, c_err + DT_MEAN]) >= _DAY else 0.0
                )
                far_out[m] = 1.0 if far else 0.0
                peak[m] = 0.0
                if n == 0:
                    status[p] = NO_PREDICTION
                else:
                    status[p] = SCORED
                    e = math.sqrt(sq * inv_D)
                    error[p] = e
                    errs[m] = e
                    if peaks:
                        u = float(rec_f[s, c_peaks + PEAKS_U])
                        if e > u and rec_f[s, c_peaks + PEAKS_N] >= PEAKS_MIN_EXCESSES:
                            peak[m] = peaks_score(
                                e - u,
                                float(rec_f[s, c_peaks + PEAKS_M1]),
                                float(rec_f[s, c_peaks + PEAKS_M2]),
                                peaks_q,
                            )
                    count = float(rec_f[s, c_err + ERR_COUNT])
                    spread = max(math.sqrt(float(rec_f[s, c_err + ERR_VAR])), min_err_std)
                    if mode == MODE_LIKELIHOOD:
                        observed[m] = e
                        prior = float(rec_f[s, c_err + ERR_SHORT])
                        short = e if n == 1 else prior + short_alpha * (e - prior)
                        rec_f[s, c_err + ERR_SHORT] = short
                        if count > 0.0:
                            zs[m] = (short - float(rec_f[s, c_err + ERR_MEAN])) / spread
                            kind[m] = _TAIL
                    else:
                        prior = float(rec_f[s, c_err + ERR_SMOOTH])
                        smooth = e if n == 1 else prior + err_alpha * (e - prior)
                        rec_f[s, c_err + ERR_SMOOTH] = smooth
                        observed[m] = smooth
                        if mode == MODE_ZSCORE:
                            if count > 0.0:
                                zs[m] = (smooth - float(rec_f[s, c_err + ERR_MEAN])) / spread
                                kind[m] = _TAIL
                        else:  # MODE_DYNAMIC
                            k = n - 1  # index of this error in the stream's error sequence
                            e_ring = err_ring[s]
                            e_ring[k % E] = smooth
                            filled = min(k + 1, E)
                            oldest = (k + 1 - filled) % E
                            if k % refresh == 0 or rec_f[s, c_err + ERR_EPS] <= 0.0:
                                rec_f[s, c_err + ERR_EPS] = dynamic_epsilon(
                                    e_ring, filled, oldest, min_err_std
                                )
                            eps = float(rec_f[s, c_err + ERR_EPS])
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
                    if seasonal:  # the daily profile's bin of this point (D == 1: xn is x̃)
                        b = min(
                            int((t - math.floor(t / _DAY) * _DAY) * bins_per_s), SEASON_BINS - 1
                        )
                        q_dev = int(rec_b[s, c_sdev + b])
                        if q_dev == 0:  # first visit: the bin's mean is this point's x̃
                            rec_h[s, c_smean + b] = _season_mean_q(xn)
                            rec_b[s, c_sdev + b] = int(SEASON_DEV_SCALE)
                        else:
                            m_b = rec_h[s, c_smean + b] / SEASON_MEAN_SCALE
                            d_b = q_dev / SEASON_DEV_SCALE
                            r_b = abs(xn - m_b)
                            u = r_b / max(d_b, SEASON_DEV_FLOOR)
                            prior = float(rec_f[s, c_season + SEASON_SHORT])
                            short = prior + short_alpha * (u - prior)
                            rec_f[s, c_season + SEASON_SHORT] = short
                            if (
                                count > 0.0
                                and float(rec_f[s, c_season + SEASON_R2]) <= season_r2_max
                                and n * float(rec_f[s, c_err + DT_MEAN]) >= season_warmup
                            ):
                                s_spread = max(
                                    math.sqrt(float(rec_f[s, c_season + SEASON_VAR])),
                                    min_err_std,
                                )
                                s_z[m] = (
                                    short - float(rec_f[s, c_season + SEASON_MEAN])
                                ) / s_spread
                                seasonal_z += 1
                            s_u[m] = u
                            s_r[m] = r_b
                            rec_h[s, c_smean + b] = _season_mean_q(m_b + SEASON_ALPHA * (xn - m_b))
                            rec_b[s, c_sdev + b] = _season_dev_q(d_b + SEASON_ALPHA * (r_b - d_b))
                points[m] = p
                steps[m] = s
                ns[m] = n
                m += 1

            # Pass 2: the scores (for every point of the chunk, then kept where wanted).
            tail_scores(zs, tails, m)
            for j in range(m):
                if kind[j] == _TAIL:
                    score[points[j]] = tails[j]
            if peaks:
                for j in range(m):
                    score[points[j]] = max(score[points[j]], peak[j])
            if seasonal_z > 0:
                tail_scores(s_z, s_tail, m)
                for j in range(m):
                    scored = s_z[j] > -30.0
                    s_z[j] = score[points[j]]
                    if scored:
                        score[points[j]] = max(score[points[j]], s_tail[j])
            if novelty:
                for j in range(m):
                    r = novel[j]
                    if r > 0.0:
                        novel[j] = r = r / (r + novelty_scale)
                        score[points[j]] = max(score[points[j]], r)

            # Pass 3: decisions, statistics, ring buffer and its mark.
            for j in range(m):
                p = points[j]
                s = steps[j]
                n = ns[j]
                exceeds = False
                if n > 0:
                    warm = n >= warmup
                    if kind[j] == _DONE:
                        exceeds = exceed[j] != 0.0 or novel[j] >= threshold
                    else:
                        exceeds = score[p] >= threshold
                    # The first half of warm-up only settles the input statistics: its
                    # errors (of a stream whose scale is still unknown) would inflate the
                    # spread for thousands of points.
                    learns = n >= warmup // 2 and (learn_all or not exceeds or not warm)
                    if mode != MODE_DYNAMIC and learns:
                        count = float(rec_f[s, c_err + ERR_COUNT]) + 1.0
                        a = _alpha(count, stats_alpha, stats_span)
                        m_err = float(rec_f[s, c_err + ERR_MEAN])
                        delta = observed[j] - m_err
                        rec_f[s, c_err + ERR_MEAN] = m_err + a * delta
                        rec_f[s, c_err + ERR_VAR] = (1.0 - a) * (
                            float(rec_f[s, c_err + ERR_VAR]) + a * delta * delta
                        )
                        rec_f[s, c_err + ERR_COUNT] = count
                        if peaks:
                            peaks_learn(
                                rec_f, s, c_peaks, errs[j], count <= 1.0, peaks_up, peaks_down
                            )
                        if s_u[j] != _NO_SEASON:  # the seasonal statistics, same weights
                            u = s_u[j]
                            s_mean = float(rec_f[s, c_season + SEASON_MEAN])
                            delta = u - s_mean
                            rec_f[s, c_season + SEASON_MEAN] = s_mean + a * delta
                            rec_f[s, c_season + SEASON_VAR] = (1.0 - a) * (
                                float(rec_f[s, c_season + SEASON_VAR]) + a * delta * delta
                            )
                            r2 = float(rec_f[s, c_season + SEASON_R2])
                            rec_f[s, c_season + SEASON_R2] = r2 + a * (s_r[j] * s_r[j] - r2)
                    hist = int(rec_h[s, c_hist]) & 0xFFFF  # uint16 bits in an int16 column
                    history = ((hist << 1) | (1 if exceeds else 0)) & hyst_mask
                    rec_h[s, c_hist] = history
                    left = int(rec_h[s, c_cooldown]) & 0xFFFF  # uint16 in an int16 column
                    if left > escalate_below:  # within the cooldown proper
                        rec_h[s, c_cooldown] = left - 1
                    elif (
                        warm
                        and exceeds
                        and _popcount(history) >= hyst_k
                        and (left == 0 or _escalates(score[p], rec_h[s, c_alert_score]))
                    ):
                        alert[p] = True
                        escalated[p] = left > 0
                        rec_h[s, c_cooldown] = escalation
                        rec_h[s, c_alert_score] = alert_level(score[p])
                    elif left > 0:
                        rec_h[s, c_cooldown] = left - 1
                # 6. input statistics (or a level shift), the model input's calendar part,
                # ring buffer, mark
                shift = False
                if level_shifts and n > 0:
                    was = int(rec_b[s, c_run])
                    starts = far_out[j] != 0.0 and n * float(rec_f[s, c_err + DT_MEAN]) >= _DAY
                    run = _shift_run_step(
                        was - 256 if was >= 128 else was, x_chunk[j, 0], starts, shift_std
                    )
                    shift = abs(run) >= shift_points
                    rec_b[s, c_run] = 0 if shift else run & 0xFF
                if shift:  # the mean jumps to the new level, the variance stays
                    rec_f[s, c_xmean] = float(stored(values[p, 0]))
                    _rebase_run(x_chunk, j, rec_h, ring, s, c_tail, n, shift_points, input_clip)
                else:
                    a = _alpha(n + 1.0, norm_alpha, norm_span)
                    for d in range(D):
                        mu = float(rec_f[s, c_xmean + d])
                        var = float(rec_f[s, c_xvar + d])
                        v = float(stored(values[p, d]))
                        delta = v - mu if n > 0 else 0.0
                        if var > 0.0:
                            bound = norm_clip * math.sqrt(var)
                            delta = min(max(delta, -bound), bound)
                        rec_f[s, c_xmean + d] = v if n == 0 else mu + a * delta
                        rec_f[s, c_xvar + d] = (1.0 - a) * (var + a * delta * delta)
                if calendar:
                    calendar_features(ts[p], cal)
                    for jj in range(CALENDAR_FEATURES):
                        x_chunk[j, D + jj] = half_value(half_bits(cal[jj]))
                pos = n & w_mask if w_mask >= 0 else n % W
                at = n % TAIL
                if at == 0 and n > 0:  # the tail is complete: into the ring (prefetched)
                    copy_tail(ring, rec_h, s, c_tail, n, True)
                for jj in range(n_in):
                    rec_h[s, c_tail + at * n_in + jj] = half_bits(x_chunk[j, jj])
                # The mark: a stream without marks (most) has nothing to clear. A point
                # that exceeds by its seasonal score alone is not marked (module docstring).
                marked_now = exceeds
                if seasonal_z > 0 and exceeds and n > 0:
                    marked_now = max(s_z[j], novel[j]) >= threshold
                fl = flags[s] | DIRTY
                bit = np.uint8(1 << (pos & 7))
                if marked_now:
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
                            fl &= 0xFF ^ MARKED
                if use_offsets and offsets[p] >= 0:
                    stream_offsets[s] = offsets[p]
                    fl |= OFFSET_SET
                flags[s] = fl
                rec_w[s, c_seen] = n + 1 if n + 1 < SEEN_LIMIT else n + 1 - seen_step
                rec_d[s, c_last_ts] = ts[p]

            if m > 0:  # one LSTM step for the chunk, on the rows in place (prefetched above)
                lstm_step_rows(
                    x_chunk[:m], steps[:m], hc, theta, shape, gates, tmp, q, h_out, y_chunk[:m]
                )
                for j in range(m):
                    s = steps[j]
                    for d in range(shape.n_outputs):
                        rec_f[s, c_pred + d] = y_chunk[j, d]
        for i in range(hi):
            flags[slots[order[i]]] &= 0xFF ^ IN_WAVE
        for i in range(n_later):
            order[i] = later[i]
        hi = n_later
    if use_offsets:
        for p in range(slots.shape[0]):
            flags[slots[p]] &= 0xFF ^ OFFSET_SET
    return 0


@dataclass(slots=True)
class BatchScores:
    """Per-point results of one kernel call, indexed like the batch."""

    status: NDArray[np.int8]  # SCORED, NO_PREDICTION, DROPPED or REPLAYED
    gap: NDArray[np.int8]  # NO_GAP, GAP_RESET or GAP_CONTINUED
    score: NDArray[np.float64]
    alert: NDArray[np.bool_]
    escalated: NDArray[np.bool_]  # an alert within the last one's escalation window
    predicted: NDArray[np.float64]  # (B, D)
    error: NDArray[np.float64]

    @classmethod
    def empty(cls, n: int, n_values: int) -> BatchScores:
        return cls(
            status=np.empty(n, np.int8),
            gap=np.empty(n, np.int8),
            score=np.empty(n, np.float64),
            alert=np.empty(n, np.bool_),
            escalated=np.empty(n, np.bool_),
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


# Where each record field starts, in elements of the view the kernel reads it through.
(
    F_LAST_TS,
    F_SEEN,
    F_PEAKS,
    F_ERR,
    F_X_MEAN,
    F_X_VAR,
    F_PRED,
    F_X_MIN,
    F_X_MAX,
    F_HIST,
    F_SHIFT_RUN,
    F_COOLDOWN,
    F_ALERT_SCORE,
    F_SEASON_MEAN,
    F_SEASON_DEV,
    F_SEASON,
    F_TAIL,
) = range(17)
_FIELD_VIEWS = (
    ("last_ts", 8),
    ("seen", 4),
    ("peaks", 0),
    ("err", 0),  # 0: the table's float size
    ("x_mean", 0),
    ("x_var", 0),
    ("pred", 0),
    ("x_min", 0),
    ("x_max", 0),
    ("hist", 2),  # uint16, read through the int16 view
    ("shift_run", 1),  # int8, read through the uint8 view
    ("cooldown", 2),  # uint16, read through the int16 view
    ("alert_score", 2),  # uint16, as cooldown
    ("season_mean", 2),
    ("season_dev", 1),
    ("season", 0),
    ("tail", 2),  # float16 bits, read through the int16 view
)


def record_views(
    rec: NDArray[np.void], dtype: np.dtype
) -> tuple[
    NDArray[np.floating],
    NDArray[np.float64],
    NDArray[np.int64],
    NDArray[np.int32],
    NDArray[np.int16],
    NDArray[np.uint8],
    NDArray[np.int64],
]:
    """The records as 2-d arrays of the table's float dtype, float64, int64, int32, int16
    and uint8, and
    each field's first column in its view (indexed by F_*). The kernel indexes these plain
    arrays: each access to a field of a record (a NumPy structured array) built a view,
    and its reference counting cost 5% of the kernel."""
    rows = rec.shape[0]
    size = rec.dtype.itemsize
    f = np.dtype(dtype)
    fields = rec.dtype.fields
    if fields is None:
        raise TypeError(f"records have dtype {rec.dtype}; expected a structured dtype")
    cols = np.empty(len(_FIELD_VIEWS), np.int64)
    for i, (name, width) in enumerate(_FIELD_VIEWS):
        offset = fields[name][1]
        cols[i] = offset // (width or f.itemsize)
    return (
        rec.view(f).reshape(rows, size // f.itemsize),
        rec.view(np.float64).reshape(rows, size // 8),
        rec.view(np.int64).reshape(rows, size // 8),
        rec.view(np.int32).reshape(rows, size // 4),
        rec.view(np.int16).reshape(rows, size // 2),
        rec.view(np.uint8).reshape(rows, size),
        cols,
    )


class Scratch:
    """The kernel's working arrays for batches of up to ``batch`` points of one model shape,
    kept on the table (``table.scratch``) across calls: fresh megabytes per call would cost
    page faults. Also the views of the table's records (record_views), until it grows, and
    the (params, config) last found compatible with the table."""

    __slots__ = ("batch", "checked", "error_window", "floats", "ints", "rec", "shape", "views")

    def __init__(self, batch: int, shape: ModelShape, dtype: np.dtype, error_window: int) -> None:
        self.batch = batch
        self.shape = shape
        self.error_window = error_window
        n_float, n_int = scratch_sizes(batch, shape, error_window)
        self.floats = np.empty(n_float, dtype)
        self.ints = np.empty(n_int, np.int64)
        self.rec: NDArray[np.void] | None = None
        self.views: tuple[NDArray[np.generic], ...] = ()
        self.checked: tuple[object, object] | None = None

    def record_views(self, table: StreamStateTable) -> tuple[NDArray[np.generic], ...]:
        if self.rec is not table.rec:
            self.rec = table.rec
            self.views = record_views(table.rec, self.floats.dtype)
        return self.views

    @classmethod
    def of(cls, table: StreamStateTable, params: LSTMParams, batch: int) -> Scratch:
        """The table's scratch when it fits, else a new one (sized to a power of two)."""
        old = table.scratch
        if (
            isinstance(old, Scratch)
            and old.batch >= batch
            and old.shape == params.shape
            and old.floats.dtype == params.dtype
            and old.error_window == table.layout.error_window
        ):
            return old
        new = cls(
            max(64, 1 << (batch - 1).bit_length()),
            params.shape,
            params.dtype,
            table.layout.error_window,
        )
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
    B = slots.shape[0]
    D = table.layout.n_values
    scratch = Scratch.of(table, params, max(B, 1))
    if (
        scratch.checked is None
        or scratch.checked[0] is not params
        or scratch.checked[1] is not config
    ):
        check_compatible(table.layout, params, config)  # (params and config are immutable)
        scratch.checked = (params, config)
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
    code = run_kernel(
        table,
        params,
        config,
        scratch,
        slots if slots.flags.c_contiguous else np.ascontiguousarray(slots),
        ts if ts.flags.c_contiguous else np.ascontiguousarray(ts),
        values if values.flags.c_contiguous else np.ascontiguousarray(values),
        offsets if offsets.flags.c_contiguous else np.ascontiguousarray(offsets),
        out,
    )
    if code == BAD_SLOTS:
        raise ValueError(
            f"slots must lie in [0, {table.capacity}); refused points are dropped first"
        )
    if code == NOT_FINITE:
        raise ValueError("ts and values must be finite; drop and count the others first")
    return out


def run_kernel(
    table: StreamStateTable,
    params: LSTMParams,
    config: ScoringConfig,
    scratch: Scratch,
    slots: NDArray[np.int64],
    ts: NDArray[np.float64],
    values: NDArray[np.float64],
    offsets: NDArray[np.int64],
    out: BatchScores,
) -> int:
    """score_kernel on a table, without score_batch's checks: every array C-contiguous and
    of the kernel's shape and dtype, offsets (0,) for no replay check, scratch sized for the
    batch. Returns the kernel's code (0, BAD_SLOTS or NOT_FINITE)."""
    rec_f, rec_d, rec_q, rec_w, rec_h, rec_b, cols = scratch.record_views(table)
    return int(
        score_kernel(
            slots,
            ts,
            values,
            offsets,
            rec_f,
            rec_d,
            rec_q,
            rec_w,
            rec_h,
            rec_b,
            cols,
            table.offset,
            table.hc,
            table.ring.view(np.int16),
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
            out.escalated,
            out.predicted,
            out.error,
        )
    )
