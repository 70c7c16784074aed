"""Settings: precedence, frozen, clear errors, and config.example.toml matches the code."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from detector.config import Settings, load_settings
from detector.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("DETECTOR_"):
            monkeypatch.delenv(key)


def test_precedence_defaults_file_environment_command_line(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[training]\nepochs = 11\nbatch_size = 5\nseed = 3\n")
    assert load_settings().training.epochs == Settings().training.epochs
    s = load_settings(cfg)
    assert (s.training.epochs, s.training.batch_size, s.training.seed) == (11, 5, 3)
    monkeypatch.setenv("DETECTOR_TRAINING__EPOCHS", "7")
    s = load_settings(cfg)
    assert (s.training.epochs, s.training.batch_size) == (7, 5)
    s = load_settings(cfg, {"training.epochs": 2, "training.seed": None})
    assert (s.training.epochs, s.training.seed) == (2, 3)
    monkeypatch.setenv("DETECTOR_CONFIG", str(cfg))
    assert load_settings().training.batch_size == 5


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(ValidationError):
        s.training.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[model]\nhidden_size = -3\n", r"model\.hidden_size: .*greater than or equal to 1.*-3"),
        ("[model]\nhead_activation = 'gelu'\n", r"model\.head_activation: .*'relu' or 'tanh'"),
        ("[training]\nbogus = 1\n", r"training\.bogus: Extra inputs are not permitted"),
        ("[training]\nwindow_len = 10\nwashout = 9\n", r"washout \(9\) must be less than"),
        ("[model\n", r"cannot be read"),
        ("[scoring]\ncooldown = 2147483648\n", r"scoring\.cooldown: .*less than or equal to"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, toml, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg)


def test_environment_errors_name_the_key(monkeypatch):
    monkeypatch.setenv("DETECTOR_MODEL__LAYERS", "9")
    with pytest.raises(ConfigError, match=r"model\.layers: .*less than or equal to 4"):
        load_settings()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_example_config_lists_every_field_with_its_default():
    with EXAMPLE.open("rb") as f:
        example = tomllib.load(f)
    defaults = Settings().model_dump(mode="json")
    # Groups are a list of tables: the example shows one commented out, as none is default.
    assert defaults.pop("groups") == []
    assert example == defaults
    assert load_settings(EXAMPLE) == Settings()


def test_groups_from_toml_and_their_errors(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[groups]]\nname = "hosts"\nmatch = ["web-*"]\nhidden_size = 16\n'
        '[[groups]]\nname = "disks"\nmatch = ["^disk\\\\..*$"]\nmatch_kind = "regex"\n'
        'layout = "vector"\nfields = ["read", "write"]\n'
    )
    s = load_settings(cfg)
    assert [g.name for g in s.groups] == ["hosts", "disks"]
    assert s.groups[0].hidden_size == 16 and s.groups[1].fields == ["read", "write"]
    cfg.write_text('[[groups]]\nname = "v"\nlayout = "vector"\n')
    with pytest.raises(ConfigError, match=r"groups\.0: .*needs the list of fields"):
        load_settings(cfg)
    cfg.write_text('[[groups]]\nname = "r"\nmatch = ["("]\nmatch_kind = "regex"\n')
    with pytest.raises(ConfigError, match=r"groups\.0: .*not a regex"):
        load_settings(cfg)
    cfg.write_text('[[groups]]\nname = "a"\n[[groups]]\nname = "a"\n')
    with pytest.raises(ConfigError, match="names must be distinct"):
        load_settings(cfg)
    cfg.write_text("[scoring]\nhysteresis_k = 3\nhysteresis_n = 2\n")
    with pytest.raises(ConfigError, match=r"scoring: .*hysteresis_k \(3\)"):
        load_settings(cfg)
    # An escalation window shorter than the cooldown is none: a plain cooldown (so a
    # config from before the window existed keeps a long cooldown plain).
    cfg.write_text("[scoring]\ncooldown = 50\nescalation_window = 40\n")
    assert load_settings(cfg).scoring.escalation_window == 50
    cfg.write_text("[scoring]\ncooldown = 300\n")
    assert load_settings(cfg).scoring.escalation_window == 300
    cfg.write_text('[run]\nsource = "ftp://x"\n')
    with pytest.raises(ConfigError, match=r"run: .*source is 'ftp://x'"):
        load_settings(cfg)
