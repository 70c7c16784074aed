"""Scalar building blocks of the scores, jitted to be called from the scoring kernel.

Every score lies in [0, 1] and means the same on every stream, so one global threshold works:

- :func:`tail_score` maps a z value to -log10(upper Gaussian tail probability) / 10, so a
  tail probability of 1e-5 scores 0.5 and 1e-10 or less scores 1 (the scale Numenta's
  anomaly likelihood uses). The zscore and likelihood modes score this way, through
  :func:`tail_scores`, the same function as piecewise polynomials (absolute error < 1e-14).
- The dynamic mode scores ``0.5 * s_t / eps`` (capped at 1), so 0.5 means "at the dynamic
  threshold", the same place on the scale.

The dynamic threshold follows Hundman et al., "Detecting Spacecraft Anomalies Using LSTMs
and Nonparametric Dynamic Thresholding" (KDD 2018), section 3.2, computed online per stream
over its last E smoothed errors: eps = mean + z * std for the z in {2.5, 3.0, ..., 11.5} that
maximises (Δmean/mean + Δstd/std) / (|E_seq|^2 + |E_a|), where Δ is the drop when the values
at or above eps are removed, E_a are those values and E_seq their runs; at most half of the
window may lie above eps (else mean + 12 std). Pruning (section 3.3): the maxima of the runs
above eps, in decreasing order followed by the largest value below eps, are kept down to the
last step whose relative decrease is at least p; a run below it is pruned. Unlike the paper
we use no error buffer around runs, and recompute eps every ``refresh`` points rather than per
batch window.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from detector.stream.state import PEAKS_M1, PEAKS_M2, PEAKS_N, PEAKS_U

_JIT = dict(cache=True, nogil=True, error_model="numpy")

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_LOG10_TAIL_FLOOR = -10.0  # tail probabilities at or below 1e-10 score 1
_LOG_TO_SCORE = 1.0 / (math.log(10.0) * _LOG10_TAIL_FLOOR)  # log10(p) / -10 = log(p) * this
Z_GRID_START = 2.5
Z_GRID_STEP = 0.5
Z_LIMIT = 12.0  # the paper's sd_lim: eps when no candidate qualifies


@njit(**_JIT)
def tail_score(z: float) -> float:  # pragma: no cover - jitted
    """-log10(P[N(0,1) > z]) / 10, clipped to [0, 1]."""
    tail = 0.5 * math.erfc(z * _INV_SQRT2)  # products, not quotients: shorter latency
    if tail <= 1e-10:
        return 1.0
    score = math.log(tail) * _LOG_TO_SCORE
    return min(max(score, 0.0), 1.0)


# tail_score as piecewise polynomials, for the kernel: erfc and log from libm cost ~70 ns per
# point (7% of a batch), and calls keep a loop scalar. u(z) = -ln P[N(0,1) > z] on
# [_TAIL_LO, _TAIL_HI] in _TAIL_PIECES equal pieces, each a degree-_TAIL_DEGREE Chebyshev
# interpolant of tail_score's own formula (math.erfc, math.log), in the power basis of
# x in [-1, 1] across the piece. Below _TAIL_LO the score is under 5e-11; above _Z_ONE it is 1.
_TAIL_LO = -9.0
_TAIL_HI = 6.4
_TAIL_PIECES = 20
_TAIL_DEGREE = 10
_Z_ONE = 6.361340902404056  # P[N(0,1) > z] = 1e-10


def _tail_table() -> np.ndarray:
    width = (_TAIL_HI - _TAIL_LO) / _TAIL_PIECES
    table = np.empty((_TAIL_PIECES, _TAIL_DEGREE + 1))
    for k in range(_TAIL_PIECES):
        lo = _TAIL_LO + k * width

        def u(x: np.ndarray, lo: float = lo) -> np.ndarray:
            z = lo + (np.asarray(x) + 1.0) * (width / 2.0)
            return np.array([-math.log(0.5 * math.erfc(v * _INV_SQRT2)) for v in z.ravel()])

        cheb = np.polynomial.chebyshev.chebinterpolate(u, _TAIL_DEGREE)  # type: ignore[type-var]
        table[k] = np.polynomial.chebyshev.cheb2poly(cheb)
    table.flags.writeable = False
    return table


_TAIL_TABLE = _tail_table()


@njit(**_JIT)
def tail_scores(z, out, n: int) -> None:  # type: ignore[no-untyped-def]  # pragma: no cover
    """out[j] = tail_score(z[j]) for j < n, from _TAIL_TABLE (a constant: numba freezes the
    global array into the compiled code). No calls in the loop."""
    table = _TAIL_TABLE
    pieces = table.shape[0]
    degree = table.shape[1] - 1
    inv_width = pieces / (_TAIL_HI - _TAIL_LO)
    for j in range(n):
        zj = z[j]
        zc = zj if zj > _TAIL_LO else _TAIL_LO  # (NaN too: never an index out of bounds)
        zc = zc if zc < _TAIL_HI else _TAIL_HI
        t = (zc - _TAIL_LO) * inv_width
        k = min(int(t), pieces - 1)
        x = 2.0 * (t - k) - 1.0
        u = table[k, degree]
        for i in range(degree - 1, -1, -1):
            u = u * x + table[k, i]
        score = min(max(u * -_LOG_TO_SCORE, 0.0), 1.0)
        out[j] = 1.0 if zj >= _Z_ONE else score


# The peaks score (detector.stream.scoring, step 4): extreme value theory's peaks over a
# threshold (Pickands 1975; Siffer et al., "Anomaly Detection in Streams with Extreme Value
# Theory", KDD 2017), fitted online per stream to the prediction error's magnitude e_t.
# Above u, the stream's (1 - q) quantile of e_t, the excesses y = e_t - u follow a
# generalized Pareto distribution with shape xi and scale sigma, so that
#     P(e > u + y) = q (1 + xi y / sigma)^(-1 / xi)      (q exp(-y / sigma) at xi = 0)
# and the score is -log10 of that, / 10, the scale of tail_score. xi and sigma come from the
# mean m1 and mean square m2 of the recent excesses (method of moments: xi = (1 - m1² /
# var) / 2), xi kept in [0, PEAKS_XI_MAX]: a bounded tail (xi < 0) is not trusted from a few
# excesses, and past 1/2 the variance the estimate rests on is infinite. sigma = m1 (1 - xi)
# keeps the fitted mean excess m1. Unlike a z-score, this is calibrated whatever the shape
# of a stream's errors: Gaussian noise (light tail) or the rare large steps of a stepped
# signal (heavy tail) alike reach 0.5 about once per 1e5 points.
PEAKS_XI_MAX = 0.5
PEAKS_MIN_EXCESSES = 5  # a stream scores once its tail has seen this many excesses
PEAKS_WEIGHT = 0.05  # EWMA weight of an excess (after the first 1/n): about the last 20
# u moves in log space, by a factor exp(PEAKS_GAIN (1 - q)) up when exceeded and exp(-PEAKS_GAIN
# q) down otherwise: scale-free, and as quick to come down from an early error of a stream
# still settling (a hundred times its later errors) as to go up.
PEAKS_GAIN = 0.1
PEAKS_FLOOR = 0.01  # of sigma and of u, in normalised units


@njit(**_JIT)
def peaks_score(y: float, m1: float, m2: float, q: float) -> float:  # pragma: no cover
    """The score of an excess y > 0 over u, given the excesses' moments (module notes)."""
    var = m2 - m1 * m1
    xi = 0.5 * (1.0 - m1 * m1 / var) if var > 0.0 else 0.0
    xi = min(max(xi, 0.0), PEAKS_XI_MAX)
    z = y / max(m1 * (1.0 - xi), PEAKS_FLOOR)
    log_tail = math.log1p(xi * z) / xi if xi > 1e-6 else z
    return min((log_tail - math.log(q)) * -_LOG_TO_SCORE, 1.0)


@njit(**_JIT)
def peaks_learn(rec, s: int, c: int, e: float, first: bool, up: float, down: float) -> None:  # type: ignore[no-untyped-def]  # pragma: no cover
    """Row ``s`` of ``rec`` keeps the tail at columns c + (u, m1, m2, n) (state.PEAKS_*):
    learn the error e_t (``first``: the first the statistics learn, which sets u). u is
    multiplied by ``up`` (exp(PEAKS_GAIN (1 - q))) when exceeded and by ``down``
    (exp(-PEAKS_GAIN q)) otherwise, so it settles where a fraction q of the errors exceed
    it."""
    u = float(rec[s, c + PEAKS_U])
    if first:
        rec[s, c + PEAKS_U] = max(e, PEAKS_FLOOR)
        return
    if e > u:
        n = float(rec[s, c + PEAKS_N]) + 1.0
        w = max(1.0 / n, PEAKS_WEIGHT)
        y = e - u
        m1 = float(rec[s, c + PEAKS_M1])
        m2 = float(rec[s, c + PEAKS_M2])
        rec[s, c + PEAKS_M1] = m1 + w * (y - m1)
        rec[s, c + PEAKS_M2] = m2 + w * (y * y - m2)
        rec[s, c + PEAKS_N] = n
        rec[s, c + PEAKS_U] = u * up
    else:
        rec[s, c + PEAKS_U] = max(u * down, PEAKS_FLOOR)


@njit(**_JIT)
def peaks_factors(q: float) -> tuple[float, float]:  # pragma: no cover - jitted
    """(up, down) of :func:`peaks_learn` for the quantile 1 - q."""
    return math.exp(PEAKS_GAIN * (1.0 - q)), math.exp(-PEAKS_GAIN * q)


@njit(**_JIT)
def ewm_alpha(count: float, alpha: float) -> float:  # pragma: no cover - jitted
    """Weight of the ``count``-th update: the plain average until it is older than the span."""
    return max(1.0 / count, alpha)


@njit(**_JIT)
def dynamic_epsilon(ring, count: int, start: int, min_std: float) -> float:  # type: ignore[no-untyped-def]  # pragma: no cover
    """The dynamic threshold over the ``count`` values of ``ring`` starting at ``start``
    (wrapping), which are in chronological order."""
    E = ring.shape[0]
    total = 0.0
    total_sq = 0.0
    for k in range(count):
        v = float(ring[(start + k) % E])
        total += v
        total_sq += v * v
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    std = max(std, min_std)
    best_eps = mean + Z_LIMIT * std
    best = -np.inf
    n_z = round((Z_LIMIT - Z_GRID_START) / Z_GRID_STEP)
    for zi in range(n_z):
        eps = mean + (Z_GRID_START + zi * Z_GRID_STEP) * std
        below = 0
        below_sum = 0.0
        below_sq = 0.0
        runs = 0
        above_prev = False
        for k in range(count):
            v = float(ring[(start + k) % E])
            if v >= eps:
                if not above_prev:
                    runs += 1
                above_prev = True
            else:
                below += 1
                below_sum += v
                below_sq += v * v
                above_prev = False
        above = count - below
        if above == 0 or below == 0 or above > count // 2:
            continue
        b_mean = below_sum / below
        b_std = math.sqrt(max(below_sq / below - b_mean * b_mean, 0.0))
        mean_drop = (mean - b_mean) / mean if mean > 0.0 else 0.0
        std_drop = (std - b_std) / std
        score = (mean_drop + std_drop) / (runs * runs + above)
        if score >= best:
            best = score
            best_eps = eps
    return best_eps


@njit(**_JIT)
def dynamic_keeps_last_run(ring, count: int, start: int, eps: float, p: float, run_max):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Whether pruning keeps the run above ``eps`` that ends at the newest value.

    ``run_max`` is scratch of at least count // 2 + 2 values. The newest value must be >= eps.
    """
    E = ring.shape[0]
    n_runs = 0
    normal_max = 0.0
    above_prev = False
    for k in range(count):
        v = float(ring[(start + k) % E])
        if v >= eps:
            if above_prev:
                run_max[n_runs - 1] = max(run_max[n_runs - 1], v)
            else:
                run_max[n_runs] = v
                n_runs += 1
            above_prev = True
        else:
            normal_max = max(normal_max, v)
            above_prev = False
    current = run_max[n_runs - 1]
    maxima = np.sort(run_max[:n_runs])[::-1]  # decreasing
    # Rank of the current run among the maxima (ties: the first, the most favourable).
    rank = 0
    while maxima[rank] > current:
        rank += 1
    # Kept iff some step at or after its rank drops by at least p.
    for i in range(rank, n_runs):
        nxt = maxima[i + 1] if i + 1 < n_runs else normal_max
        if maxima[i] > 0.0 and (maxima[i] - nxt) / maxima[i] >= p:
            return True
    return False
