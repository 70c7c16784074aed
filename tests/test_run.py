"""`detector run` end to end, as a process: sources, sinks, dead letters, checkpoints, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

T0 = 1_700_000_000


def make_input(path: Path, n: int = 400) -> list[bytes]:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        for k, stream in enumerate(("web-1.cpu", "web-2.cpu")):
            v = 50 + 10 * k + rng.normal(0, 1)
            if (k, i) in ((0, 150), (1, 300), (0, 350)):
                v += 40
            lines.append(orjson.dumps({"stream": stream, "ts": T0 + 60 * i, "value": v}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def detector(
    *args: str, stdin: bytes | None = None, cwd: Path, spike_scoring: bool = True
) -> subprocess.CompletedProcess:
    # Retraining off: it runs in a thread, so when it lands in a replay would vary by run.
    env = {
        **os.environ,
        "DETECTOR_SCORING__WARMUP": "50",
        # One alert per spike: the z-score with a tight error floor, without the novelty
        # score (Gaussian noise reaches new extremes by chance), above the noise's largest
        # (a 3.2 sigma step scores 0.53; the +40 spikes score 1).
        **(
            {"DETECTOR_SCORING__MODE": "zscore", "DETECTOR_SCORING__THRESHOLD": "0.8"}
            if spike_scoring
            else {}
        ),
        "DETECTOR_SCORING__MIN_ERROR_STD": "0.01",
        "DETECTOR_SCORING__COOLDOWN": "10",
        "DETECTOR_SCORING__NOVELTY_SCALE": "0",
        "DETECTOR_LOG__FORMAT": "json",
        "DETECTOR_RETRAINING__ENABLED": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "detector", "run", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


def alerts_of(stdout: bytes) -> list[dict]:
    return [orjson.loads(line) for line in stdout.splitlines() if line.strip()]


def test_run_on_a_file_prints_alerts_and_a_summary(tmp_path: Path) -> None:
    make_input(tmp_path / "in.jsonl")
    done = detector("--source", f"file:{tmp_path / 'in.jsonl'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    alerts = alerts_of(done.stdout)
    spikes = [("web-1.cpu", 150), ("web-2.cpu", 300), ("web-1.cpu", 350)]
    # One alert per spike, at it or on the way back (the previous value errs there too)
    assert len(alerts) == len(spikes)
    for a, (stream, at) in zip(alerts, spikes, strict=True):
        assert a["stream"] == stream and (a["ts"] - T0) // 60 in (at, at + 1)
    events = [orjson.loads(line) for line in done.stderr.splitlines()]
    summary = next(e for e in events if e["event"] == "run_finished")
    assert summary["points"] == 800 and summary["alerts"] == 3 and summary["streams"] == 2


def test_stdin_gives_the_same_alerts_as_the_file(tmp_path: Path) -> None:
    make_input(tmp_path / "in.jsonl")
    from_file = detector("--source", f"file:{tmp_path / 'in.jsonl'}", cwd=tmp_path)
    from_stdin = detector(stdin=(tmp_path / "in.jsonl").read_bytes(), cwd=tmp_path)
    assert from_stdin.returncode == 0, from_stdin.stderr.decode()
    assert alerts_of(from_stdin.stdout) == alerts_of(from_file.stdout)


def test_bad_lines_go_to_the_dead_letter_file_and_the_rest_is_scored(tmp_path: Path) -> None:
    lines = make_input(tmp_path / "in.jsonl")
    bad = [b'{"stream": "x", "ts": "yesterday", "value": 1}', b"\xff garbage"]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines[:100] + bad + lines[100:]) + b"\n")
    done = detector(
        "--source", f"file:{tmp_path / 'in.jsonl'}",
        "--sink", f"file:{tmp_path / 'alerts.jsonl'}",
        "--dead-letter", f"file:{tmp_path / 'dead.jsonl'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert len(alerts_of((tmp_path / "alerts.jsonl").read_bytes())) == 3
    dead = alerts_of((tmp_path / "dead.jsonl").read_bytes())
    assert [("payload" in d or "payload_base64" in d) for d in dead] == [True, True]
    assert all(d["reasons"] for d in dead)


def test_checkpoint_resume_neither_repeats_nor_skips(tmp_path: Path) -> None:
    lines = make_input(tmp_path / "whole.jsonl")
    whole = alerts_of(detector("--source", f"file:{tmp_path / 'whole.jsonl'}", cwd=tmp_path).stdout)

    growing = tmp_path / "growing.jsonl"
    growing.write_bytes(b"\n".join(lines[:500]) + b"\n")
    args = ("--source", f"file:{growing}", "--state-dir", str(tmp_path / "state"))
    first = detector(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    assert (tmp_path / "state" / "checkpoint.bin").exists()
    with growing.open("ab") as f:
        f.write(b"\n".join(lines[500:]) + b"\n")
    second = detector(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr.decode()
    assert alerts_of(first.stdout) + alerts_of(second.stdout) == whole
    events = [orjson.loads(line) for line in second.stderr.splitlines()]
    summary = next(e for e in events if e["event"] == "run_finished")
    assert summary["points"] == len(lines) - 500  # resumed at the checkpointed position


def test_sigterm_while_following_checkpoints_and_exits_cleanly(tmp_path: Path) -> None:
    make_input(tmp_path / "in.jsonl")
    env = {**os.environ, "DETECTOR_LOG__FORMAT": "json"}
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "detector", "run", "--follow",
             "--source", f"file:{tmp_path / 'in.jsonl'}", "--state-dir", str(tmp_path / "state")],
            stdout=subprocess.DEVNULL, stderr=log_file, cwd=tmp_path, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while b"run_started" not in log_path.read_bytes() and time.monotonic() < deadline:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.1)
            time.sleep(1.0)  # let it reach the end of the file and wait there
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            proc.kill()
    stderr = log_path.read_bytes()
    assert proc.returncode == 0, stderr.decode()
    events = [orjson.loads(line)["event"] for line in stderr.splitlines()]
    assert "shutdown_requested" in events and events[-1] == "run_finished"
    assert (tmp_path / "state" / "checkpoint.bin").exists()


def test_invalid_configuration_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[scoring]\nmode = "magic"\n')
    done = detector("--config", str(cfg), cwd=tmp_path, spike_scoring=False)
    assert done.returncode == 2
    assert b"scoring.mode" in done.stderr


def test_the_readme_main_job_alerts_with_trained_models(tmp_path: Path) -> None:
    """The README's main job, as written (default settings): the replay of the bundled
    sample retrains on data time, so every alert names a trained model version."""
    sample = Path(__file__).resolve().parents[1] / "detector/samples/nab-sample.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    done = subprocess.run(
        [sys.executable, "-m", "detector", "run", "--source", f"file:{sample}"],
        capture_output=True,
        cwd=tmp_path,
        env={**env, "DETECTOR_LOG__FORMAT": "json"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    alerts = alerts_of(done.stdout)
    assert alerts
    assert all(a["model_version"] != "untrained" for a in alerts), [
        (a["time"], a["model_version"]) for a in alerts
    ]
