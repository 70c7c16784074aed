"""Records sent but not yet acknowledged, kept until they are: nothing produced is lost.

aiokafka hands back a future per record (or per record batch, :meth:`Outbox.send_all`); a
record whose future fails (broker gone longer than the request timeout) or that could not
even be queued is sent again, with backoff, when the outbox is settled. A checkpoint settles
the outbox before it commits input offsets, so an offset is never committed ahead of the
alerts and states it produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder

from detector.kafka.partitioner import key_partitions

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Record:
    topic: str
    value: bytes | None
    key: bytes | None
    partition: int | None
    headers: list[tuple[str, bytes]]
    future: asyncio.Future[object] | None = field(default=None)

    async def queue(self, producer: AIOKafkaProducer) -> None:
        self.future = await producer.send(
            self.topic, self.value, key=self.key, partition=self.partition, headers=self.headers
        )


@dataclass(slots=True)
class _Batch:
    """Records for one partition in one record batch: one future for all of them."""

    topic: str
    partition: int
    items: Sequence[tuple[bytes | None, bytes | None]]  # (key, value)
    filled: BatchBuilder | None = None  # the items, built when they were split into batches
    future: asyncio.Future[object] | None = field(default=None)

    async def queue(self, producer: AIOKafkaProducer) -> None:
        builder, self.filled = self.filled, None  # a builder goes out once; a re-send rebuilds
        if builder is None:
            builder = producer.create_batch()
            _fill(builder, self.items)  # they fitted once, so they fit again
        builder.close()
        self.future = await producer.send_batch(builder, self.topic, partition=self.partition)


def _fill(
    builder: BatchBuilder, items: Sequence[tuple[bytes | None, bytes | None]], start: int = 0
) -> int:
    """Append items from ``start`` on until the batch is full; the index of the first left
    out (no slicing: a checkpoint's list may hold a million records)."""
    for i in range(start, len(items)):
        key, value = items[i]
        if builder.append(timestamp=None, key=key, value=value) is None:
            return i
    return len(items)


class Outbox:
    def __init__(self, producer: AIOKafkaProducer, backoff_s: float, backoff_max_s: float) -> None:
        self.producer = producer
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._pending: list[_Record | _Batch] = []
        self.resent = 0

    def __len__(self) -> int:
        return len(self._pending)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        record = _Record(topic, value, key, partition, headers or [])
        await self._queue(record)
        self._pending.append(record)

    async def send_all(
        self, topic: str, partition: int, items: Sequence[tuple[bytes | None, bytes | None]]
    ) -> None:
        """(key, value) records to one partition, in order, packed in as few record batches
        as the producer's ``max_batch_size`` allows (several times faster than one
        :meth:`send` per record for many records, as at a checkpoint)."""
        start = 0
        while start < len(items):
            builder = self.producer.create_batch()
            end = _fill(builder, items, start)
            if end == start:  # larger than a whole batch: send() lets the producer say why
                key, value = items[start]
                await self.send(topic, value, key=key, partition=partition)
                start += 1
                continue
            batch = _Batch(topic, partition, items[start:end], builder)
            await self._queue(batch)
            self._pending.append(batch)
            start = end

    async def send_keyed(self, topic: str, items: Sequence[tuple[bytes, bytes | None]]) -> None:
        """(key, value) records, each to the partition a keyed :meth:`send` would pick, found
        for all of them in one call (:mod:`detector.kafka.partitioner`): aiokafka would hash
        each key in Python, at a quarter of a send's cost. One record at a time, not as a
        record batch: a batch for a partition waits until that partition's last batch has
        left, which would stall the loop on every call."""
        if not items:
            return
        try:
            partitions = sorted(await self.producer.partitions_for(topic))
        except KafkaError as exc:  # no metadata yet: the producer picks once it has some
            log.warning("produce_metadata_failed", topic=topic, error=repr(exc))
            for key, value in items:
                await self.send(topic, value, key=key)
            return
        chosen = key_partitions([key for key, _ in items], len(partitions))
        for (key, value), index in zip(items, chosen.tolist(), strict=True):
            await self.send(topic, value, key=key, partition=partitions[index])

    async def _queue(self, entry: _Record | _Batch) -> None:
        try:
            await entry.queue(self.producer)
        except KafkaError as exc:  # the producer's buffer stayed full: retried when settling
            entry.future = None
            log.warning("produce_queue_failed", topic=entry.topic, error=repr(exc))

    async def settle(self) -> None:
        """Return once every pending record is acknowledged, re-sending failed ones."""
        backoff = self.backoff_s
        while self._pending:
            # Only those still in flight: asyncio.wait costs a callback per future.
            futures = [r.future for r in self._pending if r.future and not r.future.done()]
            if futures:
                await asyncio.wait(futures)
            failed = [
                r
                for r in self._pending
                if r.future is None or r.future.cancelled() or r.future.exception() is not None
            ]
            if not failed:
                self._pending.clear()
                return
            errors = {
                repr(r.future.exception())
                for r in failed
                if r.future and r.future.done() and not r.future.cancelled()
            }
            log.warning(
                "produce_failed_retrying",
                records=_records(failed),
                errors=sorted(errors)[:3],
                retry_in_s=backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)
            self._pending = failed
            for entry in failed:
                await self._queue(entry)
            self.resent += _records(failed)


def _records(entries: Sequence[_Record | _Batch]) -> int:
    return sum(len(e.items) if isinstance(e, _Batch) else 1 for e in entries)
