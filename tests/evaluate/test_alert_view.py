"""The alert layer's view of the scores, against a production-like simulation at each θ."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.config import ScoringSettings
from detector.evaluate.alert_view import alert_view, alerts_at
from detector.evaluate.replay import NOT_SCORED
from detector.stream.scoring import DROPPED, NO_PREDICTION, SCORED


def view(scores: list[float], statuses: list[int] | None = None, **kw: int) -> list[float]:
    cfg = {"warmup": 0, "cooldown": 0, "escalation_window": 0, **kw}
    if statuses is None:
        statuses = [NO_PREDICTION] + [SCORED] * (len(scores) - 1)
    out = alert_view(np.array(scores), np.array(statuses, np.int8), ScoringSettings(**cfg))
    return out.tolist()


def kernel_alerts(
    theta: float,
    scores: list[float],
    warmup: int,
    k: int,
    n: int,
    cooldown: int,
    window: int | None = None,
) -> list[bool]:
    """The kernel's alert decision (step 5) at threshold θ, for one stream from its start:
    silent for ``cooldown`` points after an alert, then until ``window`` (default: the
    cooldown) alerting only on a higher score, to 1/65535."""
    window = cooldown if window is None else window
    alerts, hist, seen, since, level = [], 0, 0, 1 << 62, 0
    for i, s in enumerate(scores):
        if i == 0:  # the first point has no prediction
            alerts.append(False)
            seen = 1
            continue
        warm = seen >= warmup
        seen += 1
        since += 1
        exceeds = s >= theta
        hist = ((hist << 1) | exceeds) & ((1 << n) - 1)
        alert = (
            warm
            and exceeds
            and bin(hist).count("1") >= k
            and since > cooldown
            and (since > window or math.floor(s * 65535) > level)
        )
        if alert:
            since, level = 0, math.floor(s * 65535)
        alerts.append(alert)
    return alerts


def test_plain_settings_pass_scored_rows_through_and_zero_the_others() -> None:
    statuses = [NO_PREDICTION, SCORED, DROPPED, SCORED, NOT_SCORED, SCORED]
    scores = [0.0, 0.3, 0.0, 0.9, 0.0, 0.2]
    assert view(scores, statuses, hysteresis_k=1, hysteresis_n=1) == scores


def test_warm_up_restarts_with_the_stream() -> None:
    statuses = [NO_PREDICTION] + [SCORED] * 4 + [NO_PREDICTION] + [SCORED] * 4
    scores = [0.0, 0.5, 0.6, 0.7, 0.8] * 2
    # warmup 3: the stream may alert from its 4th point (seen = 3) on.
    assert view(scores, statuses, warmup=3) == [0, 0, 0, 0.7, 0.8, 0, 0, 0, 0.7, 0.8]


def test_the_escalation_window_drops_lower_rows_after_a_kept_one_and_keeps_higher_ones() -> None:
    scores = [0.0, 0.9, 0.8, 0.95, 0.5, 0.3, 0.2, 0.6]
    # window 3: 0.8 is blocked by 0.9; 0.95 beats it; 0.5, 0.3 and 0.2 are blocked by
    # 0.95; 0.6 comes 4 rows after it. The cooldown proper does not enter the view.
    for cooldown in (0, 3):
        assert view(scores, cooldown=cooldown, escalation_window=3) == [
            0, 0.9, 0, 0.95, 0, 0, 0, 0.6,
        ]  # fmt: skip


def test_hysteresis_takes_the_kth_largest_of_the_last_n() -> None:
    scores = [0.0, 0.9, 0.1, 0.8, 0.7, 0.05]
    assert view(scores, hysteresis_k=2, hysteresis_n=3) == [0, 0, 0.1, 0.8, 0.7, 0.05]


_score = st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0]) | st.floats(0.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(_score, min_size=1, max_size=40),
    kn=st.integers(1, 4).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
    warmup=st.integers(0, 5),
)
def test_without_cooldown_the_view_equals_the_alerts_at_every_threshold(
    scores: list[float], kn: tuple[int, int], warmup: int
) -> None:
    scores[0] = 0.0  # the first point is never scored
    k, n = kn
    v = np.array(view(scores, warmup=warmup, hysteresis_k=k, hysteresis_n=n))
    for theta in {s for s in scores if s > 0}:
        expected = kernel_alerts(theta, scores, warmup, k, n, cooldown=0)
        assert (v >= theta).tolist() == expected, theta


# (cooldown, escalation window): the window is at least the cooldown it includes
_cooldowns = st.integers(0, 6).flatmap(lambda c: st.tuples(st.just(c), st.integers(c, 9)))


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(_score, min_size=1, max_size=40),
    kn=st.integers(1, 3).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
    cw=_cooldowns,
)
def test_with_cooldown_the_first_alert_at_every_threshold_is_the_same_row(
    scores: list[float], kn: tuple[int, int], cw: tuple[int, int]
) -> None:
    scores[0] = 0.0
    k, n = kn
    c, w = cw
    v = np.array(view(scores, cooldown=c, escalation_window=w, hysteresis_k=k, hysteresis_n=n))
    for theta in {s for s in scores if s > 0}:
        expected = kernel_alerts(theta, scores, 0, k, n, c, w)
        first = expected.index(True) if any(expected) else None
        detected = np.flatnonzero(v >= theta)
        assert (int(detected[0]) if detected.size else None) == first, theta


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(_score, min_size=1, max_size=40),
    kn=st.integers(1, 3).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
    cw=_cooldowns,
    warmup=st.integers(0, 5),
)
def test_alerts_at_is_the_kernels_decision_at_every_threshold(
    scores: list[float], kn: tuple[int, int], cw: tuple[int, int], warmup: int
) -> None:
    scores[0] = 0.0
    k, n = kn
    c, w = cw
    cfg = ScoringSettings(
        warmup=warmup, hysteresis_k=k, hysteresis_n=n, cooldown=c, escalation_window=w
    )
    statuses = np.array([NO_PREDICTION] + [SCORED] * (len(scores) - 1), np.int8)
    for theta in {s for s in scores if s > 0}:
        got = alerts_at(np.array(scores), statuses, cfg, theta)
        assert got.tolist() == kernel_alerts(theta, scores, warmup, k, n, c, w), theta


def test_a_higher_score_escalates_after_the_cooldown_not_within_it() -> None:
    """The documented gap: after a lower alert, production's cooldown proper blocks a
    higher row at every θ up to the lower score; the view keeps the higher row. After the
    cooldown, within the escalation window, production alerts on it too, and only on it."""
    scores = [0.0, 0.5, 0.1, 0.9, 0.4, 0.95]
    statuses = np.array([NO_PREDICTION] + [SCORED] * 5, np.int8)
    cfg = ScoringSettings(warmup=0, cooldown=3, escalation_window=10)
    assert view(scores, cooldown=3, escalation_window=10) == [0, 0.5, 0, 0.9, 0, 0.95]
    assert alerts_at(np.array(scores), statuses, cfg, 0.3).tolist() == [0, 1, 0, 0, 0, 1]
    # θ 0.6: 0.9 alerts, and 0.95 two rows later is within its cooldown
    assert alerts_at(np.array(scores), statuses, cfg, 0.6).tolist() == [0, 0, 0, 1, 0, 0]
    cfg = ScoringSettings(warmup=0, cooldown=1, escalation_window=10)
    # cooldown 1: 0.9 escalates on 0.5; 0.4 does not; 0.95 escalates on 0.9
    assert alerts_at(np.array(scores), statuses, cfg, 0.3).tolist() == [0, 1, 0, 1, 0, 1]


def test_a_row_production_alerts_on_can_be_blocked_in_the_view() -> None:
    """The other direction: a kept row that production's cooldown blocked (0.9, after the
    0.5 alert) still blocks a later row in the view; production, that cooldown over,
    alerts on it."""
    scores = [0.0, 0.5, 0.1, 0.9, 0.1, 0.8]
    statuses = np.array([NO_PREDICTION] + [SCORED] * 5, np.int8)
    cfg = ScoringSettings(warmup=0, cooldown=3, escalation_window=3)
    assert view(scores, cooldown=3, escalation_window=3) == [0, 0.5, 0, 0.9, 0, 0]
    assert alerts_at(np.array(scores), statuses, cfg, 0.4).tolist() == [0, 1, 0, 0, 0, 1]


def test_alerts_at_skips_unscored_rows_and_restarts_with_the_stream() -> None:
    scores = np.array([0.0, 0.9, 0.0, 0.9, 0.0, 0.9, 0.9])
    statuses = np.array(
        [NO_PREDICTION, SCORED, DROPPED, SCORED, NO_PREDICTION, SCORED, SCORED], np.int8
    )
    # warm-up 2: from the stream's 3rd point (a dropped row does not count), again after
    # the restart
    cfg = ScoringSettings(warmup=2, cooldown=5, escalation_window=5)
    assert alerts_at(scores, statuses, cfg, 0.5).tolist() == [0, 0, 0, 1, 0, 0, 1]
    # warm-up 1: the restart ends the cooldown the first alert started
    cfg = ScoringSettings(warmup=1, cooldown=5, escalation_window=5)
    assert alerts_at(scores, statuses, cfg, 0.5).tolist() == [0, 1, 0, 0, 0, 1, 0]
