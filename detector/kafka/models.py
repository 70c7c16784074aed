"""The models topic: compacted, key = model group, value = a model file's bytes.

The newest record of a group is its current model; every instance loads it at start and
swaps to any newer one while running. A rollback is a re-publication of an older version.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from detector.errors import ModelFileError
from detector.model.modelfile import ModelMetadata, decode_model, encode_model
from detector.model.params import LSTMParams

log = structlog.get_logger(__name__)

VERSION_HEADER = "detector-model-version"


def version_of(metadata: ModelMetadata) -> str:
    """A model's version: the first 12 hex digits of its content hash."""
    return metadata.content_hash.removeprefix("sha256:")[:12]


@dataclass(frozen=True, slots=True)
class PublishedModel:
    group: str
    version: str
    params: LSTMParams
    metadata: ModelMetadata
    offset: int


async def publish_model(
    producer: AIOKafkaProducer,
    topic: str,
    group: str,
    params: LSTMParams,
    metadata: ModelMetadata,
) -> str:
    """Append a model version for ``group``; returns the version once acknowledged."""
    raw, stored = encode_model(params, metadata)
    version = version_of(stored)
    await producer.send_and_wait(
        topic, raw, key=group.encode(), headers=[(VERSION_HEADER, version.encode())]
    )
    log.info("model_published", group=group, version=version, topic=topic, bytes=len(raw))
    return version


class ModelWatcher:
    """Follows the models topic; :meth:`poll` returns the models that arrived since last time.

    A record that does not decode is logged and skipped: one bad publication must not take
    every instance down, and the previous model stays in use.
    """

    def __init__(self, reader: AIOKafkaConsumer, topic: str) -> None:
        self.reader = reader
        self.tp = TopicPartition(topic, 0)

    async def start(self) -> list[PublishedModel]:
        """Read the whole topic; returns the newest model of every group."""
        self.reader.assign([self.tp])
        await self.reader.seek_to_beginning(self.tp)
        end = (await self.reader.end_offsets([self.tp]))[self.tp]
        newest: dict[str, PublishedModel] = {}
        while await self.reader.position(self.tp) < end:
            for model in await self.poll(timeout_ms=200):
                newest[model.group] = model
        return list(newest.values())

    async def poll(self, timeout_ms: int = 0) -> list[PublishedModel]:
        batches = await self.reader.getmany(self.tp, timeout_ms=timeout_ms)
        models = []
        for record in batches.get(self.tp, []):
            if record.key is None or record.value is None:
                continue
            group = record.key.decode(errors="replace")
            try:
                params, metadata = decode_model(record.value, f"{self.tp.topic}@{record.offset}")
            except ModelFileError as exc:
                log.error(
                    "model_record_unreadable", group=group, offset=record.offset, error=str(exc)
                )
                continue
            models.append(
                PublishedModel(group, version_of(metadata), params, metadata, record.offset)
            )
        return models
