"""`detector train --from-topic` without a broker: the flags, the offset plan, the series a
topic's samples become, and the errors (the real topic is read in
tests/integration/test_train_from_topic.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.testing as npt
import orjson
import pytest

from detector.io.formats import decode
from detector.io.series_files import read_series
from detector.retrain.topic_source import (
    EmptyRangeError,
    SeriesBuilder,
    TopicRange,
    TopicReport,
    TopicSourceError,
    parse_duration,
    parse_offsets,
    parse_time,
    plan_offsets,
)


def test_times_are_rfc3339_or_epoch_seconds():
    assert parse_time("2024-11-19T07:06:40Z") == 1_732_000_000.0
    assert parse_time("2024-11-19T08:06:40+01:00") == 1_732_000_000.0
    assert parse_time("1732000000") == 1_732_000_000.0
    assert parse_time("1732000000000") == 1_732_000_000.0  # ms, told by magnitude
    with pytest.raises(ValueError, match="expected RFC 3339 or epoch seconds"):
        parse_time("yesterday")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("90m", 5400), ("6h", 21600), ("1.5d", 129600), ("1w", 604800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["6", "h", "-1h", "0h", "6 hours", "6y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a positive number and a unit"):
        parse_duration(text)


def test_offsets_for_every_partition_or_some():
    assert parse_offsets("100") == 100
    assert parse_offsets("0:100, 2:7") == {0: 100, 2: 7}
    for bad in ("-1", "0:", "a:1", "0:1;1:2"):
        with pytest.raises(ValueError, match="expected N or PARTITION:OFFSET"):
            parse_offsets(bad)
    with pytest.raises(ValueError, match="partition 1 given twice"):
        parse_offsets("1:1,1:2")


def test_the_plan_narrows_the_log_to_the_selection():
    begin, end = {0: 0, 1: 50, 2: 0}, {0: 100, 1: 200, 2: 0}
    assert plan_offsets(begin, end, TopicRange()) == {0: (0, 100), 1: (50, 200), 2: (0, 0)}
    # One offset for all; below the log start (retention) it starts at the log start.
    assert plan_offsets(begin, end, TopicRange(from_offset=60)) == {
        0: (60, 100),
        1: (60, 200),
        2: (0, 0),
    }
    # Listed partitions only; the others keep their defaults; past the end stays at the end.
    plan = plan_offsets(begin, end, TopicRange(from_offset={0: 10}, to_offset={1: 500, 0: 20}))
    assert plan == {0: (10, 20), 1: (50, 200), 2: (0, 0)}
    # Times resolved to offsets; None (no record at or after the time) means: nothing /
    # up to the end.
    plan = plan_offsets(
        begin,
        end,
        TopicRange(from_time=1.0, to_time=2.0),
        time_starts={0: 30, 1: None, 2: None},
        time_stops={0: None, 1: None, 2: None},
    )
    assert plan == {0: (30, 100), 1: (200, 200), 2: (0, 0)}
    # Offsets and times together: the narrower of both.
    plan = plan_offsets(
        begin,
        end,
        TopicRange(from_offset=40, to_time=2.0),
        time_starts=None,
        time_stops={0: 70, 1: 60, 2: None},
    )
    assert plan == {0: (40, 70), 1: (50, 60), 2: (0, 0)}
    with pytest.raises(TopicSourceError, match="--to-offset: the topic has no partition 7"):
        plan_offsets(begin, end, TopicRange(to_offset={7: 1}))


def _samples(lines: list[bytes]):
    for line in lines:
        yield from decode(line, "native").samples


def test_topic_samples_become_the_series_a_jsonl_file_gives(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    docs = []
    for i in range(50):
        docs.append({"stream": "b.cpu", "ts": 1e9 + 60 * i, "value": float(rng.normal())})
        docs.append(
            {
                "stream": "a",
                "ts": 1e9 + 60 * i,
                "values": {"mem": float(rng.normal()), "cpu": float(rng.normal())},
                "tags": {"dc": "x"},
            }
        )
    lines = [orjson.dumps(d) for d in docs]
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join(lines))
    from_file = sorted(read_series(path), key=lambda s: s.name)

    report = TopicReport("t")
    builder = SeriesBuilder(report)
    # Arrival order across partitions is not time order: the builder sorts by ts.
    for sample in _samples(lines[::-1]):
        builder.add(sample.name, sample.tags, sample.ts, sample.values)
    from_topic = builder.series()
    assert [s.name for s in from_topic] == ["a{dc=x}", "b.cpu"]
    assert report.points == 100
    for t, f in zip(from_topic, from_file, strict=True):
        assert (t.name, t.feature_names) == (f.name, f.feature_names)
        npt.assert_array_equal(t.timestamps, f.timestamps)
        npt.assert_array_equal(t.values, f.values)


def test_the_builder_skips_what_the_daemon_would_not_score():
    report = TopicReport("t")
    builder = SeriesBuilder(report, keep=lambda name, tags, field: name != "other")
    builder.add("s", "", 2.0, {"": 1.0})
    builder.add("s", "", 1.0, {"": math.nan})  # non-finite
    builder.add("s", "", 3.0, {"x": 1.0})  # another field set than the series' first sample
    builder.add("other", "", 1.0, {"": 1.0})  # routed to another group
    (series,) = builder.series()
    assert series.feature_names == ("value",) and series.values.tolist() == [[1.0]]
    assert (report.non_finite, report.inconsistent, report.other_groups) == (1, 1, 1)


def test_range_flags_need_from_topic(run_cli, capsys, tmp_path: Path) -> None:
    code = run_cli("train", "--input", tmp_path / "x.csv", "--last", "6h", "--out", tmp_path / "m")
    assert code == 2
    assert "--last only go with --from-topic" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--from-time", "soon"], "--from-time: 'soon'"),
        (["--last", "6"], "--last: '6': expected a positive number"),
        (["--from-offset", "x"], "--from-offset: 'x': expected N or PARTITION:OFFSET"),
        (["--last", "1h", "--from-time", "0"], "--last and --from-time: give one of them"),
        (["--from-time", "200", "--to-time", "100"], "must be later than --from-time"),
        (["--group", "nope"], "--group: no model group 'nope'"),
    ],
)
def test_bad_range_flags_are_usage_errors(run_cli, capsys, tmp_path, flags, message) -> None:
    code = run_cli("train", "--from-topic", "t", *flags, "--out", tmp_path / "m.npz")
    assert code == 2
    assert message in capsys.readouterr().err


def test_no_broker_is_a_named_error(run_cli, capsys, monkeypatch, tmp_path: Path) -> None:
    # Port 1 on localhost: refused at once, retried until the timeout.
    monkeypatch.setenv("DETECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("DETECTOR_KAFKA__REQUEST_TIMEOUT_MS", "1000")
    monkeypatch.setenv("DETECTOR_KAFKA__RETRY_BACKOFF_S", "0.2")
    code = run_cli("train", "--from-topic", "metrics", "--out", tmp_path / "m.npz")
    assert code == 1
    err = capsys.readouterr().err
    assert "no Kafka broker reachable at 127.0.0.1:1 within 1 s" in err
    assert "Traceback" not in err


def test_empty_range_error_names_what_was_left_out():
    err = EmptyRangeError("x")
    assert isinstance(err, TopicSourceError) and not err.retriable
