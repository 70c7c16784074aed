"""Health: liveness from progress within stall_s, readiness as the runner sets it."""

from __future__ import annotations

import pytest

from detector.service.health import Health
from tests.service.clock import FakeClock


def test_live_from_the_start_for_stall_s_then_stalled_without_progress() -> None:
    clock = FakeClock()
    health = Health(stall_s=120.0, clock=clock)
    assert health.liveness().ok
    clock.advance(120.0)
    assert health.liveness().ok  # exactly stall_s: still within
    clock.advance(0.5)
    verdict = health.liveness()
    assert not verdict.ok
    assert "no progress for 120.5 s" in verdict.reason
    assert "http.stall_s" in verdict.reason
    assert verdict.as_dict()["status"] == "fail"


def test_progress_keeps_it_live_and_recovers_a_stall() -> None:
    clock = FakeClock()
    health = Health(stall_s=10.0, clock=clock)
    for _ in range(5):  # empty fetches count as progress too
        clock.advance(9.0)
        health.progressed()
        assert health.liveness().ok
    clock.advance(11.0)
    assert not health.liveness().ok
    health.progressed()
    verdict = health.liveness()
    assert verdict.ok
    assert verdict.as_dict() == {
        "status": "ok",
        "reason": "",
        "seconds_since_progress": 0.0,
        "stall_s": 10.0,
        "loop_turns": 6,
    }


def test_readiness_is_what_the_runner_says() -> None:
    health = Health(stall_s=10.0, clock=FakeClock())
    verdict = health.readiness()
    assert not verdict.ok
    assert verdict.reason == "starting"
    health.set_ready(True)
    assert health.readiness().ok
    assert health.ready
    health.set_ready(False, "restoring partitions 0, 3")
    assert health.readiness().as_dict() == {
        "status": "fail",
        "reason": "restoring partitions 0, 3",
        "ready": False,
    }
    health.set_ready(False)
    assert health.readiness().reason == "not ready"


def test_stall_s_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stall_s"):
        Health(stall_s=0)
