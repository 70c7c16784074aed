"""Point-by-point Python version of the scoring kernel (detector.stream.scoring).

One object per stream, one point at a time, NumPy and SciPy for the arithmetic and the
loop-by-loop LSTM of lstm_numpy for the step: slow, plain, and what the kernel must equal.
The rules are those of the kernel's module docstring; the dynamic threshold is written from
the paper's description (Hundman et al., 2018, sections 3.2 and 3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import genpareto, norm

from detector.config import ScoringSettings, StreamSettings
from detector.model.params import LSTMParams
from tests.reference import lstm_numpy

SEASON_BINS = 16  # the daily profile: bins of the UTC time of day
SEASON_ALPHA = 0.1
SEASON_DEV_FLOOR = 0.25
SEASON_MEAN_SCALE = 2048.0  # stored as int16 in 1/2048, round half up
SEASON_DEV_SCALE = 64.0  # stored as uint8 in 1/64, at least 1 once visited
NEVER = 1 << 62  # points since the last alert of a stream that has not alerted


def ref_season_bin(ts: float) -> int:
    return min(int((ts % 86400.0) * SEASON_BINS / 86400.0), SEASON_BINS - 1)


def ref_tail_score(z: float) -> float:
    tail = norm.sf(z)
    if tail <= 1e-10:
        return 1.0
    return float(np.clip(-math.log10(tail) / 10.0, 0.0, 1.0))


def ref_peaks_score(y: float, m1: float, m2: float, q: float) -> float:
    """-log10(q P[GPD > y]) / 10, the GPD's shape by the method of moments (clipped to
    [0, 1/2]) and its scale keeping the mean excess m1 (floored at 0.01)."""
    var = m2 - m1 * m1
    xi = float(np.clip(0.5 * (1.0 - m1 * m1 / var), 0.0, 0.5)) if var > 0 else 0.0
    sigma = max(m1 * (1.0 - xi), 0.01)
    tail = q * genpareto.sf(y, c=xi, scale=sigma)
    return min(-math.log10(tail) / 10.0, 1.0) if tail > 0 else 1.0


def ref_dynamic_epsilon(errors: np.ndarray, min_std: float) -> float:
    mean = errors.mean()
    std = max(errors.std(), min_std)
    best, best_eps = -np.inf, mean + 12.0 * std
    for z in np.arange(2.5, 12.0, 0.5):
        eps = mean + z * std
        above = errors >= eps
        below = errors[~above]
        if not above.any() or not below.size or above.sum() > errors.size // 2:
            continue
        runs = int(above[0]) + int(np.sum(above[1:] & ~above[:-1]))
        mean_drop = (mean - below.mean()) / mean if mean > 0 else 0.0
        std_drop = (std - below.std()) / std
        score = (mean_drop + std_drop) / (runs**2 + above.sum())
        if score >= best:
            best, best_eps = score, eps
    return float(best_eps)


def ref_keeps_last_run(errors: np.ndarray, eps: float, p: float) -> bool:
    runs: list[float] = []
    inside = False
    for v in errors:
        if v >= eps:
            if inside:
                runs[-1] = max(runs[-1], v)
            else:
                runs.append(v)
            inside = True
        else:
            inside = False
    current = runs[-1]
    normal = errors[errors < eps]
    chain = [*sorted(runs, reverse=True), normal.max() if normal.size else 0.0]
    # The paper's loop: indices to remove accumulate and reset at every big enough drop.
    to_remove: list[int] = []
    for i in range(len(chain) - 1):
        if chain[i] > 0 and (chain[i] - chain[i + 1]) / chain[i] >= p:
            to_remove = []
        else:
            to_remove.append(i)
    rank = chain.index(current)
    return rank not in to_remove


@dataclass
class RefStream:
    layers: int
    hidden: int
    D: int
    W: int
    E: int
    h: np.ndarray = field(init=False)
    c: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    var: np.ndarray = field(init=False)
    pred: np.ndarray = field(init=False)
    lo: np.ndarray = field(init=False)  # the range of the stream's raw values so far
    hi: np.ndarray = field(init=False)
    ring: list[np.ndarray] = field(init=False)
    marks: list[bool] = field(init=False)  # per ring entry: its point exceeded
    errors: list[float] = field(init=False)
    smooth: float = 0.0
    err_mean: float = 0.0
    err_var: float = 0.0
    err_count: int = 0
    peaks_u: float = 0.0  # the error's tail: the (1 - q) quantile tracked, excess moments
    peaks_m1: float = 0.0
    peaks_m2: float = 0.0
    peaks_n: int = 0
    short: float = 0.0
    eps: float = 0.0
    dt_mean: float = 0.0
    last_ts: float = 0.0
    seen: int = 0
    history: list[bool] = field(init=False)
    since_alert: int = NEVER  # points since the stream's last alert
    alert_level: int = 0  # that alert's score in 1/65535, rounded down
    shift_run: int = 0  # +-points in a row beyond level_shift_std, from a value far outside
    season_mean: list[int] = field(init=False)  # the daily profile, fixed point as stored
    season_dev: list[int] = field(init=False)  # 0: bin never visited
    season_short: float = 0.0
    season_u_mean: float = 0.0
    season_u_var: float = 0.0
    season_r2: float = 0.0
    offset: int = -1  # input offset of the last point handled (not reset by a gap)
    offset_batch: int = -1  # the batch (RefScorer.batch) whose point set it

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.h = np.zeros((self.layers, self.hidden))
        self.c = np.zeros((self.layers, self.hidden))
        self.mean = np.zeros(self.D)
        self.var = np.zeros(self.D)
        self.pred = np.zeros(self.D)
        self.lo = np.zeros(self.D)
        self.hi = np.zeros(self.D)
        self.ring = []
        self.marks = []
        self.errors = []
        self.smooth = self.err_mean = self.err_var = self.short = self.eps = 0.0
        self.dt_mean = 0.0
        self.err_count = self.seen = 0
        self.peaks_u = self.peaks_m1 = self.peaks_m2 = 0.0
        self.peaks_n = 0
        self.since_alert, self.alert_level = NEVER, 0
        self.shift_run = 0
        self.history = []
        self.season_mean = [0] * SEASON_BINS
        self.season_dev = [0] * SEASON_BINS
        self.season_short = self.season_u_mean = self.season_u_var = self.season_r2 = 0.0


@dataclass
class RefResult:
    status: str  # "scored", "no_prediction", "dropped", "replayed"
    gap: str  # "", "reset", "continued"
    score: float = 0.0
    alert: bool = False
    escalation: bool = False  # an alert within the last one's escalation window
    error: float = math.nan
    predicted: np.ndarray | None = None


def ref_half(x: np.ndarray) -> np.ndarray:
    """Model inputs as the ring keeps them: float16, rounded from float32."""
    return np.asarray(x).astype(np.float32).astype(np.float16).astype(np.float64)


def ref_calendar(ts: float) -> np.ndarray:
    day = (ts % 86400.0) / 86400.0
    week = ((math.floor(ts / 86400.0) + 3) % 7 + day) / 7.0
    angles = (2 * math.pi * day, 2 * math.pi * week)
    return np.array([f(a) for a in angles for f in (math.sin, math.cos)])


class RefScorer:
    def __init__(
        self, params: LSTMParams, scoring: ScoringSettings, streams: StreamSettings, calendar: bool
    ) -> None:
        self.params = params.astype(np.float64)
        self.tensors = self.params.tensors()
        self.shape = params.shape
        self.sc = scoring
        self.st = streams
        self.calendar = calendar
        self.gms = [
            lstm_numpy.gate_matrices(self.tensors, self.shape, l) for l in range(self.shape.layers)
        ]
        self.streams: dict[str, RefStream] = {}
        self.pruned = 0  # dynamic mode: points above eps whose run pruning removed
        self.level_shifts = 0  # points that ended a level-shift run
        self.batch = 0  # which kernel call the points belong to: new_batch() between calls

    def new_batch(self) -> None:
        """The next points are of another kernel call (a state may have been saved)."""
        self.batch += 1

    def alpha(self, span: int) -> float:
        return 2.0 / (span + 1.0)

    @staticmethod
    def learn_peaks(s: RefStream, e: float, q: float) -> None:
        """u: up by a factor exp(0.1 (1 - q)) when exceeded, down by exp(-0.1 q) otherwise
        (never below 0.01); the excesses' moments: EWMA with weight 1/n, then 0.05."""
        if s.err_count == 1:
            s.peaks_u = max(e, 0.01)
            return
        if e > s.peaks_u:
            s.peaks_n += 1
            w = max(1.0 / s.peaks_n, 0.05)
            y = e - s.peaks_u
            s.peaks_m1 += w * (y - s.peaks_m1)
            s.peaks_m2 += w * (y * y - s.peaks_m2)
            s.peaks_u *= math.exp(0.1 * (1 - q))
        else:
            s.peaks_u = max(s.peaks_u * math.exp(-0.1 * q), 0.01)

    def point(self, key: str, ts: float, x: np.ndarray, offset: int = -1) -> RefResult:
        """One point; ``offset`` >= 0 is its input offset (a replay when not above the
        stream's)."""
        sc, st = self.sc, self.st
        D = x.shape[0]
        s = self.streams.get(key)
        if s is None:
            s = self.streams[key] = RefStream(
                self.shape.layers,
                self.shape.hidden,
                D,
                st.buffer_len,
                sc.dynamic_window if sc.mode == "dynamic" else 0,
            )
        # At its stream's offset: a replay, unless a point of this batch set that offset
        # (then it is of the same message).
        if offset >= 0 and (
            offset < s.offset or (offset == s.offset and s.offset_batch != self.batch)
        ):
            return RefResult("replayed", "")
        if offset >= 0:
            s.offset = offset  # dropped or not, the point has been handled
            s.offset_batch = self.batch
        if s.seen > 0 and ts <= s.last_ts:
            return RefResult("dropped", "")
        gap = ""
        dt = ts - s.last_ts
        if s.seen >= 2 and dt > st.gap_factor * s.dt_mean:
            if st.gap_policy == "reset":
                s.reset()
                gap = "reset"
            else:
                gap = "continued"
        elif s.seen == 1:
            s.dt_mean = dt
        elif s.seen >= 2:
            s.dt_mean += 2.0 / 51.0 * (dt - s.dt_mean)

        first = s.seen == 0
        mu = x.copy() if first else s.mean.copy()
        sd = np.maximum(np.sqrt(s.var), st.min_std)
        # A level-shift run starts on a value beyond the range by more than level_shift_std
        # std, after the stream's first day.
        beyond = np.maximum(x - s.hi, s.lo - x)
        starts = s.seen * s.dt_mean >= 86400.0 and bool(np.any(beyond > st.level_shift_std * sd))
        xn = ref_half(np.clip((x - mu) / sd, -st.input_clip, st.input_clip))
        result = RefResult("no_prediction" if first else "scored", gap)
        exceeds = marks = False  # marks: the ring entry's mark
        novelty = 0.0
        if not first and sc.novelty_scale > 0 and s.seen * s.dt_mean >= 86400.0:
            outside = np.maximum(np.maximum(x - s.hi, s.lo - x), 0.0)
            r = float(np.max(outside / np.maximum(s.hi - s.lo, st.min_std)))
            novelty = r / (r + sc.novelty_scale)
        season = 0.0  # the seasonal score
        season_u = season_r = None  # what its statistics learn
        if not first and sc.seasonal and D == 1 and sc.mode != "dynamic":
            b = ref_season_bin(ts)
            x0 = float(xn[0])
            if s.season_dev[b] == 0:
                s.season_mean[b] = min(max(math.floor(x0 * SEASON_MEAN_SCALE + 0.5), -32767), 32767)
                s.season_dev[b] = int(SEASON_DEV_SCALE)
            else:
                m_b = s.season_mean[b] / SEASON_MEAN_SCALE
                d_b = s.season_dev[b] / SEASON_DEV_SCALE
                season_r = abs(x0 - m_b)
                season_u = season_r / max(d_b, SEASON_DEV_FLOOR)
                s.season_short += self.alpha(sc.short_span) * (season_u - s.season_short)
                if (
                    s.err_count
                    and s.season_r2 <= 1.0 - sc.seasonal_gate
                    and s.seen * s.dt_mean >= sc.seasonal_warmup_days * 86400.0
                ):
                    spread_u = max(math.sqrt(s.season_u_var), sc.min_error_std)
                    season = ref_tail_score((s.season_short - s.season_u_mean) / spread_u)
                new_m = m_b + SEASON_ALPHA * (x0 - m_b)
                new_d = d_b + SEASON_ALPHA * (season_r - d_b)
                s.season_mean[b] = min(
                    max(math.floor(new_m * SEASON_MEAN_SCALE + 0.5), -32767), 32767
                )
                s.season_dev[b] = min(max(math.floor(new_d * SEASON_DEV_SCALE + 0.5), 1), 255)
        if not first:
            pred = s.pred
            e = math.sqrt(float(np.mean((xn - s.pred) ** 2)))
            if sc.forecast == "persistence":  # the previous input
                pred = s.ring[-1][:D]
                e = math.sqrt(float(np.mean((xn - pred) ** 2)))
            result.predicted = pred * sd + mu
            result.error = e
            s.smooth = e if s.seen == 1 else s.smooth + self.alpha(sc.error_span) * (e - s.smooth)
            warm = s.seen >= sc.warmup
            spread = max(math.sqrt(s.err_var), sc.min_error_std)
            observed = s.smooth
            peak = 0.0  # the peaks score: e beyond the tail's u
            if sc.peaks_quantile > 0 and s.peaks_n >= 5 and e > s.peaks_u:
                peak = ref_peaks_score(e - s.peaks_u, s.peaks_m1, s.peaks_m2, sc.peaks_quantile)
            if sc.mode == "zscore":
                if s.err_count:
                    result.score = ref_tail_score((s.smooth - s.err_mean) / spread)
                result.score = max(result.score, peak)
                marks = max(result.score, novelty) >= sc.threshold  # not by the seasonal
                result.score = max(result.score, novelty, season)
                exceeds = result.score >= sc.threshold
            elif sc.mode == "likelihood":
                observed = e
                s.short = e if s.seen == 1 else s.short + self.alpha(sc.short_span) * (e - s.short)
                if s.err_count:
                    result.score = ref_tail_score((s.short - s.err_mean) / spread)
                result.score = max(result.score, peak)
                marks = max(result.score, novelty) >= sc.threshold  # not by the seasonal
                result.score = max(result.score, novelty, season)
                exceeds = result.score >= sc.threshold
            else:
                s.errors = ([*s.errors, s.smooth])[-sc.dynamic_window :]
                window = np.array(s.errors)
                if (s.seen - 1) % sc.dynamic_refresh == 0 or s.eps <= 0:
                    s.eps = ref_dynamic_epsilon(window, sc.min_error_std)
                result.score = min(0.5 * s.smooth / s.eps, 1.0)
                candidate = result.score >= sc.threshold and s.smooth >= s.eps
                kept = candidate and ref_keeps_last_run(window, s.eps, sc.dynamic_prune)
                self.pruned += candidate and not kept
                result.score = max(result.score, novelty)
                exceeds = marks = kept or novelty >= sc.threshold
            learns = s.seen >= sc.warmup // 2 and (sc.stats_learn_all or not exceeds or not warm)
            if sc.mode != "dynamic" and learns:
                s.err_count += 1
                a = max(1.0 / s.err_count, self.alpha(sc.stats_span))
                delta = observed - s.err_mean
                s.err_mean += a * delta
                s.err_var = (1 - a) * (s.err_var + a * delta * delta)
                if sc.peaks_quantile > 0:
                    self.learn_peaks(s, e, sc.peaks_quantile)
                if season_u is not None and season_r is not None:
                    delta = season_u - s.season_u_mean
                    s.season_u_mean += a * delta
                    s.season_u_var = (1 - a) * (s.season_u_var + a * delta * delta)
                    s.season_r2 += a * (season_r * season_r - s.season_r2)
            s.history = [*s.history, exceeds][-sc.hysteresis_n :]
            s.since_alert += 1
            level = math.floor(result.score * 65535)
            if (
                warm
                and exceeds
                and sum(s.history) >= sc.hysteresis_k
                and s.since_alert > sc.cooldown
                and (s.since_alert > sc.escalation_window or level > s.alert_level)
            ):
                result.alert = True
                result.escalation = s.since_alert <= sc.escalation_window
                s.since_alert, s.alert_level = 0, level

        a = max(1.0 / (s.seen + 1), self.alpha(st.norm_span))
        if first:
            s.lo, s.hi = x.copy(), x.copy()
        else:
            s.lo, s.hi = np.minimum(s.lo, x), np.maximum(s.hi, x)
        shift = False
        if st.level_shift_points and D == 1 and not first:
            x0, run, bound = float(xn[0]), s.shift_run, st.level_shift_std
            if x0 > bound:
                run = run + 1 if run > 0 else int(starts)
            elif x0 < -bound:
                run = run - 1 if run < 0 else -int(starts)
            else:
                run = 0
            shift = abs(run) >= st.level_shift_points
            s.shift_run = 0 if shift else run
            self.level_shifts += shift
        if first:
            s.mean, s.var = x.copy(), np.zeros(D)
        elif shift:  # a level shift: the mean jumps to x, the run's inputs become relative
            # to this one's (which becomes 0), the variance stays
            s.mean = x.copy()
            for k in range(1, min(st.level_shift_points, len(s.ring) + 1)):
                moved = s.ring[-k].copy()
                moved[0] = ref_half(np.clip(moved[0] - xn[0], -st.input_clip, st.input_clip))
                s.ring[-k] = moved
            xn = np.zeros(1)
        else:
            delta = x - s.mean
            bound = st.norm_clip * np.sqrt(s.var)
            delta = np.where(s.var > 0, np.clip(delta, -bound, bound), delta)
            s.mean = s.mean + a * delta
            s.var = (1 - a) * (s.var + a * delta * delta)
        inp = np.concatenate([xn, ref_half(ref_calendar(ts))]) if self.calendar else xn
        s.ring = [*s.ring, inp][-st.buffer_len :]
        s.marks = [*s.marks, marks][-st.buffer_len :]
        layer_in = inp
        for l in range(self.shape.layers):
            s.h[l], s.c[l] = lstm_numpy.cell(self.gms[l], layer_in, s.h[l], s.c[l])
            layer_in = s.h[l]
        s.pred = lstm_numpy.head(self.tensors, self.shape, s.h[-1], inp)
        s.seen += 1
        s.last_ts = ts
        return result
