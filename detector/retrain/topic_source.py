"""Training series read from a Kafka topic (`detector train --from-topic`).

The topic is read with a plain assigned consumer (no group: nothing is committed, the
daemon's offsets are never touched) over a range chosen per partition:

- start: the partition's first offset, raised by ``--from-offset`` and by ``--from-time``
  (``offsets_for_times``: the first record whose Kafka timestamp is at or after it);
- stop (exclusive): the partition's end offset *as snapshotted at start*, lowered by
  ``--to-offset`` and by ``--to-time``. Reading ends there, so a live topic never keeps
  the command waiting.

A Kafka timestamp is the producer's create time (or the broker's append time), which need
not grow with the offset, so a record inside the offset range whose timestamp falls
outside ``[from_time, to_time)`` is skipped as well. Every message is decoded by
:func:`detector.io.formats.decode` in ``run.format``, as the daemon decodes it; a malformed
part is counted and logged, never fatal. Samples then become :class:`Series` exactly as
:mod:`detector.io.series_files` builds them from a JSON-lines file (one series per vector
id, fields sorted, ``""`` named "value"), points sorted by ``ts`` within a series and
series sorted by name, so the same points give the same training data whichever way they
came in.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from array import array
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from detector.config import KafkaSettings
from detector.errors import DetectorError, RecordDecodeError
from detector.io.formats import Format, decode, parse_timestamp, vector_id
from detector.io.series_files import Series
from detector.kafka import clients
from detector.kafka.topics import describe_partitions

log = structlog.get_logger(__name__)

# A partition's offsets: one offset for every partition, or {partition: offset}.
OffsetSpec = int | Mapping[int, int]
# Whether one field of a sample is kept: (name, tags, field) -> bool (a model group's routing).
FieldFilter = Callable[[str, str, str], bool]

_POLL_MS = 500
_STALL_S = 60.0  # no progress for this long while records remain: give up, do not hang
_LOGGED_ERRORS = 20  # malformed messages logged one by one; the rest are only counted
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class TopicSourceError(DetectorError):
    """Training data could not be read from the topic. Operator action: see the message."""


class BrokerUnreachableError(TopicSourceError):
    """No broker answered within kafka.request_timeout_ms. Operator action: check
    kafka.bootstrap_servers, the network and the security settings."""

    retriable = True


class TopicMissingError(TopicSourceError):
    """The topic does not exist. Operator action: check the topic name (default
    kafka.input_topic)."""


class EmptyRangeError(TopicSourceError):
    """The range selected holds no usable point. Operator action: widen --from-time /
    --to-time (or --last) or the offsets, or check that producers write to the topic."""


@dataclass(frozen=True, slots=True)
class TopicRange:
    """Which part of the topic to read; None: from the start / up to the end."""

    from_time: float | None = None  # epoch seconds, inclusive
    to_time: float | None = None  # epoch seconds, exclusive
    from_offset: OffsetSpec | None = None  # inclusive
    to_offset: OffsetSpec | None = None  # exclusive


@dataclass(slots=True)
class TopicReport:
    """What was read: the offsets of every partition and the counters."""

    topic: str
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition: [start, stop)
    messages: int = 0
    points: int = 0  # samples that went into a series
    decode_errors: int = 0  # malformed parts of messages (skipped)
    outside_range: int = 0  # records inside the offsets, timestamped outside the times
    non_finite: int = 0  # samples with a NaN or infinite value (skipped, as the daemon does)
    inconsistent: int = 0  # samples whose fields differ from their series' first sample
    other_groups: int = 0  # samples with no field routed to the group trained

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "offsets": {str(p): list(r) for p, r in sorted(self.offsets.items())},
            "messages": self.messages,
            "points": self.points,
            "decode_errors": self.decode_errors,
            "outside_range": self.outside_range,
            "non_finite": self.non_finite,
            "inconsistent": self.inconsistent,
            "other_groups": self.other_groups,
        }


# ---------------------------------------------------------------------- parsing the flags


def parse_time(text: str) -> float:
    """``--from-time`` / ``--to-time``: RFC 3339 or epoch seconds (ms, µs, ns by magnitude,
    as in :func:`detector.io.formats.parse_timestamp`); ValueError says what is wrong."""
    raw = text.strip()
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    try:
        return parse_timestamp(raw if math.isnan(number) else number, what="time")
    except RecordDecodeError as exc:
        raise ValueError(f"{text!r}: {exc}; expected RFC 3339 or epoch seconds") from None


def parse_duration(text: str) -> float:
    """``--last``: a number and a unit, s m h d or w (``6h``, ``90m``, ``1.5d``) -> seconds."""
    m = _DURATION.match(text)
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r}: expected a positive number and a unit s, m, h, d or w")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_offsets(text: str) -> OffsetSpec:
    """``--from-offset`` / ``--to-offset``: ``N`` (every partition) or ``P:N[,P:N...]``
    (those partitions; the others keep their default)."""
    raw = text.strip()
    if re.fullmatch(r"\d+", raw):
        return int(raw)
    spec: dict[int, int] = {}
    for part in raw.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", part)
        if m is None:
            raise ValueError(f"{text!r}: expected N or PARTITION:OFFSET[,PARTITION:OFFSET...]")
        partition, offset = int(m.group(1)), int(m.group(2))
        if partition in spec:
            raise ValueError(f"{text!r}: partition {partition} given twice")
        spec[partition] = offset
    return spec


# ---------------------------------------------------------------------- the range


def plan_offsets(
    begin: Mapping[int, int],
    end: Mapping[int, int],
    selection: TopicRange,
    time_starts: Mapping[int, int | None] | None = None,
    time_stops: Mapping[int, int | None] | None = None,
) -> dict[int, tuple[int, int]]:
    """[start, stop) of every partition: the log's [begin, end) narrowed by the offsets
    given and by the offsets the times resolved to (None: no record at or after the time).
    A partition named in an offset list that the topic does not have is an error."""
    for spec, flag in (
        (selection.from_offset, "--from-offset"),
        (selection.to_offset, "--to-offset"),
    ):
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - set(begin))
            if unknown:
                raise TopicSourceError(
                    f"{flag}: the topic has no partition {unknown[0]} (partitions 0-{max(begin)})"
                )
    out = {}
    for p in sorted(begin):
        lo, hi = begin[p], end[p]
        start, stop = lo, hi
        if (o := _offset_of(selection.from_offset, p)) is not None:
            start = max(start, o)
        if (o := _offset_of(selection.to_offset, p)) is not None:
            stop = min(stop, o)
        if time_starts is not None:
            o = time_starts.get(p)
            start = max(start, hi if o is None else o)
        if time_stops is not None:
            o = time_stops.get(p)
            if o is not None:
                stop = min(stop, o)
        out[p] = (min(start, hi), max(min(stop, hi), lo))
    return out


def _offset_of(spec: OffsetSpec | None, partition: int) -> int | None:
    if spec is None or isinstance(spec, int):
        return spec
    return spec.get(partition)


# ---------------------------------------------------------------------- series


class SeriesBuilder:
    """Samples in, :class:`Series` out: the grouping of
    :func:`detector.io.series_files.read_series` for JSON lines, tolerant of a live topic
    (a sample whose fields differ from its series' first one is counted, not fatal).

    Points are kept in typed arrays (8 bytes a number, not a Python float in a list): a
    day of 10,000 streams at one point a minute is 14 million points, ~230 MB at D = 1."""

    def __init__(self, report: TopicReport, keep: FieldFilter | None = None) -> None:
        self.report = report
        self.keep = keep
        # stream -> (timestamps, values row by row, field names)
        self._streams: dict[str, tuple[array[float], array[float], tuple[str, ...]]] = {}

    def add(self, name: str, tags: str, ts: float, values: Mapping[str, float]) -> None:
        keep = self.keep
        fields = sorted(f for f in values if keep is None or keep(name, tags, f))
        if not fields:
            self.report.other_groups += 1
            return
        row = [values[f] for f in fields]
        if not all(math.isfinite(v) for v in row):
            self.report.non_finite += 1
            return
        names = tuple(f or "value" for f in fields)
        stream = vector_id(name, tags)
        stamps, rows, known = self._streams.setdefault(stream, (array("d"), array("d"), names))
        if names != known:
            self.report.inconsistent += 1
            return
        stamps.append(ts)
        rows.extend(row)
        self.report.points += 1

    def series(self) -> list[Series]:
        """The series built, by stream id; empties the builder (each stream's points are
        let go as soon as its series is made, so the peak is not twice the data)."""
        out = []
        for stream in sorted(self._streams):
            stamps, values, names = self._streams.pop(stream)
            ts = np.frombuffer(stamps, np.float64)
            rows = np.frombuffer(values, np.float64).reshape(ts.size, len(names))
            order = np.argsort(ts, kind="stable")  # equal stamps keep their offset order
            out.append(Series(stream, names, ts[order], rows[order]))
        return out


# ---------------------------------------------------------------------- reading


def read_topic_series(
    kafka: KafkaSettings,
    topic: str,
    fmt: Format,
    selection: TopicRange,
    keep: FieldFilter | None = None,
) -> tuple[list[Series], TopicReport]:
    """Every series of the selected range of ``topic`` (see the module docstring), and what
    was read. Raises a :class:`TopicSourceError` when the broker, the topic or the data
    is not there."""
    return asyncio.run(_read(kafka, topic, fmt, selection, keep))


async def _read(
    kafka: KafkaSettings,
    topic: str,
    fmt: Format,
    selection: TopicRange,
    keep: FieldFilter | None,
) -> tuple[list[Series], TopicReport]:
    partitions = await _partitions(kafka, topic)
    consumer = clients.reader(kafka)
    await _connect(consumer.start, consumer.stop, kafka)
    report = TopicReport(topic)
    builder = SeriesBuilder(report, keep)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ranges = await _ranges(consumer, tps, selection)
        report.offsets = ranges
        total = sum(stop - start for start, stop in ranges.values())
        log.info("topic_range_planned", topic=topic, records=total, **_range_fields(ranges))
        if total == 0:
            raise EmptyRangeError(f"topic {topic}: the range selected holds no record")
        await _consume(consumer, topic, ranges, selection, fmt, builder)
    except KafkaError as exc:
        raise TopicSourceError(f"topic {topic}: reading failed: {exc!r}") from None
    finally:
        await consumer.stop()
    series = builder.series()
    log.info("topic_read", series=len(series), **report.as_dict())
    if not series:
        raise EmptyRangeError(
            f"topic {topic}: {report.messages} record(s) in the range selected and no usable "
            f"point (decode errors {report.decode_errors}, outside the times "
            f"{report.outside_range}, non-finite {report.non_finite}, other groups "
            f"{report.other_groups})"
        )
    return series, report


async def _connect(
    start: Callable[[], Awaitable[object]],
    stop: Callable[[], Awaitable[object]],
    kafka: KafkaSettings,
) -> None:
    """Start a client, retrying until kafka.request_timeout_ms has passed."""
    budget = kafka.request_timeout_ms / 1000
    deadline = time.monotonic() + budget
    backoff = kafka.retry_backoff_s
    while True:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await start()
        except (KafkaConnectionError, TimeoutError) as exc:
            await stop()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnreachableError(
                    f"no Kafka broker reachable at {kafka.bootstrap_servers} within "
                    f"{budget:g} s (kafka.request_timeout_ms): {exc!r}"
                ) from None
            log.warning("broker_unavailable", bootstrap_servers=kafka.bootstrap_servers)
            await asyncio.sleep(min(backoff, left))
            backoff = min(backoff * 2, kafka.retry_backoff_max_s)
        else:
            return


async def _partitions(kafka: KafkaSettings, topic: str) -> int:
    """The topic's partition count (asked of the admin API: a consumer's metadata only
    covers topics it already reads, and asking it never creates the topic)."""
    admin = clients.admin(kafka)
    await _connect(admin.start, admin.close, kafka)
    try:
        found = await describe_partitions(admin, [topic])
    except KafkaError as exc:
        raise TopicSourceError(f"topic {topic}: describing it failed: {exc!r}") from None
    finally:
        await admin.close()
    if topic not in found:
        raise TopicMissingError(f"topic {topic} does not exist")
    return found[topic]


async def _ranges(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], selection: TopicRange
) -> dict[int, tuple[int, int]]:
    begin = {tp.partition: o for tp, o in (await consumer.beginning_offsets(tps)).items()}
    end = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
    starts = stops = None
    if selection.from_time is not None:
        starts = await _offsets_at(consumer, tps, selection.from_time)
    if selection.to_time is not None:
        stops = await _offsets_at(consumer, tps, selection.to_time)
    return plan_offsets(begin, end, selection, starts, stops)


async def _offsets_at(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], when: float
) -> dict[int, int | None]:
    found = await consumer.offsets_for_times({tp: int(when * 1000) for tp in tps})
    return {tp.partition: (None if o is None else o.offset) for tp, o in found.items()}


async def _consume(
    consumer: AIOKafkaConsumer,
    topic: str,
    ranges: Mapping[int, tuple[int, int]],
    selection: TopicRange,
    fmt: Format,
    builder: SeriesBuilder,
) -> None:
    report = builder.report
    todo = {TopicPartition(topic, p): r for p, r in ranges.items() if r[0] < r[1]}
    consumer.assign(list(todo))
    for tp, (start, _stop) in todo.items():
        consumer.seek(tp, start)
    lo = -math.inf if selection.from_time is None else selection.from_time * 1000
    hi = math.inf if selection.to_time is None else selection.to_time * 1000
    last_progress = time.monotonic()
    while todo:
        batches = await consumer.getmany(*todo, timeout_ms=_POLL_MS)
        for tp, records in batches.items():
            stop = todo[tp][1] if tp in todo else -1
            for record in records:
                if record.offset >= stop:
                    break
                report.messages += 1
                if not lo <= record.timestamp < hi:
                    report.outside_range += 1
                    continue
                if record.value is None:
                    continue
                _add_message(record.value, record.timestamp / 1000, fmt, builder, tp, record.offset)
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp][1]:
                del todo[tp]
                consumer.pause(tp)
                last_progress = time.monotonic()
        if batches:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > _STALL_S:
            raise TopicSourceError(
                f"topic {topic}: no record for {_STALL_S:g} s with "
                f"{sorted(tp.partition for tp in todo)} not read to their stop offsets"
            )


def _add_message(
    payload: bytes, now: float, fmt: Format, builder: SeriesBuilder, tp: TopicPartition, offset: int
) -> None:
    # The record's timestamp stands in for "now" (Influx lines without a timestamp), as
    # close as we get to when the point was sent.
    decoded = decode(payload, fmt, now=now)
    if decoded.errors:
        report = builder.report
        report.decode_errors += len(decoded.errors)
        if report.decode_errors <= _LOGGED_ERRORS:
            log.warning(
                "record_skipped",
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                reasons=decoded.errors[:3],
            )
    for sample in decoded.samples:
        builder.add(sample.name, sample.tags, sample.ts, sample.values)


def _range_fields(ranges: Mapping[int, tuple[int, int]]) -> dict[str, Any]:
    return {"partitions": {str(p): list(r) for p, r in sorted(ranges.items())}}
