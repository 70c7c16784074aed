"""`detector run` when its input topic is deleted mid-run and created again."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson
from aiokafka.admin import NewTopic

from detector.config import load_settings
from detector.kafka import clients
from detector.kafka.topics import ensure_topics, wait_for_leaders
from tests.probes import http_get

from .daemon import WAIT_S, Daemon, Topics, produce, wait_until_consumed, write_config

T0 = 1_700_000_000
STREAMS = 12


def points(first: int, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for t in range(first, first + n):
        for s in range(STREAMS):
            stream = f"host-{s:02d}.cpu"
            doc = {"stream": stream, "ts": T0 + 60 * t, "value": 50.0 + (t * 7 + s) % 5}
            out.append((stream.encode(), orjson.dumps(doc)))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_deleted_input_topic_is_waited_for_and_read_anew(
    kafka_bootstrap: str, daemons: list[Daemon], topics: Topics, tmp_path: Path
) -> None:
    """Deleted: the revoke's commit fails instead of retrying for ever, the daemon is not
    ready (with the reason), idles and still stops on SIGTERM. Created again: the group
    takes it up, and the new log is read from its start, none of it skipped as replayed
    because of the old log's offsets."""
    config = write_config(
        tmp_path / "detector.toml",
        kafka_bootstrap,
        topics,
        kafka={"partitions": 2, "metadata_max_age_ms": 5000},  # the re-creation seen sooner
        http={"listen": "127.0.0.1:0"},
    )
    settings = load_settings(config)
    admin = clients.admin(settings.kafka)
    await admin.start()
    try:
        await ensure_topics(admin, settings.kafka)
        before, after = points(0, 40), points(40, 40)
        await produce(kafka_bootstrap, topics.input, before)
        d = Daemon(config, tmp_path / "d.log").start()
        daemons.append(d)
        await d.wait_for("http_listening")
        (url,) = [e["url"] for e in d.events() if e["event"] == "http_listening"]
        await wait_until_consumed(kafka_bootstrap, topics, [d])
        await d.wait_for("checkpoint_saved")

        await admin.delete_topics([topics.input])
        await d.wait_for("input_topic_missing")
        status, body = http_get(f"{url}/readyz")
        assert status == 503 and f"input topic {topics.input} not found" in body
        assert d.proc is not None
        cpu = cpu_seconds(d.proc.pid)
        await asyncio.sleep(3)
        assert cpu_seconds(d.proc.pid) - cpu < 0.5, "idle while the topic is gone"

        await admin.create_topics([NewTopic(topics.input, 2, 1)])
        await wait_for_leaders(admin, [topics.input])
        await produce(kafka_bootstrap, topics.input, after)
        await d.wait_for("input_topic_recreated")  # within the consumer's metadata max age
        deadline = time.monotonic() + WAIT_S
        while http_get(f"{url}/readyz")[0] != 200:
            assert time.monotonic() < deadline, d.tail()
            await asyncio.sleep(0.2)
        await wait_until_consumed(kafka_bootstrap, topics, [d])
    finally:
        await admin.close()
    assert d.stop() == 0
    (finished,) = [e for e in d.events() if e["event"] == "run_finished"]
    # Every record scored once. Records of the new log fetched before the rebalance that
    # seeks to its start are read twice, the second time skipped as replays (not lost).
    assert finished["points"] - finished["replayed"] == len(before) + len(after)
    assert finished["out_of_order"] == 0


async def test_a_topic_re_created_while_no_daemon_ran_is_read_from_its_start(
    kafka_bootstrap: str, daemons: list[Daemon], topics: Topics, tmp_path: Path
) -> None:
    """The topic is deleted and created again while the daemon is stopped: the restored
    states reflect offsets the new log has not reached, so they are forgotten (logged), and
    none of the new log's records is skipped as replayed."""
    config = write_config(
        tmp_path / "detector.toml", kafka_bootstrap, topics, kafka={"partitions": 2}
    )
    settings = load_settings(config)
    before, after = points(0, 40), points(40, 10)  # the new log ends below the old offsets
    admin = clients.admin(settings.kafka)
    await admin.start()
    try:
        await ensure_topics(admin, settings.kafka)
        await produce(kafka_bootstrap, topics.input, before)
        first = Daemon(config, tmp_path / "first.log").start()
        daemons.append(first)
        await wait_until_consumed(kafka_bootstrap, topics, [first])
        assert first.stop() == 0

        await admin.delete_topics([topics.input])
        deadline = time.monotonic() + WAIT_S
        while topics.input in await admin.list_topics():
            assert time.monotonic() < deadline, "the input topic is not deleted"
            await asyncio.sleep(0.2)
        await admin.create_topics([NewTopic(topics.input, 2, 1)])
        await wait_for_leaders(admin, [topics.input])
        await produce(kafka_bootstrap, topics.input, after)
        second = Daemon(config, tmp_path / "second.log").start()
        daemons.append(second)
        await wait_until_consumed(kafka_bootstrap, topics, [second])
    finally:
        await admin.close()
    assert second.stop() == 0
    ahead = [e for e in second.events() if e["event"] == "input_offsets_ahead_of_topic"]
    assert sorted(e["partition"] for e in ahead) == [0, 1]
    assert sum(e["streams"] for e in ahead) == STREAMS
    (finished,) = [e for e in second.events() if e["event"] == "run_finished"]
    assert finished["messages"] == finished["points"] == len(after)
    assert finished["replayed"] == 0 and finished["out_of_order"] == 0
