"""Logging: one JSON line per record (structlog's and the standard library's), and the rate
limiter for per-stream events."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from detector.config import LogSettings
from detector.logging import LIBRARY_EVENT, LibraryRateLimit, RateLimitedLog, configure_logging
from tests.logging_state import restored_logging
from tests.service.clock import FakeClock


@pytest.fixture
def restore_logging() -> Iterator[None]:
    with restored_logging():
        yield


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_stdlib_records_come_out_as_one_json_line_with_a_snake_case_event() -> None:
    out = io.StringIO()
    configure_logging(LogSettings(format="json", level="info"), stream=out)
    logging.getLogger("aiokafka.consumer").warning("Heartbeat failed for group %s", "detector")
    error = OSError("connection reset\nby peer")
    logging.getLogger("aiokafka").error("Unexpected error\nin fetcher", exc_info=error)
    logging.getLogger("aiokafka").debug("below the level")
    text = out.getvalue()
    assert text.count("\n") == 2  # one line per record, tracebacks included
    first, second = _lines(out)
    assert first["event"] == LIBRARY_EVENT
    assert first["message"] == "Heartbeat failed for group detector"
    assert first["logger"] == "aiokafka.consumer"
    assert first["level"] == "warning"
    assert "timestamp" in first
    assert second["level"] == "error"
    assert second["message"] == "Unexpected error\nin fetcher"
    assert "OSError: connection reset" in second["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_structlog_events_keep_their_name_and_keys() -> None:
    out = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=out)
    structlog.get_logger("detector.test").info("partition_revoked", partition=3, streams=12)
    (line,) = _lines(out)
    assert line["event"] == "partition_revoked"
    assert (line["partition"], line["streams"], line["level"]) == (3, 12, "info")
    assert "message" not in line


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, dict[str, Any]]] = []

    def log(self, level: int, event: str, *args: Any, **kw: Any) -> None:
        self.calls.append((level, event, kw))


def test_one_line_per_key_per_interval_then_the_suppressed_count() -> None:
    clock, rec = FakeClock(), _Recorder()
    limited = RateLimitedLog(rec, every_s=60.0, clock=clock)
    assert limited.warning("point_dropped", "web-1.cpu", reason="non_finite")
    for _ in range(5):
        clock.advance(10.0)
        assert not limited.warning("point_dropped", "web-1.cpu", reason="non_finite")
    assert limited.warning("point_dropped", "web-2.cpu", reason="non_finite")  # another key
    assert limited.info("stream_refused", "web-1.cpu")  # another event, same key
    clock.advance(10.0)  # 60 s after the first line
    assert limited.warning("point_dropped", "web-1.cpu", reason="non_finite")
    clock.advance(60.0)
    assert limited.warning("point_dropped", "web-1.cpu", reason="non_finite")
    assert rec.calls == [
        (logging.WARNING, "point_dropped", {"stream": "web-1.cpu", "reason": "non_finite"}),
        (logging.WARNING, "point_dropped", {"stream": "web-2.cpu", "reason": "non_finite"}),
        (logging.INFO, "stream_refused", {"stream": "web-1.cpu"}),
        (
            logging.WARNING,
            "point_dropped",
            {"stream": "web-1.cpu", "reason": "non_finite", "suppressed": 5},
        ),
        (logging.WARNING, "point_dropped", {"stream": "web-1.cpu", "reason": "non_finite"}),
    ]
    assert limited.suppressed_total == 5


def test_memory_is_bounded_under_an_explosion_of_keys() -> None:
    clock, rec = FakeClock(), _Recorder()
    limited = RateLimitedLog(
        rec, every_s=1.0, max_keys=100, max_per_interval=1_000_000, clock=clock
    )
    for i in range(10_000):
        limited.warning("point_dropped", f"stream-{i}")
        clock.advance(0.001)
    assert len(limited) == 100
    # The most recent keys are the ones remembered.
    assert not limited.warning("point_dropped", "stream-9999")
    assert limited.warning("point_dropped", "stream-0")  # forgotten: passes again


def test_lines_of_one_event_are_capped_per_interval_and_the_rest_reported() -> None:
    clock, rec = FakeClock(), _Recorder()
    limited = RateLimitedLog(rec, every_s=60.0, max_per_interval=3, clock=clock)
    passed = [limited.warning("point_dropped", f"s{i}") for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert limited.warning("other_event", "s0")  # the cap is per event
    clock.advance(60.0)
    assert limited.warning("point_dropped", "s5")
    assert rec.calls[-1] == (
        logging.WARNING,
        "point_dropped",
        {"stream": "s5", "suppressed_other_keys": 7},
    )
    assert limited.warning("point_dropped", "s6")
    assert "suppressed_other_keys" not in rec.calls[-1][2]
    assert limited.suppressed_total == 7


@pytest.mark.usefixtures("restore_logging")
def test_with_a_real_structlog_logger() -> None:
    out = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=out)
    clock = FakeClock()
    limited = RateLimitedLog(structlog.get_logger("detector"), every_s=5.0, clock=clock)
    for _ in range(3):
        limited.warning("point_dropped", "web-1.cpu", reason="non_finite")
    clock.advance(5.0)
    limited.warning("point_dropped", "web-1.cpu", reason="non_finite")
    lines = _lines(out)
    assert [line.get("suppressed") for line in lines] == [None, 2]
    assert {line["stream"] for line in lines} == {"web-1.cpu"}


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="every_s"):
        RateLimitedLog(_Recorder(), every_s=0)


@pytest.mark.usefixtures("restore_logging")
def test_a_library_repeating_itself_is_held_back_and_counted() -> None:
    out = io.StringIO()
    configure_logging(LogSettings(format="json", level="info"), stream=out)
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    for _ in range(1000):  # a retry loop: same template, changing arguments
        fetcher.warning("Topic %s is not available during auto-create", "metrics")
    fetcher.error("Unexpected error in fetcher")  # another message: not held back
    structlog.get_logger("detector").warning("batch_slow", seconds=2)
    lines = _lines(out)
    assert [x.get("message", x["event"]) for x in lines] == [
        "Topic metrics is not available during auto-create",
        "Unexpected error in fetcher",
        "batch_slow",
    ]


def test_the_library_limit_reports_what_it_held_back() -> None:
    now = [0.0]
    limit = LibraryRateLimit(every_s=10.0, clock=lambda: now[0])
    record = logging.LogRecord("aiokafka", logging.WARNING, "f", 1, "Topic %s gone", ("t",), None)
    assert limit.filter(record) and not hasattr(record, "suppressed")
    assert not any(limit.filter(record) for _ in range(5))
    now[0] = 10.0
    assert limit.filter(record) and record.suppressed == 5
    event = logging.LogRecord("detector", logging.INFO, "f", 1, {"event": "x"}, None, None)
    assert all(limit.filter(event) for _ in range(3))  # structlog's own events pass
