"""`detector run` in embedded mode: file or stdin in, alerts to stdout or a file.

The loop: read a batch ─► pipeline.process ─► write alerts and dead letters ─► every
``state.interval_s``: flush the sinks, then save state and input position (in that order, so
a checkpoint never runs ahead of an alert) ─► evict idle streams now and then. SIGTERM or
SIGINT finishes the batch in hand, checkpoints and returns; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from detector.config import Settings
from detector.errors import ConfigError, InputFileError, StateFormatError
from detector.io.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from detector.io.files import DeadLetterSink, FileSource, LineSink, StdinSource
from detector.retrain.registry import ModelRegistry, models_dir
from detector.retrain.scheduler import Retrainer
from detector.service.ops import Operations
from detector.service.signals import ShutdownSignals
from detector.stream.pipeline import Counters, Pipeline

log = structlog.get_logger(__name__)

_EVICT_EVERY_S = 60.0
_REGISTRY_EVERY_S = 5.0
_PARTITION = 0  # embedded mode has one partition


@dataclass(frozen=True, slots=True)
class RunSummary:
    counters: Counters
    streams: int
    stopped_by_signal: bool


class Runner:
    def __init__(self, settings: Settings, follow: bool = False) -> None:
        self.settings = settings
        self.follow = follow
        self.instance = settings.run.instance or socket.gethostname()
        self.pipeline = Pipeline(settings, self.instance)
        self.ops = Operations(settings, self.pipeline)
        directory = models_dir(settings)
        self.registry = ModelRegistry(directory) if directory is not None else None
        self.retrainer = Retrainer(self.pipeline, settings, self.registry, staged_swaps=True)
        self.signals = ShutdownSignals()
        self.should_exit = self.signals.should_exit

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
        if saved is not None:
            self.pipeline.restore(_PARTITION, saved.groups, time.time())
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
        )
        last_checkpoint = last_evict = last_registry = time.monotonic()
        self.ops.ready(True)
        try:
            while not self.should_exit.is_set():
                read = asyncio.ensure_future(source.read_batch(run.batch_size))
                stop = asyncio.ensure_future(self.should_exit.wait())
                while not (read.done() or stop.done()):
                    await asyncio.wait({read, stop}, timeout=1.0, return_when="FIRST_COMPLETED")
                    self.ops.health.progressed()  # waiting for input is not a stall
                stop.cancel()
                if not read.done():
                    read.cancel()
                    break
                batch = read.result()
                if batch is None:
                    break
                started = time.perf_counter()
                out = self.pipeline.process(batch, now=time.time(), partition=_PARTITION)
                sink.write(out.alerts)
                dead.write(out.dead_letters, source.position())
                self.ops.batch_done(started, out)
                await self._retrain()
                mono = time.monotonic()
                if mono - last_registry >= _REGISTRY_EVERY_S:
                    self.retrainer.apply_registry_changes()  # `detector model rollback`
                    last_registry = mono
                if mono - last_evict >= _EVICT_EVERY_S:
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
            **summary.counters.as_dict(),
        )
        return summary
