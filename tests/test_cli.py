"""The command line as a user runs it: a subprocess, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from detector.model.modelfile import load_model

SAMPLE = Path(__file__).resolve().parents[1] / "detector/samples/ec2_cpu_utilization_825cc2.csv"


def run(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "detector", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in ("train", "config"):
        assert command in out.stdout


def test_train_writes_a_loadable_model_and_logs_each_epoch(tmp_path):
    out = tmp_path / "model.npz"
    result = run(
        "train",
        "--input",
        str(SAMPLE),
        "--out",
        str(out),
        "--epochs",
        "3",
        "--hidden-size",
        "8",
        env_extra={"DETECTOR_LOG__FORMAT": "json"},
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e["event"] == "epoch_finished"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert all("train_loss" in e and "val_loss" in e for e in epochs)
    params, meta = load_model(out)
    assert params.shape.hidden == 8 and params.theta.dtype == np.float32
    assert meta.feature_names == ("value",)
    assert meta.training["report"]["n_train_windows"] > 0


def test_bad_input_is_exit_1_with_the_file_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n1,2\nx,y\n")
    result = run("train", "--input", str(bad), "--out", str(tmp_path / "m.npz"))
    assert result.returncode == 1
    assert "bad.csv:3" in result.stderr


def test_invalid_configuration_is_exit_2_naming_the_key(tmp_path):
    result = run(
        "train", "--input", str(SAMPLE), "--out", str(tmp_path / "m.npz"), "--hidden-size", "0"
    )
    assert result.returncode == 2
    assert "model.hidden_size" in result.stderr
    result = run("config", "show", env_extra={"DETECTOR_TRAINING__DTYPE": "float16"})
    assert result.returncode == 2 and "training.dtype" in result.stderr


def test_config_show_prints_the_effective_configuration():
    result = run("config", "show", env_extra={"DETECTOR_TRAINING__EPOCHS": "4"})
    assert result.returncode == 0
    assert json.loads(result.stdout)["training"]["epochs"] == 4
