"""Running `detector run` against the test broker as a real subprocess, and reading its topics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

WAIT_S = 120  # bounds every wait on the daemon: a first start compiles the numba kernels


@dataclass
class Topics:
    input: str
    alerts: str
    dead_letter: str
    changelog: str
    models: str
    group: str

    @classmethod
    def fresh(cls) -> Topics:
        """Names no other test uses (the broker may be shared: KAFKA_BOOTSTRAP_SERVERS)."""
        tag = uuid.uuid4().hex[:10]
        return cls(
            input=f"metrics-{tag}",
            alerts=f"alerts-{tag}",
            dead_letter=f"dead-{tag}",
            changelog=f"changelog-{tag}",
            models=f"models-{tag}",
            group=f"detector-{tag}",
        )


@dataclass
class Daemon:
    """One `detector run --source kafka` process; its log is kept in a file for failures."""

    config: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        env = {**os.environ, **self.env}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detector", "run", "--config", str(self.config)],
            stdout=self._log,
            stderr=self._log,
            env=env,
        )
        return self

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def saw(self, event: str) -> bool:
        return any(e.get("event") == event for e in self.events())

    async def wait_for(self, event: str, count: int = 1) -> None:
        deadline = time.monotonic() + WAIT_S
        while sum(e.get("event") == event for e in self.events()) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event!r} within {WAIT_S} s:\n{self.tail()}")
            await asyncio.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(WAIT_S)
        self._log.close()

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(WAIT_S)
        self._log.close()
        return code

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)
        self._log.close()


def write_config(path: Path, bootstrap: str, topics: Topics, **sections: dict[str, Any]) -> Path:
    """A TOML config for Kafka mode; ``sections`` override or add keys per section."""
    base: dict[str, dict[str, Any]] = {
        "run": {"source": "kafka", "sink": "kafka", "dead_letter": "kafka", "batch_size": 200},
        "state": {"interval_s": 1.0, "grace_s": 30.0},
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": topics.group,
            "input_topic": topics.input,
            "alerts_topic": topics.alerts,
            "dead_letter_topic": topics.dead_letter,
            "changelog_topic": topics.changelog,
            "models_topic": topics.models,
            "partitions": 4,
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 1000,
            "retry_backoff_s": 0.5,
            "retry_backoff_max_s": 2.0,
            "request_timeout_ms": 10_000,
        },
        "retraining": {"enabled": False},
        "log": {"format": "json"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    lines = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    return repr(value)


async def produce(bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> None:
    """Send (key, value) pairs in order and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    async with producer:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)


async def read_all(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> list[Any]:
    """Every record of every partition of ``topic``, from the start to the current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level=isolation_level, enable_auto_commit=False
    )
    records: list[Any] = []
    tps = await _partitions(bootstrap, topic)
    async with consumer:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        async with asyncio.timeout(WAIT_S):
            while any([await consumer.position(tp) < end[tp] for tp in tps]):
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records += batch
    return records


async def wait_until_consumed(bootstrap: str, topics: Topics, daemons: Sequence[Daemon]) -> None:
    """Until the group's committed offsets reach the input's end on every partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        tps = await _partitions(bootstrap, topics.input)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                end = await consumer.end_offsets(tps)
                committed = await admin.list_consumer_group_offsets(topics.group)
            except KafkaError as exc:  # a broker just restarted is still loading its groups
                committed = {"not yet": repr(exc)}
            else:
                if all(tp in committed and committed[tp].offset >= end[tp] for tp in tps):
                    return
            for d in daemons:
                if d.proc is not None and d.proc.poll() is not None:
                    raise AssertionError(f"daemon exited ({d.proc.returncode}):\n{d.tail()}")
            if time.monotonic() > deadline:
                logs = "\n---\n".join(d.tail() for d in daemons)
                raise AssertionError(f"input not consumed within {WAIT_S} s: {committed}\n{logs}")
            await asyncio.sleep(0.3)
    finally:
        await consumer.stop()
        await admin.close()


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described["error_code"] == 0, f"topic {topic}: error {described['error_code']}"
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
