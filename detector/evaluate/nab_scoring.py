"""Numenta Anomaly Benchmark (NAB v1.1) scoring, as specified by nab-dev/README.md.

A window is an inclusive range of ROW indices ``(l, r)`` of one data file. Scores are one
float in [0, 1] per row; a row is a detection when ``score >= threshold``.

Choices where the README is silent (NAB v1.1's own behaviour unless noted):

* Probation: the first ``P = min(floor(0.15 N), 750)`` rows are never scored. A window that
  overlaps the probation period keeps its full-width weights but can only be detected by its
  rows at or after ``P``; a window lying entirely in probation is not scored at all (neither
  TP nor FN) and is left out of the window count used for normalisation, so that the null
  detector always scores exactly 0.
* A label timestamp that occurs several times in a file maps to its first row (NAB uses
  ``list.index``).
* After a window of width 1, ``y = (i - r) / (W - 1)`` is undefined (NAB divides by zero):
  we take the limit, ``y = +inf``, i.e. ``v_i = -A_FP``.
* ``S(3)`` uses the sigmoid (README: ``y <= 3``), where NAB's code returns -1; the two differ
  by 6e-7 · A_FP.
* The threshold sweep also considers "never fire" (``NO_DETECTION_THRESHOLD`` = 1.1, NAB's
  start value); among equally good thresholds the highest wins (NAB keeps the first maximum
  of its descending sweep).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt

Window = tuple[int, int]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
TimestampArray = npt.NDArray[np.datetime64]


@dataclass(frozen=True)
class Profile:
    """A NAB application profile: the weights of a TP, a FP and a FN."""

    name: str
    a_tp: float
    a_fp: float
    a_fn: float


PROFILES: Final[Mapping[str, Profile]] = MappingProxyType(
    {
        p.name: p
        for p in (
            Profile("standard", a_tp=1.0, a_fp=0.11, a_fn=1.0),
            Profile("reward_low_FP_rate", a_tp=1.0, a_fp=0.22, a_fn=1.0),
            Profile("reward_low_FN_rate", a_tp=1.0, a_fp=0.11, a_fn=2.0),
        )
    }
)

# Above every valid score, so that this threshold means "the detector never fires".
NO_DETECTION_THRESHOLD: Final = 1.1
_ALL_PROFILES: Final = tuple(PROFILES.values())

_PROBATION_PERCENT: Final = 15
_PROBATION_MAX: Final = 750
_TIME_UNIT: Final = "datetime64[us]"


@dataclass(frozen=True)
class FileScore:
    """Raw NAB score of one file at one threshold, with its counts."""

    raw_score: float
    tp_windows: int
    fn_windows: int
    fp_detections: int


@dataclass(frozen=True)
class ProfileResult:
    """Corpus score for one profile at one threshold (the optimal one from `score_corpus`)."""

    profile: Profile
    threshold: float
    raw_score: float
    normalised_score: float  # NaN when the corpus has no scored window
    null_score: float
    perfect_score: float
    n_windows: int
    tp_windows: int
    fn_windows: int
    fp_detections: int
    per_file: Mapping[str, FileScore]


@dataclass(frozen=True)
class WindowMetrics:
    """Window-level detection counts and precision / recall / F1 at one threshold."""

    threshold: float
    n_windows: int
    detected_windows: int
    fp_events: int
    precision: float
    recall: float
    f1: float


def probation_length(n_rows: int) -> int:
    """P = min(floor(0.15 N), 750): rows not scored at the start of a file."""
    # Integer arithmetic: equal to NAB's float expression for every N, without rounding doubt.
    return min(n_rows * _PROBATION_PERCENT // 100, _PROBATION_MAX)


def scaled_sigmoid(y: FloatArray) -> FloatArray:
    """S(y) = 2σ(-5y) - 1 for y <= 3, -1 beyond."""
    # Clipping first keeps exp() from overflowing for far-away rows; those get -1 anyway.
    s = 2.0 / (1.0 + np.exp(5.0 * np.minimum(y, 3.0))) - 1.0
    return np.where(y > 3.0, -1.0, s)


_S_WINDOW_START: Final = float(scaled_sigmoid(np.array([-1.0]))[0])


# ---------------------------------------------------------------------------------------------
# Labels


def read_timestamps(csv_path: str | Path) -> TimestampArray:
    """The ``timestamp`` column of a NAB data (or results) CSV, as datetime64[us]."""
    path = Path(csv_path)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or "timestamp" not in header:
            raise ValueError(f"{path}: no 'timestamp' column in the header")
        col = header.index("timestamp")
        raw = [row[col] for row in reader if row]
    try:
        return np.array(raw, dtype=_TIME_UNIT)
    except ValueError as exc:
        raise ValueError(f"{path}: unparsable timestamp ({exc})") from exc


def windows_from_timestamps(
    timestamps: npt.ArrayLike, label_windows: Sequence[Sequence[str]], name: str
) -> list[Window]:
    """Map ``[[start, end], ...]`` label timestamps to inclusive row ranges of one file.

    Timestamps must match a row exactly (as instants: ``.000000`` suffixes are fine);
    ``name`` is only used in error messages.
    """
    ts = np.asarray(timestamps).astype(_TIME_UNIT)
    # np.unique reports the first occurrence of each value, as NAB's list.index does.
    uniq, first_row = np.unique(ts, return_index=True)

    def row_of(label: str) -> int:
        try:
            t = np.datetime64(label, "us")
        except ValueError as exc:
            raise ValueError(f"{name}: unparsable label timestamp {label!r}") from exc
        pos = int(np.searchsorted(uniq, t))
        if pos == uniq.size or uniq[pos] != t:
            raise ValueError(f"{name}: label timestamp {label!r} is not a timestamp of the file")
        return int(first_row[pos])

    windows: list[Window] = []
    for pair in label_windows:
        if len(pair) != 2:
            raise ValueError(f"{name}: a window must be [start, end], got {pair!r}")
        windows.append((row_of(pair[0]), row_of(pair[1])))
    try:
        return _check_windows(ts.size, windows)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def load_windows(labels_json_path: str | Path, data_dir: str | Path) -> dict[str, list[Window]]:
    """Read ``combined_windows.json`` and map every file's windows to row ranges."""
    with Path(labels_json_path).open() as f:
        labels: object = json.load(f)
    if not isinstance(labels, dict):
        # A malformed labels file is bad input like any other: ValueError, not TypeError.
        raise ValueError(f"{labels_json_path}: expected an object of file name -> windows")  # noqa: TRY004
    return {
        name: windows_from_timestamps(read_timestamps(Path(data_dir) / name), wins, name)
        for name, wins in labels.items()
    }


def _check_windows(n_rows: int, windows: Sequence[Window]) -> list[Window]:
    out: list[Window] = []
    prev_end = -1
    for l, r in windows:
        if not 0 <= l <= r < n_rows:
            raise ValueError(f"window ({l}, {r}) is not an inclusive row range of {n_rows} rows")
        if l <= prev_end:
            raise ValueError(f"window ({l}, {r}) is out of order or overlaps the previous one")
        out.append((int(l), int(r)))
        prev_end = r
    return out


# ---------------------------------------------------------------------------------------------
# Row weights and per-file scoring


def row_weights(n_rows: int, windows: Sequence[Window], profile: Profile) -> FloatArray:
    """The README's v_i for every row (probation rows included: the scorers skip them)."""
    wins = _check_windows(n_rows, windows)
    v = np.full(n_rows, -profile.a_fp, dtype=np.float64)  # before the first window
    stops = [l for l, _ in wins[1:]] + [n_rows] * bool(wins)  # where each window's tail ends
    for (l, r), stop in zip(wins, stops, strict=True):
        width = r - l + 1
        i = np.arange(l, r + 1, dtype=np.float64)
        v[l : r + 1] = profile.a_tp * scaled_sigmoid(-(r - i + 1) / width) / _S_WINDOW_START
        if width > 1:  # width 1: y = +inf after it, so the -A_FP fill is already right
            j = np.arange(r + 1, stop, dtype=np.float64)
            v[r + 1 : stop] = profile.a_fp * scaled_sigmoid((j - r) / (width - 1))
    return v


def score_file_at_threshold(
    scores: npt.ArrayLike, windows: Sequence[Window], profile: Profile, threshold: float
) -> FileScore:
    """Slow reference scorer: the README rules row by row (for tests)."""
    s = [float(x) for x in np.asarray(scores, dtype=np.float64)]
    n = len(s)
    wins = _check_windows(n, windows)
    p = probation_length(n)

    def sigmoid(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    def big_s(y: float) -> float:
        return -1.0 if y > 3.0 else 2.0 * sigmoid(-5.0 * y) - 1.0

    raw, tp, fn, fp = 0.0, 0, 0, 0
    for l, r in wins:
        if r < p:
            continue  # entirely in probation: not scored
        width = r - l + 1
        hits = [
            profile.a_tp * big_s(-(r - i + 1) / width) / big_s(-1.0)
            for i in range(max(l, p), r + 1)
            if s[i] >= threshold
        ]
        if hits:
            raw, tp = raw + max(hits), tp + 1
        else:
            raw, fn = raw - profile.a_fn, fn + 1
    for i in range(p, n):
        if s[i] < threshold or any(l <= i <= r for l, r in wins):
            continue
        before = [(l, r) for l, r in wins if r < i]
        if not before:
            v = -profile.a_fp
        else:
            l, r = before[-1]
            y = math.inf if r == l else (i - r) / (r - l)  # (i - r) / (W - 1)
            v = profile.a_fp * big_s(y)
        raw, fp = raw + v, fp + 1
    return FileScore(raw_score=raw, tp_windows=tp, fn_windows=fn, fp_detections=fp)


@dataclass(frozen=True)
class _File:
    """One validated file: its scores and what the scorers need about its rows."""

    scores: FloatArray
    windows: list[Window]
    probation: int
    outside: BoolArray  # scored rows outside every window
    scored_windows: list[Window]  # (first scored row, r) of windows not inside probation


def _prepare_file(name: str, scores: npt.ArrayLike, windows: Sequence[Window]) -> _File:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name}: scores must be one-dimensional, got shape {s.shape}")
    if not np.all((s >= 0.0) & (s <= 1.0)):  # also rejects NaN
        raise ValueError(f"{name}: anomaly scores must be finite and in [0, 1]")
    try:
        wins = _check_windows(s.size, windows)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    p = probation_length(s.size)
    outside = np.ones(s.size, dtype=np.bool_)
    outside[:p] = False
    for l, r in wins:
        outside[l : r + 1] = False
    scored = [(max(l, p), r) for l, r in wins if r >= p]
    return _File(s, wins, p, outside, scored)


def _prepare_corpus(
    scores: Mapping[str, npt.ArrayLike], windows: Mapping[str, Sequence[Window]]
) -> dict[str, _File]:
    if scores.keys() != windows.keys():
        missing = sorted(windows.keys() - scores.keys())
        extra = sorted(scores.keys() - windows.keys())
        raise ValueError(f"scores and windows differ: no scores for {missing}, no labels {extra}")
    return {name: _prepare_file(name, scores[name], windows[name]) for name in windows}


def _score_prepared(f: _File, v: FloatArray, profile: Profile, threshold: float) -> FileScore:
    detected = f.scores >= threshold
    fp_rows = detected & f.outside
    raw = math.fsum(v[fp_rows])
    tp = 0
    for lo, r in f.scored_windows:
        hits = np.flatnonzero(detected[lo : r + 1])
        if hits.size:
            # Weights fall along a window, so the earliest detection is the largest v_i.
            raw += float(v[lo + hits[0]])
            tp += 1
        else:
            raw -= profile.a_fn
    return FileScore(raw, tp, len(f.scored_windows) - tp, int(np.count_nonzero(fp_rows)))


def normalise(raw_score: float, n_windows: int, profile: Profile) -> float:
    """100 (raw - null) / (perfect - null) over ``n_windows`` scored windows; NaN for none."""
    perfect, null = profile.a_tp * n_windows, -profile.a_fn * n_windows
    return 100.0 * (raw_score - null) / (perfect - null) if n_windows else math.nan


def _result(files: Mapping[str, _File], profile: Profile, threshold: float) -> ProfileResult:
    per_file = {
        name: _score_prepared(f, row_weights(f.scores.size, f.windows, profile), profile, threshold)
        for name, f in files.items()
    }
    n_windows = sum(len(f.scored_windows) for f in files.values())
    raw = math.fsum(fs.raw_score for fs in per_file.values())
    return ProfileResult(
        profile=profile,
        threshold=threshold,
        raw_score=raw,
        normalised_score=normalise(raw, n_windows, profile),
        null_score=-profile.a_fn * n_windows,
        perfect_score=profile.a_tp * n_windows,
        n_windows=n_windows,
        tp_windows=sum(fs.tp_windows for fs in per_file.values()),
        fn_windows=sum(fs.fn_windows for fs in per_file.values()),
        fp_detections=sum(fs.fp_detections for fs in per_file.values()),
        per_file=MappingProxyType(per_file),
    )


# ---------------------------------------------------------------------------------------------
# Corpus scoring


def score_corpus_at_threshold(
    scores: Mapping[str, npt.ArrayLike],
    windows: Mapping[str, Sequence[Window]],
    profile: Profile,
    threshold: float,
) -> ProfileResult:
    """Score the corpus for one profile at a given threshold (no optimisation)."""
    return _result(_prepare_corpus(scores, windows), profile, threshold)


def _best_threshold(files: Mapping[str, _File], profile: Profile) -> float:
    """The θ maximising the corpus raw score, by an O(N log N) sweep.

    The total at θ is ``base + Σ delta_e over events e with threshold_e >= θ``, where
    ``base = -A_FN · windows`` (nothing detected). A scored row outside windows is the event
    ``(score_i, v_i)``. A window's value is v of its first row with score >= θ: a step function
    that changes only at the window's strict prefix maxima M_1 < ... < M_m (rows j_1 < ... < j_m),
    being v_{j_k} on (M_{k-1}, M_k] and -A_FN above M_m; so it yields the events
    ``(M_k, v_{j_k} - v_{j_{k+1}})`` with ``v_{j_{m+1}} = -A_FN``, which telescope.
    """
    thresholds: list[FloatArray] = []
    deltas: list[FloatArray] = []
    candidates: list[FloatArray] = []
    base = 0.0
    for f in files.values():
        v = row_weights(f.scores.size, f.windows, profile)
        thresholds.append(f.scores[f.outside])
        deltas.append(v[f.outside])
        candidates.append(f.scores[f.probation :])
        for lo, r in f.scored_windows:
            s = f.scores[lo : r + 1]
            run_max = np.maximum.accumulate(s)
            is_record = np.empty(s.size, dtype=np.bool_)
            is_record[0] = True
            np.greater(run_max[1:], run_max[:-1], out=is_record[1:])
            rec = np.flatnonzero(is_record)
            v_rec = v[lo + rec]
            thresholds.append(s[rec])
            deltas.append(v_rec - np.append(v_rec[1:], -profile.a_fn))
            base -= profile.a_fn
    thr = np.concatenate(thresholds) if thresholds else np.empty(0)
    delta = np.concatenate(deltas) if deltas else np.empty(0)
    order = np.argsort(thr, kind="stable")
    thr_sorted = thr[order]
    # at_or_above[k]: Σ delta over sorted events k.., i.e. those with threshold >= thr_sorted[k].
    at_or_above = np.zeros(thr.size + 1)
    at_or_above[:-1] = np.cumsum(delta[order][::-1])[::-1]
    # Descending, "never fire" first, so argmax's first maximum is the highest threshold.
    cand = np.concatenate(
        ([NO_DETECTION_THRESHOLD], np.unique(np.concatenate([np.empty(0), *candidates]))[::-1])
    )
    totals = base + at_or_above[np.searchsorted(thr_sorted, cand, side="left")]
    return float(cand[int(np.argmax(totals))])


def score_corpus(
    scores: Mapping[str, npt.ArrayLike],
    windows: Mapping[str, Sequence[Window]],
    profiles: Iterable[Profile] = _ALL_PROFILES,
) -> dict[str, ProfileResult]:
    """Per profile, the one corpus-wide threshold maximising the raw score, and the scores there.

    ``scores`` and ``windows`` are keyed by the same file names; candidate thresholds are the
    distinct scores of scored rows plus ``NO_DETECTION_THRESHOLD``.
    """
    files = _prepare_corpus(scores, windows)
    return {p.name: _result(files, p, _best_threshold(files, p)) for p in profiles}


def window_metrics(
    scores: Mapping[str, npt.ArrayLike],
    windows: Mapping[str, Sequence[Window]],
    threshold: float,
) -> WindowMetrics:
    """Window-level precision, recall and F1 over the corpus at ``threshold``.

    recall = detected windows / windows; precision = detected windows / (detected windows +
    false-positive alert events), where an alert event is a maximal run of consecutive
    detected rows outside every window (a window or the probation period ends a run). As in
    scoring, probation rows are ignored and windows inside probation are not counted.
    Precision (recall) is 0 when its denominator is 0; F1 is 0 when both are 0.
    """
    files = _prepare_corpus(scores, windows)
    n_windows = detected_windows = fp_events = 0
    for f in files.values():
        detected = f.scores >= threshold
        for lo, r in f.scored_windows:
            detected_windows += bool(detected[lo : r + 1].any())
        n_windows += len(f.scored_windows)
        run = detected & f.outside
        fp_events += int(np.count_nonzero(run[1:] & ~run[:-1])) + int(run[:1].sum())
    precision = detected_windows / (detected_windows + fp_events) if detected_windows else 0.0
    recall = detected_windows / n_windows if n_windows else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return WindowMetrics(threshold, n_windows, detected_windows, fp_events, precision, recall, f1)
