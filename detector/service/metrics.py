"""Prometheus metrics of one detector process, in a registry of their own.

The registry is not prometheus_client's global one, so every test (and every runner) makes as
many ``Metrics`` as it likes. Label values are model group names, partitions and fixed reasons:
never a stream id, because one label value per stream would turn a million streams into a
million time series.

The runner feeds it:

- once per batch: ``observe_batch(seconds, counters, output)`` — the pipeline's cumulative
  ``Counters`` advance the Prometheus counters by their difference since the previous call
  (so the runner never computes deltas); ``output`` gives alerts per group and dead letters.
  Every drop reason (non_finite, incomplete, refused, out_of_order, replayed) and every
  other counter comes from ``Counters``;
- when it knows them: ``set_streams``, ``set_lag``, ``forget_partition``, ``set_model_version``;
- around checkpoints and retraining: ``observe_checkpoint``, ``checkpoint_failed``,
  ``observe_retraining``;

``render(accept)`` gives the body and content type of a /metrics response.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:  # the pipeline (and numba) is not needed to export numbers
    from detector.stream.pipeline import BatchOutput, Counters

NAMESPACE: Final = "detector"

DropReason = Literal["non_finite", "incomplete", "refused", "out_of_order", "replayed"]
RetrainingResult = Literal["accepted", "rejected", "failed", "skipped"]
DROP_REASONS: Final[tuple[str, ...]] = get_args(DropReason)
RETRAINING_RESULTS: Final[tuple[str, ...]] = get_args(RetrainingResult)

# Seconds. A batch is ~1 ms to a few 100 ms; checkpoints fsync; retraining runs for minutes.
_BATCH_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_CHECKPOINT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_RETRAINING_BUCKETS: Final = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_LOOP_LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """Every metric of the daemon; ``registry`` is what /metrics serves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, NAMESPACE
        self.messages = Counter("messages", "Input messages read", namespace=ns, registry=r)
        self.points = Counter(
            "points", "Points that reached a scoring kernel", namespace=ns, registry=r
        )
        self.decode_errors = Counter(
            "decode_errors", "Malformed parts of input messages", namespace=ns, registry=r
        )
        self.dropped = Counter(
            "dropped_points",
            "Points not scored, by reason",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.gaps = Counter(
            "gaps",
            "Gaps in a stream's points, by the gap policy applied",
            ["policy"],
            namespace=ns,
            registry=r,
        )
        self.alerts = Counter("alerts", "Alerts raised", ["group"], namespace=ns, registry=r)
        self.dead_letters = Counter(
            "dead_letters", "Undecodable messages dead-lettered", namespace=ns, registry=r
        )
        self.evictions = Counter(
            "evictions", "Streams forgotten after idle_ttl_s", namespace=ns, registry=r
        )
        self.batch_seconds = Histogram(
            "batch_duration_seconds",
            "Wall time to process one batch (decode to sinks)",
            namespace=ns,
            registry=r,
            buckets=_BATCH_BUCKETS,
        )
        self.lag = Gauge(
            "consumer_lag",
            "Messages between the consumer's position and the partition's end",
            ["partition"],
            namespace=ns,
            registry=r,
        )
        self.streams = Gauge(
            "streams", "Streams with state in memory", ["group"], namespace=ns, registry=r
        )
        self.checkpoint_seconds = Histogram(
            "checkpoint_duration_seconds",
            "Wall time of one checkpoint (state flush and offset commit)",
            namespace=ns,
            registry=r,
            buckets=_CHECKPOINT_BUCKETS,
        )
        self.checkpoint_failures = Counter(
            "checkpoint_failures", "Checkpoints that failed", namespace=ns, registry=r
        )
        self.retraining_runs = Counter(
            "retraining_runs",
            "Retraining runs by model group and result",
            ["group", "result"],
            namespace=ns,
            registry=r,
        )
        self.retraining_seconds = Histogram(
            "retraining_duration_seconds",
            "Wall time of one retraining run",
            ["group"],
            namespace=ns,
            registry=r,
            buckets=_RETRAINING_BUCKETS,
        )
        self.model = Info(
            "model", "Model version in use, by model group", ["group"], namespace=ns, registry=r
        )
        self.loop_lag_seconds = Histogram(
            "event_loop_lag_seconds",
            "How late the event loop woke a sleeping task",
            namespace=ns,
            registry=r,
            buckets=_LOOP_LAG_BUCKETS,
        )
        for reason in DROP_REASONS:  # every series exists from the start, at 0
            self.dropped.labels(reason=reason)
        for policy in ("reset", "continue"):
            self.gaps.labels(policy=policy)
        # Pipeline counter field -> the Prometheus counter it advances. "alerts" is counted
        # per group from the batch output instead (Counters has only the total).
        self._from_counters: dict[str, Counter] = {
            "messages": self.messages,
            "decode_errors": self.decode_errors,
            "points": self.points,
            "non_finite": self.dropped.labels(reason="non_finite"),
            "incomplete": self.dropped.labels(reason="incomplete"),
            "refused": self.dropped.labels(reason="refused"),
            "out_of_order": self.dropped.labels(reason="out_of_order"),
            "replayed": self.dropped.labels(reason="replayed"),
            "gap_resets": self.gaps.labels(policy="reset"),
            "gaps_continued": self.gaps.labels(policy="continue"),
            "evicted": self.evictions,
        }
        self._last: dict[str, int] = {}

    # -- per batch ------------------------------------------------------------------------

    def observe_batch(
        self, seconds: float, counters: Counters, output: BatchOutput | None = None
    ) -> None:
        """One batch done: its wall time, the pipeline's totals, its alerts and dead letters."""
        self.batch_seconds.observe(seconds)
        self.observe_counters(counters)
        if output is not None:
            self.count_alerts(output.alerts)
            if output.dead_letters:
                self.dead_letters.inc(len(output.dead_letters))

    def observe_counters(self, counters: Counters) -> None:
        """Advance the Prometheus counters by how much ``counters`` grew since the last call.

        ``counters`` holds totals since the pipeline started. A total below the previous one
        means a new ``Counters`` object (a new pipeline): its whole value is then new.
        """
        for name, value in counters.as_dict().items():
            target = self._from_counters.get(name)
            if target is None:
                continue
            last = self._last.get(name, 0)
            delta = value - last if value >= last else value
            if delta:
                target.inc(delta)
            self._last[name] = value

    def count_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Count alerts by their ``group`` field (the pipeline's alert documents)."""
        per_group: dict[str, int] = {}
        for alert in alerts:
            group = str(alert.get("group", ""))
            per_group[group] = per_group.get(group, 0) + 1
        for group, n in per_group.items():
            self.alerts.labels(group=group).inc(n)

    # -- state ----------------------------------------------------------------------------

    def set_streams(self, group: str, n: int) -> None:
        self.streams.labels(group=group).set(n)

    def set_lag(self, partition: int, lag: int) -> None:
        self.lag.labels(partition=str(partition)).set(lag)

    def forget_partition(self, partition: int) -> None:
        """After a revoke: the partition's lag is no longer this instance's to report."""
        with contextlib.suppress(KeyError):  # KeyError: never reported, nothing to remove
            self.lag.remove(str(partition))

    def set_model_version(self, group: str, version: str) -> None:
        self.model.labels(group=group).info({"version": version})

    # -- checkpoints, retraining, event loop -----------------------------------------------

    def observe_checkpoint(self, seconds: float) -> None:
        self.checkpoint_seconds.observe(seconds)

    def checkpoint_failed(self) -> None:
        self.checkpoint_failures.inc()

    def observe_retraining(self, group: str, result: RetrainingResult, seconds: float) -> None:
        if result not in RETRAINING_RESULTS:
            raise ValueError(f"result is {result!r}; expected one of {RETRAINING_RESULTS}")
        self.retraining_runs.labels(group=group, result=result).inc()
        if result != "skipped":  # a skipped run did no work worth timing
            self.retraining_seconds.labels(group=group).observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        self.loop_lag_seconds.observe(seconds)

    # -- exposition -----------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """Body and content type of a /metrics response for this ``Accept`` header
        (Prometheus text format, or OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's current value (e.g. ``detector_points_total``); for tests and logs."""
        return self.registry.get_sample_value(name, dict(labels or {}))
