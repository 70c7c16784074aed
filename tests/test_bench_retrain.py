"""bench/retrain_lag.py keeps running: a tiny run as a process (figures are not checked:
speed lives in bench/, never in timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_retrain_lag_tiny_run_reports_both_phases(tmp_path: Path) -> None:
    out_json = tmp_path / "retrain_lag.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "retrain_lag.py"), "--quick", "--streams", "64",
         "--seconds", "1.5", "--hidden", "8", "--epochs", "3", "--max-windows", "256",
         "--json", str(out_json)],
        capture_output=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = done.stdout.decode()
    for figure in ("retrain off", "retrain on", "lag p99", "capacity"):
        assert figure in out
    result = json.loads(out_json.read_text())
    assert result["off"]["points"] > 0 and result["on"]["points"] > 0
    assert result["off"]["lag_samples"] > 0 and result["on"]["lag_samples"] > 0
    assert set(result["ratios"]) == {"lag_p50", "lag_p99", "capacity"}
