"""The Retrainer: schedule on an explicit clock, accept/reject, swaps, registry, async mode."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from detector.config import (
    ModelSettings,
    RetrainingSettings,
    ScoringSettings,
    Settings,
    StreamSettings,
    TrainingSettings,
)
from detector.model.params import LSTMParams
from detector.retrain import scheduler
from detector.retrain.registry import ModelRegistry
from detector.retrain.scheduler import Retrainer, RetrainResult
from detector.stream.pipeline import UNTRAINED, Pipeline
from detector.stream.scoring import SCORED
from detector.stream.state import StreamStateTable

T0 = 1_700_000_000
STEP = 60.0


def sine(period: float) -> Callable[[int, int], float]:
    def value(stream: int, t: int) -> float:
        noise = np.random.default_rng(stream * 1_000_003 + t).standard_normal()
        return float(10 + 3 * np.sin(2 * np.pi * t / period + stream) + 0.1 * noise)

    return value


def square(period: float) -> Callable[[int, int], float]:
    def value(stream: int, t: int) -> float:
        noise = np.random.default_rng(stream * 1_000_003 + t).standard_normal()
        return float(10 + 3 * np.sign(np.sin(2 * np.pi * t / period + stream)) + 0.1 * noise)

    return value


def make_settings(threshold: float = 1.0, **retraining: object) -> Settings:
    """Threshold 1 (the default here) flags no point before a change of behaviour, so the
    schedule tests know exactly how many windows the rings hold."""
    return Settings(
        model=ModelSettings(hidden_size=16),
        training=TrainingSettings(
            window_len=32,
            stride=4,
            washout=4,
            epochs=15,
            batch_size=32,
            learning_rate=1e-2,
            patience=3,
        ),
        streams=StreamSettings(buffer_len=128),
        scoring=ScoringSettings(warmup=50, threshold=threshold),
        retraining=RetrainingSettings(
            **{"interval_s": 400 * STEP, "min_windows": 32, "max_windows": 512, **retraining}  # type: ignore[arg-type]
        ),
    )


class Replay:
    """Feeds S streams one point each per batch on a data-time clock; keeps the errors."""

    def __init__(self, settings: Settings, streams: int = 8) -> None:
        self.pipe = Pipeline(settings, "test")
        self.streams = streams
        self.t = 0
        self.errors: list[float] = []  # mean |value - predicted| per step, raw units
        self.scored = 0

    def now(self) -> float:
        return T0 + STEP * self.t

    def step(self, value: Callable[[int, int], float]) -> None:
        ts = self.now()
        msgs = [
            orjson.dumps({"stream": f"s{i}", "ts": ts, "value": value(i, self.t)})
            for i in range(self.streams)
        ]
        out = self.pipe.process(msgs, now=ts, keep_scores=True)
        assert out.scores is not None
        (scores,) = out.scores
        assert len(scores.streams) == self.streams
        if self.t > 0:  # every point after a stream's first is scored, whatever happens
            assert (scores.status == SCORED).all()
            assert np.isfinite(scores.score).all() and np.isfinite(scores.predicted).all()
            self.scored += self.streams
        self.errors.append(float(np.abs(scores.value - scores.predicted).mean()))
        self.t += 1

    def run(
        self, n: int, value: Callable[[int, int], float], retrainer: Retrainer | None
    ) -> list[tuple[int, RetrainResult]]:
        results = []
        for _ in range(n):
            self.step(value)
            if retrainer is not None:
                results += [(self.t - 1, r) for r in retrainer.run_due(self.now() - STEP)]
        return results

    def error(self, lo: int, hi: int) -> float:
        return float(np.mean(self.errors[lo:hi]))


def test_a_stream_that_changes_is_learned_again():
    settings = make_settings(threshold=0.5)  # the default: anomalies are flagged
    replay = Replay(settings)
    retrainer = Retrainer(replay.pipe, settings)
    group = replay.pipe.groups[0]
    results = replay.run(900, sine(24), retrainer)  # seasonality A
    assert group.version != UNTRAINED
    learned_a = replay.error(600, 900)
    version_a = group.version
    # Seasonality B: the model trained on A is now wrong. Its points exceed the threshold
    # (the error statistics do not learn from them), but once they fill the rings they are
    # the stream's new normal, and the next run trains on them.
    results += replay.run(800, square(12), retrainer)
    before = replay.error(1000, 1243)
    after = replay.error(1300, 1700)
    assert before > 3 * learned_a
    assert after < 0.6 * before
    accepted = [(t, r) for t, r in results if r.result == "accepted"]
    assert accepted[0][0] < 100  # the cold start did not wait for interval_s
    assert any(t > 1000 for t, _ in accepted) and group.version != version_a
    assert replay.scored == 8 * 1699 and replay.pipe.counters.points == 8 * 1700
    for _, r in results:
        assert r.seconds > 0 and r.group == "default"
        if r.result == "skipped":  # early on, new values are novel: their windows are left out
            assert r.windows < settings.retraining.min_windows and "usable windows" in r.reason
            continue
        assert r.windows > 0
        if r.result == "accepted":
            assert r.candidate_loss < r.current_loss
            assert r.version != r.parent


def test_cold_start_runs_as_soon_as_min_windows_exist():
    # 4 streams, windows of 32 every 4 points: 40 points each give 4 x 3 = 12 windows.
    settings = make_settings(interval_s=1e9, min_windows=12)
    replay = Replay(settings, streams=4)
    retrainer = Retrainer(replay.pipe, settings)
    results = replay.run(39, sine(24), retrainer)
    assert results == []
    (t, r), *_ = replay.run(1, sine(24), retrainer)
    assert t == 39 and r.result in ("accepted", "rejected") and r.windows == 12
    # After the cold start, only the interval counts.
    assert replay.run(100, sine(24), retrainer) == []


def test_interval_points_triggers_a_run():
    settings = make_settings(interval_s=1e9, min_windows=12, interval_points=200)
    replay = Replay(settings, streams=4)
    retrainer = Retrainer(replay.pipe, settings)
    results = replay.run(200, sine(24), retrainer)
    # The cold start at t = 39, then every 200 points of the group (50 steps of 4 streams).
    assert [t for t, _ in results] == [39, 89, 139, 189]


def test_the_clock_is_data_time():
    settings = make_settings(interval_s=3600.0, min_windows=12)
    replay = Replay(settings, streams=4)
    retrainer = Retrainer(replay.pipe, settings)
    results = replay.run(200, sine(24), retrainer)
    # Cold start at t = 39, then every 60 steps of 60 s.
    assert [t for t, _ in results] == [39, 99, 159]


def test_a_worse_candidate_is_rejected_and_the_version_stays(tmp_path, monkeypatch):
    settings = make_settings()
    replay = Replay(settings)
    registry = ModelRegistry(tmp_path)
    retrainer = Retrainer(replay.pipe, settings, registry)
    replay.run(60, sine(24), retrainer)
    group = replay.pipe.groups[0]
    version, theta = group.version, group.params.theta.copy()
    assert registry.current("default") == version

    real_train = scheduler.train

    def corrupted(*args, **kwargs):
        params, report = real_train(*args, **kwargs)
        noise = np.random.default_rng(0).normal(0, 1, params.theta.shape)
        return LSTMParams(params.shape, (params.theta + noise).astype(params.dtype)), report

    monkeypatch.setattr(scheduler, "train", corrupted)
    (r,) = retrainer.run_due(replay.now() + settings.retraining.interval_s)
    assert r.result == "rejected" and r.candidate_loss > r.current_loss
    assert "candidate loss" in r.reason
    assert group.version == r.version == version
    assert group.params.theta.tobytes() == theta.tobytes()
    assert registry.current("default") == version and len(registry.list()) == 1
    replay.run(5, sine(24), None)  # scoring goes on with the current model


def test_a_candidate_must_beat_the_tolerance():
    settings = make_settings(tolerance=0.99)
    replay = Replay(settings)
    retrainer = Retrainer(replay.pipe, settings)
    results = replay.run(60, sine(24), retrainer)
    (_, r), *_ = results
    # The persistence start would need a candidate 100x better: rejected, still untrained.
    assert r.result == "rejected" and "tolerance 0.99" in r.reason
    assert replay.pipe.groups[0].version == UNTRAINED


def test_a_failed_run_is_reported_and_scoring_goes_on(monkeypatch):
    settings = make_settings()
    replay = Replay(settings)
    retrainer = Retrainer(replay.pipe, settings)

    def broken(*args, **kwargs):
        raise FloatingPointError("diverged")

    monkeypatch.setattr(scheduler, "train", broken)
    results = replay.run(60, sine(24), retrainer)
    (_, r), *_ = results
    assert r.result == "failed" and "FloatingPointError: diverged" in r.reason
    assert replay.pipe.groups[0].version == UNTRAINED
    assert retrainer.counts["failed"] == 1


def test_too_few_clean_windows_skip_the_run(monkeypatch):
    settings = make_settings()
    replay = Replay(settings)
    retrainer = Retrainer(replay.pipe, settings)
    real_ring_windows = StreamStateTable.ring_windows

    def every_other_anomalous(table, slots):
        # Half the points: every window holds one, and it is not yet a persistent change.
        inputs, flags, buffered = real_ring_windows(table, slots)
        return inputs, np.broadcast_to(np.arange(flags.shape[1]) % 2 == 0, flags.shape), buffered

    monkeypatch.setattr(StreamStateTable, "ring_windows", every_other_anomalous)
    results = replay.run(60, sine(24), retrainer)
    skipped = [r for _, r in results]
    assert skipped and all(r.result == "skipped" and r.windows == 0 for r in skipped)
    # A skipped cold start is retried when more windows may exist, not at every batch.
    assert len(skipped) < (60 - 44) / 2
    assert replay.pipe.groups[0].version == UNTRAINED


async def test_async_mode_trains_in_the_pool_while_scoring_goes_on(tmp_path):
    settings = make_settings()
    replay = Replay(settings)
    registry = ModelRegistry(tmp_path)
    with Retrainer(replay.pipe, settings, registry) as retrainer:
        replay.run(44, sine(24), None)
        assert await retrainer.maybe_start(replay.now()) == ["default"]
        assert retrainer.running() == ["default"]
        assert await retrainer.maybe_start(replay.now()) == []  # one run per group at a time
        results: list[RetrainResult] = []
        deadline = time.monotonic() + 60
        while not results and time.monotonic() < deadline:
            replay.step(sine(24))  # batches keep being scored meanwhile
            results = retrainer.apply_finished()
            await asyncio.sleep(0.001)
    (r,) = results
    assert r.result == "accepted"
    group = replay.pipe.groups[0]
    assert group.version == r.version == registry.current("default")
    info = registry.get(r.version)
    assert info.parent == UNTRAINED and info.windows == r.windows
    assert info.candidate_loss == pytest.approx(r.candidate_loss)
    assert info.data["streams"] == 8 and info.data["last_ts"] <= replay.now()
    replay.step(sine(24))


async def test_a_result_for_a_model_replaced_meanwhile_is_not_applied(tmp_path):
    settings = make_settings()
    replay = Replay(settings)
    with Retrainer(replay.pipe, settings) as retrainer:
        replay.run(44, sine(24), None)
        assert await retrainer.maybe_start(replay.now()) == ["default"]
        group = replay.pipe.groups[0]
        # An operator's rollback lands while the run trains.
        retrainer.swap(group, LSTMParams.init(group.shape, np.random.default_rng(9)), "manual")
        results: list[RetrainResult] = []
        deadline = time.monotonic() + 60
        while not results and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            results = retrainer.apply_finished()
    (r,) = results
    assert r.result == "rejected" and "during training" in r.reason
    assert group.version == "manual"


def test_rollback_reaches_a_running_pipeline(tmp_path, capsys, run_cli):
    settings = make_settings()
    replay = Replay(settings)
    registry = ModelRegistry(tmp_path)
    retrainer = Retrainer(replay.pipe, settings, registry)
    replay.run(900, sine(24), retrainer)
    replay.run(400, square(12), retrainer)
    group = replay.pipe.groups[0]
    versions = [i.version for i in registry.list("default")]
    assert len(versions) >= 2 and group.version == versions[-1]
    old = versions[0]

    code = run_cli("model", "rollback", old, "--models-dir", tmp_path)
    assert code == 0 and old in capsys.readouterr().out
    assert registry.current("default") == old
    assert retrainer.apply_registry_changes() == [("default", old)]
    assert group.version == old
    assert group.params.theta.tobytes() == registry.params(old).theta.tobytes()
    assert retrainer.apply_registry_changes() == []
    replay.run(10, square(12), retrainer)  # scoring goes on with the rolled-back model
    assert replay.pipe.groups[0].version == old

    # As the daemon does it: the weights go live through a staged swap, advanced by poll.
    staged = Retrainer(replay.pipe, settings, ModelRegistry(tmp_path), staged_swaps=True)
    staged.apply_registry_changes()
    target = versions[-1]
    assert run_cli("model", "rollback", target, "--models-dir", tmp_path) == 0
    assert staged.apply_registry_changes() == [("default", target)]
    for _ in range(100):
        asyncio.run(staged.poll(replay.now(), start=False))
        if group.version == target:
            break
        time.sleep(0.01)
    assert group.version == target and staged.swapping() == {}
    staged.close()
    assert run_cli("model", "rollback", old, "--models-dir", tmp_path) == 0

    # A restarted daemon starts from the registry's current version.
    again = Replay(settings)
    loaded = Retrainer(again.pipe, settings, ModelRegistry(tmp_path)).load_registry_models()
    assert loaded == [("default", old)] and again.pipe.groups[0].version == old


def test_disabled_retraining_never_runs():
    settings = make_settings(enabled=False)
    replay = Replay(settings)
    retrainer = Retrainer(replay.pipe, settings)
    assert replay.run(100, sine(24), retrainer) == []
    assert "Retrainer(groups=1, running=0" in repr(retrainer)


def test_persistent_fraction_reaches_the_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    sample = scheduler.windows_from_rings

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["persistent"])
        return sample(*args, **kwargs)

    monkeypatch.setattr(scheduler, "windows_from_rings", spy)
    settings = make_settings(persistent_fraction=0.8)
    replay = Replay(settings)
    replay.run(100, sine(24), Retrainer(replay.pipe, settings))
    assert seen and set(seen) == {0.8}


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_persistent_fraction_is_a_fraction(bad: float) -> None:
    from detector.config import load_settings
    from detector.errors import ConfigError

    with pytest.raises(ConfigError, match=r"retraining\.persistent_fraction"):
        load_settings(None, {"retraining.persistent_fraction": bad})
