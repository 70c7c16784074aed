"""Replay a corpus through the production pipeline, as ``detector run`` would see it.

Every point becomes one native JSON message; the messages of all files are interleaved by
timestamp and handed to :meth:`Pipeline.process` in batches, with ``now`` the newest data
timestamp of the batch: the data is historical, so idle eviction (every minute of data
time, as the runner does every minute of wall time) and anything else that is time-driven
follows data time. Online retraining hooks in through ``after_batch(pipeline, now)``,
called once after every batch.

A batch is what a live feed of this data would hand the runner: at most ``run.batch_size``
points, all less than a second of data time apart. Points arrive when they happen, so a
live batch never holds a day of one stream; cutting batches by count alone would check
the retraining schedule (and evict) once per day-long batch of a sparse corpus instead.

Rows the pipeline does not score (a stream's first point, a duplicate or older timestamp,
a non-finite value) get score 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson
from numpy.typing import NDArray

from detector.config import Settings
from detector.evaluate.corpus import SeriesFile, arrival_order
from detector.stream.pipeline import Pipeline, PointScores

AfterBatch = Callable[[Pipeline, float], None]
Progress = Callable[[int], object]

INSTANCE = "evaluate"
NOT_SCORED = -1  # status of a row that never reached the kernel (e.g. a non-finite value)
_EVICT_EVERY_S = 60.0  # of data time; detector.service.runner evicts every 60 s of wall time
# Longest data-time span of one batch: a live runner's batch waits at most
# kafka.fetch_max_wait_ms (0.1 s) and the retrainer checks the schedule once a second.
BATCH_SPAN_S = 1.0


@dataclass(frozen=True, slots=True)
class SeriesOutput:
    """What the pipeline said about every row of one file."""

    score: NDArray[np.float64]  # (N,) in [0, 1]; 0 where not scored
    predicted: NDArray[np.float64]  # (N,) NaN without a prediction
    status: NDArray[np.int8]  # SCORED, NO_PREDICTION, DROPPED or NOT_SCORED
    alert: NDArray[np.bool_]  # (N,) alerts at the configured threshold (hysteresis etc.)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    outputs: dict[str, SeriesOutput]  # by file name
    counters: dict[str, int]
    batches: int
    seconds: float


def replay(
    files: list[SeriesFile],
    settings: Settings,
    *,
    after_batch: AfterBatch | None = None,
    on_progress: Progress | None = None,
) -> ReplayResult:
    """Score every point of ``files`` with a fresh embedded pipeline (module docstring)."""
    started = time.perf_counter()
    # Points go in as native JSON, whatever format the configuration names for `run`.
    settings = settings.model_copy(
        update={"run": settings.run.model_copy(update={"format": "native"})}
    )
    pipeline = Pipeline(settings, INSTANCE)
    file_of, row_of, arrival_ts = arrival_order(files)
    streams = [f.stream for f in files]
    index_of = {s: k for k, s in enumerate(streams)}
    if len(index_of) != len(files):
        raise ValueError("two data files map to the same stream id")
    kept: list[PointScores] = []
    batch_size = settings.run.batch_size
    last_evict = -np.inf
    batches = 0
    for start, stop in _batches(arrival_ts, batch_size):
        fb, rb = file_of[start:stop], row_of[start:stop]
        ts = [float(files[k].timestamps[r]) for k, r in zip(fb.tolist(), rb.tolist(), strict=True)]
        messages = [
            orjson.dumps({"stream": streams[k], "ts": t, "value": float(files[k].values[r])})
            for k, r, t in zip(fb.tolist(), rb.tolist(), ts, strict=True)
        ]
        now = max(ts)
        out = pipeline.process(messages, now=now, keep_scores=True)
        kept.extend(out.scores or ())
        if now - last_evict >= _EVICT_EVERY_S:
            pipeline.evict_idle(now)
            last_evict = now
        if after_batch is not None:
            after_batch(pipeline, now)
        batches += 1
        if on_progress is not None:
            on_progress(len(messages))
    outputs = _per_file(files, index_of, kept)
    return ReplayResult(
        outputs, pipeline.counters.as_dict(), batches, time.perf_counter() - started
    )


def _batches(arrival_ts: NDArray[np.float64], batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of every batch: at most ``batch_size`` points, spanning less than
    BATCH_SPAN_S of data time (module docstring)."""
    cuts, start, n = [], 0, arrival_ts.size
    while start < n:
        span_end = int(np.searchsorted(arrival_ts, arrival_ts[start] + BATCH_SPAN_S, "left"))
        stop = min(start + batch_size, max(span_end, start + 1))
        cuts.append((start, stop))
        start = stop
    return cuts


def _per_file(
    files: list[SeriesFile], index_of: dict[str, int], kept: list[PointScores]
) -> dict[str, SeriesOutput]:
    """Map the kernel's points (in arrival order) back to the rows of their files."""
    if kept:
        file_idx = np.array([index_of[s] for ps in kept for s in ps.streams], np.int64)
        ts = np.concatenate([ps.ts for ps in kept])
        score = np.concatenate([ps.score for ps in kept])
        predicted = np.concatenate([ps.predicted[:, 0] for ps in kept])
        status = np.concatenate([ps.status for ps in kept])
        alert = np.concatenate([ps.alert for ps in kept])
    else:
        file_idx = np.empty(0, np.int64)
        ts = score = predicted = np.empty(0)
        status, alert = np.empty(0, np.int8), np.empty(0, np.bool_)
    by_file = np.argsort(file_idx, kind="stable")  # keeps arrival order within a file
    bounds = np.searchsorted(file_idx[by_file], np.arange(len(files) + 1))
    outputs = {}
    for k, f in enumerate(files):
        points = by_file[bounds[k] : bounds[k + 1]]
        rows = _match_rows(f.timestamps, ts[points], f.name)
        o = SeriesOutput(
            score=np.zeros(len(f)),
            predicted=np.full(len(f), np.nan),
            status=np.full(len(f), NOT_SCORED, np.int8),
            alert=np.zeros(len(f), np.bool_),
        )
        o.score[rows] = score[points]
        o.predicted[rows] = predicted[points]
        o.status[rows] = status[points]
        o.alert[rows] = alert[points]
        outputs[f.name] = o
    return outputs


def _match_rows(
    row_ts: NDArray[np.float64], point_ts: NDArray[np.float64], name: str
) -> NDArray[np.int64]:
    """The row of each point: points are a subsequence of the rows (in order, by timestamp);
    rows the pipeline dropped before its kernel (non-finite values) have no point."""
    if point_ts.size == row_ts.size and np.array_equal(point_ts, row_ts):
        return np.arange(row_ts.size, dtype=np.int64)  # the usual case: every row scored
    rows = np.empty(point_ts.size, np.int64)
    r = 0
    all_rows = row_ts.tolist()
    for j, t in enumerate(point_ts.tolist()):
        while r < len(all_rows) and all_rows[r] != t:
            r += 1
        if r == len(all_rows):
            raise RuntimeError(f"{name}: the pipeline scored a point at {t} the file lacks")
        rows[j] = r
        r += 1
    return rows
