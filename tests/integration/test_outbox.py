"""The outbox against the real broker: what it sends arrives, in order, through an outage."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition

from detector.config import KafkaSettings
from detector.kafka import clients
from detector.kafka.outbox import Outbox

if TYPE_CHECKING:  # types only: pytest, not this module, imports the conftest
    from .conftest import LocalKafkaBroker, NewTopicFactory

BATCH_BYTES = 16 * 1024  # the smallest allowed: many batches from a few hundred records
READ_TIMEOUT_S = 60


def _records(n: int, size: int, tag: str) -> list[tuple[bytes | None, bytes | None]]:
    return [(f"{tag}-{i}".encode(), (f"{tag}-{i}:".encode() * size)[:size]) for i in range(n)]


async def _read(bootstrap: str, topic: str, partition: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, partition)
    out: list[tuple[bytes, bytes]] = []
    async with consumer, asyncio.timeout(READ_TIMEOUT_S):
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=200)).values():
                out += [(r.key, r.value) for r in records]
    return out


async def test_send_all_packs_batches_and_keeps_order(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(2)
    k = KafkaSettings(bootstrap_servers=kafka_bootstrap, max_batch_bytes=BATCH_BYTES)
    producer = clients.producer(k)
    await producer.start()
    try:
        outbox = Outbox(producer, 0.1, 1.0)
        many = _records(300, 1400, "s")  # about 11 per batch: 28 batches
        oversize = _records(1, 3 * BATCH_BYTES, "big")  # fits no batch: sent on its own
        await outbox.send_all(topic, 1, many[:150] + oversize + many[150:])
        await outbox.send(topic, b"single", key=b"one", partition=1)
        await outbox.send_all(topic, 0, [])
        assert 28 <= len(outbox) <= 40, "one pending entry per batch, not per record"
        await outbox.settle()
        assert len(outbox) == 0
    finally:
        await producer.stop()
    got = await _read(kafka_bootstrap, topic, 1)
    assert got == [*many[:150], *oversize, *many[150:], (b"one", b"single")]
    assert await _read(kafka_bootstrap, topic, 0) == []


async def test_batches_queued_during_an_outage_arrive_once_it_ends(
    kafka_bootstrap: str, kafka_broker: LocalKafkaBroker, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(1)
    k = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, max_batch_bytes=BATCH_BYTES, request_timeout_ms=3000
    )
    producer = clients.producer(k)
    await producer.start()
    records = _records(100, 1400, "o")
    try:
        await producer.send_and_wait(topic, b"first", key=b"k", partition=0)
        kafka_broker.stop()
        outbox = Outbox(producer, 0.5, 2.0)
        await outbox.send_all(topic, 0, records)
        settled = asyncio.create_task(outbox.settle())
        await asyncio.sleep(5)  # longer than the request timeout: the batches fail, are retried
        assert not settled.done()
        kafka_broker.start()
        await asyncio.wait_for(settled, 120)
    finally:
        await producer.stop()
    assert await _read(kafka_bootstrap, topic, 0) == [(b"k", b"first"), *records]


async def test_send_keyed_lands_where_a_keyed_send_does(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    batched, one_by_one = await new_topic(3), await new_topic(3)
    records = [(f"host-{i % 37}.cpu".encode(), f"alert-{i}".encode()) for i in range(300)]
    producer = clients.producer(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    await producer.start()
    try:
        outbox = Outbox(producer, 0.1, 1.0)
        await outbox.send_keyed(batched, records[:150])
        await outbox.send_keyed(batched, [])
        await outbox.send_keyed(batched, records[150:])
        for key, value in records:
            await outbox.send(one_by_one, value, key=key)
        await outbox.settle()
    finally:
        await producer.stop()
    for partition in range(3):
        got = await _read(kafka_bootstrap, batched, partition)
        assert got, "37 keys over 3 partitions: none is empty"
        assert got == await _read(kafka_bootstrap, one_by_one, partition)
