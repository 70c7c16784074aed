"""`detector run` in embedded mode: file or stdin in, alerts to stdout or a file.

The loop: read a batch ─► pipeline.process ─► write alerts and dead letters ─► every
``state.interval_s``: flush the sinks, then save state and input position (in that order, so
a checkpoint never runs ahead of an alert) ─► evict idle streams now and then. SIGTERM or
SIGINT finishes the batch in hand, checkpoints and returns; a second signal stops at once.

The retraining schedule and idle eviction follow one of two clocks (``run.clock``):

- wall, for a live feed (stdin, ``--follow``): ``time.time()``. Due runs train in the pool
  while scoring goes on, and their weights go live through staged swaps.
- data, for a replay of history (a file read once, under "auto"): the newest point
  timestamp read so far, never going back. A replay then retrains as ``detector evaluate``
  does: each batch read is scored in parts of less than a second of data time, as a live
  feed would have handed them over (``detector.evaluate.replay.BATCH_SPAN_S``), and after
  each part the runs due are trained (``Retrainer.run_due``, in a thread, so signals,
  /healthz and the watchdog are served meanwhile) and their weights put into effect before
  the next part is scored: the same file gives the same alerts every time. The input is
  taken to be in time order, as a feed's is: a point older than the clock does not move it.

Checkpoints and the registry's rollback poll stay on wall time under both: they are about
the process, not the data.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
from numpy.typing import NDArray

from detector.config import RunSettings, Settings
from detector.errors import ConfigError, InputFileError, StateFormatError
from detector.io.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from detector.io.files import DeadLetterSink, FileSource, LineSink, StdinSource
from detector.io.formats import Format, decode, native_points, scan_native
from detector.retrain.registry import ModelRegistry, models_dir
from detector.retrain.scheduler import Retrainer
from detector.service.ops import Operations
from detector.service.signals import ShutdownSignals
from detector.stream.pipeline import MAX_STREAM_ID_BYTES, Counters, Pipeline

log = structlog.get_logger(__name__)

Clock = Literal["wall", "data"]

_EVICT_EVERY_S = 60.0  # of the run's clock
_REGISTRY_EVERY_S = 5.0
_PARTITION = 0  # embedded mode has one partition
# Data clock: the longest data-time span of one scored part, as evaluate's replay cuts its
# batches (detector.evaluate.replay.BATCH_SPAN_S): the schedule is checked that often.
_PART_SPAN_S = 1.0


@dataclass(frozen=True, slots=True)
class RunSummary:
    counters: Counters
    streams: int
    stopped_by_signal: bool


def resolve_clock(run: RunSettings, follow: bool) -> Clock:
    """The clock ``run.clock`` names; "auto": data for a file read once (a replay of
    history), wall for anything live (stdin, ``--follow``; Kafka has its own runner)."""
    if run.clock != "auto":
        return run.clock
    return "data" if run.source.startswith("file:") and not follow else "wall"


class Runner:
    def __init__(self, settings: Settings, follow: bool = False) -> None:
        self.settings = settings
        self.follow = follow
        self.clock = resolve_clock(settings.run, follow)
        self.instance = settings.run.instance or socket.gethostname()
        self.pipeline = Pipeline(settings, self.instance)
        self.ops = Operations(settings, self.pipeline)
        directory = models_dir(settings)
        self.registry = ModelRegistry(directory) if directory is not None else None
        # On the data clock new weights go live inline, between two parts (module docstring).
        self.retrainer = Retrainer(
            self.pipeline, settings, self.registry, staged_swaps=self.clock == "wall"
        )
        self.signals = ShutdownSignals()
        self.should_exit = self.signals.should_exit
        self.data_time: float | None = None  # data clock: newest point timestamp read so far
        self._last_evict_data = -math.inf

    async def run(self) -> RunSummary:
        try:
            async with self.signals, self.ops:
                return await self._run()
        finally:
            self.retrainer.close()

    def _restore(self) -> Checkpoint | None:
        state_dir = self.settings.state.dir
        if not state_dir:
            return None
        try:
            saved = load_checkpoint(state_dir)
        except StateFormatError as exc:
            log.error("checkpoint_unreadable", dir=state_dir, error=str(exc), action="fresh start")
            return None
        if saved is None:
            return None
        self.pipeline.restore(_PARTITION, saved.groups, time.time())
        if self.clock == "data":
            self._advance_data_time(newest_point(self.pipeline))
            if self.data_time is not None:
                # Restoring stamps every stream as seen at wall time, which idle eviction
                # compares with the clock: on data time it is the restored state's newest
                # point, known only once restored.
                for group in self.pipeline.groups:
                    for table in group.tables.values():
                        table.last_seen[table.live_slots()] = self.data_time
        return saved

    def _open_source(self, saved: Checkpoint | None) -> FileSource | StdinSource:
        spec = self.settings.run.source
        if spec == "stdin":
            return StdinSource()
        if spec == "kafka":
            raise ConfigError("run.source = 'kafka' is served by KafkaRunner, not Runner")
        path = Path(spec.removeprefix("file:"))
        start = 0
        if saved is not None and saved.source == FileSource.name_of(path):
            if path.exists() and saved.position <= path.stat().st_size:
                start = saved.position
            else:
                log.warning(
                    "input_file_shorter_than_checkpoint",
                    path=str(path),
                    position=saved.position,
                    action="reading from the start",
                )
        try:
            return FileSource(path, follow=self.follow, start=start)
        except OSError as exc:
            raise InputFileError(f"cannot read the source {spec}: {exc.strerror}") from None

    async def _checkpoint(
        self,
        source: FileSource | StdinSource,
        sink: LineSink,
        dead: DeadLetterSink,
        final: bool = False,
    ) -> None:
        # fsyncs block for milliseconds or more: off the event loop. The snapshot is taken on
        # the loop, between batches, so no batch can change the state while it is written.
        await asyncio.to_thread(sink.flush)  # alerts first: never a checkpoint ahead of them
        await asyncio.to_thread(dead.flush)
        state_dir = self.settings.state.dir
        if state_dir:
            started = time.perf_counter()
            saved = Checkpoint(source.name, source.position(), self.pipeline.snapshot(_PARTITION))
            try:
                await asyncio.to_thread(save_checkpoint, state_dir, saved)
            except OSError:
                self.ops.checkpoint_failed()
                raise
            seconds = time.perf_counter() - started
            self.ops.checkpoint_done(seconds)
            log.info(
                "final_checkpoint_saved" if final else "checkpoint_saved",
                dir=state_dir,
                streams=self.pipeline.streams(),
                position=saved.position,
                seconds=round(seconds, 3),
            )

    async def _retrain(self) -> None:
        """Start due runs in the thread pool; swap in finished ones (between batches)."""
        results = await self.retrainer.poll(time.time())
        for r in results:
            log.info("retraining_finished", **r.as_dict())
        self.ops.retrained(results)

    async def _wait_or_stop(self, task: asyncio.Future[Any]) -> bool:
        """Wait for ``task`` unless a stop is asked first (then False, ``task`` left as it
        is). Liveness ticks meanwhile: waiting for input, or for a run the data clock trains
        between two parts, is not a stall (on the wall clock, training never holds up the
        loop either)."""
        stop = asyncio.ensure_future(self.should_exit.wait())
        try:
            while not (task.done() or stop.done()):
                await asyncio.wait({task, stop}, timeout=1.0, return_when="FIRST_COMPLETED")
                self.ops.health.progressed()
        finally:
            stop.cancel()
        return task.done()

    def _score(
        self,
        batch: Sequence[bytes],
        now: float,
        position: int,
        sink: LineSink,
        dead: DeadLetterSink,
    ) -> None:
        started = time.perf_counter()
        out = self.pipeline.process(batch, now=now, partition=_PARTITION)
        sink.write(out.alerts)
        dead.write(out.dead_letters, position)
        self.ops.batch_done(started, out)

    def _advance_data_time(self, newest: float) -> None:
        if math.isfinite(newest) and (self.data_time is None or newest > self.data_time):
            self.data_time = newest

    async def _replay(
        self, batch: list[bytes], position: int, sink: LineSink, dead: DeadLetterSink
    ) -> None:
        """Data clock: score ``batch`` in parts of less than ``_PART_SPAN_S`` of data time;
        after each part evict idle streams (every ``_EVICT_EVERY_S`` of data time) and train
        the runs due, before the next part is scored (module docstring)."""
        times = message_times(batch, self.settings.run.format)
        for lo, hi in data_time_parts(times, _PART_SPAN_S):
            self._advance_data_time(float(times[lo:hi].max()))
            now = self.data_time
            if now is None:  # no timestamp read yet (Influx lines without one): nothing due
                self._score(batch[lo:hi], time.time(), position, sink, dead)
                continue
            self._score(batch[lo:hi], now, position, sink, dead)
            if now - self._last_evict_data >= _EVICT_EVERY_S:
                self.pipeline.evict_idle(now)
                self._last_evict_data = now
            if not self.should_exit.is_set():  # stopping: the batch in hand, nothing more
                await self._train_due(now)

    async def _train_due(self, now: float) -> None:
        """Data clock: train the runs due at ``now`` and put accepted weights into effect
        before anything more is scored; in a thread, so that signals, /healthz and the
        watchdog are served meanwhile. A stop request cancels a run under way (it ends at
        its next mini-batch, its weights unused)."""
        # Most parts have nothing due: asked here, the thread is only for training.
        if not self.retrainer.due(now):
            return
        training = asyncio.ensure_future(asyncio.to_thread(self.retrainer.run_due, now))
        if not await self._wait_or_stop(training):
            self.retrainer.close()
        self.ops.retrained(await training)

    async def _run(self) -> RunSummary:
        run = self.settings.run
        saved = self._restore()
        source = self._open_source(saved)
        if saved is not None:
            log.info(
                "checkpoint_restored",
                dir=self.settings.state.dir,
                source=saved.source,
                streams=self.pipeline.streams(),
                position=source.position(),
            )
        for group, version in self.retrainer.load_registry_models():
            log.info("model_loaded", group=group, version=version, registry=str(self.registry))
        sink = LineSink(run.sink)
        dead = DeadLetterSink(run.dead_letter, source.name)
        log.info(
            "run_started",
            source=source.name,
            sink=run.sink,
            format=run.format,
            groups=[g.name for g in self.pipeline.groups],
            instance=self.instance,
            clock=self.clock,
        )
        last_checkpoint = last_evict = last_registry = time.monotonic()
        self.ops.ready(True)
        try:
            while not self.should_exit.is_set():
                read = asyncio.ensure_future(source.read_batch(run.batch_size))
                if not await self._wait_or_stop(read):
                    read.cancel()
                    break
                batch = read.result()
                if batch is None:
                    break
                if self.clock == "data":
                    await self._replay(batch, source.position(), sink, dead)
                else:
                    self._score(batch, time.time(), source.position(), sink, dead)
                    await self._retrain()
                mono = time.monotonic()
                if mono - last_registry >= _REGISTRY_EVERY_S:
                    self.retrainer.apply_registry_changes()  # `detector model rollback`
                    last_registry = mono
                if self.clock == "wall" and mono - last_evict >= _EVICT_EVERY_S:
                    self.pipeline.evict_idle(time.time())
                    last_evict = mono
                if mono - last_checkpoint >= self.settings.state.interval_s:
                    await self._checkpoint(source, sink, dead)
                    last_checkpoint = mono
            self.ops.stopping()
            await self._checkpoint(source, sink, dead, final=True)
        finally:
            sink.close()
            dead.close()
            source.close()
        summary = RunSummary(
            self.pipeline.counters, self.pipeline.streams(), self.should_exit.is_set()
        )
        log.info(
            "run_finished",
            streams=summary.streams,
            stopped_by_signal=summary.stopped_by_signal,
            models={g.name: g.version for g in self.pipeline.groups},
            retraining=dict(sorted(self.retrainer.counts.items())),
            **summary.counters.as_dict(),
        )
        return summary


def message_times(messages: Sequence[bytes], fmt: Format) -> NDArray[np.float64]:
    """The newest point timestamp of each message; -inf for a message without one (not
    decodable, or Influx lines without a timestamp). Read by the format's own decoders, in
    the pipeline's order of fast paths (the pipeline decodes the messages again to score
    them): ``scan_native`` from the bytes, ``native_points``, then ``decode``."""
    times = np.full(len(messages), -np.inf)
    rest: Sequence[int] = range(len(messages))
    if fmt == "native":
        scanned = scan_native(messages, MAX_STREAM_ID_BYTES)
        times[scanned.index] = scanned.ts
        plain = native_points(messages, scanned.other)
        times[plain.index] = plain.ts
        rest = plain.other
    for i in rest:
        stamps = [s.ts for s in decode(messages[i], fmt, now=-math.inf).samples]
        if stamps:
            times[i] = max(stamps)
    return times


def data_time_parts(times: NDArray[np.float64], span_s: float) -> list[tuple[int, int]]:
    """[start, stop) of each part of a batch, in order: a part ends before the first message
    at least ``span_s`` of data time after the part's first timed one (for input in time
    order, the cut of evaluate's replay); a message without a timestamp joins its part."""
    parts, start, first = [], 0, -math.inf
    for i, t in enumerate(times.tolist()):
        if first == -math.inf:
            first = t
        elif t >= first + span_s:
            parts.append((start, i))
            start, first = i, t
    if times.size:
        parts.append((start, times.size))
    return parts


def newest_point(pipeline: Pipeline) -> float:
    """The newest point timestamp in the pipeline's state; -inf without a stream."""
    newest = -math.inf
    for group in pipeline.groups:
        for table in group.tables.values():
            slots = table.live_slots()
            if slots.size:
                newest = max(newest, float(table.last_ts[slots].max()))
    return newest
