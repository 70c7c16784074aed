"""The anomaly score NAB sees: the kernel's score as the alert layer would act on it.

The kernel gives every point a score in [0, 1]; production alerts on a point when its score
is at or above ``scoring.threshold``, the stream is past warm-up, at least k of its last n
points were at or above the threshold, and its last alert is more than
``escalation_window`` points back, or more than ``cooldown`` points back and lower
(detector.stream.scoring, step 5). NAB instead sweeps one threshold θ over per-row scores.
So that the sweep follows the detector production runs, the score of each row is what the
alert layer would make of it (exactly at every θ for warm-up and hysteresis, not for the
cooldown):

* warm-up: rows before the stream may alert score 0 (a stream starts over at its first
  point, and after a gap reset or an eviction);
* hysteresis: ``min(s_i, k-th largest of the stream's last n scores)``, so the row is at or
  above θ exactly when the row and k of the last n are (exact for every θ);
* escalation: a row scores 0 when a row kept in the ``escalation_window`` scored rows
  before it scored at least as much: where that row alerted, production blocks this one
  too (the kernel compares scores to 1/65535, ``alert_level``; the view exactly, so that
  no row below θ hides the first row at or above it). The view and production part in
  two ways:
  - an earlier alert that scored less, within ``cooldown`` rows, blocks this row at every θ
    up to its score, and the view keeps the row: it counts a detection production does
    not make (mostly the second and later rows of a rising run of scores);
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
from detector.stream.scoring import NO_PREDICTION, SCORED, alert_level


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
    k, n, window = scoring.hysteresis_k, scoring.hysteresis_n, scoring.escalation_window
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
        while kept and j - kept[0][0] > window:
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
    ``threshold`` (the kernel's step 5: warm-up, k of the last n at or above it, cooldown
    and escalation)."""
    k, n, window = scoring.hysteresis_k, scoring.hysteresis_n, scoring.escalation_window
    escalate_below = window - scoring.cooldown
    out = np.zeros(score.size, np.bool_)
    recent: deque[bool] = deque(maxlen=n)  # whether each of the last n points exceeded
    left = 0  # scored points left in the last alert's escalation window
    level = 0  # that alert's score, as the kernel keeps it
    for i, s, warm, restarted in _scored_rows(score, status, scoring.warmup):
        if restarted:
            left = 0
            recent.clear()
        exceeds = s >= threshold
        recent.append(exceeds)
        was_left = left
        left = max(left - 1, 0)
        if not (warm and exceeds and sum(recent) >= k):
            continue
        this = alert_level(s)
        if was_left == 0 or (was_left <= escalate_below and this > level):
            out[i] = True
            left, level = window, this
    return out
