"""The daemon as operators run it: a process with a config file, probed over HTTP, stopped
by SIGTERM (issue 6: exit code 0 and the final checkpoint in the log)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.probes import http_get as _get

T0 = 1_700_000_000
WAIT_S = 120


def _events(path: Path) -> list[dict]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


def _wait_event(path: Path, proc: subprocess.Popen, event: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for e in _events(path):
            if e.get("event") == event:
                return e
        assert proc.poll() is None, path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"no {event} in {WAIT_S} s:\n{path.read_text()}")


def test_metrics_readiness_and_sigterm(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b"".join(
            orjson.dumps({"stream": f"s{k}", "ts": T0 + 60 * i, "value": float(i % 7 + k)}) + b"\n"
            for i in range(300)
            for k in range(3)
        )
        + b"{broken\n"
    )
    config = tmp_path / "detector.toml"
    config.write_text(
        f'[run]\nsource = "file:{source}"\nsink = "file:{tmp_path / "alerts.jsonl"}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\ninterval_s = 600.0\n'
        '[http]\nlisten = "127.0.0.1:0"\n[retraining]\nenabled = false\n[log]\nformat = "json"\n'
    )
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "detector", "run", "--config", str(config), "--follow"],
            stdout=log,
            stderr=log,
        )
        try:
            url = _wait_event(log_path, proc, "http_listening")["url"]
            deadline = time.monotonic() + WAIT_S
            while True:  # the file is read to its end, then followed
                status, metrics = _get(f"{url}/metrics")
                if status == 200 and "detector_points_total 900.0" in metrics:
                    break
                assert time.monotonic() < deadline, metrics
                time.sleep(0.2)
            assert "detector_decode_errors_total 1.0" in metrics
            assert 'detector_streams{group="default"} 3.0' in metrics
            assert _get(f"{url}/readyz")[0] == 200
            assert _get(f"{url}/healthz")[0] == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT_S) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    events = {e.get("event"): e for e in _events(log_path)}
    assert events["final_checkpoint_saved"]["streams"] == 3
    assert events["run_finished"]["stopped_by_signal"] is True
    assert (tmp_path / "state").is_dir()
