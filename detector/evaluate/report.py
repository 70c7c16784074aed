"""What `detector evaluate` says: the JSON ``--report`` document and the terminal table.

The report starts with the in-sample scores of the three profiles (``standard``,
``reward_low_FP_rate``, ``reward_low_FN_rate``: the keys earlier reports had), then the run
with the configured forecast under ``in_sample``, ``out_of_fold``, ``shipped_threshold``,
``events``, ``production_alerts`` (production's alerts at the in-sample thresholds),
``window_metrics``, ``replay`` and ``retraining``; ``baseline`` holds the same keys for the
persistence forecast's run (null when there was none); then ``per_file`` and ``scoring``.

The table puts the runs side by side (model | persistence | difference) for the figures a
user meets: NAB in-sample and out-of-fold, NAB at the shipped threshold, and the event-level
precision, recall and F1 there; a few lines of detail follow for the configured run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from detector.evaluate.events import FP_EVENT_GAP, EventCounts
from detector.evaluate.figures import THRESHOLD_PROFILE, RunFigures
from detector.evaluate.nab_scoring import ProfileResult

if TYPE_CHECKING:
    from detector.evaluate.evaluation import Evaluation


def report_document(ev: Evaluation) -> dict[str, Any]:
    """The ``--report`` document (module docstring)."""
    doc: dict[str, Any] = {name: r.normalised_score for name, r in ev.run.profiles.items()}
    doc |= _run_document(ev, ev.run)
    doc["baseline"] = _run_document(ev, ev.baseline) if ev.baseline is not None else None
    run = ev.run
    standard = run.profiles[THRESHOLD_PROFILE]
    doc["per_file"] = {
        f.name: {
            "rows": len(f),
            "test_start": ev.test_start[f.name],
            "windows": len(ev.windows[f.name]),
            "tp_windows": standard.per_file[f.name].tp_windows,
            "fn_windows": standard.per_file[f.name].fn_windows,
            "fp_rows": standard.per_file[f.name].fp_detections,
            "raw_score": standard.per_file[f.name].raw_score,
            "alerts": int(run.replay.outputs[f.name].alert.sum()),
            "events": _counts(run.events[f.name]),
        }
        for f in ev.files
    }
    doc["scoring"] = ev.settings.scoring.model_dump(mode="json")
    return doc


def _run_document(ev: Evaluation, run: RunFigures) -> dict[str, Any]:
    threshold = ev.settings.scoring.threshold
    events = run.event_totals()
    m = run.metrics
    return {
        "forecast": run.forecast,
        "in_sample": {name: _profile(r) for name, r in run.profiles.items()},
        "out_of_fold": (
            None
            if run.out_of_fold is None
            else {
                name: {
                    "score": o.normalised_score,
                    "raw_score": o.raw_score,
                    "windows": o.n_windows,
                    "tp_windows": o.tp_windows,
                    "fn_windows": o.fn_windows,
                    "fp_rows": o.fp_detections,
                    # held-out category -> its threshold (chosen on the others) and its part
                    "folds": {c: _profile(r) for c, r in o.folds.items()},
                }
                for name, o in run.out_of_fold.items()
            }
        ),
        "shipped_threshold": {
            "threshold": threshold,
            "production_alerts": {n: _profile(r) for n, r in run.shipped_alerts.items()},
            "anomaly_scores": {n: _profile(r) for n, r in run.shipped_scores.items()},
        },
        "events": {
            "threshold": threshold,
            "alerts": "production",
            "train_points": None if ev.train_points is None else str(ev.train_points),
            "fp_event_gap": FP_EVENT_GAP,
            **_counts(events),
            "categories": {
                c: _counts(run.event_totals(names)) for c, names in ev.categories.items()
            },
        },
        "production_alerts": {name: _profile(r) for name, r in run.production.items()},
        "window_metrics": {
            "profile": THRESHOLD_PROFILE,
            "threshold": m.threshold,
            "windows": m.n_windows,
            "detected_windows": m.detected_windows,
            "fp_events": m.fp_events,
            "precision": m.precision,
            "recall": m.recall,
            "f1": m.f1,
        },
        "replay": {
            "files": len(ev.files),
            "points": sum(len(f) for f in ev.files),
            "batches": run.replay.batches,
            "seconds": round(run.replay.seconds, 3),
            "counters": run.replay.counters,
        },
        "retraining": dict(run.retraining),
    }


def _profile(r: ProfileResult) -> dict[str, Any]:
    return {
        "score": r.normalised_score,
        "threshold": r.threshold,
        "raw_score": r.raw_score,
        "windows": r.n_windows,
        "tp_windows": r.tp_windows,
        "fn_windows": r.fn_windows,
        "fp_rows": r.fp_detections,
    }


def _counts(c: EventCounts) -> dict[str, Any]:
    return {
        "tp": c.tp,
        "fn": c.fn,
        "fp": c.fp,
        "precision": c.precision,
        "recall": c.recall,
        "f1": c.f1,
    }


# ---------------------------------------------------------------------------------------------
# Terminal table

_GROUP, _ITEM, _COL = 16, 20, 12
_SHORT = {"reward_low_FP_rate": "low FP", "reward_low_FN_rate": "low FN"}  # column heads
Row = tuple[str, str, Callable[[RunFigures], float], str]  # group, item, figure, format


def summary_table(ev: Evaluation) -> str:
    """The runs side by side, then the configured run's details (module docstring)."""
    runs = [ev.run] if ev.baseline is None else [ev.run, ev.baseline]
    theta = f"{ev.settings.scoring.threshold:g}"
    head = " " * (_GROUP + _ITEM) + "".join(f"{r.forecast:>{_COL}}" for r in runs)
    lines = [head + (f"{'difference':>{_COL}}" if len(runs) > 1 else "")]
    for group, item, figure, fmt in _rows(ev.run, theta):
        values = [figure(r) for r in runs]
        cells = "".join(f"{v:>{_COL}{fmt}}" for v in values)
        if len(values) > 1:
            diff = values[0] - values[1]
            cells += f"{diff:>+{_COL}{fmt}}" if not math.isnan(diff) else f"{'':>{_COL}}"
        lines.append(f"{group:<{_GROUP}}{item:<{_ITEM}}{cells}")
    folds = "; out-of-fold: on the other categories" if ev.run.out_of_fold is not None else ""
    lines.append(
        f"in-sample: threshold optimised on the corpus{folds}; {theta}: the shipped threshold"
    )
    lines.extend(_details(ev, ev.run, theta))
    return "\n".join(lines) + "\n"


def _rows(run: RunFigures, theta: str) -> list[Row]:
    def nab(
        pick: Callable[[RunFigures], Mapping[str, Any]], name: str
    ) -> Callable[[RunFigures], float]:
        return lambda r: float(pick(r)[name].normalised_score)

    groups: list[tuple[str, Callable[[RunFigures], Mapping[str, Any]]]] = [
        ("NAB in-sample", lambda r: r.profiles)
    ]
    if run.out_of_fold is not None:
        groups.append(("NAB out-of-fold", lambda r: r.out_of_fold or {}))
    groups += [
        (f"NAB alerts {theta}", lambda r: r.shipped_alerts),
        (f"NAB scores {theta}", lambda r: r.shipped_scores),
    ]
    rows: list[Row] = []
    for group, pick in groups:
        for k, name in enumerate(run.profiles):
            rows.append((group if k == 0 else "", name, nab(pick, name), ".2f"))
    rows += [
        (f"events {theta}", "precision", lambda r: r.event_totals().precision, ".3f"),
        ("", "recall", lambda r: r.event_totals().recall, ".3f"),
        ("", "F1", lambda r: r.event_totals().f1, ".3f"),
    ]
    return rows


def _details(ev: Evaluation, run: RunFigures, theta: str) -> list[str]:
    lines = _category_table(ev, run, theta)
    lines.append(
        f"production's own alerts at the in-sample thresholds ({run.forecast}): "
        + ", ".join(
            f"{name} {r.normalised_score:.2f} ({r.tp_windows} TP, {r.fp_detections} FP)"
            for name, r in run.production.items()
        )
    )
    m = run.metrics
    lines.append(
        f"windows at threshold {m.threshold:.4f} ({THRESHOLD_PROFILE}): "
        f"{m.detected_windows}/{m.n_windows} detected, {m.fp_events} false alert events, "
        f"precision {m.precision:.3f} recall {m.recall:.3f} F1 {m.f1:.3f}"
    )
    retrained = [r for r in (ev.run, ev.baseline) if r is not None and r.retraining]
    if retrained:
        lines.append(
            "online retraining runs: "
            + "; ".join(
                f"{r.forecast} "
                + ", ".join(f"{n} {outcome}" for outcome, n in sorted(r.retraining.items()))
                for r in retrained
            )
        )
    return lines


def _category_table(ev: Evaluation, run: RunFigures, theta: str) -> list[str]:
    """Per category: the out-of-fold thresholds it was scored at and its events at θ."""
    oof = run.out_of_fold
    names = list(run.profiles)
    where = "test part" if ev.train_points is not None else "every row"
    lines = [
        f"{'category (' + run.forecast + ')':<24}{'windows':>8}"
        + "".join(f"{'θ ' + _SHORT.get(n, n):>11}" for n in names)
        + f"{'TP':>6}{'FN':>5}{'FP':>5}{'F1':>7}"
    ]

    def row(label: str, windows: int, thresholds: list[float | None], e: EventCounts) -> str:
        cells = "".join(f"{t:>11.4f}" if t is not None else f"{'-':>11}" for t in thresholds)
        return f"{label:<24}{windows:>8}{cells}{e.tp:>6}{e.fn:>5}{e.fp:>5}{e.f1:>7.3f}"

    for c, files in ev.categories.items():
        windows = sum(len(ev.windows[f]) for f in files)
        folds = [oof[n].folds[c].threshold if oof is not None else None for n in names]
        lines.append(row(c or ".", windows, folds, run.event_totals(files)))
    windows = sum(len(w) for w in ev.windows.values())
    in_sample: list[float | None] = [run.profiles[n].threshold for n in names]
    lines.append(row("all", windows, in_sample, run.event_totals()))
    scored_at = "out-of-fold (all: in-sample)" if oof is not None else "in-sample"
    lines.append(
        f"θ: the NAB threshold scored at, {scored_at}; "
        f"TP/FN/FP: events of production's alerts at {theta}, {where}"
    )
    return lines
