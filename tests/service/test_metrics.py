"""Metrics: counters advance by differences, labels are bounded, exposition parses."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from detector.service.metrics import DROP_REASONS, Metrics
from detector.stream.pipeline import BatchOutput, Counters, DeadLetter


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.observe_counters(Counters(points=5))
    assert a.value("detector_points_total") == 5
    assert b.value("detector_points_total") == 0


def test_counters_advance_by_the_difference_since_the_last_call() -> None:
    m = Metrics()
    c = Counters()
    c.messages, c.points, c.non_finite, c.out_of_order, c.evicted = 10, 8, 1, 1, 0
    m.observe_counters(c)
    c.messages, c.points, c.non_finite, c.evicted, c.gap_resets = 15, 12, 1, 3, 2
    m.observe_counters(c)
    m.observe_counters(c)  # nothing new: nothing added
    assert m.value("detector_messages_total") == 15
    assert m.value("detector_points_total") == 12
    assert m.value("detector_dropped_points_total", {"reason": "non_finite"}) == 1
    assert m.value("detector_dropped_points_total", {"reason": "out_of_order"}) == 1
    assert m.value("detector_evictions_total") == 3
    assert m.value("detector_gaps_total", {"policy": "reset"}) == 2


def test_a_new_counters_object_counts_from_zero() -> None:
    m = Metrics()
    m.observe_counters(Counters(points=100))
    m.observe_counters(Counters(points=7))  # a restarted pipeline: its 7 are all new
    assert m.value("detector_points_total") == 107


def test_every_counters_field_is_exported_or_deliberately_per_group() -> None:
    # A new Counters field must get a metric (or be added to this list on purpose).
    m = Metrics()
    unmapped = set(Counters().as_dict()) - set(m._from_counters)
    assert unmapped == {"alerts"}  # counted per group from the batch output


def test_every_drop_reason_starts_at_zero_and_comes_from_counters() -> None:
    m = Metrics()
    for reason in DROP_REASONS:
        assert m.value("detector_dropped_points_total", {"reason": reason}) == 0
    m.observe_counters(Counters(**{reason: 2 for reason in DROP_REASONS}))
    for reason in DROP_REASONS:
        assert m.value("detector_dropped_points_total", {"reason": reason}) == 2


def test_observe_batch_counts_alerts_per_group_and_dead_letters() -> None:
    m = Metrics()
    output = BatchOutput(
        alerts=[{"group": "hosts", "stream": "web-1.cpu"}, {"group": "hosts"}, {"group": "db"}],
        dead_letters=[DeadLetter(payload=b"junk", reasons=["not json"], index=0)],
    )
    m.observe_batch(0.004, Counters(messages=3, points=3, alerts=3), output)
    assert m.value("detector_alerts_total", {"group": "hosts"}) == 2
    assert m.value("detector_alerts_total", {"group": "db"}) == 1
    assert m.value("detector_dead_letters_total") == 1
    assert m.value("detector_batch_duration_seconds_count") == 1
    assert m.value("detector_batch_duration_seconds_sum") == pytest.approx(0.004)


def test_gauges_retraining_checkpoint_model_version_and_loop_lag() -> None:
    m = Metrics()
    m.set_streams("hosts", 1200)
    m.set_lag(3, 42)
    m.set_lag(4, 0)
    m.forget_partition(4)
    m.forget_partition(99)  # never set: no error
    m.observe_checkpoint(0.2)
    m.checkpoint_failed()
    m.observe_retraining("hosts", "accepted", 12.0)
    m.observe_retraining("hosts", "skipped", 0.0)
    m.set_model_version("hosts", "v1")
    m.set_model_version("hosts", "v2")  # replaces v1: one series per group
    m.observe_loop_lag(0.003)
    assert m.value("detector_streams", {"group": "hosts"}) == 1200
    assert m.value("detector_consumer_lag", {"partition": "3"}) == 42
    assert m.value("detector_consumer_lag", {"partition": "4"}) is None
    assert m.value("detector_checkpoint_duration_seconds_count") == 1
    assert m.value("detector_checkpoint_failures_total") == 1
    assert m.value("detector_retraining_runs_total", {"group": "hosts", "result": "accepted"}) == 1
    assert m.value("detector_retraining_runs_total", {"group": "hosts", "result": "skipped"}) == 1
    assert m.value("detector_retraining_duration_seconds_count", {"group": "hosts"}) == 1
    assert m.value("detector_model_info", {"group": "hosts", "version": "v2"}) == 1
    assert m.value("detector_model_info", {"group": "hosts", "version": "v1"}) is None
    assert m.value("detector_event_loop_lag_seconds_count") == 1
    with pytest.raises(ValueError, match="result"):
        m.observe_retraining("hosts", "maybe", 1.0)  # type: ignore[arg-type]


def test_stream_ids_are_never_label_values() -> None:
    m = Metrics()
    streams = [f"web-{i}.cpu" for i in range(50)]
    output = BatchOutput(alerts=[{"group": "hosts", "stream": s, "score": 0.9} for s in streams])
    m.observe_batch(0.01, Counters(messages=50, points=50, alerts=50), output)
    m.set_streams("hosts", len(streams))
    m.set_lag(0, 5)
    m.observe_retraining("hosts", "rejected", 3.0)
    m.set_model_version("hosts", "abc123")
    body, _ = m.render()
    text = body.decode()
    assert not [s for s in streams if s in text]
    label_values = {
        value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for value in sample.labels.values()
    }
    allowed = {"hosts", "0", "abc123", "rejected", "reset", "continue", *DROP_REASONS}
    assert label_values - allowed - _bucket_bounds(text) == set()


def _bucket_bounds(text: str) -> set[str]:
    return {
        sample.labels["le"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "le" in sample.labels
    }


def test_render_negotiates_openmetrics() -> None:
    m = Metrics()
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    assert b"# TYPE detector_points_total counter" in body
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
