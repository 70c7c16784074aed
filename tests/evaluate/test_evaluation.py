"""`evaluate` in process: the persistence baseline's replay and the choice of folds.

``after_batch`` replaces online retraining, so these replays are fast; it also sees every
replay's pipeline, which is how the tests tell the runs apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from detector.config import ScoringSettings, Settings
from detector.errors import ConfigError
from detector.evaluate.evaluation import baseline_settings, evaluate
from detector.stream.pipeline import Pipeline

from .corpus_factory import SyntheticFile, noisy_series, spike_corpus, write_corpus


class Pipelines:
    """after_batch: the pipelines the replays ran, in order, and their batches."""

    def __init__(self) -> None:
        self.seen: list[Pipeline] = []
        self.batches: list[int] = []

    def __call__(self, pipeline: Pipeline, now: float) -> None:
        if not self.seen or self.seen[-1] is not pipeline:
            self.seen.append(pipeline)
            self.batches.append(0)
        self.batches[-1] += 1


def test_the_baseline_is_a_second_full_replay_with_the_persistence_forecast(
    tmp_path: Path,
) -> None:
    data, labels, _ = spike_corpus(tmp_path, n=450)
    settings = Settings(scoring=ScoringSettings(cooldown=30))
    hook = Pipelines()
    result = evaluate(data, labels, settings, after_batch=hook, progress=False)
    assert result.baseline is not None
    assert [r.forecast for r in (result.run, result.baseline)] == ["model", "persistence"]
    # Two pipelines, each fed the whole corpus, with the same settings but the forecast.
    model, persistence = hook.seen
    assert hook.batches == [result.run.replay.batches, result.baseline.replay.batches]
    assert hook.batches[0] == hook.batches[1] == 450 + 7
    assert persistence.settings == baseline_settings(model.settings)
    assert model.settings.scoring.forecast == "model"
    assert persistence.settings.scoring.forecast == "persistence"
    assert persistence.settings.scoring.cooldown == 30
    assert result.baseline.replay.counters["points"] == result.run.replay.counters["points"]
    # Everything the run reports, the baseline reports too.
    report = result.report()
    same_keys = {k for k in report["baseline"] if k != "forecast"}
    assert same_keys <= set(report)
    assert "persistence" in result.summary() and "difference" in result.summary()


def test_baseline_settings_change_the_forecast_only() -> None:
    settings = Settings(scoring=ScoringSettings(threshold=0.7, mode="zscore"))
    changed = baseline_settings(settings)
    assert changed.scoring.forecast == "persistence"
    assert changed.model_dump(exclude={"scoring": {"forecast"}}) == settings.model_dump(
        exclude={"scoring": {"forecast"}}
    )


@pytest.mark.parametrize("forecast", ["persistence", "model"])
def test_one_replay_when_the_baseline_is_the_configured_forecast_or_not_asked(
    tmp_path: Path, forecast: Literal["model", "persistence"]
) -> None:
    data, labels, _ = spike_corpus(tmp_path, n=450)
    settings = Settings(scoring=ScoringSettings(forecast=forecast))
    hook = Pipelines()
    result = evaluate(
        data, labels, settings, baseline=forecast == "persistence", after_batch=hook,
        progress=False,
    )  # fmt: skip
    assert len(hook.seen) == 1
    assert result.baseline is None
    assert result.run.forecast == forecast
    assert result.report()["baseline"] is None
    assert "difference" not in result.summary()


def one_category(root: Path) -> tuple[Path, Path]:
    values, stamps = noisy_series(450, 1, spike_at=300, spike=40.0)
    quiet, _ = noisy_series(450, 2)
    return write_corpus(
        root,
        [
            SyntheticFile("only/spike.csv", values, stamps, [(290, 320)]),
            SyntheticFile("only/quiet.csv", quiet, stamps, []),
        ],
    )


def test_folds_by_category_by_default_when_there_are_several(tmp_path: Path) -> None:
    data, labels, made = spike_corpus(tmp_path, n=450)
    result = evaluate(data, labels, Settings(), baseline=False, after_batch=Pipelines())
    assert result.run.out_of_fold is not None
    assert set(result.run.out_of_fold["standard"].thresholds) == {
        f.name.split("/")[0] for f in made
    }
    none = evaluate(data, labels, Settings(), folds="none", baseline=False, after_batch=Pipelines())
    assert none.run.out_of_fold is None
    assert none.report()["out_of_fold"] is None


def test_one_category_has_no_folds(tmp_path: Path) -> None:
    data, labels = one_category(tmp_path)
    result = evaluate(data, labels, Settings(), baseline=False, after_batch=Pipelines())
    assert result.run.out_of_fold is None
    assert "out-of-fold" not in result.summary()
    with pytest.raises(ConfigError, match="at least two category folders"):
        evaluate(data, labels, Settings(), folds="category", after_batch=Pipelines())
