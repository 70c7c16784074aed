"""`detector evaluate`: replay a labelled NAB corpus, write results, score, plot, report.

The steps: read the corpus ─► replay it through the production pipeline (labels unseen;
with ``retraining.enabled`` the model retrains online on data time, synchronously, as the
daemon would between batches) ─► each row's anomaly score as the alert layer sees it
(detector.evaluate.alert_view) ─► the figures of that replay (detector.evaluate.figures):
NAB's three profiles in-sample (thresholds optimised over the corpus) and out-of-fold
(leaving one category out), the profiles and the event-level precision, recall and F1 of
production's alerts at the shipped threshold ─► the same again from a second full replay
with the persistence forecast (``scoring.forecast``), the LSTM's ablation baseline ─►
optionally the NAB results files, one PNG per series and a JSON report
(detector.evaluate.report).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson
import structlog
from tqdm import tqdm

from detector.config import Settings
from detector.errors import ConfigError
from detector.evaluate.corpus import SeriesFile, load_labels, load_train_points, read_corpus
from detector.evaluate.figures import THRESHOLD_PROFILE, RunFigures, run_figures
from detector.evaluate.nab_scoring import Window
from detector.evaluate.replay import AfterBatch, ReplayResult, replay
from detector.evaluate.report import report_document, summary_table
from detector.stream.pipeline import Pipeline

if TYPE_CHECKING:
    from detector.retrain.scheduler import Retrainer

log = structlog.get_logger(__name__)

BASELINE_FORECAST: Final = "persistence"
Folds = Literal["auto", "category", "none"]  # auto: by category when there are several


@dataclass(frozen=True, slots=True)
class Evaluation:
    files: list[SeriesFile]
    windows: Mapping[str, list[Window]]
    test_start: Mapping[str, int]  # first test row by file (0: every row counts for events)
    train_points: Path | None  # where test_start came from
    settings: Settings
    run: RunFigures  # with the configured forecast
    baseline: RunFigures | None  # with the persistence forecast (None: not run)

    @property
    def categories(self) -> dict[str, list[str]]:
        """Category -> its files' names, in file order."""
        members: dict[str, list[str]] = {}
        for f in self.files:
            members.setdefault(f.category, []).append(f.name)
        return members

    def report(self) -> dict[str, Any]:
        """The ``--report`` document (detector.evaluate.report)."""
        return report_document(self)

    def summary(self) -> str:
        """A short table for the terminal (detector.evaluate.report)."""
        return summary_table(self)


def evaluate(
    data_dir: str | Path,
    labels: str | Path,
    settings: Settings,
    *,
    train_points: str | Path | None = None,
    folds: Folds = "auto",
    baseline: bool = True,
    out_dir: str | Path | None = None,
    plots_dir: str | Path | None = None,
    report_path: str | Path | None = None,
    after_batch: AfterBatch | None = None,
    progress: bool | None = None,
) -> Evaluation:
    """Run the whole evaluation (module docstring).

    ``train_points``: each file's train part (detector.evaluate.corpus.load_train_points),
    left out of the event-level metrics; None: every row counts. ``folds``: "category" for
    leave-one-category-out scores, "none" for none, "auto" for "category" when the corpus has
    more than one category folder. ``baseline``: replay again with the persistence forecast
    (not when it is the configured one). ``after_batch`` replaces the online retraining hook,
    in every replay; ``progress``: tqdm bars on stderr (None: only on a terminal).
    """
    files = read_corpus(data_dir)
    windows = load_labels(labels, files)
    tp_path = Path(train_points) if train_points is not None else None
    test_start = (
        load_train_points(tp_path, files) if tp_path is not None else {f.name: 0 for f in files}
    )
    category = {f.name: f.category for f in files}
    by_category = _use_folds(folds, sorted(set(category.values())), data_dir)
    log.info(
        "evaluation_started",
        data=str(data_dir),
        files=len(files),
        points=sum(len(f) for f in files),
        windows=sum(len(w) for w in windows.values()),
        mode=settings.scoring.mode,
        forecast=settings.scoring.forecast,
        folds="category" if by_category else "none",
        baseline=baseline and settings.scoring.forecast != BASELINE_FORECAST,
    )
    runs = [settings]
    if baseline and settings.scoring.forecast != BASELINE_FORECAST:
        runs.append(baseline_settings(settings))
    figures = []
    for run_settings in runs:
        replayed, retraining = _replay(files, run_settings, after_batch, progress)
        figures.append(
            run_figures(
                replayed,
                windows,
                run_settings,
                category=category if by_category else None,
                test_start=test_start,
                retraining=retraining,
            )
        )
    result = Evaluation(
        files,
        windows,
        test_start,
        tp_path,
        settings,
        figures[0],
        figures[1] if len(figures) > 1 else None,
    )
    if out_dir is not None:
        from detector.evaluate.results import write_results

        write_results(out_dir, files, result.run.scores, windows)
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
        seconds=round(sum(r.replay.seconds for r in figures), 2),
        **{name: round(r.normalised_score, 2) for name, r in result.run.profiles.items()},
    )
    return result


def baseline_settings(settings: Settings) -> Settings:
    """The same settings with the persistence forecast: the LSTM's ablation."""
    scoring = settings.scoring.model_copy(update={"forecast": BASELINE_FORECAST})
    return settings.model_copy(update={"scoring": scoring})


def _use_folds(folds: Folds, categories: list[str], data_dir: str | Path) -> bool:
    if folds == "none":
        return False
    if folds == "auto":
        return len(categories) > 1
    if len(categories) < 2:
        raise ConfigError(
            f"leave-one-category-out scores need at least two category folders in {data_dir}; "
            f"found {categories}"
        )
    return True


def _replay(
    files: list[SeriesFile],
    settings: Settings,
    after_batch: AfterBatch | None,
    progress: bool | None,
) -> tuple[ReplayResult, dict[str, int]]:
    """One replay of the corpus, with online retraining unless ``after_batch`` replaces it;
    returns it and the retraining runs by outcome."""
    with tqdm(
        total=sum(len(f) for f in files), unit="pt", desc=f"replay ({settings.scoring.forecast})",
        disable=None if progress is None else not progress, file=sys.stderr, leave=False,
    ) as bar:  # fmt: skip
        online = OnlineRetraining(settings) if settings.retraining.enabled else None
        hook = after_batch if after_batch is not None else online
        try:
            replayed = replay(files, settings, after_batch=hook, on_progress=bar.update)
        finally:
            if online is not None:
                online.close()
    retraining = dict(online.outcomes) if online is not None and after_batch is None else {}
    log.info(
        "replay_finished",
        forecast=settings.scoring.forecast,
        seconds=round(replayed.seconds, 2),
        batches=replayed.batches,
        **{f"retraining_{outcome}": n for outcome, n in retraining.items()},
    )
    return replayed, retraining


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

    run = result.run
    standard = run.profiles[THRESHOLD_PROFILE]
    for f in tqdm(
        result.files, unit="plot", desc="plots", disable=None if progress is None else not progress,
        file=sys.stderr, leave=False,
    ):  # fmt: skip
        plot_series(
            plot_path(plots_dir, f),
            f,
            run.replay.outputs[f.name],
            run.scores[f.name],
            result.windows[f.name],
            standard.threshold,
            result.settings.scoring.threshold,
            standard.per_file[f.name],
        )
