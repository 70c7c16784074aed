"""`detector run` on the data clock (run.clock): a replay of a file retrains and evicts on
data time, as `detector evaluate` does, and gives the same alerts every time."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from detector.config import RunSettings
from detector.service.runner import data_time_parts, message_times, resolve_clock

T0 = 1_700_000_000
STEP_S = 60
STREAMS = ("web-1.cpu", "web-2.cpu", "web-3.cpu")
SPIKES = {(0, 420), (1, 500), (2, 560)}  # (stream, point): late, after the first runs
WAIT_S = 120

# Small and fast: a run every hour of data (60 points), two epochs on short windows.
ENV = {
    "DETECTOR_LOG__FORMAT": "json",
    "DETECTOR_TRAINING__EPOCHS": "2",
    "DETECTOR_TRAINING__WINDOW_LEN": "16",
    "DETECTOR_TRAINING__STRIDE": "4",
    "DETECTOR_TRAINING__WASHOUT": "4",
    "DETECTOR_MODEL__HIDDEN_SIZE": "8",
    "DETECTOR_RETRAINING__INTERVAL_S": "3600",
    "DETECTOR_RETRAINING__MIN_WINDOWS": "8",
    # Any better candidate goes live: two epochs rarely gain the default tolerance's 10%.
    "DETECTOR_RETRAINING__TOLERANCE": "0",
    "DETECTOR_SCORING__WARMUP": "50",
    "DETECTOR_SCORING__MODE": "zscore",
    "DETECTOR_SCORING__THRESHOLD": "0.8",
    "DETECTOR_SCORING__MIN_ERROR_STD": "0.01",
    "DETECTOR_SCORING__NOVELTY_SCALE": "0",
}


def make_input(path: Path, n: int = 600, streams: tuple[str, ...] = STREAMS) -> Path:
    """Noisy sines, interleaved by time (one line per stream and minute), with spikes."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        for k, stream in enumerate(streams):
            v = 50 + 10 * k + 5 * math.sin(2 * math.pi * i / 60 + k) + rng.normal(0, 0.5)
            if (k, i) in SPIKES:
                v += 40
            lines.append(orjson.dumps({"stream": stream, "ts": T0 + STEP_S * i, "value": v}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def detector(
    *args: str, cwd: Path, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "detector", "run", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env={**os.environ, **ENV, **(env or {})},
        timeout=300,
        check=False,
    )


def events(stderr: bytes, name: str) -> list[dict[str, Any]]:
    out = []
    for line in stderr.splitlines():
        e = orjson.loads(line)
        if e["event"] == name:
            out.append(e)
    return out


def alerts_of(stdout: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def replays(tmp_path_factory: pytest.TempPathFactory) -> list[subprocess.CompletedProcess[bytes]]:
    """The same file replayed twice on the data clock ("auto" picks it for a plain file)."""
    tmp = tmp_path_factory.mktemp("replay")
    source = make_input(tmp / "in.jsonl")
    done = [detector("--source", f"file:{source}", cwd=tmp) for _ in range(2)]
    for d in done:
        assert d.returncode == 0, d.stderr.decode()
    return done


def test_a_file_replay_retrains_on_data_time(
    replays: list[subprocess.CompletedProcess[bytes]],
) -> None:
    done = replays[0]
    assert events(done.stderr, "run_started")[0]["clock"] == "data"
    runs = events(done.stderr, "retraining_finished")
    accepted = [r for r in runs if r["result"] == "accepted"]
    assert accepted, runs
    # On data time: the cold start as soon as there are windows, then one run an hour of data
    # (600 points a minute apart are ten hours), all within a replay that takes seconds.
    starts = [r["started_at"] for r in runs]
    assert T0 < starts[0] < T0 + 3600 <= starts[-1] < T0 + 600 * STEP_S
    assert np.diff(starts[1:]).tolist() == [3600.0] * (len(starts) - 2)
    finished = events(done.stderr, "run_finished")[0]
    assert finished["models"]["default"] == accepted[-1]["version"] != "untrained"
    assert finished["retraining"]["accepted"] == len(accepted)
    alerts = alerts_of(done.stdout)
    assert {(STREAMS.index(a["stream"]), (a["ts"] - T0) // STEP_S) for a in alerts} >= SPIKES
    # Trained between two parts, in effect before the next: every alert names the version of
    # the last run accepted before its point, a trained one for the spikes.
    for a in alerts:
        before = [r["version"] for r in accepted if r["started_at"] < a["ts"]]
        assert a["model_version"] == (before[-1] if before else "untrained"), a
    assert all(a["model_version"] != "untrained" for a in alerts if a["ts"] > starts[0])


def test_the_same_replay_twice_gives_the_same_alerts(
    replays: list[subprocess.CompletedProcess[bytes]],
) -> None:
    first, second = replays
    # Alerts of trained models, so that the schedule and the training are compared too.
    assert any(a["model_version"] != "untrained" for a in alerts_of(first.stdout))
    assert first.stdout == second.stdout

    def schedule(d: subprocess.CompletedProcess[bytes]) -> list[tuple[object, ...]]:
        runs = events(d.stderr, "retraining_finished")
        return [(r["result"], r["version"], r["started_at"], r["windows"]) for r in runs]

    assert schedule(first) == schedule(second)


def test_idle_eviction_follows_data_time(tmp_path: Path) -> None:
    """A stream silent for longer than idle_ttl_s of data time is evicted within a replay
    that takes seconds; on the wall clock it is not."""
    rng = np.random.default_rng(1)
    lines = [
        orjson.dumps({"stream": s, "ts": T0 + STEP_S * i, "value": float(rng.normal())})
        for i in range(400)
        for s in ("stays", "leaves")
        if s == "stays" or i < 100
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    args = ("--source", f"file:{source}")
    ttl = {"DETECTOR_STREAMS__IDLE_TTL_S": "3600", "DETECTOR_RETRAINING__ENABLED": "false"}
    on_data = detector(*args, cwd=tmp_path, env=ttl)
    on_wall = detector(*args, cwd=tmp_path, env={**ttl, "DETECTOR_RUN__CLOCK": "wall"})
    for done, clock, evicted in ((on_data, "data", 1), (on_wall, "wall", 0)):
        assert done.returncode == 0, done.stderr.decode()
        assert events(done.stderr, "run_started")[0]["clock"] == clock
        finished = events(done.stderr, "run_finished")[0]
        assert (finished["evicted"], finished["streams"]) == (evicted, 2 - evicted)


def test_restored_streams_are_stamped_with_data_time(tmp_path: Path) -> None:
    """A checkpoint restored on the data clock stamps its streams as seen at the newest
    restored point (not at wall time, years after the data): a stream that then stays
    silent for longer than idle_ttl_s of data time is evicted in the resumed run."""
    rng = np.random.default_rng(2)

    def lines(lo: int, hi: int, streams: tuple[str, ...]) -> bytes:
        return b"".join(
            orjson.dumps({"stream": s, "ts": T0 + STEP_S * i, "value": float(rng.normal())})
            + b"\n"
            for i in range(lo, hi)
            for s in streams
        )

    source = tmp_path / "in.jsonl"
    source.write_bytes(lines(0, 100, ("stays", "leaves")))
    args = ("--source", f"file:{source}", "--state-dir", str(tmp_path / "state"))
    env = {"DETECTOR_STREAMS__IDLE_TTL_S": "3600", "DETECTOR_RETRAINING__ENABLED": "false"}
    first = detector(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr.decode()
    assert events(first.stderr, "run_finished")[0]["streams"] == 2
    with source.open("ab") as f:  # two more hours of "stays" alone
        f.write(lines(100, 220, ("stays",)))
    resumed = detector(*args, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr.decode()
    finished = events(resumed.stderr, "run_finished")[0]
    assert (finished["evicted"], finished["streams"]) == (1, 1)


@pytest.mark.parametrize(
    ("clock", "source", "follow", "expected"),
    [
        ("auto", "file:in.jsonl", False, "data"),
        ("auto", "file:in.jsonl", True, "wall"),
        ("auto", "stdin", False, "wall"),
        ("auto", "kafka", False, "wall"),
        ("wall", "file:in.jsonl", False, "wall"),
        ("data", "stdin", False, "data"),
        ("data", "file:in.jsonl", True, "data"),
    ],
)
def test_auto_is_data_only_for_a_file_read_once(
    clock: str, source: str, follow: bool, expected: str
) -> None:
    run = RunSettings.model_validate({"clock": clock, "source": source})
    assert resolve_clock(run, follow) == expected


def test_stdin_runs_on_the_wall_clock(tmp_path: Path) -> None:
    stdin = make_input(tmp_path / "in.jsonl", n=100).read_bytes()
    done = detector(cwd=tmp_path, stdin=stdin)
    assert done.returncode == 0, done.stderr.decode()
    assert events(done.stderr, "run_started")[0]["clock"] == "wall"


def test_follow_runs_on_the_wall_clock(tmp_path: Path) -> None:
    source = make_input(tmp_path / "in.jsonl", n=100)
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "detector", "run", "--follow", "--source", f"file:{source}"],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            cwd=tmp_path,
            env={**os.environ, **ENV},
        )
        try:
            deadline = time.monotonic() + WAIT_S
            while b"run_started" not in log_path.read_bytes():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=WAIT_S) == 0, log_path.read_text()
        finally:
            proc.kill()
    assert events(log_path.read_bytes(), "run_started")[0]["clock"] == "wall"


def test_an_invalid_clock_exits_2_naming_run_clock(tmp_path: Path) -> None:
    source = make_input(tmp_path / "in.jsonl", n=10)
    done = detector(
        "--source", f"file:{source}", cwd=tmp_path, env={"DETECTOR_RUN__CLOCK": "sundial"}
    )
    assert done.returncode == 2
    assert b"run.clock" in done.stderr and b"sundial" in done.stderr
    assert not done.stdout


def test_parts_are_cut_at_one_span_of_data_time() -> None:
    inf = -math.inf
    times = np.array([10.0, 10.5, inf, 11.0, 11.2, 9.0, 12.5, inf])
    # 11.0 is a span after 10.0; 9.0 (older) stays with 11.x; 12.5 starts the last part.
    assert data_time_parts(times, 1.0) == [(0, 3), (3, 6), (6, 8)]
    assert data_time_parts(np.array([inf, inf, 5.0, 5.9, 6.0]), 1.0) == [(0, 4), (4, 5)]
    assert data_time_parts(np.empty(0), 1.0) == []


def test_message_times_reads_every_format_s_timestamps() -> None:
    native = [
        b'{"stream": "a", "ts": 1700000000, "value": 1}',  # scan_native
        b'{"stream": "a", "ts": 1700000001500, "value": 1, "tags": {"dc": "x"}}',  # ms, tags
        b'{"stream": "a", "ts": "2023-11-14T22:13:25Z", "values": {"x": 1}}',  # decode
        b"not json",
    ]
    got = message_times(native, "native")
    np.testing.assert_array_equal(got, [1_700_000_000, 1_700_000_001.5, 1_700_000_005, -np.inf])
    influx = [b"cpu v=1 1700000000000000000\ncpu v=2 1700000009000000000", b"cpu v=1"]
    np.testing.assert_array_equal(message_times(influx, "influx"), [1_700_000_009, -np.inf])
