"""From raw messages to alerts: decode, route, look up slots, one kernel call per group.

The pipeline knows nothing of where messages come from (file, stdin, Kafka) or where alerts
go; a source hands it a batch, a sink takes what it returns. Per-message Python work is the
decoding and the slot lookup; everything per point after that is the scoring kernel.

Alert documents (one JSON object per alert, README "Alerts"):

    alert_id       uuid5 of (stream, ts): the same point always gives the same id, so a
                   replay after a crash re-sends duplicates that consumers can drop
    stream, group, ts (epoch seconds), time (RFC 3339), value, predicted (numbers for a
    one-field stream, {field: number} for a vector stream), error (normalised units),
    score, threshold, mode, model_version, instance
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from detector.config import GroupSettings, Settings
from detector.errors import ConfigError, ModelFileError, StateFormatError
from detector.io.formats import Format, PlainPoints, decode, native_points, scan_native
from detector.model.modelfile import load_model
from detector.model.params import LSTMParams, make_shape
from detector.stream.routing import Router
from detector.stream.scoring import (
    CALENDAR_FEATURES,
    DROPPED,
    GAP_CONTINUED,
    GAP_RESET,
    REPLAYED,
    BatchScores,
    ScoringConfig,
    check_compatible,
    score_batch,
)
from detector.stream.state import StreamIds, StreamStateTable, TableLayout

MAX_STREAM_ID_BYTES = 1024  # longer ids are rejected: they are almost surely a bug upstream
_ALERT_NAMESPACE = uuid.UUID("6f1c8a52-3f0e-4d2b-9a57-0c4b7e1d2a90")
UNTRAINED = "untrained"  # the model version of a persistence cold start


@dataclass(slots=True)
class Counters:
    """Totals since start; exported as metrics and logged at shutdown."""

    messages: int = 0
    decode_errors: int = 0  # malformed parts of messages (each message is dead-lettered)
    points: int = 0  # points that reached a kernel
    non_finite: int = 0  # NaN or infinite values, dropped before the kernel
    incomplete: int = 0  # vector samples missing one of the group's fields
    refused: int = 0  # points of new streams beyond max_streams
    out_of_order: int = 0  # points not newer than their stream's last one
    replayed: int = 0  # points at or below their stream's stored input offset (Kafka replay)
    gap_resets: int = 0
    gaps_continued: int = 0
    alerts: int = 0
    evicted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _COUNTER_NAMES}


_COUNTER_NAMES = tuple(f.name for f in fields(Counters))  # fields() is slow, and every batch asks


@dataclass(frozen=True, slots=True)
class DeadLetter:
    payload: bytes
    reasons: list[str]
    index: int  # the message's position in the batch handed to Pipeline.process


@dataclass(frozen=True, slots=True)
class PointScores:
    """Every point of one group that reached the kernel in one batch, in arrival order.

    Kept only when asked (``Pipeline.process(..., keep_scores=True)``, for evaluation and
    plots); non-finite and refused points never reach the kernel and are not here.
    """

    group: str
    streams: list[str]
    ts: NDArray[np.float64]  # (B,) epoch seconds
    value: NDArray[np.float64]  # (B, D)
    predicted: NDArray[np.float64]  # (B, D) the forecast of this point; NaN without one
    score: NDArray[np.float64]  # (B,) in [0, 1]; 0 without a prediction or when dropped
    status: NDArray[np.int8]  # SCORED, NO_PREDICTION or DROPPED (detector.stream.scoring)
    alert: NDArray[np.bool_]  # (B,)


@dataclass(slots=True)
class BatchOutput:
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    scores: list[PointScores] | None = None  # one entry per group scored, with keep_scores


@dataclass(slots=True)
class _Points:
    """Points of one group in one batch, gathered before the kernel call: the plain points
    of a native batch as arrays (``plain``), the rest point by point in the lists."""

    vector: bool  # the group's layout is "vector": a sample's fields form one point
    streams: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # flat: n_values per point
    offsets: list[int] = field(default_factory=list)  # input offset of each point's message
    order: list[int] = field(default_factory=list)  # each point's message (batch index)
    plains: list[_Plain] = field(default_factory=list)  # at most one per fast path

    def __bool__(self) -> bool:
        return bool(self.streams) or bool(self.plains)

    def arrays(
        self, n_values: int
    ) -> tuple[Sequence[str], NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
        """streams, ts (B,), values (B, n_values) and offsets (B,), in message order."""
        if len(self.plains) == 1 and not self.streams:  # the usual batch: no copy
            plain = self.plains[0]
            return plain.streams, plain.ts, plain.values, plain.offsets
        listed = _Plain(
            self.streams,
            np.array(self.ts, np.float64),
            np.array(self.values, np.float64).reshape(len(self.ts), n_values),
            np.array(self.offsets, np.int64),
            np.array(self.order, np.int64),
        )
        if not self.plains:
            return listed.streams, listed.ts, listed.values, listed.offsets
        # Several kinds in one batch: back to message order (stable: a message's own points
        # keep theirs), so that each stream's points reach the kernel in arrival order.
        parts = [*self.plains, listed]
        order = np.argsort(np.concatenate([p.order for p in parts]), kind="stable")
        streams = [s for p in parts for s in p.streams]
        return (
            [streams[i] for i in order.tolist()],
            np.concatenate([p.ts for p in parts])[order],
            np.concatenate([p.values for p in parts])[order],
            np.concatenate([p.offsets for p in parts])[order],
        )


def _offsets_array(offsets: Sequence[int]) -> NDArray[np.int64]:
    """Offsets as an array; a range (consecutive offsets, the usual Kafka batch) needs no
    element-by-element conversion."""
    if isinstance(offsets, range):
        return np.arange(offsets.start, offsets.stop, offsets.step, dtype=np.int64)
    return np.array(offsets, np.int64)


def _offsets_of(
    offsets: Sequence[int] | None, index: NDArray[np.int64], every: bool
) -> NDArray[np.int64]:
    """The offsets of the messages at ``index`` (``every``: all of them, in order); -1
    each without offsets."""
    if offsets is None:
        return np.full(index.size, -1, np.int64)
    return _offsets_array(offsets) if every else _offsets_array(offsets)[index]


@dataclass(frozen=True, slots=True)
class _Plain:
    """One group's points of a batch as columns: the plain points of a native batch
    (``formats.scan_native`` or ``formats.native_points``), or the listed ones."""

    streams: Sequence[str]  # a list, or StreamIds straight from scan_native
    ts: NDArray[np.float64]  # (B,)
    values: NDArray[np.float64]  # (B, 1)
    offsets: NDArray[np.int64]  # (B,)
    order: NDArray[np.int64]  # (B,) each point's message


# The route of a plain point: (group, stream id). _NOT_PLAIN for one that is not the short
# kind (a vector group, no group, an id that is too long): its message goes through
# decode() and the general loop instead.
_NOT_PLAIN: Final = (-1, "")
_GROUP, _STREAM = itemgetter(0), itemgetter(1)
_PLAIN_CACHE_LIMIT = 1 << 20  # routes of plain points kept; cleared when full


class ModelGroup:
    """One group's settings, weights and scoring configuration, and its tables by partition."""

    def __init__(self, group: GroupSettings, settings: Settings, index: int) -> None:
        self.settings = group
        self.index = index
        self.name = group.name
        self.n_values = len(group.fields) if group.layout == "vector" else 1
        self.field_names = tuple(group.fields) if group.layout == "vector" else ("",)
        n_inputs = self.n_values + (CALENDAR_FEATURES if group.calendar else 0)
        model = settings.model
        self.shape = make_shape(
            n_inputs=n_inputs,
            n_outputs=self.n_values,
            hidden=group.hidden_size or model.hidden_size,
            layers=group.layers or model.layers,
            head_hidden=model.head_hidden,
            head_activation=model.head_activation,
            residual=model.residual,
        )
        scoring = settings.scoring
        self.config = ScoringConfig.from_settings(scoring, settings.streams, group.calendar)
        self.layout = TableLayout(
            layers=self.shape.layers,
            hidden=self.shape.hidden,
            n_values=self.n_values,
            n_inputs=n_inputs,
            buffer_len=settings.streams.buffer_len,
            error_window=scoring.dynamic_window if scoring.mode == "dynamic" else 0,
            dtype="float32",
        )
        self.params, self.version = self._initial_model(settings)
        self.tables: dict[int, StreamStateTable] = {}
        self._max_streams = settings.streams.max_streams

    def _initial_model(self, settings: Settings) -> tuple[LSTMParams, str]:
        key = f"groups.{self.name}.model_file"
        path = self.settings.model_file
        if path:
            try:
                params, meta = load_model(path)
            except ModelFileError as exc:
                raise ConfigError(f"{key}: {exc}") from None
            params = params.astype(np.float32)
            if params.shape != self.shape:
                raise ConfigError(
                    f"{key}: {path} holds a model of shape {params.shape}; "
                    f"group {self.name!r} needs {self.shape}"
                )
            return params, meta.content_hash.removeprefix("sha256:")[:12]
        if not self.shape.residual:
            raise ConfigError(
                f"{key}: required when model.residual is false (an untrained "
                "start predicts persistence through the residual head)"
            )
        rng = np.random.default_rng(settings.training.seed)
        return LSTMParams.init_persistence(self.shape, rng, np.float32), UNTRAINED

    def table(self, partition: int) -> StreamStateTable:
        table = self.tables.get(partition)
        if table is None:
            table = self.tables[partition] = StreamStateTable(self.layout, self._max_streams)
        return table

    def swap_model(self, params: LSTMParams, version: str) -> None:
        """Use new weights from the next batch on (streams keep their h and c)."""
        params = params.astype(np.float32)
        check_compatible(self.layout, params, self.config)
        self.params, self.version = params, version


class Pipeline:
    """Decode, route and score batches of messages; holds every group's state."""

    def __init__(self, settings: Settings, instance: str) -> None:
        self.settings = settings
        self.instance = instance
        self.format: Format = settings.run.format
        self.router = Router(settings.groups)
        self.groups = [ModelGroup(g, settings, i) for i, g in enumerate(self.router.groups)]
        self.counters = Counters()
        self.threshold = settings.scoring.threshold
        self.mode = settings.scoring.mode
        # Route of a plain point by its name (untagged) or (name, tags): one dict look-up.
        self._plain_routes: dict[str | tuple[str, str], tuple[int, str]] = {}
        # One per-field group takes every stream, under its plain name: the simplest plain
        # points need no routing, so formats.scan_native may read them straight from bytes.
        self._scan_group = (
            0
            if self.format == "native" and len(self.groups) == 1 and self.groups[0].n_values == 1
            else -1
        )

    def process(
        self,
        messages: Sequence[bytes],
        now: float,
        partition: int = 0,
        keep_scores: bool = False,
        offsets: Sequence[int] | None = None,
    ) -> BatchOutput:
        """Score every point of ``messages``; returns the alerts and the dead letters (and,
        with ``keep_scores``, every point's score in ``out.scores``).

        ``offsets`` (Kafka mode): each message's input offset. A point at or below its
        stream's stored offset was applied before the state was saved, so it is skipped
        (counted as ``replayed``): a replay after a crash never steps h and c twice.
        """
        out = BatchOutput(scores=[] if keep_scores else None)
        points = [_Points(g.settings.layout == "vector") for g in self.groups]
        self.counters.messages += len(messages)
        if offsets is not None and len(offsets) != len(messages):
            raise ValueError(f"{len(offsets)} offsets for {len(messages)} messages")
        if self.format == "native":
            self._gather_native(messages, now, offsets, points, out)
        else:
            self._gather(messages, range(len(messages)), now, offsets, points, out)
        for group, pts in zip(self.groups, points, strict=True):
            if pts:
                self._score(group, pts, now, partition, out)
        return out

    def _gather_native(
        self,
        messages: Sequence[bytes],
        now: float,
        offsets: Sequence[int] | None,
        points: list[_Points],
        out: BatchOutput,
    ) -> None:
        """Plain points (one record per message, the usual case) as whole columns: the
        simplest straight from the bytes when one group takes every stream, the others
        through native_points; the remaining messages one by one, as any format."""
        n = len(messages)
        rest: Sequence[int] = range(n)
        if self._scan_group >= 0:
            scanned = scan_native(messages, MAX_STREAM_ID_BYTES)
            taken = len(scanned.index)
            if taken:
                points[self._scan_group].plains.append(
                    _Plain(
                        StreamIds(scanned.ids, scanned.id_ends),
                        scanned.ts,
                        scanned.values.reshape(taken, 1),
                        _offsets_of(offsets, scanned.index, taken == n),
                        scanned.index,
                    )
                )
            rest = scanned.other
        if not rest:
            return
        plain = native_points(messages, rest)
        rest = plain.other
        if plain.names:
            routed = self._gather_plain(plain, n, offsets, points)
            if routed:
                rest = sorted([*rest, *routed])
        if rest:
            self._gather(messages, rest, now, offsets, points, out)

    def _gather_plain(
        self,
        plain: PlainPoints,
        n_messages: int,
        offsets: Sequence[int] | None,
        points: list[_Points],
    ) -> list[int]:
        """Route the plain points and hand each group its share as arrays; returns the
        messages whose route is not plain (for the general loop)."""
        names, tags = plain.names, plain.tags
        # Look-ups by map() run in C; only new names take the Python route.
        keys: list[str | tuple[str, str]] | list[str] = names
        if any(tags):
            keys = [n if not t else (n, t) for n, t in zip(names, tags, strict=True)]
        routes = list(map(self._plain_routes.get, keys))
        if None in routes:
            for i, r in enumerate(routes):
                if r is None:
                    routes[i] = self._plain_route(keys[i], names[i], tags[i])
        streams: list[str] = list(map(_STREAM, routes))  # type: ignore[arg-type]
        groups: list[int] = list(map(_GROUP, routes))  # type: ignore[arg-type]
        n = len(streams)
        every = n == n_messages  # every message is a plain point
        index = np.arange(n, dtype=np.int64) if every else np.array(plain.index, np.int64)
        ts = np.array(plain.ts, np.float64)
        values = np.array(plain.values, np.float64).reshape(n, 1)
        offs = _offsets_of(offsets, index, every)
        first = groups[0]
        if first >= 0 and groups.count(first) == n:  # one group takes them all: no split
            points[first].plains.append(_Plain(streams, ts, values, offs, index))
            return []
        group = np.array(groups, np.int64)
        not_plain: list[int] = []
        for g in np.unique(group).tolist():
            mask = group == g
            if g < 0:
                not_plain = index[mask].tolist()
                continue
            taken = [s for s, ok in zip(streams, mask.tolist(), strict=True) if ok]
            points[g].plains.append(_Plain(taken, ts[mask], values[mask], offs[mask], index[mask]))
        return not_plain

    def _plain_route(self, key: str | tuple[str, str], name: str, tags: str) -> tuple[int, str]:
        r = self.router.route(name, tags, "")
        if r is None or r.id_bytes > MAX_STREAM_ID_BYTES or self.groups[r.group].n_values != 1:
            route = _NOT_PLAIN
        else:
            route = (r.group, r.stream)
        if len(self._plain_routes) >= _PLAIN_CACHE_LIMIT:
            self._plain_routes.clear()  # a cardinality explosion must not grow this
        self._plain_routes[key] = route
        return route

    def _gather(
        self,
        messages: Sequence[bytes],
        indices: Iterable[int],
        now: float,
        offsets: Sequence[int] | None,
        points: list[_Points],
        out: BatchOutput,
    ) -> None:
        """Decode the messages at ``indices`` (ascending) and sort their points by group; a
        Python loop per point, so it is kept lean (routes are cached, per-field points take
        the short branch)."""
        route, fmt = self.router.route, self.format
        for index in indices:
            payload = messages[index]
            decoded = decode(payload, fmt, now=now)
            reasons = decoded.errors
            offset = -1 if offsets is None else offsets[index]
            for sample in decoded.samples:
                name, tags, ts, values = sample.name, sample.tags, sample.ts, sample.values
                vectors_done: list[int] = []
                for field_name, value in values.items():
                    r = route(name, tags, field_name)
                    if r is None:
                        continue
                    if r.id_bytes > MAX_STREAM_ID_BYTES:
                        reasons.append(f"stream id longer than {MAX_STREAM_ID_BYTES} bytes")
                        break
                    pts = points[r.group]
                    if not pts.vector:
                        pts.values.append(value)
                    elif r.group in vectors_done:
                        continue
                    else:
                        vectors_done.append(r.group)
                        try:
                            row = [values[f] for f in self.groups[r.group].field_names]
                        except KeyError:
                            self.counters.incomplete += 1
                            continue
                        pts.values.extend(row)
                    pts.streams.append(r.stream)
                    pts.ts.append(ts)
                    pts.offsets.append(offset)
                    pts.order.append(index)
            if reasons:
                self.counters.decode_errors += len(reasons)
                out.dead_letters.append(DeadLetter(bytes(payload), reasons, index))

    def _score(
        self, group: ModelGroup, pts: _Points, now: float, partition: int, out: BatchOutput
    ) -> None:
        streams, ts, values, offsets = pts.arrays(group.n_values)
        finite = np.isfinite(values).all(axis=1) & np.isfinite(ts)
        if not finite.all():
            self.counters.non_finite += int((~finite).sum())
            streams = [s for s, ok in zip(streams, finite.tolist(), strict=True) if ok]
            ts, values, offsets = ts[finite], values[finite], offsets[finite]
        table = group.table(partition)
        slots = table.slots(streams, now)
        known = slots >= 0
        if not known.all():
            self.counters.refused += int((~known).sum())
            streams = [s for s, ok in zip(streams, known.tolist(), strict=True) if ok]
            slots, ts, values = slots[known], ts[known], values[known]
            offsets = offsets[known]
        if not streams:
            return
        with_offsets = offsets if offsets.size and offsets.max() >= 0 else None
        scores = score_batch(table, group.params, group.config, slots, ts, values, with_offsets)
        c = self.counters
        c.points += len(streams)
        status = np.bincount(scores.status, minlength=REPLAYED + 1)
        gap = np.bincount(scores.gap, minlength=GAP_CONTINUED + 1)
        c.out_of_order += int(status[DROPPED])
        c.replayed += int(status[REPLAYED])
        c.gap_resets += int(gap[GAP_RESET])
        c.gaps_continued += int(gap[GAP_CONTINUED])
        for i in np.flatnonzero(scores.alert).tolist():
            out.alerts.append(self._alert(group, streams[i], ts, values, scores, i))
        c.alerts += int(scores.alert.sum())
        if out.scores is not None:  # copies: the kernel's output arrays may be reused
            out.scores.append(
                PointScores(
                    group.name,
                    list(streams),
                    ts,
                    values,
                    scores.predicted.copy(),
                    scores.score.copy(),
                    scores.status.copy(),
                    scores.alert.copy(),
                )
            )

    def _alert(
        self,
        group: ModelGroup,
        stream: str,
        ts: NDArray[np.float64],
        values: NDArray[np.float64],
        scores: BatchScores,
        i: int,
    ) -> dict[str, Any]:
        t = float(ts[i])
        if group.settings.layout == "vector":
            value: object = dict(zip(group.field_names, values[i].tolist(), strict=True))
            predicted: object = dict(
                zip(group.field_names, scores.predicted[i].tolist(), strict=True)
            )
        else:
            value, predicted = float(values[i, 0]), float(scores.predicted[i, 0])
        return {
            "alert_id": str(uuid.uuid5(_ALERT_NAMESPACE, f"{stream}\x00{t!r}")),
            "stream": stream,
            "group": group.name,
            "ts": t,
            "time": datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z"),
            "value": value,
            "predicted": predicted,
            "error": _finite_or_none(float(scores.error[i])),
            "score": float(scores.score[i]),
            "threshold": self.threshold,
            "escalation": bool(scores.escalated[i]),
            "mode": self.mode,
            "model_version": group.version,
            "instance": self.instance,
        }

    def evict_idle(self, now: float) -> int:
        ttl = self.settings.streams.idle_ttl_s
        n = sum(len(t.evict_idle(now, ttl)) for g in self.groups for t in g.tables.values())
        self.counters.evicted += n
        return n

    def streams(self) -> int:
        return sum(len(t) for g in self.groups for t in g.tables.values())

    def refused(self) -> int:
        return sum(t.refused for g in self.groups for t in g.tables.values())

    # -------------------------------------------------------------- checkpoints

    def snapshot(self, partition: int) -> dict[str, bytes]:
        """Every group's table of one partition as versioned bytes, by group name."""
        return {
            g.name: g.tables[partition].to_bytes() for g in self.groups if partition in g.tables
        }

    def drop_partition(self, partition: int) -> int:
        """Forget a partition's state (it moved to another instance); returns its streams."""
        n = 0
        for group in self.groups:
            table = group.tables.pop(partition, None)
            n += len(table) if table is not None else 0
        return n

    def stored_offset(self, partition: int) -> int:
        """The highest input offset any stream of ``partition`` reflects; -1 for none."""
        highest = -1
        for group in self.groups:
            table = group.tables.get(partition)
            if table is not None and len(table):
                highest = max(highest, int(table.offset[table.live_slots()].max()))
        return highest

    def forget_offsets(self, partition: int) -> int:
        """Forget the input offsets the streams of ``partition`` reflect (the input topic was
        deleted and created again, so its offsets start over and the stored ones would skip
        new points as replayed); returns how many streams."""
        n = 0
        for group in self.groups:
            table = group.tables.get(partition)
            if table is not None:
                table.offset[table.live_slots()] = -1
                n += len(table)
        return n

    def partitions(self) -> set[int]:
        return {p for g in self.groups for p in g.tables}

    def changed_streams(self, partition: int) -> list[tuple[str, str, bytes | None]]:
        """(group, stream, state) of every stream of ``partition`` changed since the last
        call; state None for a stream evicted since (a changelog tombstone)."""
        changed: list[tuple[str, str, bytes | None]] = []
        for group in self.groups:
            table = group.tables.get(partition)
            if table is None:
                continue
            changed += [(group.name, s, None) for s in table.take_removed()]
            changed += [(group.name, s, state) for s, state in table.take_dirty_states()]
        return changed

    def restore_streams(
        self, partition: int, saved: Mapping[tuple[str, str], bytes], now: float
    ) -> tuple[int, int]:
        """Load per-stream states of ``partition`` keyed by (group, stream); returns (restored,
        refused). A state that does not fit (group gone, another layout) is refused and the
        stream starts afresh: one unreadable record must not block a partition."""
        by_name = {g.name: g for g in self.groups}
        restored = refused = 0
        for (group_name, stream), data in saved.items():
            group = by_name.get(group_name)
            if group is None:
                refused += 1
                continue
            try:
                group.table(partition).restore_stream(stream, data, now)
            except StateFormatError:
                refused += 1
                continue
            restored += 1
        for group in self.groups:
            table = group.tables.get(partition)
            if table is not None:
                table.take_dirty()  # just restored: the changelog already holds these states
                table.take_removed()
        return restored, refused

    def restore(self, partition: int, saved: Mapping[str, bytes], now: float) -> None:
        """Load :meth:`snapshot` output; a group no longer configured is ignored."""
        for group in self.groups:
            if group.name in saved:
                group.tables[partition] = StreamStateTable.from_bytes(
                    saved[group.name], self.settings.streams.max_streams, now, group.layout
                )


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None
