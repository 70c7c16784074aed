"""`detector evaluate`: replay a labelled NAB corpus, write results, score, plot, report.

The steps: read the corpus ─► replay it through the production pipeline (labels unseen;
with ``retraining.enabled`` the model retrains online on data time, synchronously, as the
daemon would between batches) ─► each row's anomaly score as the alert layer sees it
(detector.evaluate.alert_view) ─► score all files with NAB's three profiles, one threshold
per profile optimised over the corpus ─► the same profiles on the alerts production itself
raises at each of those thresholds (the view is not exact under a cooldown) ─► window-level
precision, recall and F1 at the standard profile's threshold ─► optionally the NAB results
files, one PNG per series and a JSON report.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import structlog
from numpy.typing import NDArray
from tqdm import tqdm

from detector.config import Settings
from detector.evaluate.alert_view import alert_view, alerts_at
from detector.evaluate.corpus import SeriesFile, load_labels, read_corpus
from detector.evaluate.nab_scoring import (
    PROFILES,
    ProfileResult,
    Window,
    WindowMetrics,
    score_corpus,
    score_corpus_at_threshold,
    window_metrics,
)
from detector.evaluate.replay import AfterBatch, ReplayResult, replay
from detector.stream.pipeline import Pipeline

if TYPE_CHECKING:
    from detector.retrain.scheduler import Retrainer

log = structlog.get_logger(__name__)

THRESHOLD_PROFILE = "standard"  # window metrics and plots use this profile's threshold


@dataclass(frozen=True, slots=True)
class Evaluation:
    files: list[SeriesFile]
    windows: Mapping[str, list[Window]]
    replay: ReplayResult
    scores: Mapping[str, NDArray[np.float64]]  # the anomaly_score column, by file
    profiles: Mapping[str, ProfileResult]
    # The same profiles on production's own alerts at each profile's threshold (alerts_at)
    production: Mapping[str, ProfileResult]
    metrics: WindowMetrics
    settings: Settings
    retraining: Mapping[str, int]  # outcome -> runs ("accepted", "rejected", ...)

    def report(self) -> dict[str, Any]:
        """The ``--report`` document: the three normalised scores first, then the details."""
        doc: dict[str, Any] = {name: r.normalised_score for name, r in self.profiles.items()}
        doc["profiles"] = {
            name: {
                "score": r.normalised_score,
                "threshold": r.threshold,
                "raw_score": r.raw_score,
                "windows": r.n_windows,
                "tp_windows": r.tp_windows,
                "fn_windows": r.fn_windows,
                "fp_rows": r.fp_detections,
            }
            for name, r in self.profiles.items()
        }
        doc["production_alerts"] = {
            name: {
                "score": r.normalised_score,
                "threshold": r.threshold,
                "tp_windows": r.tp_windows,
                "fn_windows": r.fn_windows,
                "fp_rows": r.fp_detections,
            }
            for name, r in self.production.items()
        }
        m = self.metrics
        doc["window_metrics"] = {
            "profile": THRESHOLD_PROFILE,
            "threshold": m.threshold,
            "windows": m.n_windows,
            "detected_windows": m.detected_windows,
            "fp_events": m.fp_events,
            "precision": m.precision,
            "recall": m.recall,
            "f1": m.f1,
        }
        standard = self.profiles[THRESHOLD_PROFILE]
        doc["per_file"] = {
            name: {
                "rows": len(f),
                "windows": len(self.windows[name]),
                "tp_windows": standard.per_file[name].tp_windows,
                "fn_windows": standard.per_file[name].fn_windows,
                "fp_rows": standard.per_file[name].fp_detections,
                "raw_score": standard.per_file[name].raw_score,
                "alerts": int(self.replay.outputs[name].alert.sum()),
            }
            for f in self.files
            for name in (f.name,)
        }
        doc["replay"] = {
            "files": len(self.files),
            "points": sum(len(f) for f in self.files),
            "batches": self.replay.batches,
            "seconds": round(self.replay.seconds, 3),
            "counters": self.replay.counters,
        }
        doc["retraining"] = dict(self.retraining)
        doc["scoring"] = self.settings.scoring.model_dump(mode="json")
        return doc

    def summary(self) -> str:
        """A short table for the terminal."""
        lines = [f"{'profile':<20} {'score':>7} {'threshold':>10} {'TP':>4} {'FN':>4} {'FP':>6}"]
        for name, r in self.profiles.items():
            lines.append(
                f"{name:<20} {r.normalised_score:7.2f} {r.threshold:10.4f} "
                f"{r.tp_windows:4d} {r.fn_windows:4d} {r.fp_detections:6d}"
            )
        lines.append(
            "production's own alerts at these thresholds (cooldown and escalations exactly): "
            + ", ".join(
                f"{name} {r.normalised_score:.2f} ({r.tp_windows} TP, {r.fp_detections} FP)"
                for name, r in self.production.items()
            )
        )
        m = self.metrics
        lines.append(
            f"windows at threshold {m.threshold:.4f} ({THRESHOLD_PROFILE}): "
            f"{m.detected_windows}/{m.n_windows} detected, {m.fp_events} false alert events, "
            f"precision {m.precision:.3f} recall {m.recall:.3f} F1 {m.f1:.3f}"
        )
        if self.retraining:
            runs = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.retraining.items()))
            lines.append(f"online retraining runs: {runs}")
        return "\n".join(lines) + "\n"


def evaluate(
    data_dir: str | Path,
    labels: str | Path,
    settings: Settings,
    *,
    out_dir: str | Path | None = None,
    plots_dir: str | Path | None = None,
    report_path: str | Path | None = None,
    after_batch: AfterBatch | None = None,
    progress: bool | None = None,
) -> Evaluation:
    """Run the whole evaluation (module docstring). ``after_batch`` replaces the online
    retraining hook; ``progress``: tqdm bars on stderr (None: only on a terminal)."""
    files = read_corpus(data_dir)
    windows = load_labels(labels, files)
    points = sum(len(f) for f in files)
    log.info(
        "evaluation_started",
        data=str(data_dir),
        files=len(files),
        points=points,
        windows=sum(len(w) for w in windows.values()),
        mode=settings.scoring.mode,
    )
    with tqdm(
        total=points, unit="pt", desc="replay", disable=None if progress is None else not progress,
        file=sys.stderr, leave=False,
    ) as bar:  # fmt: skip
        online = OnlineRetraining(settings) if settings.retraining.enabled else None
        hook = after_batch if after_batch is not None else online
        try:
            replayed = replay(files, settings, after_batch=hook, on_progress=bar.update)
        finally:
            if online is not None:
                online.close()
    retraining = dict(online.outcomes) if online is not None and after_batch is None else {}
    scores = {
        name: alert_view(o.score, o.status, settings.scoring)
        for name, o in replayed.outputs.items()
    }
    profiles = score_corpus(scores, windows, PROFILES.values())
    alerts = {  # once per threshold: the profiles often share one
        theta: {
            file: alerts_at(o.score, o.status, settings.scoring, theta)
            for file, o in replayed.outputs.items()
        }
        for theta in {r.threshold for r in profiles.values()}
    }
    production = {
        name: replace(
            # an alert's row is True (1.0), every other row 0.0
            score_corpus_at_threshold(alerts[r.threshold], windows, r.profile, 1.0),
            threshold=r.threshold,
        )
        for name, r in profiles.items()
    }
    metrics = window_metrics(scores, windows, profiles[THRESHOLD_PROFILE].threshold)
    result = Evaluation(
        files, windows, replayed, scores, profiles, production, metrics, settings, retraining
    )
    if out_dir is not None:
        from detector.evaluate.results import write_results

        write_results(out_dir, files, scores, windows)
    if plots_dir is not None:
        _plot_all(result, Path(plots_dir), progress)
    if report_path is not None:
        path = Path(report_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            orjson.dumps(result.report(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
            + b"\n"
        )
    log.info(
        "evaluation_finished",
        seconds=round(replayed.seconds, 2),
        **{name: round(r.normalised_score, 2) for name, r in profiles.items()},
    )
    return result


class OnlineRetraining:
    """The replay's ``after_batch``: the daemon's retraining schedule, run synchronously on
    data time (:meth:`Retrainer.run_due`), so the model learns from what it has seen."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.retrainer: Retrainer | None = None
        self.outcomes: Counter[str] = Counter()

    def __call__(self, pipeline: Pipeline, now: float) -> None:
        if self.retrainer is None:
            from detector.retrain.scheduler import Retrainer

            self.retrainer = Retrainer(pipeline, self.settings)
        for run in self.retrainer.run_due(now):
            self.outcomes[run.result] += 1

    def close(self) -> None:
        if self.retrainer is not None:
            self.retrainer.close()


def _plot_all(result: Evaluation, plots_dir: Path, progress: bool | None) -> None:
    # matplotlib is imported only when plots are asked for: it costs a second to import.
    from detector.evaluate.plots import plot_path, plot_series

    standard = result.profiles[THRESHOLD_PROFILE]
    for f in tqdm(
        result.files, unit="plot", desc="plots", disable=None if progress is None else not progress,
        file=sys.stderr, leave=False,
    ):  # fmt: skip
        plot_series(
            plot_path(plots_dir, f),
            f,
            result.replay.outputs[f.name],
            result.scores[f.name],
            result.windows[f.name],
            standard.threshold,
            result.settings.scoring.threshold,
            standard.per_file[f.name],
        )
