"""The anomaly score NAB sees: the kernel's score as the alert layer would act on it.

The kernel gives every point a score in [0, 1]; production alerts on a point when its score
is at or above ``scoring.threshold``, the stream is past warm-up, at least k of its last n
points were at or above the threshold, and no cooldown runs (detector.stream.scoring, step
5). NAB instead sweeps one threshold θ over per-row scores. So that the sweep follows the
detector production runs, the score of each row is what the alert layer would make of it
(exactly at every θ for warm-up and hysteresis, not for the cooldown):

* warm-up: rows before the stream may alert score 0 (a stream starts over at its first
  point, and after a gap reset or an eviction);
* hysteresis: ``min(s_i, k-th largest of the stream's last n scores)``, so the row is at or
  above θ exactly when the row and k of the last n are (exact for every θ);
* cooldown: a row scores 0 when a row kept in the ``cooldown`` scored rows before it scored
  at least as much: where that row alerted, production's cooldown blocks this one too.
  The view and production part in two ways:
  - an earlier alert that scored less blocks this row at every θ up to its score, and the
    view keeps the row: it counts a detection production does not make (a false positive,
    or a window production misses behind a false alert's cooldown; on nab-dev without
    retraining 2 of the 55 windows detected at the corpus threshold, both in
    realTraffic/speed_7578);
  - a kept row that production did not alert on (an earlier alert's cooldown blocked it)
    blocks this row in the view, where production, that cooldown over, alerts.
  No score per row can be exact: production's alerts at a higher θ are not a subset of
  those at a lower one. ``alerts_at`` gives production's alerts at one θ exactly, and the
  evaluation reports their NAB score at the view's thresholds too.

Rows the kernel did not score (first point of a stream, dropped or non-finite points)
score 0. Only past rows of the same stream are used: the view is causal, like the detector.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from detector.config import ScoringSettings
from detector.stream.scoring import NO_PREDICTION, SCORED


def _scored_rows(
    score: NDArray[np.float64], status: NDArray[np.int8], warmup: int
) -> Iterator[tuple[int, float, bool, bool]]:
    """(row, score, warm, restarted) of every row of one stream that the kernel scored, in
    arrival order. ``warm``: the stream may alert on it (``warmup`` points since its start,
    counted as the kernel's ``seen``); ``restarted``: the first scored row after a (re)start,
    before which the alert layer forgets the stream (history, cooldown)."""
    seen = 0
    restarted = False
    for i, (s, st) in enumerate(zip(score.tolist(), status.tolist(), strict=True)):
        if st == NO_PREDICTION:
            seen, restarted = 1, True
        elif st == SCORED:
            yield i, s, seen >= warmup, restarted
            seen += 1
            restarted = False


def alert_view(
    score: NDArray[np.float64], status: NDArray[np.int8], scoring: ScoringSettings
) -> NDArray[np.float64]:
    """The rows of one stream in arrival order → their scores under the alert layer."""
    k, n, cooldown = scoring.hysteresis_k, scoring.hysteresis_n, scoring.cooldown
    out = np.zeros(score.size, np.float64)
    recent: deque[float] = deque(maxlen=n)  # the last n scores (hysteresis history)
    kept: deque[tuple[int, float]] = deque()  # (scored index, score) of rows kept
    j = 0  # index of the row among the stream's scored rows
    for i, s, warm, restarted in _scored_rows(score, status, scoring.warmup):
        if restarted:
            j = 0
            recent.clear()
            kept.clear()
        j += 1
        recent.append(s)
        if not warm or s <= 0.0:
            continue
        v = min(s, sorted(recent, reverse=True)[k - 1]) if len(recent) >= k else 0.0
        while kept and j - kept[0][0] > cooldown:
            kept.popleft()
        if v > 0.0 and all(w < v for _, w in kept):
            out[i] = v
            kept.append((j, v))
    return out


def alerts_at(
    score: NDArray[np.float64],
    status: NDArray[np.int8],
    scoring: ScoringSettings,
    threshold: float,
) -> NDArray[np.bool_]:
    """The rows of one stream in arrival order → whether production alerts on each at
    ``threshold`` (the kernel's step 5: warm-up, k of the last n at or above it, cooldown)."""
    k, n, cooldown = scoring.hysteresis_k, scoring.hysteresis_n, scoring.cooldown
    out = np.zeros(score.size, np.bool_)
    recent: deque[bool] = deque(maxlen=n)  # whether each of the last n points exceeded
    cooling = 0  # scored points left in the cooldown
    for i, s, warm, restarted in _scored_rows(score, status, scoring.warmup):
        if restarted:
            cooling = 0
            recent.clear()
        exceeds = s >= threshold
        recent.append(exceeds)
        if cooling > 0:
            cooling -= 1
        elif warm and exceeds and sum(recent) >= k:
            out[i] = True
            cooling = cooldown
    return out
