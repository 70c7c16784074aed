"""Leave-one-category-out NAB scores on hand-made score arrays, worked out by hand.

Every file has N = 20 rows, so probation is P = floor(0.15 · 20) = 3 rows. The windows are
(10, 14): a detection at row 10, the window's first row, is worth exactly A_TP = 1; a
detection in a file without windows is worth exactly -A_FP; a missed window -A_FN.
"""

from __future__ import annotations

import numpy as np
import pytest

from detector.evaluate.folds import out_of_fold
from detector.evaluate.nab_scoring import NO_DETECTION_THRESHOLD, PROFILES, score_corpus

N = 20
WINDOW = (10, 14)


def spike(at: int, score: float) -> np.ndarray:
    s = np.zeros(N)
    s[at] = score
    return s


def three_categories() -> tuple[dict[str, np.ndarray], dict[str, list[tuple[int, int]]]]:
    """a/x: its window found at 0.9; b/y: at 0.6; c/z: no window, a false alarm at 0.8."""
    scores = {"a/x.csv": spike(10, 0.9), "b/y.csv": spike(10, 0.6), "c/z.csv": spike(5, 0.8)}
    windows = {"a/x.csv": [WINDOW], "b/y.csv": [WINDOW], "c/z.csv": []}
    return scores, windows


CATEGORY = {"a/x.csv": "a", "b/y.csv": "b", "c/z.csv": "c"}


def test_each_category_is_scored_at_the_threshold_the_others_choose() -> None:
    # standard (1, 0.11, 1), by hand:
    #   fold a, fitted on b and c: θ 0.6 gives b's TP and c's false alarm, 1 - 0.11 = 0.89,
    #     above θ 0.8 (-1.11) and never firing (-1). a's 0.9 >= 0.6: a TP, +1.
    #   fold b, fitted on a and c: θ 0.9 gives a's TP and no false alarm, 1, above θ 0.8
    #     (0.89). b's 0.6 < 0.9: missed, -1.
    #   fold c, fitted on a and b: θ 0.6 finds both windows, 2. c's 0.8 >= 0.6: -0.11.
    # raw = 1 - 1 - 0.11 = -0.11 over 2 windows: perfect 2, null -2,
    # score = 100 (-0.11 + 2) / 4 = 47.25. In-sample, θ 0.6 scores 2 - 0.11: 97.25.
    scores, windows = three_categories()
    oof = out_of_fold(scores, windows, CATEGORY)
    standard = oof["standard"]
    assert standard.thresholds == {"a": 0.6, "b": 0.9, "c": 0.6}
    assert standard.raw_score == pytest.approx(-0.11)
    assert standard.normalised_score == pytest.approx(47.25)
    assert (standard.n_windows, standard.tp_windows, standard.fn_windows) == (2, 1, 1)
    assert standard.fp_detections == 1
    assert standard.folds["a"].raw_score == pytest.approx(1.0)
    assert standard.folds["b"].raw_score == pytest.approx(-1.0)
    assert standard.folds["c"].raw_score == pytest.approx(-0.11)
    assert set(standard.per_file) == set(scores)
    assert score_corpus(scores, windows)["standard"].normalised_score == pytest.approx(97.25)


def test_the_other_profiles_weigh_the_same_folds_differently() -> None:
    # reward_low_FP_rate (1, 0.22, 1): the same thresholds (fold a: 1 - 0.22 = 0.78 > -1;
    # fold b: 1 > 0.78); raw = 1 - 1 - 0.22 = -0.22, score 100 (-0.22 + 2) / 4 = 44.5.
    # reward_low_FN_rate (1, 0.11, 2): the same thresholds; b's miss costs 2:
    # raw = 1 - 2 - 0.11 = -1.11; perfect 2, null -4: score 100 (-1.11 + 4) / 6 = 48.1666...
    scores, windows = three_categories()
    oof = out_of_fold(scores, windows, CATEGORY)
    low_fp, low_fn = oof["reward_low_FP_rate"], oof["reward_low_FN_rate"]
    assert low_fp.thresholds == low_fn.thresholds == {"a": 0.6, "b": 0.9, "c": 0.6}
    assert low_fp.raw_score == pytest.approx(-0.22)
    assert low_fp.normalised_score == pytest.approx(44.5)
    assert low_fn.raw_score == pytest.approx(-1.11)
    assert low_fn.normalised_score == pytest.approx(289 / 6)


def test_out_of_fold_equals_in_sample_when_every_fold_picks_the_same_threshold() -> None:
    # Both windows found at 0.9, nothing else: every fold, like the whole corpus, picks 0.9;
    # two TPs worth 1 each: raw 2 = perfect, score 100.
    scores = {"a/x.csv": spike(10, 0.9), "b/y.csv": spike(10, 0.9)}
    windows = {"a/x.csv": [WINDOW], "b/y.csv": [WINDOW]}
    oof = out_of_fold(scores, windows, {"a/x.csv": "a", "b/y.csv": "b"}, [PROFILES["standard"]])
    assert list(oof) == ["standard"]
    assert oof["standard"].thresholds == {"a": 0.9, "b": 0.9}
    assert oof["standard"].normalised_score == pytest.approx(100.0)
    assert score_corpus(scores, windows)["standard"].normalised_score == pytest.approx(100.0)


def test_a_fold_fitted_on_files_without_windows_never_fires() -> None:
    # Fold a is fitted on b alone, which has no window: any detection there only costs, so
    # the optimiser picks "never fire" and a's window is missed: raw -1, score 0, although
    # the corpus threshold 0.9 finds it without a false alarm (b's row scores 0.5).
    scores = {"a/x.csv": spike(10, 0.9), "b/y.csv": spike(5, 0.5)}
    windows = {"a/x.csv": [WINDOW], "b/y.csv": []}
    oof = out_of_fold(scores, windows, {"a/x.csv": "a", "b/y.csv": "b"})["standard"]
    assert oof.thresholds["a"] == NO_DETECTION_THRESHOLD
    assert oof.raw_score == pytest.approx(-1.0)
    assert oof.normalised_score == pytest.approx(0.0)
    # Fold b, fitted on a: θ 0.9; b's 0.5 stays below it, so b adds nothing.
    assert oof.thresholds["b"] == 0.9
    assert oof.folds["b"].raw_score == 0.0


def test_one_category_is_refused() -> None:
    scores = {"a/x.csv": spike(10, 0.9), "a/y.csv": spike(10, 0.6)}
    windows = {"a/x.csv": [WINDOW], "a/y.csv": [WINDOW]}
    with pytest.raises(ValueError, match="at least two categories"):
        out_of_fold(scores, windows, {"a/x.csv": "a", "a/y.csv": "a"})


def test_a_file_without_a_category_is_named() -> None:
    scores, windows = three_categories()
    with pytest.raises(ValueError, match=r"c/z\.csv"):
        out_of_fold(scores, windows, {"a/x.csv": "a", "b/y.csv": "b"})
