"""What every runner shows an operator: metrics, health endpoints, systemd and loop lag.

Both runners (embedded and Kafka) hold one ``Operations`` and tell it what happened: a batch
finished, a checkpoint took so long, the runner is (not) ready, a retraining run ended. It
serves /metrics, /healthz and /readyz when ``http.listen`` is set, tells systemd READY,
STOPPING and watchdog pings (only while batches make progress), and measures event-loop lag.
"""

from __future__ import annotations

import time
from types import TracebackType

import structlog

from detector.config import Settings
from detector.retrain.scheduler import RetrainResult
from detector.service.health import Health
from detector.service.http import HttpServer
from detector.service.looplag import LoopLagMonitor
from detector.service.metrics import Metrics
from detector.service.systemd import SystemdNotifier, Watchdog
from detector.stream.pipeline import BatchOutput, Pipeline

log = structlog.get_logger(__name__)


class Operations:
    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.metrics = Metrics()
        self.health = Health(settings.http.stall_s)
        self.http = (
            HttpServer(settings.http.listen, self.metrics, self.health)
            if settings.http.listen
            else None
        )
        self.notifier = SystemdNotifier()
        self.watchdog = Watchdog(self.notifier, self.health)
        self.looplag = LoopLagMonitor(self.metrics)
        self._announced = False

    async def __aenter__(self) -> Operations:
        if self.http is not None:
            await self.http.start()
            log.info("http_listening", url=self.http.url)
        await self.looplag.start()
        await self.watchdog.start()
        self._publish_models()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.watchdog.stop()
        await self.looplag.stop()
        if self.http is not None:
            await self.http.stop()
        self.notifier.close()

    def batch_done(self, started: float, out: BatchOutput | None = None) -> None:
        """After every loop iteration (also an empty one): progress, counters, batch time."""
        self.metrics.observe_batch(time.perf_counter() - started, self.pipeline.counters, out)
        self.health.progressed()
        self.refresh_gauges()

    def ready(self, ok: bool, reason: str = "") -> None:
        self.health.set_ready(ok, reason)
        if ok and not self._announced:
            self.notifier.ready(status="processing")
            self._announced = True
        self.refresh_gauges()

    def stopping(self) -> None:
        self.health.set_ready(False, "shutting down")
        self.notifier.stopping(status="checkpointing and closing")

    def checkpoint_done(self, seconds: float) -> None:
        self.metrics.observe_checkpoint(seconds)
        self.refresh_gauges()

    def checkpoint_failed(self) -> None:
        self.metrics.checkpoint_failed()

    def retrained(self, results: list[RetrainResult]) -> None:
        for r in results:
            self.metrics.observe_retraining(r.group, r.result, r.seconds)
        self._publish_models()  # every call: a staged swap may have finished meanwhile

    def refresh_gauges(self) -> None:
        for group in self.pipeline.groups:
            self.metrics.set_streams(group.name, sum(len(t) for t in group.tables.values()))
        self._publish_models()

    def _publish_models(self) -> None:
        for group in self.pipeline.groups:
            self.metrics.set_model_version(group.name, group.version)
