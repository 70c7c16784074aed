"""Event-level counts (telemetry-dev/README.md) on hand-made alert arrays."""

from __future__ import annotations

import numpy as np
import pytest

from detector.evaluate.events import EventCounts, file_events


def alerts_at(n: int, *rows: int) -> np.ndarray:
    a = np.zeros(n, np.bool_)
    a[list(rows)] = True
    return a


def test_windows_and_false_alert_events() -> None:
    # Window (10, 14) has an alert at 12: TP. Window (30, 34) has none: FN. False alerts at
    # 50, 120 (70 after 50: same event), 220 (100 after 120: a new one), 260 (40 after 220:
    # same): two events.
    got = file_events(alerts_at(300, 12, 50, 120, 220, 260), [(10, 14), (30, 34)])
    assert got == EventCounts(tp=1, fn=1, fp=2)


def test_ninety_nine_rows_apart_is_one_event_and_a_hundred_two() -> None:
    assert file_events(alerts_at(300, 0, 99), []) == EventCounts(fp=1)
    assert file_events(alerts_at(300, 0, 100), []) == EventCounts(fp=2)
    assert file_events(alerts_at(300, 0, 99, 198), []) == EventCounts(fp=1)  # chained


def test_the_gap_is_a_parameter() -> None:
    assert file_events(alerts_at(300, 0, 20), [], gap=10) == EventCounts(fp=2)


def test_a_window_between_two_close_false_alerts_does_not_split_their_event() -> None:
    # Alerts at 5 and 60, window (20, 30) between them without an alert: one FP event, a FN.
    assert file_events(alerts_at(100, 5, 60), [(20, 30)]) == EventCounts(tp=0, fn=1, fp=1)


def test_an_alert_right_after_a_window_is_false() -> None:
    # 14 is the window's last row; 15 lies outside it.
    assert file_events(alerts_at(100, 14, 15), [(10, 14)]) == EventCounts(tp=1, fn=0, fp=1)


def test_only_the_test_part_counts() -> None:
    # test_start 100: the window (10, 14) lies in the train part and is not counted, nor are
    # the alerts at 12 and 50; the false alerts at 120, 220 and 260 form two events.
    alerts = alerts_at(300, 12, 50, 120, 220, 260)
    assert file_events(alerts, [(10, 14)], test_start=100) == EventCounts(tp=0, fn=0, fp=2)


def test_a_window_straddling_the_test_start_counts_its_test_rows_only() -> None:
    # Window (90, 110), test part from 100: an alert at 95 is in the train part (FN), one at
    # 105 in the test part (TP). Neither is a false alert: both lie inside the window.
    assert file_events(alerts_at(200, 95), [(90, 110)], test_start=100) == EventCounts(fn=1)
    assert file_events(alerts_at(200, 105), [(90, 110)], test_start=100) == EventCounts(tp=1)


def test_a_false_alert_just_before_the_test_start_is_not_counted() -> None:
    # 99 is the last train row, 100 the first test row: one counted alert, one event.
    assert file_events(alerts_at(200, 99, 100), [], test_start=100) == EventCounts(fp=1)
    assert file_events(alerts_at(200, 99), [], test_start=100) == EventCounts()


def test_no_alerts() -> None:
    assert file_events(np.zeros(50, np.bool_), [(10, 20)]) == EventCounts(fn=1)
    assert file_events(np.zeros(50, np.bool_), []) == EventCounts()


def test_counts_add_up_and_give_precision_recall_f1() -> None:
    total = sum([EventCounts(1, 1, 0), EventCounts(1, 0, 2)], EventCounts())
    assert total == EventCounts(tp=2, fn=1, fp=2)
    # P = 2/4, R = 2/3, F1 = 2 · (1/2)(2/3) / (1/2 + 2/3) = 4/7
    assert total.precision == pytest.approx(0.5)
    assert total.recall == pytest.approx(2 / 3)
    assert total.f1 == pytest.approx(4 / 7)


def test_empty_ratios_are_zero() -> None:
    assert (EventCounts().precision, EventCounts().recall, EventCounts().f1) == (0.0, 0.0, 0.0)
    # Only false alarms: precision 0; no window: recall 0.
    assert EventCounts(fp=3).precision == 0.0 and EventCounts(fp=3).f1 == 0.0
    assert EventCounts(fn=2).recall == 0.0


@pytest.mark.parametrize(
    ("windows", "test_start", "match"),
    [([(10, 60)], 0, r"\(10, 60\)"), ([(-1, 3)], 0, "row range"), ([], 51, "test_start 51")],
)
def test_bad_input_is_refused(windows: list[tuple[int, int]], test_start: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        file_events(np.zeros(50, np.bool_), windows, test_start)
