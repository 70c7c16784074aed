"""The Kafka harness itself: the guarantees the daemon relies on hold on the test broker."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

if TYPE_CHECKING:  # types only: pytest, not this module, imports the conftest
    from .conftest import LocalKafkaBroker, NewTopicFactory

# Bounds every wait on the broker, so that a broken harness fails instead of hanging.
CONSUME_TIMEOUT_S = 30


def _producer(bootstrap: str) -> AIOKafkaProducer:
    # The daemon's producer settings: nothing is acknowledged before it is on every replica,
    # and retries do not duplicate.
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)


async def _is_behind(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return True
    return False


async def _consume_to_end(consumer: AIOKafkaConsumer) -> list[bytes]:
    """Values from the consumer's position to the end of its partitions, whatever their number:
    stopping at an expected count would hide extra (duplicate or aborted) records."""
    values: list[bytes] = []
    async with asyncio.timeout(CONSUME_TIMEOUT_S):
        # A group member has no partitions until its first poll has joined the group.
        while not consumer.assignment():
            for records in (await consumer.getmany(timeout_ms=100)).values():
                values += [r.value for r in records if r.value is not None]
        end = await consumer.end_offsets(list(consumer.assignment()))
        while await _is_behind(consumer, end):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                values += [r.value for r in records if r.value is not None]
    return values


async def _read_topic(bootstrap: str, topic: str, *, isolation_level: str) -> list[bytes]:
    """Every value of a one-partition topic, read without a consumer group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level=isolation_level, enable_auto_commit=False
    )
    async with consumer:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        return await _consume_to_end(consumer)


async def test_group_consumer_reads_all_and_resumes_from_commit(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(partitions=3)
    group = f"group-{uuid.uuid4().hex}"
    first = [f"first-{i}".encode() for i in range(300)]
    second = [f"second-{i}".encode() for i in range(50)]

    def consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    async with _producer(kafka_bootstrap) as producer:
        # Keys spread the records over the three partitions.
        sent = [await producer.send(topic, value, key=value[-1:]) for value in first]
        await asyncio.gather(*sent)
    async with consumer() as member:
        assert sorted(await _consume_to_end(member)) == sorted(first)
        await member.commit()

    # A new member of the group starts from the committed offsets: only the new records.
    async with _producer(kafka_bootstrap) as producer:
        for value in second:
            await producer.send_and_wait(topic, value, key=value[-1:])
    async with consumer() as member:
        assert sorted(await _consume_to_end(member)) == sorted(second)


async def test_broker_restart_keeps_data_and_address(
    kafka_broker: LocalKafkaBroker, kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic()
    async with _producer(kafka_bootstrap) as producer:
        await producer.send_and_wait(topic, b"before the outage")

    kafka_broker.stop()
    assert not kafka_broker.is_running()
    kafka_broker.start()

    # Clients configured before the outage must find the broker at the same address.
    assert kafka_broker.bootstrap == kafka_bootstrap
    async with _producer(kafka_bootstrap) as producer:
        await producer.send_and_wait(topic, b"after the outage")
    assert await _read_topic(kafka_bootstrap, topic, isolation_level="read_committed") == [
        b"before the outage",
        b"after the outage",
    ]


async def test_read_committed_sees_committed_transactions_only(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic()
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"txn-{uuid.uuid4().hex}"
    )
    async with producer:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed")
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted")
        await producer.abort_transaction()

    assert await _read_topic(kafka_bootstrap, topic, isolation_level="read_committed") == [
        b"committed"
    ]
    # The aborted record did reach the log: read_committed filtered it out.
    assert await _read_topic(kafka_bootstrap, topic, isolation_level="read_uncommitted") == [
        b"committed",
        b"aborted",
    ]
