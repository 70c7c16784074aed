"""The topics the daemon uses: checked at start, created when missing.

The changelog must have exactly the input's partition count: stream state is owned per input
partition and written to the changelog partition of the same number, so a partition's state
moves with it. Changelog and models topics are compacted (the newest record per key is all
that matters); alerts and dead letters are kept for a retention period.
"""

from __future__ import annotations

import asyncio

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from detector.config import KafkaSettings
from detector.errors import TopicSetupError

log = structlog.get_logger(__name__)

_UNKNOWN_TOPIC = 3
_TOPIC_EXISTS = 36
_LEADERS_TIMEOUT_S = 60.0


async def describe_partitions(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Partition count of each topic that exists (missing topics are left out)."""
    found: dict[str, int] = {}
    for described in await admin.describe_topics(topics):
        code = described["error_code"]
        if code == _UNKNOWN_TOPIC:
            continue
        if code != 0:
            raise for_code(code)(f"describing topic {described['topic']}")
        found[described["topic"]] = len(described["partitions"])
    return found


async def ensure_topics(admin: AIOKafkaAdminClient, k: KafkaSettings) -> int:
    """Check (and with create_topics, create) every topic; return the input's partitions."""
    names = [k.input_topic, k.changelog, k.alerts_topic, k.dead_letter_topic, k.models_topic]
    existing = await describe_partitions(admin, names)
    partitions = existing.get(k.input_topic, k.partitions)
    wanted = {
        k.input_topic: NewTopic(k.input_topic, partitions, k.replication_factor),
        k.changelog: NewTopic(
            k.changelog,
            partitions,
            k.replication_factor,
            topic_configs={"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
        ),
        k.alerts_topic: NewTopic(
            k.alerts_topic,
            partitions,
            k.replication_factor,
            topic_configs={"retention.ms": str(k.alerts_retention_ms)},
        ),
        k.dead_letter_topic: NewTopic(
            k.dead_letter_topic,
            partitions,
            k.replication_factor,
            topic_configs={"retention.ms": str(k.dead_letter_retention_ms)},
        ),
        k.models_topic: NewTopic(
            k.models_topic, 1, k.replication_factor, topic_configs={"cleanup.policy": "compact"}
        ),
    }
    missing = [topic for name, topic in wanted.items() if name not in existing]
    if missing and not k.create_topics:
        raise TopicSetupError(
            f"topics {[t.name for t in missing]} do not exist and kafka.create_topics is false"
        )
    if missing:
        response = await admin.create_topics(missing)
        for topic, code, *message in response.topic_errors:
            if code == _TOPIC_EXISTS:
                continue  # another instance created it first
            if code != 0:
                raise TopicSetupError(
                    f"creating topic {topic} failed: {for_code(code).__name__} {message}"
                )
        log.info("topics_created", topics=[t.name for t in missing], partitions=partitions)
        await wait_for_leaders(admin, [t.name for t in missing])
    changelog_partitions = (await describe_partitions(admin, [k.changelog]))[k.changelog]
    if changelog_partitions != partitions:
        raise TopicSetupError(
            f"changelog topic {k.changelog} has {changelog_partitions} partitions and the input "
            f"{k.input_topic} has {partitions}: they must be equal (state follows partitions)"
        )
    return partitions


async def wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str]) -> None:
    # The controller acknowledges a new topic before every broker serves it.
    async with asyncio.timeout(_LEADERS_TIMEOUT_S):
        while True:
            described = await admin.describe_topics(topics)
            if all(
                d["error_code"] == 0
                and d["partitions"]
                and min(p["leader"] for p in d["partitions"]) >= 0
                for d in described
            ):
                return
            await asyncio.sleep(0.1)
