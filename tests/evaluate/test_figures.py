"""The figures of one replay, on a hand-made replay whose right answers are worked out by hand.

The kernel scored every row 0 (so the anomaly scores say nothing), but production alerted
on some rows: the figures at the shipped threshold must come from those alerts (the
replay's ``alert`` column), the in-sample ones from the scores. Files have N = 200 rows,
probation P = 30; the window (100, 105)'s first row is worth exactly A_TP = 1, a false
alert in a file without windows exactly -A_FP.
"""

from __future__ import annotations

import numpy as np
import pytest

from detector.config import ScoringSettings, Settings
from detector.evaluate.events import EventCounts
from detector.evaluate.figures import run_figures
from detector.evaluate.nab_scoring import NO_DETECTION_THRESHOLD
from detector.evaluate.replay import ReplayResult, SeriesOutput
from detector.stream.scoring import NO_PREDICTION, SCORED

N = 200
WINDOWS = {"A/x.csv": [(100, 105)], "B/y.csv": []}
SETTINGS = Settings(scoring=ScoringSettings(warmup=0, threshold=0.5))


def output(*alert_rows: int) -> SeriesOutput:
    status = np.full(N, SCORED, np.int8)
    status[0] = NO_PREDICTION
    alert = np.zeros(N, np.bool_)
    alert[list(alert_rows)] = True
    return SeriesOutput(np.zeros(N), np.full(N, np.nan), status, alert)


def replayed() -> ReplayResult:
    # A/x: an alert on its window's first row. B/y: false alerts at 40 and 160.
    return ReplayResult(
        {"A/x.csv": output(100), "B/y.csv": output(40, 160)}, counters={}, batches=N, seconds=0
    )


def test_shipped_threshold_figures_are_production_alerts() -> None:
    got = run_figures(replayed(), WINDOWS, SETTINGS)
    # standard: 1 - 2 · 0.11 = 0.78 over one window (perfect 1, null -1): 100 · 1.78 / 2
    standard = got.shipped_alerts["standard"]
    assert standard.threshold == 0.5
    assert (standard.tp_windows, standard.fn_windows, standard.fp_detections) == (1, 0, 2)
    assert standard.raw_score == pytest.approx(0.78)
    assert standard.normalised_score == pytest.approx(89.0)
    # reward_low_FP_rate: 1 - 2 · 0.22 = 0.56: 100 · 1.56 / 2. reward_low_FN_rate: 0.78,
    # perfect 1, null -2: 100 · 2.78 / 3.
    assert got.shipped_alerts["reward_low_FP_rate"].normalised_score == pytest.approx(78.0)
    assert got.shipped_alerts["reward_low_FN_rate"].normalised_score == pytest.approx(278 / 3)
    # The scores (all 0) detect nothing at 0.5: the window missed, raw -1, score 0.
    assert got.shipped_scores["standard"].raw_score == -1.0
    assert got.shipped_scores["standard"].normalised_score == 0.0
    # In-sample, the scores say nothing: "never fire" is the best threshold, and production
    # raises no alert there.
    assert got.profiles["standard"].threshold == NO_DETECTION_THRESHOLD
    assert got.profiles["standard"].normalised_score == 0.0
    assert got.production["standard"].tp_windows == 0
    assert got.forecast == "model"
    assert got.out_of_fold is None


def test_events_count_production_alerts_on_the_test_part() -> None:
    # Without train points: A/x one TP; B/y's false alerts 120 rows apart, two events.
    every_row = run_figures(replayed(), WINDOWS, SETTINGS)
    assert every_row.events == {"A/x.csv": EventCounts(tp=1), "B/y.csv": EventCounts(fp=2)}
    assert every_row.event_totals() == EventCounts(tp=1, fn=0, fp=2)
    # Test parts from row 50: B/y's alert at 40 is in its train part; one event left.
    test_part = run_figures(replayed(), WINDOWS, SETTINGS, test_start=dict.fromkeys(WINDOWS, 50))
    assert test_part.event_totals() == EventCounts(tp=1, fn=0, fp=1)
    assert test_part.event_totals(["B/y.csv"]) == EventCounts(fp=1)
    # NAB knows no train part: the shipped-threshold profile still counts both false alerts.
    assert test_part.shipped_alerts["standard"].fp_detections == 2


def test_out_of_fold_by_category() -> None:
    got = run_figures(replayed(), WINDOWS, SETTINGS, category={"A/x.csv": "A", "B/y.csv": "B"})
    assert got.out_of_fold is not None
    standard = got.out_of_fold["standard"]
    # Scores all 0: each fold never fires, A's window is missed.
    assert standard.thresholds == {"A": NO_DETECTION_THRESHOLD, "B": NO_DETECTION_THRESHOLD}
    assert standard.raw_score == -1.0
