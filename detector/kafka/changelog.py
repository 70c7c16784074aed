"""The changelog: one compacted record per stream holding its serialised state.

Key: ``<group>\\x00<stream>``; value: ``StreamStateTable.stream_bytes`` (versioned, and
carrying the input offset the state reflects); a tombstone (no value) for an evicted stream.
Input partition p's streams live in changelog partition p, so restoring a partition reads
one changelog partition from its start to its end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

_SEPARATOR = b"\x00"
_POLL_MS = 200


def changelog_key(group: str, stream: str) -> bytes:
    return group.encode() + _SEPARATOR + stream.encode()


def split_key(key: bytes) -> tuple[str, str] | None:
    """(group, stream), or None for a key this format does not know."""
    group, sep, stream = key.partition(_SEPARATOR)
    if not sep or not group:
        return None
    try:
        return group.decode(), stream.decode()
    except UnicodeDecodeError:
        return None


async def read_partitions(
    reader: AIOKafkaConsumer, topic: str, partitions: Iterable[int], timeout_s: float
) -> dict[int, dict[bytes, bytes]]:
    """The newest value of every live key of each partition, read from start to end.

    A tombstone removes its key. The end is the partition's end offset when reading begins
    (with read_committed: its last stable offset), so a writer that keeps appending cannot
    keep the restore going for ever.
    """
    tps = [TopicPartition(topic, p) for p in partitions]
    latest: dict[int, dict[bytes, bytes]] = {tp.partition: {} for tp in tps}
    if not tps:
        return latest
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)
    end = await reader.end_offsets(tps)
    async with asyncio.timeout(timeout_s):
        while True:
            behind = [tp for tp in tps if await reader.position(tp) < end[tp]]
            if not behind:
                break
            batches = await reader.getmany(*behind, timeout_ms=_POLL_MS)
            for tp, records in batches.items():
                live = latest[tp.partition]
                for r in records:
                    if r.offset >= end[tp] or r.key is None:
                        continue
                    if r.value is None:
                        live.pop(r.key, None)
                    else:
                        live[r.key] = r.value
    reader.unsubscribe()
    return latest
