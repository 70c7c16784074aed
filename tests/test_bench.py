"""The benchmarks keep running: each one's quick mode, as a process (figures are not checked:
speed lives in bench/, never in timed tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_stream_score_quick_runs_and_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "stream_score.py"), "--quick", "--no-torch"],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = done.stdout.decode()
    for figure in ("kernel", "numpy", "batch of 1", "bytes/stream"):
        assert figure in out


def test_train_step_short_run_reports_its_figure() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "train_step.py"), "--no-torch", "--steps", "5",
         "--warmup", "1", "--repeats", "1", "--alone-steps", "5", "--block", "5"],
        capture_output=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "train_step H=32" in done.stdout.decode()
