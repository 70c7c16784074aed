"""Records sent but not yet acknowledged, kept until they are: nothing produced is lost.

aiokafka hands back a future per record; a record whose future fails (broker gone longer
than the request timeout) or that could not even be queued is sent again, with backoff,
when the outbox is settled. A checkpoint settles the outbox before it commits input offsets,
so an offset is never committed ahead of the alerts and states it produced.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Record:
    topic: str
    value: bytes | None
    key: bytes | None
    partition: int | None
    headers: list[tuple[str, bytes]]
    future: asyncio.Future[object] | None = field(default=None)


class Outbox:
    def __init__(self, producer: AIOKafkaProducer, backoff_s: float, backoff_max_s: float) -> None:
        self.producer = producer
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._pending: list[_Record] = []
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

    async def _queue(self, record: _Record) -> None:
        try:
            record.future = await self.producer.send(
                record.topic,
                record.value,
                key=record.key,
                partition=record.partition,
                headers=record.headers,
            )
        except KafkaError as exc:  # the producer's buffer stayed full: retried when settling
            record.future = None
            log.warning("produce_queue_failed", topic=record.topic, error=repr(exc))

    async def settle(self) -> None:
        """Return once every pending record is acknowledged, re-sending failed ones."""
        backoff = self.backoff_s
        while self._pending:
            futures = [r.future for r in self._pending if r.future is not None]
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
                records=len(failed),
                errors=sorted(errors)[:3],
                retry_in_s=backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)
            self._pending = failed
            for record in failed:
                await self._queue(record)
            self.resent += len(failed)
