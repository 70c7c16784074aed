"""`detector train --from-topic` against a real broker: a topic's points give the same model
as the same points in a file, a time range keeps only its points, and a range with nothing
in it (or a missing topic) is a named error, not a traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from detector import cli
from detector.kafka.models import ModelWatcher
from detector.model.modelfile import load_model
from tests.logging_state import restored_logging

if TYPE_CHECKING:  # types only: pytest, not this module, imports the conftest
    from .conftest import NewTopicFactory

REPO = Path(__file__).resolve().parents[2]
STEP_S = 60
POINTS = 240
STREAMS = ("web-1.cpu", "web-2.cpu", "db-1.load")
# Small and quick, but every option that could differ between the two paths is the same.
TRAIN_FLAGS = ("--epochs", "2", "--window", "24", "--hidden-size", "6", "--seed", "11")

Point = tuple[str, float, float]  # stream, ts, value


def make_points(start: float) -> list[Point]:
    """Three noisy sines, one point per stream every STEP_S, interleaved by time as they
    would arrive. Timestamps are recent: the topic's retention (by record time) keeps them."""
    rng = np.random.default_rng(5)
    points = []
    for i in range(POINTS):
        for k, stream in enumerate(STREAMS):
            value = 10 * k + np.sin(i / (7 + k)) + 0.1 * rng.normal()
            points.append((stream, start + i * STEP_S, round(float(value), 6)))
    return points


def write_jsonl(path: Path, points: list[Point]) -> Path:
    path.write_bytes(
        b"".join(orjson.dumps({"stream": s, "ts": t, "value": v}) + b"\n" for s, t, v in points)
    )
    return path


async def produce(bootstrap: str, topic: str, points: list[Point]) -> None:
    """Key = stream id (one stream, one partition), record timestamp = the point's ts."""
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all") as producer:
        sent = [
            await producer.send(
                topic,
                orjson.dumps({"stream": s, "ts": t, "value": v}),
                key=s.encode(),
                timestamp_ms=int(t * 1000),
            )
            for s, t, v in points
        ]
        await asyncio.gather(*sent)


@pytest.fixture
def train_cli(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., object]]:
    """``detector train`` in-process (in a thread: it runs its own event loop); the logging
    it configures is undone afterwards."""
    monkeypatch.setenv("DETECTOR_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.delenv("DETECTOR_CONFIG", raising=False)

    async def run(*args: object) -> int:
        return await asyncio.to_thread(cli.main, ["train", *TRAIN_FLAGS, *map(str, args)])

    with restored_logging():
        yield run


def weights(path: Path) -> np.ndarray:
    params, _meta = load_model(path)
    return params.theta


async def test_a_topic_gives_the_model_its_points_give_from_a_file(
    kafka_bootstrap: str, new_topic: NewTopicFactory, train_cli, tmp_path: Path
) -> None:
    topic = await new_topic(partitions=3)
    points = make_points(start=float(int(time.time()) - 86_400))
    await produce(kafka_bootstrap, topic, points)
    # The file lists the streams one after the other, the topic spreads them over
    # partitions: the order they come in must not matter.
    by_stream = sorted(points, key=lambda p: (STREAMS.index(p[0]), p[1]))
    data = write_jsonl(tmp_path / "points.jsonl", by_stream)

    assert await train_cli("--from-topic", topic, "--out", tmp_path / "topic.npz") == 0
    assert await train_cli("--input", data, "--out", tmp_path / "file.npz") == 0

    from_topic, from_file = weights(tmp_path / "topic.npz"), weights(tmp_path / "file.npz")
    assert from_topic.dtype == from_file.dtype
    assert np.array_equal(from_topic, from_file)  # bit for bit
    _params, meta = load_model(tmp_path / "topic.npz")
    assert meta.training["inputs"] == [f"kafka:{topic}"]
    assert meta.training["topic"]["points"] == len(points)
    assert sum(stop - start for start, stop in meta.training["topic"]["offsets"].values()) == len(
        points
    )


async def test_a_time_range_keeps_only_its_points(
    kafka_bootstrap: str, new_topic: NewTopicFactory, train_cli, tmp_path: Path
) -> None:
    topic = await new_topic(partitions=2)
    start = float(int(time.time()) - 86_400)
    points = make_points(start)
    await produce(kafka_bootstrap, topic, points)
    lo, hi = start + 60 * STEP_S, start + 200 * STEP_S  # [lo, hi): 140 points per stream
    inside = [p for p in points if lo <= p[1] < hi]
    data = write_jsonl(tmp_path / "inside.jsonl", inside)

    assert (
        await train_cli(
            "--from-topic",
            topic,
            "--from-time",
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(lo)),  # RFC 3339
            "--to-time",
            int(hi),  # epoch seconds
            "--out",
            tmp_path / "range.npz",
        )
        == 0
    )
    assert await train_cli("--input", data, "--out", tmp_path / "inside.npz") == 0
    assert np.array_equal(weights(tmp_path / "range.npz"), weights(tmp_path / "inside.npz"))
    _params, meta = load_model(tmp_path / "range.npz")
    assert meta.training["topic"]["points"] == len(inside)

    # Offsets narrow the range too: the first 10 records of every partition left out.
    assert (
        await train_cli("--from-topic", topic, "--from-offset", "10", "--out", tmp_path / "o.npz")
        == 0
    )
    _params, meta = load_model(tmp_path / "o.npz")
    offsets = meta.training["topic"]["offsets"]
    assert all(start == 10 for start, _stop in offsets.values())
    assert meta.training["topic"]["points"] == len(points) - 10 * len(offsets)


async def test_publish_from_a_topic_goes_to_the_models_topic(
    kafka_bootstrap: str, new_topic: NewTopicFactory, train_cli, tmp_path: Path, monkeypatch
) -> None:
    topic = await new_topic(partitions=2)
    models = await new_topic(partitions=1, compacted=True)
    monkeypatch.setenv("DETECTOR_KAFKA__MODELS_TOPIC", models)
    await produce(kafka_bootstrap, topic, make_points(float(int(time.time()) - 86_400)))

    assert await train_cli("--from-topic", topic, "--publish", "--out", tmp_path / "m.npz") == 0

    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    async with reader:
        (published,) = await ModelWatcher(reader, models).start()
    params, meta = load_model(tmp_path / "m.npz")
    assert published.group == "default"
    assert published.metadata.content_hash == meta.content_hash  # the file's weights (float32)
    assert np.array_equal(published.params.theta, params.theta)


def _train_process(kafka_bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env |= {"DETECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "DETECTOR_LOG__FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "detector", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )


async def test_an_empty_range_and_a_missing_topic_are_named_errors(
    kafka_bootstrap: str, new_topic: NewTopicFactory, tmp_path: Path
) -> None:
    topic = await new_topic(partitions=2)
    start = float(int(time.time()) - 86_400)
    await produce(kafka_bootstrap, topic, make_points(start)[:30])
    out = str(tmp_path / "m.npz")

    later = str(int(start + 3600))  # after the last record
    empty = await asyncio.to_thread(
        _train_process, kafka_bootstrap, "--from-topic", topic, "--from-time", later, "--out", out
    )
    assert empty.returncode == 1, empty.stderr
    assert "Traceback" not in empty.stderr
    (line,) = [orjson.loads(s) for s in empty.stderr.splitlines() if "command_failed" in s]
    assert line["error"] == f"topic {topic}: the range selected holds no record"

    missing = await asyncio.to_thread(
        _train_process, kafka_bootstrap, "--from-topic", topic + "-nope", "--out", out
    )
    assert missing.returncode == 1, missing.stderr
    assert "Traceback" not in missing.stderr
    assert f"topic {topic}-nope does not exist" in missing.stderr
