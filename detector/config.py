"""Settings: one frozen tree, read from defaults < TOML file < environment < command line.

Environment variables are ``DETECTOR_<SECTION>__<KEY>``, e.g. ``DETECTOR_TRAINING__EPOCHS=5``.
The TOML file is given by ``--config`` or ``DETECTOR_CONFIG``. Every field is documented in
``config.example.toml`` (a test loads it and compares it with these defaults).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from detector.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSettings(_Section):
    """Sizes of the LSTM every model group starts from."""

    hidden_size: int = Field(32, ge=1, le=1024)
    layers: int = Field(1, ge=1, le=4)
    head_hidden: int = Field(0, ge=0, le=1024, description="0: linear head")
    head_activation: Literal["relu", "tanh"] = "relu"
    residual: bool = Field(True, description="predict the change x_{t+1} - x_t")


class TrainingSettings(_Section):
    """BPTT on windows: used by `detector train` and (later) by online retraining."""

    window_len: int = Field(64, ge=3, le=100_000, description="points per training window")
    stride: int = Field(8, ge=1, description="points between the starts of two windows")
    washout: int = Field(8, ge=0, description="first steps of a window left out of the loss")
    epochs: int = Field(30, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    learning_rate: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    clip_norm: float = Field(1.0, ge=0, description="0 disables gradient-norm clipping")
    val_fraction: float = Field(0.2, gt=0, lt=1)
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest validation-loss gain that counts")
    dtype: Literal["float32", "float64"] = "float32"
    seed: int = 0

    @model_validator(mode="after")
    def _washout_inside_window(self) -> TrainingSettings:
        if self.washout >= self.window_len - 1:
            raise ValueError(
                f"washout ({self.washout}) must be less than window_len - 1 ({self.window_len - 1})"
            )
        return self


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON lines otherwise"
    )


_config_file: ContextVar[Path | None] = ContextVar("detector_config_file", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="DETECTOR_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    model: ModelSettings = ModelSettings()
    training: TrainingSettings = TrainingSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: command-line overrides (init), then the environment, then the file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build the settings once at start; raise ConfigError naming the key on any problem.

    ``overrides`` holds command-line values as dotted keys, e.g. {"training.epochs": 5}.
    """
    if config_file is None and os.environ.get("DETECTOR_CONFIG"):
        config_file = os.environ["DETECTOR_CONFIG"]
    path = Path(config_file) if config_file is not None else None
    if path is not None:
        _check_toml(path)
    token = _config_file.set(path)
    try:
        return Settings(**_nest(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    finally:
        _config_file.reset(token)


def _check_toml(path: Path) -> None:
    try:
        with path.open("rb") as f:
            tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        if value is None:
            continue
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _describe(exc: ValidationError, path: Path | None) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(settings)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{key}: {err['msg']}{shown}")
    where = f" in {path} or the environment" if path else ""
    return f"invalid configuration{where}: " + "; ".join(lines)
