"""The figures of one replay: NAB in-sample, out-of-fold and at the shipped threshold, events.

From a replay's outputs (detector.evaluate.replay) and the labels, for one forecast:

* in-sample: NAB's three profiles on the anomaly scores (the alert layer's view,
  detector.evaluate.alert_view), one threshold per profile optimised over the corpus; the
  same profiles on production's own alerts at each of those thresholds (``alerts_at``; the
  view is not exact under a cooldown); window-level precision, recall and F1 at the
  standard profile's threshold;
* out-of-fold: each category scored at the thresholds optimised on the other categories
  (detector.evaluate.folds);
* at the shipped threshold (``scoring.threshold``): the profiles on production's alerts (the
  replay's ``alert`` column, exactly production's decision there) and on the anomaly scores,
  and the event-level counts of production's alerts on each file's test part
  (detector.evaluate.events).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
from numpy.typing import NDArray

from detector.config import Settings
from detector.evaluate.alert_view import alert_view, alerts_at
from detector.evaluate.events import EventCounts, file_events
from detector.evaluate.folds import OutOfFold, out_of_fold
from detector.evaluate.nab_scoring import (
    PROFILES,
    Profile,
    ProfileResult,
    Window,
    WindowMetrics,
    score_corpus,
    score_corpus_at_threshold,
    window_metrics,
)
from detector.evaluate.replay import ReplayResult

THRESHOLD_PROFILE: Final = "standard"  # window metrics and plots use this profile's threshold
_ALL_PROFILES: Final = tuple(PROFILES.values())


@dataclass(frozen=True, slots=True)
class RunFigures:
    """Everything the evaluation reports about one replay (one forecast)."""

    forecast: str  # scoring.forecast of the run
    replay: ReplayResult
    scores: Mapping[str, NDArray[np.float64]]  # the anomaly_score column, by file
    profiles: Mapping[str, ProfileResult]  # in-sample: thresholds optimised on the corpus
    # The same profiles on production's own alerts at each profile's threshold (alerts_at)
    production: Mapping[str, ProfileResult]
    metrics: WindowMetrics  # window level, at the THRESHOLD_PROFILE's threshold
    out_of_fold: Mapping[str, OutOfFold] | None  # None: not asked, or a single category
    # At the shipped threshold: the profiles on production's alerts and on the scores
    shipped_alerts: Mapping[str, ProfileResult]
    shipped_scores: Mapping[str, ProfileResult]
    events: Mapping[str, EventCounts]  # production's alerts on each file's test part
    retraining: Mapping[str, int]  # outcome -> runs ("accepted", "rejected", ...)

    def event_totals(self, names: list[str] | None = None) -> EventCounts:
        """The event counts summed over ``names`` (every file by default)."""
        picked = self.events.values() if names is None else (self.events[n] for n in names)
        return sum(picked, EventCounts())


def run_figures(
    replayed: ReplayResult,
    windows: Mapping[str, list[Window]],
    settings: Settings,
    *,
    category: Mapping[str, str] | None = None,
    test_start: Mapping[str, int] | None = None,
    retraining: Mapping[str, int] | None = None,
) -> RunFigures:
    """Every figure of one replay (module docstring). ``category``: file -> category for
    out-of-fold scores (None: none); ``test_start``: first test row by file (None: 0)."""
    scoring = settings.scoring
    scores = {name: alert_view(o.score, o.status, scoring) for name, o in replayed.outputs.items()}
    profiles = score_corpus(scores, windows, _ALL_PROFILES)
    alerts = {  # once per threshold: the profiles often share one
        theta: {
            file: alerts_at(o.score, o.status, scoring, theta)
            for file, o in replayed.outputs.items()
        }
        for theta in {r.threshold for r in profiles.values()}
    }
    production = {
        name: _score_alerts(alerts[r.threshold], windows, r.profile, r.threshold)
        for name, r in profiles.items()
    }
    # The replay's alert column is production's decision at the configured threshold.
    shipped = {file: o.alert for file, o in replayed.outputs.items()}
    starts = test_start if test_start is not None else {}
    return RunFigures(
        forecast=scoring.forecast,
        replay=replayed,
        scores=scores,
        profiles=profiles,
        production=production,
        metrics=window_metrics(scores, windows, profiles[THRESHOLD_PROFILE].threshold),
        out_of_fold=(
            out_of_fold(scores, windows, category, _ALL_PROFILES) if category is not None else None
        ),
        shipped_alerts={
            p.name: _score_alerts(shipped, windows, p, scoring.threshold) for p in _ALL_PROFILES
        },
        shipped_scores={
            p.name: score_corpus_at_threshold(scores, windows, p, scoring.threshold)
            for p in _ALL_PROFILES
        },
        events={
            file: file_events(a, windows[file], starts.get(file, 0)) for file, a in shipped.items()
        },
        retraining=dict(retraining or {}),
    )


def _score_alerts(
    alerts: Mapping[str, NDArray[np.bool_]],
    windows: Mapping[str, list[Window]],
    profile: Profile,
    threshold: float,
) -> ProfileResult:
    """NAB's profile on alerts (each alert's row scores 1.0, every other row 0.0), reported
    at the ``threshold`` the alerts were raised at."""
    return replace(score_corpus_at_threshold(alerts, windows, profile, 1.0), threshold=threshold)
