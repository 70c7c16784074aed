"""`detector run` in Kafka mode against the real broker: alerts, crashes, rebalance, outage.

Every test compares what the daemon wrote to the alerts topic with an uninterrupted in-process
run of the same pipeline over the same points (`expected_alerts`). The group's model is a
random LSTM published to the models topic first, so predictions depend on h and c: a state
that was lost, or stepped twice, shows up as different scores.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from detector.config import Settings, load_settings
from detector.kafka.models import publish_model
from detector.model.modelfile import ModelMetadata
from detector.model.params import LSTMParams
from detector.stream.pipeline import Pipeline
from tests.probes import http_get as _get

from .daemon import (
    WAIT_S,
    Daemon,
    Topics,
    produce,
    read_all,
    wait_until_consumed,
    write_config,
)

if TYPE_CHECKING:
    from .conftest import LocalKafkaBroker

N_STREAMS = 24
N_POINTS = 400  # per stream
T0 = 1_700_000_000


def make_points(seed: int = 0) -> list[tuple[bytes, bytes]]:
    """(key, native JSON) for every point, interleaved by time; each stream has one spike."""
    rng = np.random.default_rng(seed)
    messages = []
    phase = rng.uniform(0, 2 * np.pi, N_STREAMS)
    for t in range(N_POINTS):
        for s in range(N_STREAMS):
            value = 50 + 10 * np.sin(2 * np.pi * t / 48 + phase[s]) + rng.normal(0, 1)
            if t == 200 + 5 * s:
                value += 60
            stream = f"host-{s:02d}.cpu"
            doc = {"stream": stream, "ts": T0 + 60 * t, "value": round(float(value), 4)}
            messages.append((stream.encode(), orjson.dumps(doc)))
    return messages


def random_model(settings: Settings) -> LSTMParams:
    group = Pipeline(settings, "test").groups[0]
    params = LSTMParams.init(group.shape, np.random.default_rng(7), np.float32)
    return params


async def publish(bootstrap: str, topics: Topics, params: LSTMParams) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    async with producer:
        meta = ModelMetadata(feature_names=("value",), normalization={"method": "stream_ewm"})
        await publish_model(producer, topics.models, "default", params, meta)


def expected_alerts(settings: Settings, params: LSTMParams, messages: list[tuple[bytes, bytes]]):
    """The alerts of one uninterrupted in-process run, by alert id."""
    pipeline = Pipeline(settings, "reference")
    pipeline.groups[0].swap_model(params, "reference")
    out = pipeline.process([v for _, v in messages], now=float(T0))
    return {a["alert_id"]: a for a in out.alerts}


async def daemon_alerts(bootstrap: str, topics: Topics, **kw: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await read_all(bootstrap, topics.alerts, **kw)]


def assert_same_alerts(got: list[dict[str, Any]], expected: dict[str, dict[str, Any]]) -> None:
    by_id = {a["alert_id"]: a for a in got}  # at-least-once: replays may repeat an alert
    assert sorted(by_id) == sorted(expected), (
        f"missing {len(set(expected) - set(by_id))}, extra {len(set(by_id) - set(expected))}"
    )
    for alert_id, alert in by_id.items():
        ref = expected[alert_id]
        assert alert["stream"] == ref["stream"] and alert["ts"] == ref["ts"]
        assert alert["escalation"] == ref["escalation"]  # the cooldown state survives too
        assert alert["score"] == pytest.approx(ref["score"], rel=1e-4, abs=1e-5)
        assert alert["predicted"] == pytest.approx(ref["predicted"], rel=1e-4, abs=1e-4)


async def setup(
    tmp_path: Path, bootstrap: str, topics: Topics, **sections: dict[str, Any]
) -> tuple[Path, Settings, LSTMParams]:
    config = write_config(tmp_path / "detector.toml", bootstrap, topics, **sections)
    settings = load_settings(config)
    params = random_model(settings)
    # The topics the daemon would create, created here so the model can go in first.
    from detector.kafka import clients
    from detector.kafka.topics import ensure_topics

    admin = clients.admin(settings.kafka)
    await admin.start()
    try:
        await ensure_topics(admin, settings.kafka)
    finally:
        await admin.close()
    await publish(bootstrap, topics, params)
    return config, settings, params


async def test_points_in_alerts_out(kafka_bootstrap, topics, daemons, tmp_path) -> None:
    config, settings, params = await setup(tmp_path, kafka_bootstrap, topics)
    messages = make_points()
    expected = expected_alerts(settings, params, messages)
    assert len(expected) >= N_STREAMS // 2, "the reference run must alert on the spikes"
    await produce(kafka_bootstrap, topics.input, messages)
    d = Daemon(config, tmp_path / "d.log").start()
    daemons.append(d)
    await wait_until_consumed(kafka_bootstrap, topics, [d])
    got = await daemon_alerts(kafka_bootstrap, topics)
    assert_same_alerts(got, expected)
    records = await read_all(kafka_bootstrap, topics.alerts)
    assert {r.key.decode() for r in records} == {a["stream"] for a in got}  # key = stream id
    assert any(e["event"] == "model_swapped" for e in d.events())
    assert d.stop() == 0
    assert d.saw("final_checkpoint_saved") and d.saw("run_finished")


async def wait_for_alerts(bootstrap: str, topics: Topics, n: int, **kw: str) -> None:
    async with asyncio.timeout(WAIT_S):
        # Polling another process's output: no event to wait on.
        while len(await daemon_alerts(bootstrap, topics, **kw)) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_sigkill_and_restart_lose_nothing(kafka_bootstrap, topics, daemons, tmp_path):
    config, settings, params = await setup(
        tmp_path, kafka_bootstrap, topics, run={"batch_size": 50}, state={"interval_s": 3.0}
    )
    messages = make_points(seed=1)
    expected = expected_alerts(settings, params, messages)
    half = len(messages) // 2  # every spike is in the second half
    await produce(kafka_bootstrap, topics.input, messages[:half])
    first = Daemon(config, tmp_path / "first.log").start()
    daemons.append(first)
    await wait_until_consumed(kafka_bootstrap, topics, [first])  # first half checkpointed
    await produce(kafka_bootstrap, topics.input, messages[half:])
    await wait_for_alerts(kafka_bootstrap, topics, 1)
    first.kill()  # mid-stream: alerts out, the second half's state and offsets not (all) saved
    second = Daemon(config, tmp_path / "second.log").start()
    daemons.append(second)
    await wait_until_consumed(kafka_bootstrap, topics, [second])
    assert_same_alerts(await daemon_alerts(kafka_bootstrap, topics), expected)
    restored = [e for e in second.events() if e["event"] == "partition_restored"]
    assert sum(e["streams"] for e in restored) == N_STREAMS, "the restart restored state"
    assert second.stop() == 0


async def test_partitions_and_state_move_when_a_member_stops(
    kafka_bootstrap, topics, daemons, tmp_path
):
    config, settings, params = await setup(tmp_path, kafka_bootstrap, topics)
    messages = make_points(seed=2)
    expected = expected_alerts(settings, params, messages)
    half = len(messages) // 2
    await produce(kafka_bootstrap, topics.input, messages[:half])
    a = Daemon(config, tmp_path / "a.log").start()
    daemons.append(a)
    await wait_until_consumed(kafka_bootstrap, topics, [a])
    b = Daemon(config, tmp_path / "b.log").start()
    daemons.append(b)
    await b.wait_for("partitions_assigned")  # the group rebalanced: a and b share partitions
    assert a.stop() == 0  # b takes over a's partitions and restores their state
    await b.wait_for("partitions_assigned", count=2)
    await produce(kafka_bootstrap, topics.input, messages[half:])
    await wait_until_consumed(kafka_bootstrap, topics, [b])
    assert_same_alerts(await daemon_alerts(kafka_bootstrap, topics), expected)
    restored = [e for e in b.events() if e["event"] == "partition_restored"]
    assert sum(e["streams"] for e in restored) >= N_STREAMS // 2
    assert b.stop() == 0


async def test_broker_outage_mid_run(
    kafka_bootstrap, kafka_broker: LocalKafkaBroker, topics, daemons, tmp_path
):
    config, settings, params = await setup(tmp_path, kafka_bootstrap, topics)
    messages = make_points(seed=3)
    expected = expected_alerts(settings, params, messages)
    half = len(messages) // 2
    await produce(kafka_bootstrap, topics.input, messages[:half])
    d = Daemon(config, tmp_path / "d.log").start()
    daemons.append(d)
    await wait_until_consumed(kafka_bootstrap, topics, [d])
    kafka_broker.stop()
    await asyncio.sleep(5)  # the daemon keeps running without a broker
    assert d.proc is not None and d.proc.poll() is None, d.tail()
    kafka_broker.start()
    await produce(kafka_bootstrap, topics.input, messages[half:])
    await wait_until_consumed(kafka_bootstrap, topics, [d])
    assert_same_alerts(await daemon_alerts(kafka_bootstrap, topics), expected)
    assert d.stop() == 0


async def test_malformed_messages_are_dead_lettered(kafka_bootstrap, topics, daemons, tmp_path):
    config, settings, params = await setup(tmp_path, kafka_bootstrap, topics)
    messages = make_points(seed=4)
    expected = expected_alerts(settings, params, messages)
    bad = [(b"x", b"{not json"), (b"y", b'{"stream": "a", "ts": 1}'), (b"z", b"\xff\xfe")]
    mixed = messages[:1000] + bad + messages[1000:]
    await produce(kafka_bootstrap, topics.input, mixed)
    d = Daemon(config, tmp_path / "d.log").start()
    daemons.append(d)
    await wait_until_consumed(kafka_bootstrap, topics, [d])
    dead = await read_all(kafka_bootstrap, topics.dead_letter)
    assert sorted(r.value for r in dead) == sorted(v for _, v in bad)
    for r in dead:
        headers = dict(r.headers)
        assert headers["detector-error"], "the reason travels in a header"
        assert headers["detector-source-topic"].decode() == topics.input
        assert int(headers["detector-source-offset"]) >= 0
    assert_same_alerts(await daemon_alerts(kafka_bootstrap, topics), expected)
    assert d.stop() == 0
    (summary,) = [e for e in d.events() if e["event"] == "run_finished"]
    assert summary["decode_errors"] >= len(bad)


async def test_exactly_once_after_sigkill(kafka_bootstrap, topics, daemons, tmp_path):
    config, settings, params = await setup(
        tmp_path, kafka_bootstrap, topics, run={"batch_size": 20}, kafka={"exactly_once": True}
    )
    messages = make_points(seed=5)
    expected = expected_alerts(settings, params, messages)
    await produce(kafka_bootstrap, topics.input, messages)
    first = Daemon(config, tmp_path / "first.log").start()
    daemons.append(first)
    committed = {"isolation_level": "read_committed"}
    await wait_for_alerts(kafka_bootstrap, topics, 1, **committed)
    first.kill()  # mid-stream, probably inside a transaction
    second = Daemon(config, tmp_path / "second.log").start()
    daemons.append(second)
    await wait_until_consumed(kafka_bootstrap, topics, [second])
    got = await daemon_alerts(kafka_bootstrap, topics, **committed)
    ids = [a["alert_id"] for a in got]
    assert len(ids) == len(set(ids)), "read_committed sees every alert exactly once"
    assert_same_alerts(got, expected)
    assert second.stop() == 0


async def test_probes_metrics_and_sigterm_in_kafka_mode(
    kafka_bootstrap, topics, daemons, tmp_path
) -> None:
    """What Kubernetes sees (issue 6): /readyz once partitions are assigned and restored,
    /healthz while batches progress, per-partition lag in /metrics, then a clean SIGTERM."""
    config, _, _ = await setup(
        tmp_path, kafka_bootstrap, topics, http={"listen": "127.0.0.1:0", "stall_s": 60.0}
    )
    messages = make_points(seed=6)
    await produce(kafka_bootstrap, topics.input, messages)
    d = Daemon(config, tmp_path / "d.log").start()
    daemons.append(d)
    await d.wait_for("http_listening")
    (url,) = [e["url"] for e in d.events() if e["event"] == "http_listening"]
    await wait_until_consumed(kafka_bootstrap, topics, [d])
    assert _get(f"{url}/readyz")[0] == 200
    assert _get(f"{url}/healthz")[0] == 200
    status, metrics = _get(f"{url}/metrics")
    assert status == 200
    assert f"detector_points_total {float(len(messages))}" in metrics
    lags = re.findall(r'^detector_consumer_lag\{partition="(\d+)"\} (\S+)$', metrics, re.M)
    assert sorted(int(p) for p, _ in lags) == [0, 1, 2, 3]
    assert all(float(v) == 0.0 for _, v in lags)
    assert "host-" not in metrics, "stream ids are never label values"
    assert d.stop() == 0
    (final,) = [e for e in d.events() if e["event"] == "final_checkpoint_saved"]
    assert final["states"] >= 0 and sorted(final["partitions"]) == [0, 1, 2, 3]
