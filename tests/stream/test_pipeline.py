"""The pipeline from raw messages to alerts: routing, counting, dead letters, alert documents."""

from __future__ import annotations

import math
import uuid
import zlib

import numpy as np
import orjson
import pytest

from detector.config import GroupSettings, RunSettings, ScoringSettings, Settings, StreamSettings
from detector.errors import ConfigError
from detector.io.formats import PlainPoints, ScannedPoints, scan_native
from detector.stream import pipeline as pipeline_module
from detector.stream.pipeline import Pipeline
from detector.stream.routing import Router

T0 = 1_700_000_000
SPIKE_SCORING = ScoringSettings(
    mode="zscore", warmup=50, min_error_std=0.01, cooldown=10, novelty_scale=0.0
)


def native(stream: str, ts: float, value: float | dict[str, float]) -> bytes:
    key = "values" if isinstance(value, dict) else "value"
    return orjson.dumps({"stream": stream, "ts": ts, key: value})


def steady_with_spike(stream: str, n: int = 300, spike_at: int = 250) -> list[bytes]:
    rng = np.random.default_rng(zlib.crc32(stream.encode()))
    values = 50 + rng.normal(0, 1, n)
    if spike_at < n:
        values[spike_at] += 40
    return [native(stream, T0 + 60 * i, float(v)) for i, v in enumerate(values)]


def settings(**sections: object) -> Settings:
    # The z-score of one spike, without the novelty score (a Gaussian stream reaches new
    # extremes by chance): these tests count the alerts of one spike each.
    base: dict[str, object] = {"scoring": SPIKE_SCORING}
    base.update(sections)
    return Settings(**base)  # type: ignore[arg-type]


def test_spikes_alert_with_a_complete_deterministic_document() -> None:
    pipe = Pipeline(settings(), instance="test-1")
    messages = steady_with_spike("web-1.cpu") + steady_with_spike("web-2.cpu", spike_at=200)
    alerts = []
    for lo in range(0, len(messages), 128):
        alerts += pipe.process(messages[lo : lo + 128], now=0.0).alerts
    by_stream = {a["stream"]: a for a in alerts}
    assert set(by_stream) == {"web-1.cpu", "web-2.cpu"}
    a = by_stream["web-1.cpu"]
    assert a["ts"] == T0 + 60 * 250
    assert a["time"] == "2023-11-15T02:23:20Z"  # T0 + 250 min
    assert set(a) == {
        "alert_id", "stream", "group", "ts", "time", "value", "predicted", "error", "score",
        "threshold", "escalation", "mode", "model_version", "instance",
    }  # fmt: skip
    assert a["group"] == "default" and a["model_version"] == "untrained"
    assert a["escalation"] is False  # the stream's first alert
    assert a["instance"] == "test-1" and a["mode"] == "zscore" and a["threshold"] == 0.5
    assert a["score"] >= 0.5 and a["error"] > 0 and a["value"] > 80 and a["predicted"] < 60
    assert uuid.UUID(a["alert_id"]).version == 5
    # The same input gives the same ids (a replay's duplicates can be dropped downstream).
    again = Pipeline(settings(), instance="test-2")
    ids = [x["alert_id"] for x in again.process(messages, now=0.0).alerts]
    assert sorted(ids) == sorted(x["alert_id"] for x in alerts)
    assert pipe.counters.points == 600 and pipe.counters.alerts == len(alerts)


def test_malformed_messages_are_counted_and_dead_lettered_without_stopping() -> None:
    pipe = Pipeline(settings(), instance="t")
    good = steady_with_spike("a", n=10)
    out = pipe.process([good[0], b"{not json", good[1], b'{"stream": "a"}', b"\xff\xfe"], 0.0)
    assert [d.payload for d in out.dead_letters] == [b"{not json", b'{"stream": "a"}', b"\xff\xfe"]
    assert all(d.reasons for d in out.dead_letters)
    assert pipe.counters.decode_errors == 3 and pipe.counters.points == 2


def test_non_finite_values_are_counted_and_never_scored() -> None:
    pipe = Pipeline(settings(run=RunSettings(format="prometheus_json")), instance="t")
    docs = [
        {"timestamp": f"2024-01-01T00:0{i}:00Z", "value": v, "name": "up", "labels": {"job": "x"}}
        for i, v in enumerate(["1", "NaN", "+Inf", "2"])
    ]
    out = pipe.process([orjson.dumps(d) for d in docs], now=0.0)
    assert not out.dead_letters
    assert pipe.counters.non_finite == 2 and pipe.counters.points == 2
    table = pipe.groups[pipe.router.default].tables[0]
    assert table.seen[table.slot_of["up{job=x}"]] == 2


def test_out_of_order_and_refused_points_are_counted() -> None:
    pipe = Pipeline(settings(streams=StreamSettings(max_streams=2)), instance="t")
    msgs = [native("a", T0 + 60, 1.0), native("a", T0, 2.0), native("b", T0, 1.0)]
    msgs += [native("c", T0, 1.0), native("c", T0 + 60, 1.0)]
    pipe.process(msgs, now=0.0)
    c = pipe.counters
    assert (c.out_of_order, c.refused, c.points) == (1, 2, 3)
    assert pipe.refused() == 2


def test_routing_first_match_wins_and_vector_streams() -> None:
    groups = [
        GroupSettings(name="cpu", match=["*.cpu"], hidden_size=4),
        GroupSettings(
            name="io",
            match=[r"disk\{.*\}"],
            match_kind="regex",
            layout="vector",
            fields=["read", "write"],
        ),
        GroupSettings(name="catch-cpu-too", match=["web*"]),
    ]
    router = Router(groups)
    assert router.route("web-1", "", "cpu").group == 0  # type: ignore[union-attr]
    assert router.route("web-1", "", "mem").group == 2  # type: ignore[union-attr]
    assert router.route("db", "", "mem").group == 3  # type: ignore[union-attr]  # default
    io = router.route("disk", "{host=a}", "read")
    assert io is not None and (io.group, io.stream) == (1, "disk{host=a}")
    other = router.route("disk", "{host=a}", "errors")  # not a vector field: next rules
    assert other is not None and (other.group, other.stream) == (3, "disk.errors{host=a}")

    pipe = Pipeline(settings(groups=groups, run=RunSettings(format="influx")), instance="t")
    lines = [
        f"disk,host=a read={i}.5,write={2 * i},errors=0i {(T0 + 60 * i) * 10**9}".encode()
        for i in range(5)
    ]
    lines.append(f"disk,host=b read=1 {T0 * 10**9}".encode())  # no write: incomplete
    lines.append(f"web-1 cpu=0.5 {T0 * 10**9}".encode())
    pipe.process(lines, now=0.0)
    io_table = pipe.groups[1].tables[0]
    assert list(io_table) == ["disk{host=a}"] and io_table.layout.n_values == 2
    assert io_table.seen[io_table.slot_of["disk{host=a}"]] == 5
    assert pipe.counters.incomplete == 1
    assert list(pipe.groups[0].tables[0]) == ["web-1.cpu"]
    assert pipe.groups[0].shape.hidden == 4
    assert list(pipe.groups[3].tables[0]) == ["disk.errors{host=a}"]


def test_a_model_file_that_does_not_fit_is_a_config_error(tmp_path) -> None:
    group = GroupSettings(name="default", model_file=str(tmp_path / "x.npz"))
    with pytest.raises(ConfigError, match=r"groups\.default\.model_file: model file .*x\.npz"):
        Pipeline(settings(groups=[group]), instance="t")


def test_snapshot_restore_continues_the_same_streams() -> None:
    msgs = steady_with_spike("a") + steady_with_spike("b", spike_at=280)
    msgs.sort(key=lambda m: orjson.loads(m)["ts"])
    whole = Pipeline(settings(), instance="t")
    want = [x["alert_id"] for x in whole.process(msgs, now=0.0).alerts]

    first = Pipeline(settings(), instance="t")
    got = [x["alert_id"] for x in first.process(msgs[:400], now=0.0).alerts]
    second = Pipeline(settings(), instance="t")
    second.restore(0, first.snapshot(0), now=0.0)
    got += [x["alert_id"] for x in second.process(msgs[400:], now=0.0).alerts]
    assert got == want and len(want) == 2


def test_changelog_restore_then_replay_skips_what_the_state_already_has() -> None:
    """Kafka mode: the changed streams' states restore into a fresh pipeline; a replay from
    an older offset skips points at or below each stream's stored offset (counted), and the
    rest scores exactly as an uninterrupted run."""
    a, b = steady_with_spike("a", n=300, spike_at=250), steady_with_spike("b", n=300, spike_at=280)
    messages = [m for pair in zip(a, b, strict=True) for m in pair]
    offsets = list(range(len(messages)))
    whole = Pipeline(settings(), instance="t")
    expected = whole.process(messages, now=0.0, offsets=offsets).alerts
    assert len(expected) == 2

    first = Pipeline(settings(), instance="t")
    cut = 420  # state saved after 420 messages, but offsets committed only up to 300
    first.process(messages[:cut], now=0.0, offsets=offsets[:cut])
    changed = first.changed_streams(0)
    assert sorted(s for _, s, _ in changed) == ["a", "b"]
    table = first.groups[first.router.default].tables[0]  # packed in one pass, as one by one:
    assert all(state == table.stream_bytes(s) for _, s, state in changed)
    assert first.changed_streams(0) == []  # taken: nothing changed since
    second = Pipeline(settings(), instance="t")
    restored, refused = second.restore_streams(
        0, {(g, s): state for g, s, state in changed if state is not None}, now=0.0
    )
    assert (restored, refused) == (2, 0)
    # A range (the Kafka runner's consecutive offsets) counts as the same list would.
    got = second.process(messages[300:], now=0.0, offsets=range(300, len(messages))).alerts
    assert second.counters.replayed == cut - 300
    assert [(x["alert_id"], x["score"]) for x in got] == [
        (x["alert_id"], x["score"]) for x in expected
    ]
    with pytest.raises(ValueError, match="offsets"):
        second.process(messages[:2], now=0.0, offsets=[1])


def test_a_message_with_several_points_of_a_stream_scores_them_all_in_kafka_mode() -> None:
    """Telegraf sends many lines per message: every point of a stream in it carries the
    message's offset, and none of them is a replay."""
    lines = [f"cpu,host=a usage={50 + i % 7} {(T0 + 60 * i) * 10**9}" for i in range(300)]
    messages = ["\n".join(lines[i : i + 10]).encode() for i in range(0, 300, 10)]
    pipe = Pipeline(settings(run=RunSettings(format="influx")), instance="t")
    out = pipe.process(messages, now=0.0, offsets=list(range(100, 130)), keep_scores=True)
    assert pipe.counters.replayed == 0 and pipe.counters.points == 300
    assert out.scores is not None and sum(len(s.streams) for s in out.scores) == 300
    again = pipe.process(messages[-3:], now=0.0, offsets=[127, 128, 129])
    assert pipe.counters.replayed == 30 and not again.alerts  # the same messages again


def test_restore_refuses_states_of_unknown_groups_or_layouts() -> None:
    pipe = Pipeline(settings(), instance="t")
    pipe.process(steady_with_spike("a", n=10), now=0.0)
    ((group, stream, state),) = pipe.changed_streams(0)
    other = Pipeline(settings(model={"hidden_size": 8}), instance="t")
    assert other.restore_streams(0, {("nope", "a"): state, (group, stream): state}, 0.0) == (0, 2)
    assert pipe.drop_partition(0) == 1 and pipe.partitions() == set()


def general_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every native message through decode() one by one, as before the plain-point paths."""

    def nothing_plain(payloads, indices=None):  # type: ignore[no-untyped-def]
        every = list(range(len(payloads)) if indices is None else indices)
        return PlainPoints([], [], [], [], [], every)

    monkeypatch.setattr(pipeline_module, "native_points", nothing_plain)
    monkeypatch.setattr(pipeline_module, "scan_native", nothing_scanned)


def nothing_scanned(payloads, max_id_bytes):  # type: ignore[no-untyped-def]
    """scan_native leaving every message to native_points."""
    empty = np.empty(0, np.int64)
    return ScannedPoints(
        np.empty(0, np.uint8), empty, np.empty(0), np.empty(0), empty, list(range(len(payloads)))
    )


@pytest.mark.parametrize("one_group", [False, True], ids=["groups", "one group: scan_native"])
def test_plain_points_score_as_the_general_path_in_mixed_batches(monkeypatch, one_group) -> None:
    """Plain points go through the pipeline as columns and the rest one by one; merged back
    in message order, everything (alerts, dead letters, counters, states, scores) equals
    decoding every message on its own. With one group, the simplest plain points are read
    straight from the bytes (scan_native), the tagged ones by native_points."""
    groups = [
        GroupSettings(name="cpu", match=["*.cpu*"], hidden_size=4),
        GroupSettings(name="io", match=["disk*"], layout="vector", fields=["read", "write"]),
    ]
    if one_group:
        groups = [GroupSettings(name="default", hidden_size=4)]
    scanned: list[int] = []

    def counted_scan(payloads, max_id_bytes):  # type: ignore[no-untyped-def]
        got = pipeline_module.scan_native.__wrapped__(payloads, max_id_bytes)
        scanned.append(len(got.index))
        return got

    counted_scan.__wrapped__ = scan_native  # type: ignore[attr-defined]
    monkeypatch.setattr(pipeline_module, "scan_native", counted_scan)
    rng = np.random.default_rng(7)
    batches: list[list[bytes]] = []
    for b in range(6):
        batch: list[bytes] = []
        for k in range(60):
            i = 60 * b + k
            t = T0 + 60 * i
            v = float(50 + rng.normal() + (40 if i in (200, 300) else 0))
            batch += [native("web-1.cpu", t, v), native("db", t, v), native("web-2.cpu", t, -v)]
            batch.append(orjson.dumps({"stream": "web", "ts": t, "value": v, "tags": {"h": "a"}}))
            batch.append(native("disk", t, {"read": v, "write": 2 * v}))
            if k % 7 == 0:  # two points in one message, after plain points of the streams
                two = [native("web-2.cpu", t + 20, v), native("web-1.cpu", t + 40, v + 1)]
                batch.append(b"\n".join(two))
            if k % 11 == 0:  # not JSON, a value null (from NaN), out of order
                batch += [b"{not json", native("db", t + 30, math.nan), native("db", t - 1, v)]
                batch.append(native("x" * 2000, t, v))  # id too long: a dead letter
                batch.append(native("disk", t + 30, 1.0))  # not a vector field: "default"
        batches.append(batch)

    def run() -> tuple[list[object], Pipeline]:
        pipe = Pipeline(settings(groups=groups), instance="t")
        got: list[object] = []
        offset = 0
        for batch in batches:
            offsets = range(offset, offset + len(batch))  # as the Kafka runner passes them
            offset += len(batch)
            out = pipe.process(batch, now=0.0, partition=1, offsets=offsets, keep_scores=True)
            got.append(out.alerts)
            got.append([(d.payload, d.reasons, d.index) for d in out.dead_letters])
            assert out.scores is not None
            got.append(
                [
                    (s.group, s.streams, s.ts.tolist(), s.value.tolist(), s.score.tolist())
                    for s in out.scores
                ]
            )
        got.append(pipe.counters.as_dict())
        got.append({g.name: g.tables[1].to_bytes() for g in pipe.groups if 1 in g.tables})
        return got, pipe

    fast, pipe = run()
    c = pipe.counters
    assert (c.alerts >= 2, c.decode_errors, c.out_of_order, c.incomplete) == (True, 108, 36, 0)
    # 54 messages of two points; with one group, "disk" is two per-field streams
    assert c.points == c.messages - 108 + 54 + (360 if one_group else 0)
    # only a single group's points are scanned, and then most of them
    assert sum(scanned) == (0 if not one_group else 3 * 360 + 2 * 36)
    with monkeypatch.context() as patched:
        general_path_only(patched)
        general, _ = run()
    assert fast == general
