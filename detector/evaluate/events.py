"""Event-level detection counts at one fixed threshold, as telemanom reports them.

As telemetry-dev/README.md defines them, on one file's alerts (production's, at the shipped
threshold: what a user is paged for):

* only the test part counts: rows from ``test_start`` on (a file's train part comes first;
  0 when there is none). A window that ends before ``test_start`` is not counted; one that
  straddles it counts with its test rows only (the corpus promises no window in a train part);
* a labelled window is a true positive when there is an alert at any row inside it, else a
  false negative;
* alerts outside every window are false positives, grouped into events: two such alerts less
  than ``gap`` rows apart (100) belong to one event, whatever lies between them (a window
  between two false alerts 60 rows apart does not split their event).

Precision, recall and F1 come from counts summed over files (then the ratios); a ratio whose
denominator is 0 is 0, and F1 is 0 when precision and recall both are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from detector.evaluate.nab_scoring import Window

FP_EVENT_GAP: Final = 100  # rows: false alerts closer than this are one event


@dataclass(frozen=True, slots=True)
class EventCounts:
    """True-positive and false-negative windows, false-positive events; add to sum files."""

    tp: int = 0
    fn: int = 0
    fp: int = 0

    def __add__(self, other: EventCounts) -> EventCounts:
        return EventCounts(self.tp + other.tp, self.fn + other.fn, self.fp + other.fp)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0


def file_events(
    alerts: npt.ArrayLike,
    windows: Sequence[Window],
    test_start: int = 0,
    gap: int = FP_EVENT_GAP,
) -> EventCounts:
    """The event counts of one file (module docstring). ``alerts``: one bool per row;
    ``windows``: inclusive row ranges, in order."""
    fired = np.asarray(alerts, dtype=np.bool_)
    if fired.ndim != 1:
        raise ValueError(f"alerts must be one-dimensional, got shape {fired.shape}")
    if not 0 <= test_start <= fired.size:
        raise ValueError(f"test_start {test_start} is not a row of {fired.size} rows (or the end)")
    outside = np.ones(fired.size, np.bool_)
    outside[:test_start] = False
    tp = fn = 0
    for l, r in windows:
        if not 0 <= l <= r < fired.size:
            raise ValueError(
                f"window ({l}, {r}) is not an inclusive row range of {fired.size} rows"
            )
        outside[l : r + 1] = False
        if r < test_start:
            continue
        if fired[max(l, test_start) : r + 1].any():
            tp += 1
        else:
            fn += 1
    false_alerts = np.flatnonzero(fired & outside)
    fp = int(false_alerts.size > 0) + int(np.count_nonzero(np.diff(false_alerts) >= gap))
    return EventCounts(tp, fn, fp)
