"""Fixtures for the tests that talk to a real Kafka broker.

By default the session starts its own single-node broker with deploy/kafka/kafka.sh (in a
temporary directory, stopped at the end of the session). With KAFKA_BOOTSTRAP_SERVERS set, the
tests use that cluster instead, e.g. a broker started by hand with `deploy/kafka/kafka.sh start`.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from .daemon import Daemon, Topics

INTEGRATION_DIR = Path(__file__).resolve().parent
KAFKA_SH = INTEGRATION_DIR.parents[1] / "deploy" / "kafka" / "kafka.sh"
# Covers a cold `fetch` (Maven downloading every jar) plus kafka.sh's own 90 s start timeout.
KAFKA_SH_TIMEOUT_S = 600
TOPIC_READY_TIMEOUT_S = 30


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Hooks of a conftest see every collected item, not only those of its directory.
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


class LocalKafkaBroker:
    """The broker kafka.sh runs in `directory`; stop() and start() simulate an outage.

    start() after stop() brings back the same broker: same data, same port, so the bootstrap
    address that clients were given stays valid.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bootstrap = ""

    def _run(self, *args: str) -> str:
        result = subprocess.run(
            [str(KAFKA_SH), *args, "--dir", str(self.directory)],
            capture_output=True,
            text=True,
            timeout=KAFKA_SH_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"kafka.sh {args[0]} failed (exit {result.returncode}):\n{result.stderr}"
            )
        return result.stdout

    def start(self) -> None:
        # --owner-pid: kafka.sh stops the broker if this pytest process is killed outright.
        out = self._run("start", "--owner-pid", str(os.getpid()))
        self.bootstrap = out.strip().splitlines()[-1]

    def stop(self) -> None:
        self._run("stop")

    def is_running(self) -> bool:
        status = subprocess.run(
            [str(KAFKA_SH), "status", "--dir", str(self.directory)],
            capture_output=True,
            timeout=KAFKA_SH_TIMEOUT_S,
            check=False,
        )
        return status.returncode == 0


@pytest.fixture(scope="session")
def _local_kafka_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalKafkaBroker | None]:
    """The session's own broker, or None when KAFKA_BOOTSTRAP_SERVERS names a cluster."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    broker = LocalKafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(_local_kafka_broker: LocalKafkaBroker | None) -> str:
    """Bootstrap servers of the Kafka cluster the integration tests use."""
    if _local_kafka_broker is None:
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    return _local_kafka_broker.bootstrap


@pytest.fixture
def kafka_broker(_local_kafka_broker: LocalKafkaBroker | None) -> Iterator[LocalKafkaBroker]:
    """Control over the session's broker, for outage tests; skips on an external cluster."""
    if _local_kafka_broker is None:
        pytest.skip("stops the broker: needs the session's own one, not KAFKA_BOOTSTRAP_SERVERS")
    yield _local_kafka_broker
    # A test that failed during its outage must not leave the next tests without a broker.
    if not _local_kafka_broker.is_running():
        _local_kafka_broker.start()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    # The controller acknowledges a new topic before the broker serves it; clients that look
    # it up in that window see an unknown topic, and a consumer may then not refresh for
    # minutes (metadata.max.age.ms).
    async with asyncio.timeout(TOPIC_READY_TIMEOUT_S):
        while True:
            (described,) = await admin.describe_topics([topic])
            leaders = [p["leader"] for p in described["partitions"]]
            if described["error_code"] == 0 and len(leaders) == partitions and min(leaders) >= 0:
                return
            await asyncio.sleep(0.1)


class NewTopicFactory(Protocol):
    def __call__(self, partitions: int = 1, *, compacted: bool = False) -> Awaitable[str]: ...


@pytest.fixture
async def new_topic(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> AsyncIterator[NewTopicFactory]:
    """Creates topics with unique names (the broker does not auto-create them)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    # Topic names allow [a-zA-Z0-9._-]; the test name keeps a stray topic attributable.
    prefix = re.sub(r"[^a-zA-Z0-9._-]", "_", request.node.name)[:100]

    async def create(partitions: int = 1, *, compacted: bool = False) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        configs = {"cleanup.policy": "compact"} if compacted else {}
        response = await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
        # aiokafka returns the broker's per-topic error codes instead of raising them.
        for _topic, error_code, *message in response.topic_errors:
            if error_code != 0:
                raise for_code(error_code)(f"creating topic {name}: {message}")
        await _wait_for_leaders(admin, name, partitions)
        return name

    try:
        yield create
    finally:
        await admin.close()


@pytest.fixture
def topics() -> Topics:
    return Topics.fresh()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts; killed at its end whatever happened."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.ensure_dead()
