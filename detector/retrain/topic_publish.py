"""An offline-trained model onto the models topic (`detector train --publish` in Kafka mode).

Daemons in Kafka mode load their models from the topic (detector.kafka.models), not from a
local registry, so a `detector train` run beside them (the Kubernetes CronJob) publishes
there: one record, key = model group, acknowledged by every in-sync replica before the
command exits 0. Every instance swaps to it within seconds.
"""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError, KafkaError

from detector.config import KafkaSettings
from detector.kafka import clients
from detector.kafka.models import publish_model
from detector.model.modelfile import ModelMetadata
from detector.model.params import LSTMParams
from detector.retrain.topic_source import BrokerUnreachableError, TopicSourceError


def publish_to_models_topic(
    kafka: KafkaSettings, group: str, params: LSTMParams, metadata: ModelMetadata
) -> str:
    """Publish ``params`` as ``group``'s newest model; returns its version once acknowledged."""
    return asyncio.run(_publish(kafka, group, params, metadata))


async def _publish(
    kafka: KafkaSettings, group: str, params: LSTMParams, metadata: ModelMetadata
) -> str:
    producer = clients.producer(kafka)
    try:
        async with asyncio.timeout(kafka.request_timeout_ms / 1000):
            await producer.start()
    except (KafkaConnectionError, TimeoutError) as exc:
        await producer.stop()
        raise BrokerUnreachableError(
            f"no Kafka broker reachable at {kafka.bootstrap_servers} within "
            f"{kafka.request_timeout_ms / 1000:g} s (kafka.request_timeout_ms) to publish "
            f"the model: {exc!r}"
        ) from None
    try:
        return await publish_model(producer, kafka.models_topic, group, params, metadata)
    except KafkaError as exc:
        raise TopicSourceError(
            f"publishing the model to topic {kafka.models_topic} failed: {exc!r}"
        ) from None
    finally:
        await producer.stop()
