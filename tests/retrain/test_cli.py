"""`detector model list | show | rollback` and `detector train --publish`, in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from detector.model.params import LSTMParams, make_shape
from detector.retrain.registry import ModelRegistry, VersionMeta

SAMPLE = Path(__file__).resolve().parents[2] / "detector/samples/ec2_cpu_utilization_825cc2.csv"
SHAPE = make_shape(n_inputs=1, n_outputs=1, hidden=4)


@pytest.fixture
def registry(tmp_path: Path) -> tuple[ModelRegistry, list[str]]:
    reg = ModelRegistry(tmp_path / "models")
    versions: list[str] = []
    for seed in range(3):
        params = LSTMParams.init(SHAPE, np.random.default_rng(seed))
        meta = VersionMeta(
            feature_names=("value",),
            parent=versions[-1] if versions else "untrained",
            candidate_loss=1.0 / (seed + 1),
            parent_loss=1.0 / seed if seed else 2.0,
            windows=100 + seed,
        )
        versions.append(reg.publish("default", params, meta))
    reg.publish("other", LSTMParams.init(SHAPE, np.random.default_rng(7)), VersionMeta(("value",)))
    return reg, versions


def test_model_list_marks_the_current_versions(registry, run_cli, capsys):
    reg, versions = registry
    assert run_cli("model", "list", "--models-dir", reg.dir) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["GROUP", "VERSION", "CREATED"]
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 4
    current = [r[2] for r in rows if r[0] == "*"]
    assert versions[2] in current and len(current) == 2  # one per group
    listed = [r[2] if r[0] == "*" else r[1] for r in rows]
    assert listed[:3] == versions  # oldest first

    assert run_cli("model", "list", "--group", "default", "--json", "--models-dir", reg.dir) == 0
    docs = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["version"] for d in docs] == versions
    assert [d["current"] for d in docs] == [False, False, True]
    assert docs[1]["parent"] == versions[0] and docs[1]["windows"] == 101


def test_model_show_prints_the_record(registry, run_cli, capsys):
    reg, versions = registry
    assert run_cli("model", "show", versions[1][:8], "--models-dir", reg.dir) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["version"] == versions[1] and doc["group"] == "default"
    assert doc["current"] is False and doc["candidate_loss"] == 0.5
    assert doc["content_hash"].startswith("sha256:" + versions[1])


def test_model_rollback_switches_the_pointer(registry, run_cli, capsys):
    reg, versions = registry
    assert run_cli("model", "rollback", versions[0], "--models-dir", reg.dir) == 0
    out = capsys.readouterr().out
    assert f"current version {versions[0]} (was {versions[2]})" in out
    assert reg.current("default") == versions[0]
    assert reg.current("other") is not None


def test_the_registry_defaults_to_the_state_dir(registry, run_cli, capsys, monkeypatch):
    reg, versions = registry
    monkeypatch.setenv("DETECTOR_STATE__DIR", str(reg.dir.parent))
    assert run_cli("model", "show", versions[2]) == 0
    assert orjson.loads(capsys.readouterr().out)["current"] is True


def test_model_commands_fail_clearly(registry, run_cli, capsys, monkeypatch):
    reg, _ = registry
    monkeypatch.delenv("DETECTOR_STATE__DIR", raising=False)
    monkeypatch.delenv("DETECTOR_RETRAINING__MODELS_DIR", raising=False)
    assert run_cli("model", "list") == 2  # no registry configured
    assert run_cli("model", "rollback", "0123456789ab", "--models-dir", reg.dir) == 1
    err = capsys.readouterr().err
    assert "retraining.models_dir" in err and "0123456789ab is not in" in err


def test_train_publishes_into_the_registry(tmp_path, run_cli):
    models = tmp_path / "models"
    args = ["train", "--input", SAMPLE, "--epochs", "2", "--hidden-size", "8"]
    assert run_cli(*args, "--publish", "--models-dir", models) == 0
    reg = ModelRegistry(models)
    (first,) = reg.list("default")
    assert reg.current("default") == first.version
    assert first.source == "train" and first.parent is None and first.windows > 2
    assert first.candidate_loss is not None and first.data["series"] == 1
    out = tmp_path / "model.npz"
    assert run_cli(*args, "--seed", "1", "--publish", "--models-dir", models, "--out", out) == 0
    second = reg.get(reg.current("default"))
    assert second.parent == first.version and second.parent_loss is not None
    assert out.exists()
    assert run_cli(*args) == 2  # neither --out nor --publish


def test_train_publishes_a_calendar_group_in_its_own_shape(tmp_path, run_cli):
    config = tmp_path / "detector.toml"
    config.write_text('[[groups]]\nname = "cal"\nmatch = ["cal.*"]\ncalendar = true\n')
    models = tmp_path / "models"
    code = run_cli(
        "train", "--input", SAMPLE, "--epochs", "1", "--hidden-size", "8", "--config", config,
        "--publish", "--group", "cal", "--models-dir", models,
    )  # fmt: skip
    assert code == 0
    reg = ModelRegistry(models)
    version, params = reg.current_params("cal")
    assert params.shape.n_inputs == 5 and params.shape.hidden == 8
    assert reg.get(version).shape["n_inputs"] == 5
    assert run_cli("train", "--input", SAMPLE, "--publish", "--group", "nope",
                   "--models-dir", models) == 2  # fmt: skip
