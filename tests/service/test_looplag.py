"""Event-loop lag: a blocked loop shows up in the samples, the summary and the histogram."""

from __future__ import annotations

import asyncio
import time

import pytest

from detector.service.looplag import LagSummary, LoopLagMonitor
from detector.service.metrics import Metrics


def test_recent_gives_nearest_rank_p99_and_max() -> None:
    monitor = LoopLagMonitor(window=200)
    assert monitor.recent() == LagSummary(0, 0.0, 0.0)
    for i in range(1, 201):  # 0.001 .. 0.2
        monitor.record(i / 1000)
    summary = monitor.recent()
    assert summary.samples == 200
    assert summary.p99_s == pytest.approx(0.198)
    assert summary.max_s == pytest.approx(0.2)


def test_window_bounds_the_samples_kept() -> None:
    monitor = LoopLagMonitor(window=10)
    for _ in range(1000):
        monitor.record(0.0)
    monitor.record(0.5)
    assert monitor.recent() == LagSummary(10, 0.5, 0.5)


async def test_a_blocked_loop_is_measured() -> None:
    metrics = Metrics()
    monitor = LoopLagMonitor(metrics, interval_s=0.01)
    async with monitor:
        await asyncio.sleep(0.03)
        time.sleep(0.15)  # noqa: ASYNC251 - blocking the loop on purpose
        await asyncio.sleep(0.05)
    summary = monitor.recent()
    assert summary.max_s >= 0.1
    assert metrics.value("detector_event_loop_lag_seconds_count") == summary.samples
    assert metrics.value("detector_event_loop_lag_seconds_sum") >= 0.1


async def test_start_and_stop_are_idempotent() -> None:
    monitor = LoopLagMonitor(interval_s=0.01)
    await monitor.stop()
    await monitor.start()
    task = monitor._task
    await monitor.start()
    assert monitor._task is task
    assert monitor.running
    await monitor.stop()
    await monitor.stop()
    assert not monitor.running
    assert task is not None
    assert task.cancelled()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        LoopLagMonitor(interval_s=0)
