"""Tests of the NAB scorer against hand-made cases, a slow reference and the real labels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.evaluate.nab_scoring import (
    NO_DETECTION_THRESHOLD,
    PROFILES,
    FileScore,
    Profile,
    Window,
    load_windows,
    probation_length,
    read_timestamps,
    row_weights,
    score_corpus,
    score_corpus_at_threshold,
    score_file_at_threshold,
    window_metrics,
    windows_from_timestamps,
)

STANDARD = PROFILES["standard"]
NAB_DEV = Path(__file__).resolve().parents[2].parent / "shared/data/nab-dev"

# 200 rows: probation is rows 0..29.
N = 200
P = 30


def _s(y: float) -> float:
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def _detections(rows: list[int], n: int = N) -> np.ndarray:
    s = np.zeros(n)
    s[rows] = 1.0
    return s


def _both(rows: list[int], windows: list[Window], profile: Profile = STANDARD) -> float:
    """Raw score of one file detecting exactly ``rows``, by the slow and the fast scorer."""
    scores = _detections(rows)
    slow = score_file_at_threshold(scores, windows, profile, 1.0)
    fast = score_corpus_at_threshold({"f": scores}, {"f": windows}, profile, 1.0)
    assert fast.per_file["f"].raw_score == pytest.approx(slow.raw_score, abs=1e-12)
    assert fast.per_file["f"] == FileScore(
        fast.per_file["f"].raw_score, slow.tp_windows, slow.fn_windows, slow.fp_detections
    )
    return slow.raw_score


def test_probation_length() -> None:
    assert probation_length(N) == P
    assert probation_length(4032) == 604
    assert probation_length(22695) == 750
    assert probation_length(6) == 0


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_detection_on_first_row_is_worth_a_tp(profile: Profile) -> None:
    assert _both([100], [(100, 149)], profile) == pytest.approx(profile.a_tp, abs=1e-12)
    assert row_weights(N, [(100, 149)], profile)[100] == pytest.approx(profile.a_tp, abs=1e-12)


def test_later_detection_in_window_is_worth_less() -> None:
    early, middle, last = (_both([i], [(100, 149)]) for i in (100, 125, 149))
    assert early > middle > last > 0
    assert middle == pytest.approx(_s(-25 / 50) / _s(-1))
    # Only the earliest detection of a window counts, not the sum.
    assert _both([100, 125, 149], [(100, 149)]) == pytest.approx(early)


def test_false_positive_after_window_costs_little_near_and_a_fp_far() -> None:
    windows = [(60, 109)]  # width 50
    right_after = _both([60, 110], windows) - 1.0
    assert -0.01 < right_after < 0
    assert right_after == pytest.approx(STANDARD.a_fp * _s(1 / 49))
    far = _both([60, 199], windows) - 1.0  # y = 90/49 > 1
    assert far == pytest.approx(STANDARD.a_fp * _s(90 / 49))
    assert -STANDARD.a_fp < far < -0.99 * STANDARD.a_fp


def test_false_positive_beyond_3_widths_and_before_first_window_cost_exactly_a_fp() -> None:
    windows = [(40, 49)]  # width 10: y > 3 from row 77 on
    assert _both([40, 80], windows) == pytest.approx(1.0 - STANDARD.a_fp, abs=1e-12)
    assert _both([35, 40], windows) == pytest.approx(1.0 - STANDARD.a_fp, abs=1e-12)
    # A file without windows: every scored detection costs A_FP.
    assert _both([50, 51, 52], []) == pytest.approx(-3 * STANDARD.a_fp, abs=1e-12)
    v = row_weights(N, windows, STANDARD)
    assert np.all(v[:40] == -STANDARD.a_fp)
    assert np.all(v[77:] == -STANDARD.a_fp)


def test_weights_between_windows_follow_the_previous_window() -> None:
    windows = [(40, 49), (150, 159)]
    v = row_weights(N, windows, STANDARD)
    assert v[50] == pytest.approx(STANDARD.a_fp * _s(1 / 9))
    assert v[160] == pytest.approx(STANDARD.a_fp * _s(1 / 9))
    assert v[150] == pytest.approx(1.0)


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_missed_window_costs_a_fn(profile: Profile) -> None:
    assert _both([], [(100, 149)], profile) == pytest.approx(-profile.a_fn)
    assert _both([], [(40, 49), (100, 149)], profile) == pytest.approx(-2 * profile.a_fn)
    assert _both([100], [(40, 49), (100, 149)], profile) == pytest.approx(
        profile.a_tp - profile.a_fn
    )


def test_probation_rows_are_ignored() -> None:
    # Neither as false positives...
    assert _both([0, 5, P - 1], []) == 0.0
    assert _both([P], []) == pytest.approx(-STANDARD.a_fp)
    # ...nor as detections of a window overlapping probation, which is still scored from P on
    # with its full-width weights.
    straddling = [(20, 39)]
    assert _both([20, 25], straddling) == pytest.approx(-STANDARD.a_fn)
    assert _both([P], straddling) == pytest.approx(_s(-(39 - P + 1) / 20) / _s(-1))
    # A window entirely inside probation is not scored at all.
    inside = [(10, 19)]
    assert _both([], inside) == 0.0
    assert _both([12], inside) == 0.0
    result = score_corpus({"f": np.zeros(N)}, {"f": inside})["standard"]
    assert result.n_windows == 0
    assert math.isnan(result.normalised_score)


def test_window_of_width_one() -> None:
    v = row_weights(N, [(100, 100)], STANDARD)
    assert v[100] == pytest.approx(1.0)
    assert np.all(v[101:] == -STANDARD.a_fp)
    assert _both([100, 101], [(100, 100)]) == pytest.approx(1.0 - STANDARD.a_fp)


def _synthetic_corpus() -> dict[str, tuple[int, list[Window]]]:
    return {
        "a.csv": (N, [(40, 49), (100, 149)]),
        "b.csv": (1000, [(200, 299), (500, 509), (900, 999)]),
        "c.csv": (300, []),
        "d.csv": (N, [(20, 39)]),  # overlaps probation, first row in it
    }


def _check_null_and_perfect(corpus: dict[str, tuple[int, list[Window]]]) -> None:
    labels = {name: w for name, (_, w) in corpus.items()}
    never = {name: np.zeros(n) for name, (n, _) in corpus.items()}
    perfect = {name: _detections([l for l, _ in w], n) for name, (n, w) in corpus.items()}
    for profile_name, result in score_corpus(never, labels).items():
        assert result.normalised_score == 0.0, profile_name
        assert result.threshold == NO_DETECTION_THRESHOLD
        assert result.tp_windows == result.fp_detections == 0
        assert result.fn_windows == result.n_windows
    for profile_name, result in score_corpus(perfect, labels).items():
        assert result.normalised_score == pytest.approx(100.0, abs=1e-9), profile_name
        assert result.threshold == 1.0
        assert result.tp_windows == result.n_windows
        assert result.fn_windows == result.fp_detections == 0


def test_null_scores_0_and_perfect_scores_100() -> None:
    corpus = _synthetic_corpus()
    del corpus["d.csv"]  # its first row is in probation: nothing can be perfect there
    _check_null_and_perfect(corpus)


@pytest.mark.skipif(not NAB_DEV.is_dir(), reason=f"NAB data not found at {NAB_DEV}")
def test_null_scores_0_and_perfect_scores_100_on_real_corpus() -> None:
    windows = load_windows(NAB_DEV / "labels/combined_windows.json", NAB_DEV / "data")
    sizes = {name: read_timestamps(NAB_DEV / "data" / name).size for name in windows}
    _check_null_and_perfect({name: (sizes[name], w) for name, w in windows.items()})


def test_null_scores_0_with_a_window_overlapping_probation() -> None:
    corpus = _synthetic_corpus()
    labels = {name: w for name, (_, w) in corpus.items()}
    result = score_corpus({name: np.zeros(n) for name, (n, _) in corpus.items()}, labels)
    assert all(r.normalised_score == 0.0 for r in result.values())
    assert result["standard"].n_windows == 6


def test_optimal_threshold_trades_detections_against_false_positives() -> None:
    # One window detected at 0.9; noise at 0.5 on every other scored row: the best threshold
    # keeps the detection and drops the noise.
    scores = np.full(N, 0.5)
    scores[100] = 0.9
    result = score_corpus({"f": scores}, {"f": [(100, 149)]})["standard"]
    assert result.threshold == 0.9
    assert result.raw_score == pytest.approx(1.0)
    assert (result.tp_windows, result.fn_windows, result.fp_detections) == (1, 0, 0)


def test_ties_between_thresholds_go_to_the_highest() -> None:
    # θ = 0.9 and θ = 0.7 both detect the window on its first row and nothing else.
    scores = np.zeros(N)
    scores[100], scores[120] = 0.9, 0.7
    result = score_corpus({"f": scores}, {"f": [(100, 149)]})["standard"]
    assert result.threshold == 0.9
    assert result.raw_score == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Fast sweep against brute force


@st.composite
def _files(draw: st.DrawFn) -> tuple[np.ndarray, list[Window]]:
    n = draw(st.integers(1, 60))
    cuts = sorted(draw(st.sets(st.integers(0, n), max_size=6)))
    cuts = cuts[: len(cuts) // 2 * 2]
    windows = [(cuts[k], cuts[k + 1] - 1) for k in range(0, len(cuts), 2)]
    value = st.one_of(
        st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0]),  # many ties
        st.floats(0.0, 1.0, allow_nan=False),
    )
    scores = np.array(draw(st.lists(value, min_size=n, max_size=n)), dtype=np.float64)
    return scores, windows


@settings(max_examples=150, deadline=None)
@given(
    files=st.lists(_files(), min_size=1, max_size=4),
    profile=st.sampled_from(list(PROFILES.values())),
)
def test_fast_sweep_equals_brute_force(
    files: list[tuple[np.ndarray, list[Window]]], profile: Profile
) -> None:
    scores = {f"f{k}": s for k, (s, _) in enumerate(files)}
    windows = {f"f{k}": w for k, (_, w) in enumerate(files)}
    candidates = sorted({float(x) for s in scores.values() for x in s} | {NO_DETECTION_THRESHOLD})

    def brute(threshold: float) -> float:
        return sum(
            score_file_at_threshold(scores[k], windows[k], profile, threshold).raw_score
            for k in scores
        )

    best = max(brute(t) for t in candidates)
    result = score_corpus(scores, windows, [profile])[profile.name]
    assert result.raw_score == pytest.approx(best, abs=1e-9)
    assert brute(result.threshold) == pytest.approx(best, abs=1e-9)
    for k in scores:
        slow = score_file_at_threshold(scores[k], windows[k], profile, result.threshold)
        fast = result.per_file[k]
        assert fast.raw_score == pytest.approx(slow.raw_score, abs=1e-9)
        assert (fast.tp_windows, fast.fn_windows, fast.fp_detections) == (
            slow.tp_windows,
            slow.fn_windows,
            slow.fp_detections,
        )


# --------------------------------------------------------------------------------------------
# Window-level precision / recall


def test_window_metrics_count_alert_events_as_runs() -> None:
    windows = [(40, 49), (100, 149)]
    # Window 1 detected (twice), window 2 missed; false runs: 60-62, 64, 199; 10 is probation.
    scores = _detections([10, 41, 45, 60, 61, 62, 64, 199])
    m = window_metrics({"f": scores}, {"f": windows}, 0.5)
    assert (m.n_windows, m.detected_windows, m.fp_events) == (2, 1, 3)
    assert m.recall == 0.5
    assert m.precision == 0.25
    assert m.f1 == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    # A run touching a window is split by it: only the rows outside count.
    m = window_metrics({"f": _detections(list(range(45, 55)))}, {"f": windows}, 0.5)
    assert (m.detected_windows, m.fp_events) == (1, 1)
    none = window_metrics({"f": np.zeros(N)}, {"f": windows}, 0.5)
    assert (none.precision, none.recall, none.f1) == (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------------------------
# Labels


def _write_csv(path: Path, stamps: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timestamp,value\n" + "".join(f"{t},1.5\n" for t in stamps))


def test_load_windows_maps_timestamps_to_rows(tmp_path: Path) -> None:
    stamps = [f"2014-04-02 14:{m:02d}:00" for m in range(0, 50, 5)]
    stamps.insert(3, stamps[2])  # a duplicated timestamp maps to its first row
    _write_csv(tmp_path / "data/cat/x.csv", stamps)
    _write_csv(tmp_path / "data/cat/empty.csv", stamps)
    (tmp_path / "labels.json").write_text(
        '{"cat/x.csv": [["2014-04-02 14:05:00.000000", "2014-04-02 14:10:00"],'
        ' ["2014-04-02 14:20:00.000000", "2014-04-02 14:45:00.000000"]], "cat/empty.csv": []}'
    )
    windows = load_windows(tmp_path / "labels.json", tmp_path / "data")
    assert windows == {"cat/x.csv": [(1, 2), (5, 10)], "cat/empty.csv": []}


def test_label_timestamp_not_in_file_is_a_clear_error(tmp_path: Path) -> None:
    _write_csv(tmp_path / "data/x.csv", ["2014-04-02 14:00:00", "2014-04-02 14:05:00"])
    (tmp_path / "labels.json").write_text(
        '{"x.csv": [["2014-04-02 14:00:00", "2014-04-02 14:07:00"]]}'
    )
    with pytest.raises(ValueError, match=r"x\.csv.*'2014-04-02 14:07:00'"):
        load_windows(tmp_path / "labels.json", tmp_path / "data")


def test_bad_windows_and_scores_are_rejected() -> None:
    ts = np.array(["2014-04-02 14:00:00", "2014-04-02 14:05:00"], dtype="datetime64[us]")
    with pytest.raises(ValueError, match=r"f\.csv"):
        windows_from_timestamps(ts, [["2014-04-02 14:05:00", "2014-04-02 14:00:00"]], "f.csv")
    with pytest.raises(ValueError, match="overlaps"):
        row_weights(N, [(40, 49), (45, 60)], STANDARD)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_corpus({"f": np.full(N, np.nan)}, {"f": []})
    with pytest.raises(ValueError, match="no scores"):
        score_corpus({"f": np.zeros(N)}, {"f": [], "g": []})


@pytest.mark.skipif(not NAB_DEV.is_dir(), reason=f"NAB data not found at {NAB_DEV}")
def test_real_labels_load_for_all_files() -> None:
    windows = load_windows(NAB_DEV / "labels/combined_windows.json", NAB_DEV / "data")
    assert len(windows) == 41
    assert sum(len(w) for w in windows.values()) == 64
    assert windows["realTraffic/speed_7578.csv"] == [(303, 331), (740, 768), (909, 937), (945, 973)]
    assert windows["artificialNoAnomaly/art_flatline.csv"] == []
    for name, wins in windows.items():
        n = read_timestamps(NAB_DEV / "data" / name).size
        # Every window of NAB's corpus starts after probation, so none is partly unscored.
        assert all(l >= probation_length(n) for l, _ in wins), name
