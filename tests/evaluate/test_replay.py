"""Replaying a corpus through the pipeline: arrival order, messages, data time, row mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from detector.config import RunSettings, ScoringSettings, Settings, StreamSettings
from detector.evaluate import replay as replay_module
from detector.evaluate.corpus import SeriesFile, arrival_order, format_timestamps, read_corpus
from detector.evaluate.replay import NOT_SCORED, replay
from detector.stream.pipeline import Pipeline
from detector.stream.scoring import DROPPED, NO_PREDICTION, SCORED

from .corpus_factory import spike_corpus

T0 = 1_396_310_400.0  # 2014-04-01 00:00:00 UTC


def series(name: str, ts: list[float], values: list[float] | None = None) -> SeriesFile:
    v = np.arange(len(ts), dtype=np.float64) if values is None else np.array(values)
    return SeriesFile(name, np.array(ts, np.float64), v)


def test_arrival_order_interleaves_by_timestamp_ties_to_the_first_file() -> None:
    files = [series("a/x.csv", [0, 10, 20]), series("b/y.csv", [5, 10, 15])]
    file_idx, row_idx, key = arrival_order(files)
    assert list(zip(file_idx.tolist(), row_idx.tolist(), strict=True)) == [
        (0, 0), (1, 0), (0, 1), (1, 1), (1, 2), (0, 2)
    ]  # fmt: skip
    assert key.tolist() == [0, 5, 10, 10, 15, 20]


def test_arrival_order_keeps_each_files_own_order_when_time_goes_backwards() -> None:
    files = [series("a.csv", [0, 30, 10, 40]), series("b.csv", [20, 35])]
    file_idx, row_idx, key = arrival_order(files)
    pairs = list(zip(file_idx.tolist(), row_idx.tolist(), strict=True))
    assert pairs == [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1), (0, 3)]
    assert key.tolist() == [0, 20, 30, 30, 35, 40]  # a row's key: its file's latest time yet
    for k in (0, 1):  # every file's rows in file order
        rows = [r for f, r in pairs if f == k]
        assert rows == sorted(rows)


class RecordingPipeline(Pipeline):
    batches: list[tuple[list[bytes], float]]

    def process(self, messages, now, partition=0, keep_scores=False):  # type: ignore[no-untyped-def]
        type(self).batches.append((list(messages), now))
        return super().process(messages, now, partition, keep_scores)


def test_replay_feeds_native_messages_interleaved_with_data_time_as_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    RecordingPipeline.batches = []
    monkeypatch.setattr(replay_module, "Pipeline", RecordingPipeline)
    files = [
        series("cat/a.csv", [T0 + 60 * i for i in range(7)]),
        series("cat/b.csv", [T0 + 30 + 60 * i for i in range(5)]),
    ]
    nows: list[float] = []
    result = replay(
        files,
        Settings(run=RunSettings(batch_size=4, format="influx")),  # the replay forces native
        after_batch=lambda pipe, now: nows.append(now),
    )
    docs = [orjson.loads(m) for batch, _ in RecordingPipeline.batches for m in batch]
    assert [d["ts"] for d in docs] == sorted(d["ts"] for d in docs)
    assert [d["stream"] for d in docs[:4]] == ["cat/a", "cat/b", "cat/a", "cat/b"]
    assert docs[0] == {"stream": "cat/a", "ts": T0, "value": 0.0}
    # Points 30 s apart arrive 30 s apart: each is a batch of its own, as a live feed's.
    assert [len(b) for b, _ in RecordingPipeline.batches] == [1] * 12
    # now = the newest data timestamp of each batch; after_batch once per batch, with it.
    assert [now for _, now in RecordingPipeline.batches] == nows == [d["ts"] for d in docs]
    assert result.batches == 12 and result.counters["points"] == 12


def test_a_batch_holds_at_most_batch_size_points_within_a_second_of_data_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    RecordingPipeline.batches = []
    monkeypatch.setattr(replay_module, "Pipeline", RecordingPipeline)
    # Five streams on one minute grid, a sixth half a second behind them, one a second behind.
    files = [series(f"s{k}.csv", [T0 + 60 * i for i in range(3)]) for k in range(5)]
    files.append(series("t.csv", [T0 + 0.5 + 60 * i for i in range(3)]))
    files.append(series("u.csv", [T0 + 1.0 + 60 * i for i in range(3)]))
    result = replay(files, Settings(run=RunSettings(batch_size=4)))
    sizes = [len(b) for b, _ in RecordingPipeline.batches]
    assert sizes == [4, 2, 1] * 3
    for batch, now in RecordingPipeline.batches:
        ts = [orjson.loads(m)["ts"] for m in batch]
        assert now == max(ts) and max(ts) - min(ts) < replay_module.BATCH_SPAN_S
    assert result.batches == 9 and result.counters["points"] == 21


def test_idle_streams_are_evicted_by_data_time() -> None:
    # Two streams a year apart: the first is idle for a year of data time when the second
    # runs, though the replay takes a second of wall time.
    files = [
        series("a.csv", [T0 + 300 * i for i in range(50)]),
        series("b.csv", [T0 + 365 * 86_400 + 300 * i for i in range(50)]),
    ]
    result = replay(files, Settings(run=RunSettings(batch_size=10)))
    assert result.counters["evicted"] == 1


def test_rows_the_pipeline_does_not_score_get_zero() -> None:
    ts = [T0 + 60 * i for i in range(200)]
    ts[100] = ts[99]  # a duplicate timestamp: dropped by the pipeline
    values = [float(i % 7) for i in range(200)]
    values[150] = float("nan")  # not JSON: a dead letter, never reaches the kernel
    f = series("x.csv", ts, values)
    out = replay([f], Settings(scoring=ScoringSettings(warmup=10))).outputs["x.csv"]
    assert out.score.shape == out.status.shape == out.predicted.shape == (200,)
    assert out.status[0] == NO_PREDICTION and out.score[0] == 0.0
    assert np.isnan(out.predicted[0])
    assert out.status[100] == DROPPED and out.score[100] == 0.0
    assert out.status[150] == NOT_SCORED and out.score[150] == 0.0
    scored = np.ones(200, bool)
    scored[[0, 100, 150]] = False
    assert np.all(out.status[scored] == SCORED)
    assert np.all((out.score >= 0) & (out.score <= 1))
    assert np.all(np.isfinite(out.predicted[scored]))


def test_keep_scores_returns_every_points_score_per_group() -> None:
    pipe = Pipeline(Settings(streams=StreamSettings()), instance="t")
    messages = [
        orjson.dumps({"stream": s, "ts": T0 + 60 * i, "value": float(i)})
        for i in range(5)
        for s in ("a", "b")
    ]
    assert pipe.process(messages[:2], now=T0).scores is None  # off by default
    out = pipe.process(messages[2:], now=T0, keep_scores=True)
    assert out.scores is not None and len(out.scores) == 1
    ps = out.scores[0]
    assert ps.group == "default" and ps.streams == ["a", "b"] * 4
    assert ps.ts.tolist() == [T0 + 60 * i for i in range(1, 5) for _ in "ab"]
    assert ps.value.shape == ps.predicted.shape == (8, 1)
    assert ps.score.shape == ps.status.shape == ps.alert.shape == (8,)
    assert np.all(ps.status == SCORED) and np.all(np.isfinite(ps.predicted))


def test_read_corpus_names_files_by_relative_path(tmp_path: Path) -> None:
    data, _, made = spike_corpus(tmp_path, n=450)
    files = read_corpus(data)
    assert [f.name for f in files] == sorted(m.name for m in made)
    spike = next(f for f in files if f.name == "artificialWithAnomaly/spike.csv")
    assert spike.stream == "artificialWithAnomaly/spike"
    assert spike.category == "artificialWithAnomaly" and spike.stem == "spike"
    original = next(m for m in made if m.name == spike.name)
    assert format_timestamps(spike.timestamps) == original.stamps
    np.testing.assert_array_equal(spike.values, original.values)
