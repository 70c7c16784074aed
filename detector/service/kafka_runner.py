"""`detector run` in Kafka mode: a consumer-group member whose state follows its partitions.

One batch: ``getmany`` ─► per partition, ``pipeline.process`` with the records' offsets ─►
alerts and dead letters queued to the producer. A checkpoint (every ``state.interval_s``, on
revoke and at shutdown), in this order (DESIGN.md "State, checkpoints and scale-out"):

1. every changed stream's state goes to its changelog partition (evicted ones as tombstones);
2. every record queued so far (alerts, dead letters, states) is acknowledged by the broker;
3. only then the input offsets are committed, with an explicit per-partition map.

A crash between checkpoints replays the input from the committed offsets; a stream's state
carries the offset of the last point it applied, and points at or below it are skipped, so h
and c are never stepped twice and every alert of the replayed range is produced again (with
the same deterministic alert ids).

Exactly-once mode (``kafka.exactly_once``): one transactional producer per input partition
puts that partition's alerts, dead letters, changed states and input offsets of one batch in
one transaction. An aborted transaction reloads the partition from the changelog and rewinds
the consumer to the committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError

from detector.config import Settings
from detector.errors import ConfigError
from detector.io.files import DeadLetterSink, LineSink
from detector.kafka import clients
from detector.kafka.changelog import changelog_key, read_partitions, split_key
from detector.kafka.models import ModelWatcher, PublishedModel, publish_model
from detector.kafka.outbox import Outbox
from detector.kafka.topics import ensure_topics
from detector.model.modelfile import ModelMetadata
from detector.retrain.scheduler import Retrainer, RetrainResult, feature_names
from detector.service.ops import Operations
from detector.service.signals import ShutdownSignals
from detector.stream.pipeline import BatchOutput, Pipeline

log = structlog.get_logger(__name__)
Client = TypeVar("Client")

_POLL_MS = 500
_EVICT_EVERY_S = 60.0
_MODELS_EVERY_S = 5.0
_RESTORE_TIMEOUT_S = 600.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: KafkaRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.runner.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.runner.on_assigned({tp.partition for tp in assigned})


class KafkaRunner:
    def __init__(self, settings: Settings) -> None:
        run, k = settings.run, settings.kafka
        if k.exactly_once and (run.sink != "kafka" or run.dead_letter != "kafka"):
            raise ConfigError(
                "kafka.exactly_once: needs run.sink = 'kafka' and run.dead_letter = 'kafka' "
                "(alerts and dead letters are written in the same transaction as the offsets)"
            )
        self.settings = settings
        self.kafka = k
        self.instance = run.instance or socket.gethostname()
        self.pipeline = Pipeline(settings, self.instance)
        self.ops = Operations(settings, self.pipeline)
        # Models are shared through the models topic: the instance that owns input partition
        # 0 retrains (from its own partitions' streams) and publishes; every instance swaps.
        self.retrainer = Retrainer(self.pipeline, settings, staged_swaps=True)
        self.signals = ShutdownSignals()
        self.should_exit = self.signals.should_exit
        # Serialises batches, checkpoints and the rebalance callbacks, which aiokafka runs in
        # its own task: a partition is never checkpointed or dropped in the middle of a batch.
        self._lock = asyncio.Lock()
        self.owned: set[int] = set()  # partitions assigned and restored
        self._limbo: set[int] = set()  # revoked, state kept in case they come straight back
        self._next_offset: dict[int, int] = {}  # per partition: last processed offset + 1
        self._committed: dict[int, int] = {}
        self._input_missing = False  # seen without partitions: a re-created topic starts over
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._txn: dict[int, AIOKafkaProducer] = {}  # exactly-once: one per input partition
        self._outbox: Outbox | None = None
        self._restore_reader: AIOKafkaConsumer | None = None
        self._models_reader: AIOKafkaConsumer | None = None
        self._models: ModelWatcher | None = None
        self._line_sink = None if run.sink == "kafka" else LineSink(run.sink)
        self._dead_sink = (
            None if run.dead_letter == "kafka" else DeadLetterSink(run.dead_letter, k.input_topic)
        )
        self.checkpoints = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            async with self.signals, self.ops:
                await self._run()
        finally:
            self.retrainer.close()

    async def _run(self) -> None:
        if not await self._connect():
            return  # asked to stop before the broker was reachable
        log.info(
            "run_started",
            source=f"kafka:{self.kafka.input_topic}",
            group_id=self.kafka.group_id,
            group_instance_id=self.kafka.group_instance_id or None,
            exactly_once=self.kafka.exactly_once,
            groups=[g.name for g in self.pipeline.groups],
            instance=self.instance,
        )
        try:
            await self._loop()
            self.ops.stopping()
            try:
                async with asyncio.timeout(self.settings.state.grace_s):
                    async with self._lock:
                        await self._checkpoint(self.owned, final=True)
            except TimeoutError:
                log.error(
                    "final_checkpoint_timed_out",
                    grace_s=self.settings.state.grace_s,
                    action="exiting; the input is replayed from the last committed offsets",
                )
        finally:
            await self._close()
        log.info(
            "run_finished",
            streams=self.pipeline.streams(),
            checkpoints=self.checkpoints,
            **self.pipeline.counters.as_dict(),
        )

    async def _connect(self) -> bool:
        """Start every client, retrying with backoff while the broker is unreachable."""
        k = self.kafka
        backoff = k.retry_backoff_s
        while not self.should_exit.is_set():
            try:
                await self._start_clients()
            except (KafkaConnectionError, KafkaError, OSError) as exc:
                await self._close()
                log.warning(
                    "broker_unavailable",
                    bootstrap_servers=k.bootstrap_servers,
                    error=repr(exc),
                    retry_in_s=backoff,
                )
            else:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.should_exit.wait(), backoff)
            backoff = min(backoff * 2, k.retry_backoff_max_s)
        return False

    async def _start_clients(self) -> None:
        k = self.kafka
        admin = clients.admin(k)
        await admin.start()
        try:
            partitions = await ensure_topics(admin, k)
        finally:
            await admin.close()
        self._restore_reader = clients.reader(k)
        await self._restore_reader.start()
        self._models_reader = clients.reader(k)
        await self._models_reader.start()
        self._models = ModelWatcher(self._models_reader, k.models_topic)
        self._apply_models(await self._models.start(), at_once=True)
        # Alerts, dead letters and states (at-least-once); models in every mode.
        self._producer = clients.producer(k)
        await self._producer.start()
        if not k.exactly_once:
            self._outbox = Outbox(self._producer, k.retry_backoff_s, k.retry_backoff_max_s)
        self._consumer = clients.group_consumer(k, self.settings.run.batch_size)
        self._consumer.subscribe([k.input_topic], listener=_Rebalance(self))
        await self._consumer.start()
        log.info("kafka_connected", bootstrap_servers=k.bootstrap_servers, partitions=partitions)

    async def _close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._consumer.stop()  # leaves the group (static members do not)
            self._consumer = None
        for producer in [self._producer, *self._txn.values()]:
            if producer is not None:
                with contextlib.suppress(KafkaError):
                    await producer.stop()
        self._producer, self._txn, self._outbox = None, {}, None
        for reader in (self._restore_reader, self._models_reader):
            if reader is not None:
                with contextlib.suppress(KafkaError):
                    await reader.stop()
        self._restore_reader = self._models_reader = None
        for sink in (self._line_sink, self._dead_sink):
            if sink is not None:
                sink.close()
        self._line_sink = self._dead_sink = None

    # ------------------------------------------------------------------ the loop

    def _started(self, client: Client | None) -> Client:
        if client is None:
            raise RuntimeError("Kafka clients used before _start_clients or after _close")
        return client

    async def _loop(self) -> None:
        consumer = self._started(self._consumer)
        state = self.settings.state
        last_checkpoint = last_evict = last_models = time.monotonic()
        while not self.should_exit.is_set():
            batches = await consumer.getmany(
                timeout_ms=_POLL_MS, max_records=self.settings.run.batch_size
            )
            async with self._lock:
                started = time.perf_counter()
                now = time.time()
                for tp, records in batches.items():
                    if tp.partition in self.owned and records:
                        await self._process(tp.partition, records, now)
                self.ops.batch_done(started)
                self._export_lag(consumer)
                await self._retrain(now)
                mono = time.monotonic()
                if mono - last_evict >= _EVICT_EVERY_S:
                    self.pipeline.evict_idle(now)  # tombstones go out with the next checkpoint
                    last_evict = mono
                if not self.kafka.exactly_once and mono - last_checkpoint >= state.interval_s:
                    await self._checkpoint(self.owned)
                    last_checkpoint = mono
                if mono - last_models >= _MODELS_EVERY_S and self._models is not None:
                    self._apply_models(await self._models.poll())
                    last_models = mono

    async def _process(self, partition: int, records: Sequence[Any], now: float) -> None:
        payloads = [r.value if r.value is not None else b"" for r in records]
        first, last = records[0].offset, records[-1].offset
        # Consecutive (the usual case: offsets only increase within a partition) as a range,
        # which the pipeline turns into an array without a loop.
        offsets: Sequence[int] = (
            range(first, last + 1)
            if last - first + 1 == len(records)
            else [r.offset for r in records]
        )
        if self.kafka.exactly_once:
            await self._process_transaction(partition, payloads, offsets, now)
            return
        outbox = self._started(self._outbox)
        out = self.pipeline.process(payloads, now, partition=partition, offsets=offsets)
        self.ops.metrics.count_alerts(out.alerts)
        await self._emit(outbox, partition, out, offsets)
        self._next_offset[partition] = offsets[-1] + 1

    async def _emit(
        self, outbox: Outbox, partition: int, out: BatchOutput, offsets: Sequence[int]
    ) -> None:
        k = self.kafka
        if self._line_sink is not None:
            self._line_sink.write(out.alerts)
        else:
            alerts = [(a["stream"].encode(), orjson.dumps(a)) for a in out.alerts]
            await outbox.send_keyed(k.alerts_topic, alerts)
        if self._dead_sink is not None:
            for letter in out.dead_letters:
                self._dead_sink.write([letter], offsets[letter.index])
        else:
            for letter in out.dead_letters:
                await outbox.send(
                    k.dead_letter_topic,
                    letter.payload,
                    headers=[
                        ("detector-error", "; ".join(letter.reasons).encode()),
                        ("detector-source-topic", k.input_topic.encode()),
                        ("detector-source-partition", str(partition).encode()),
                        ("detector-source-offset", str(offsets[letter.index]).encode()),
                        ("detector-instance", self.instance.encode()),
                    ],
                )

    async def _send_states(self, outbox: Outbox, partitions: Iterable[int]) -> int:
        n = 0
        for p in partitions:
            records = [
                (changelog_key(g, s), state) for g, s, state in self.pipeline.changed_streams(p)
            ]
            await outbox.send_all(self.kafka.changelog, p, records)
            n += len(records)
        return n

    async def _checkpoint(self, partitions: Iterable[int], final: bool = False) -> None:
        """States out, everything acknowledged, then offsets committed (in that order)."""
        partitions = set(partitions)
        if self.kafka.exactly_once or self._outbox is None or self._consumer is None:
            return  # exactly-once commits every batch in its transaction
        started = time.monotonic()
        states = await self._send_states(self._outbox, sorted(partitions))
        if self._line_sink is not None:
            await asyncio.to_thread(self._line_sink.flush)
        if self._dead_sink is not None:
            await asyncio.to_thread(self._dead_sink.flush)
        await self._outbox.settle()
        self.ops.checkpoint_done(time.monotonic() - started)
        offsets = {
            TopicPartition(self.kafka.input_topic, p): self._next_offset[p]
            for p in partitions
            if p in self._next_offset and self._next_offset[p] != self._committed.get(p)
        }
        if offsets:
            try:
                await self._commit(offsets)
            except (CommitFailedError, KafkaError, TimeoutError) as exc:
                # Not fatal: the range is replayed later and skipped by the stored offsets.
                log.warning("commit_failed", error=repr(exc), partitions=sorted(partitions))
                self.ops.checkpoint_failed()
                return
            for tp, offset in offsets.items():
                self._committed[tp.partition] = offset
        self.checkpoints += 1
        log.log(
            logging.INFO if states or offsets or final else logging.DEBUG,
            "checkpoint_saved" if not final else "final_checkpoint_saved",
            partitions=sorted(partitions),
            states=states,
            committed={tp.partition: o for tp, o in offsets.items()},
            seconds=round(time.monotonic() - started, 3),
        )

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit, failing instead of waiting forever: aiokafka retries a retriable error
        (the input topic deleted: unknown topic or partition) without end, and a commit in
        the revoke callback would then hold up the rebalance, the loop and SIGTERM."""
        consumer = self._started(self._consumer)
        if not self._input_exists():
            raise KafkaError(f"input topic {self.kafka.input_topic} not found")
        async with asyncio.timeout(self.kafka.request_timeout_ms / 1000):
            await consumer.commit(offsets)

    def _input_exists(self) -> bool:
        """The input topic is in the consumer's cluster metadata (with partitions)."""
        consumer = self._started(self._consumer)
        return bool(consumer.partitions_for_topic(self.kafka.input_topic))

    # ------------------------------------------------------------------ exactly-once

    async def _process_transaction(
        self, partition: int, payloads: list[bytes], offsets: Sequence[int], now: float
    ) -> None:
        producer = self._txn[partition]
        outbox = Outbox(producer, self.kafka.retry_backoff_s, self.kafka.retry_backoff_max_s)
        tp = TopicPartition(self.kafka.input_topic, partition)
        try:
            await producer.begin_transaction()
            out = self.pipeline.process(payloads, now, partition=partition, offsets=offsets)
            self.ops.metrics.count_alerts(out.alerts)
            await self._emit(outbox, partition, out, offsets)
            await self._send_states(outbox, [partition])
            await producer.send_offsets_to_transaction({tp: offsets[-1] + 1}, self.kafka.group_id)
            await producer.commit_transaction()
        except KafkaError as exc:
            log.error("transaction_aborted", partition=partition, error=repr(exc))
            with contextlib.suppress(KafkaError):
                await producer.abort_transaction()
            await self._rewind(partition)
            return
        self._next_offset[partition] = self._committed[partition] = offsets[-1] + 1

    async def _rewind(self, partition: int) -> None:
        """After an aborted transaction: state and position back to the last commit."""
        consumer = self._started(self._consumer)
        self.pipeline.drop_partition(partition)
        await self._restore([partition])
        tp = TopicPartition(self.kafka.input_topic, partition)
        committed = await consumer.committed(tp)
        if committed is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)

    # ------------------------------------------------------------------ rebalance

    async def on_revoked(self, revoked: set[int]) -> None:
        async with self._lock:
            mine = revoked & self.owned
            self.ops.ready(False, "rebalancing: partitions revoked")
            for p in mine:
                self.ops.metrics.forget_partition(p)
            await self._checkpoint(mine)
            self.owned -= mine
            self._limbo |= mine
            for p in mine:
                producer = self._txn.pop(p, None)
                if producer is not None:
                    with contextlib.suppress(KafkaError):
                        await producer.stop()
            log.info("partitions_revoked", partitions=sorted(mine))

    async def on_assigned(self, assigned: set[int]) -> None:
        async with self._lock:
            # State kept over a revoke is still exact when the partition comes straight back:
            # no other member can have consumed it between our revoke and this assignment.
            kept = self._limbo & assigned
            for p in self._limbo - assigned:
                self.pipeline.drop_partition(p)
                self._next_offset.pop(p, None)
                self._committed.pop(p, None)
            self._limbo = set()
            fresh = assigned - kept - self.owned
            await self._restore(sorted(fresh))
            if assigned and self._input_missing:
                await self._input_recreated(assigned)
            if self.kafka.exactly_once:
                for p in sorted(assigned):
                    if p not in self._txn:
                        self._txn[p] = await self._transactional_producer(p)
            self.owned |= assigned
            log.info(
                "partitions_assigned",
                partitions=sorted(assigned),
                restored=sorted(fresh),
                kept=sorted(kept),
                streams=self.pipeline.streams(),
            )
            if assigned or self._input_exists():
                self.ops.ready(True)  # no partitions with the topic there: an idle member
                return
            # The consumer stays subscribed: the group rebalances when the topic is back.
            self._input_missing = True
            self.ops.ready(False, f"input topic {self.kafka.input_topic} not found")
            log.error(
                "input_topic_missing",
                topic=self.kafka.input_topic,
                action="create the topic (or restart, which creates it); consuming resumes "
                "when it is back",
            )

    async def _input_recreated(self, assigned: set[int]) -> None:
        """The input topic is back after it was gone: a new log whose offsets start at 0.
        Read it from its start, and forget the offsets of the old one (committed, and those
        in the streams' states), which would otherwise skip its first records."""
        self._input_missing = False
        consumer = self._started(self._consumer)
        tps = [TopicPartition(self.kafka.input_topic, p) for p in sorted(assigned)]
        await consumer.seek_to_beginning(*tps)
        streams = 0
        for p in assigned:
            streams += self.pipeline.forget_offsets(p)
            self._next_offset.pop(p, None)
            self._committed.pop(p, None)
        log.warning(
            "input_topic_recreated",
            topic=self.kafka.input_topic,
            partitions=sorted(assigned),
            streams=streams,
            action="reading the new topic from its start; stream states are kept",
        )

    async def _transactional_producer(self, partition: int) -> AIOKafkaProducer:
        k = self.kafka
        # One id per input partition: whoever owns the partition next fences this producer.
        producer = clients.producer(k, f"{k.transactional_id_prefix}-{k.input_topic}-{partition}")
        await producer.start()
        return producer

    async def _restore(self, partitions: Sequence[int]) -> None:
        if not partitions:
            return
        started = time.monotonic()
        latest = await read_partitions(
            self._started(self._restore_reader),
            self.kafka.changelog,
            partitions,
            _RESTORE_TIMEOUT_S,
        )
        now = time.time()
        for p, records in latest.items():
            saved = {}
            for key, value in records.items():
                split = split_key(key)
                if split is not None:
                    saved[split] = value
            restored, refused = self.pipeline.restore_streams(p, saved, now)
            log.info(
                "partition_restored",
                partition=p,
                streams=restored,
                refused=refused,
                seconds=round(time.monotonic() - started, 3),
            )
        await self._forget_offsets_ahead(partitions)

    async def _forget_offsets_ahead(self, partitions: Sequence[int]) -> None:
        """Restored states that reflect an input offset the partition's log has not reached
        come from another log: the topic was deleted and created again (or truncated) while
        no member was reading it. Its offsets start over, and the stored ones would skip its
        records as replays, so they are forgotten; the states themselves are kept."""
        tps = [TopicPartition(self.kafka.input_topic, p) for p in partitions]
        try:
            ends = await self._started(self._restore_reader).end_offsets(tps)
        except KafkaError as exc:  # the topic is gone: on_assigned says so, and it comes back
            log.warning("input_end_offsets_failed", error=repr(exc))
            return
        for tp in tps:
            stored, end = self.pipeline.stored_offset(tp.partition), ends.get(tp)
            if end is None or stored < end:
                continue
            streams = self.pipeline.forget_offsets(tp.partition)
            log.warning(
                "input_offsets_ahead_of_topic",
                topic=tp.topic,
                partition=tp.partition,
                stored_offset=stored,
                end_offset=end,
                streams=streams,
                action="the topic was re-created or truncated: its offsets start over; the "
                "stored ones are forgotten, stream states kept",
            )

    # ------------------------------------------------------------------ models

    def _apply_models(self, models: Iterable[PublishedModel], at_once: bool = False) -> None:
        """Newer weights from the models topic go into effect: staged while consuming
        (every stream's h, c and prediction re-derived under them, :meth:`Retrainer.poll`
        advances the swap), ``at_once`` before the first batch."""
        by_name = {g.name: g for g in self.pipeline.groups}
        for model in models:
            group = by_name.get(model.group)
            if group is None:
                continue
            try:
                self.retrainer.request_swap(group, model.params, model.version, at_once=at_once)
            except ValueError as exc:
                log.error(
                    "model_incompatible", group=model.group, version=model.version, error=str(exc)
                )
        self.ops.refresh_gauges()

    async def _retrain(self, now: float) -> None:
        """The owner of partition 0 retrains; accepted models go out on the models topic."""
        results = await self.retrainer.poll(now, start=0 in self.owned)
        self.ops.retrained(results)
        for r in results:
            log.info("retraining_finished", **r.as_dict())
            if r.result == "accepted":
                await self._publish(r)

    async def _publish(self, result: RetrainResult) -> None:
        group = next(g for g in self.pipeline.groups if g.name == result.group)
        metadata = ModelMetadata(
            feature_names=feature_names(group),
            normalization={"method": "stream_ewm"},
            training={"parent": result.parent, "result": result.as_dict()},
        )
        try:
            await publish_model(
                self._started(self._producer),
                self.kafka.models_topic,
                group.name,
                group.params,
                metadata,
            )
        except KafkaError as exc:  # the model stays in use here; others keep theirs
            log.error("model_publish_failed", group=group.name, error=repr(exc))

    def _export_lag(self, consumer: AIOKafkaConsumer) -> None:
        for p in self.owned:
            tp = TopicPartition(self.kafka.input_topic, p)
            high = consumer.highwater(tp)
            position = self._next_offset.get(p)
            if high is not None and position is not None:
                self.ops.metrics.set_lag(p, max(high - position, 0))
