"""Settings: one frozen tree, read from defaults < TOML file < environment < command line.

Environment variables are ``DETECTOR_<SECTION>__<KEY>``, e.g. ``DETECTOR_TRAINING__EPOCHS=5``.
The TOML file is given by ``--config`` or ``DETECTOR_CONFIG``. Every field is documented in
``config.example.toml`` (a test loads it and compares it with these defaults).
"""

from __future__ import annotations

import os
import re
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


class ScoringSettings(_Section):
    """How prediction errors become scores in [0, 1] and alerts (detector.stream.scoring)."""

    mode: Literal["zscore", "dynamic", "likelihood"] = Field(
        "zscore",
        description="zscore: smoothed error against its running distribution; dynamic: the "
        "nonparametric threshold of Hundman et al. (2018); likelihood: tail probability of the "
        "short-term mean error under the long-term error distribution",
    )
    threshold: float = Field(0.5, gt=0, le=1, description="alert when score >= threshold")
    warmup: int = Field(100, ge=0, description="points of a stream before it may alert")
    error_span: int = Field(5, ge=1, description="EWMA span of the smoothed error")
    stats_span: int = Field(2000, ge=2, description="EWMA span of the normal-error statistics")
    min_error_std: float = Field(0.01, gt=0, description="floor of the error spread")
    short_span: int = Field(10, ge=1, description="likelihood: span of the short-term mean")
    dynamic_window: int = Field(256, ge=8, le=65_536, description="dynamic: errors per window")
    dynamic_refresh: int = Field(16, ge=1, description="dynamic: points between recomputations")
    dynamic_prune: float = Field(0.13, ge=0, lt=1, description="dynamic: minimum decrease p")
    hysteresis_k: int = Field(1, ge=1, le=32, description="alert when k of the last n exceed")
    hysteresis_n: int = Field(1, ge=1, le=32)
    cooldown: int = Field(10, ge=0, description="points after an alert without another")

    @model_validator(mode="after")
    def _k_of_n(self) -> ScoringSettings:
        if self.hysteresis_k > self.hysteresis_n:
            raise ValueError(
                f"hysteresis_k ({self.hysteresis_k}) must not exceed hysteresis_n "
                f"({self.hysteresis_n})"
            )
        return self


class StreamSettings(_Section):
    """Per-stream state: input normalisation, buffers, limits, disorder and gaps."""

    buffer_len: int = Field(256, ge=1, le=65_536, description="W: inputs kept per stream")
    norm_span: int = Field(1000, ge=2, description="EWMA span of the input mean and variance")
    norm_clip: float = Field(
        5.0, gt=0, description="deviations beyond this many std move the statistics no further"
    )
    input_clip: float = Field(10.0, gt=0, description="normalised inputs are clipped to +-this")
    min_std: float = Field(1e-6, gt=0, description="floor of a stream's standard deviation")
    max_streams: int = Field(1_000_000, ge=1, description="per group and partition")
    idle_ttl_s: float = Field(86_400.0, gt=0, description="evict streams idle this long")
    gap_factor: float = Field(
        10.0, gt=1, description="a gap is longer than this many usual intervals"
    )
    gap_policy: Literal["reset", "continue"] = "reset"


class GroupSettings(_Section):
    """A model group: the streams matching ``match`` share one model's weights."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    match: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    match_kind: Literal["glob", "regex"] = "glob"
    layout: Literal["per_field", "vector"] = Field(
        "per_field", description="vector: all fields of a sample form one stream"
    )
    fields: list[str] = Field(
        default_factory=list, description="vector layout: the fields, in model input order"
    )
    calendar: bool = Field(False, description="add hour-of-day and day-of-week inputs")
    model_file: str = Field("", description="weights to start from; empty: untrained start")
    hidden_size: int | None = Field(None, ge=1, le=1024, description="default: [model]")
    layers: int | None = Field(None, ge=1, le=4, description="default: [model]")

    @model_validator(mode="after")
    def _vector_needs_fields(self) -> GroupSettings:
        if self.layout == "vector" and not self.fields:
            raise ValueError("layout = 'vector' needs the list of fields")
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("fields must be distinct")
        if self.match_kind == "regex":
            for pattern in self.match:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"match pattern {pattern!r} is not a regex: {exc}") from None
        return self


class RunSettings(_Section):
    """`detector run`: where points come from and where alerts go."""

    source: str = Field("stdin", description='"stdin", "file:PATH" or "kafka"')
    sink: str = Field("stdout", description='"stdout", "file:PATH" or "kafka"')
    format: Literal["native", "influx", "telegraf_json", "prometheus_json"] = "native"
    dead_letter: str = Field("log", description='"log" or "file:PATH": undecodable messages')
    batch_size: int = Field(1024, ge=1, le=1_000_000, description="points per kernel call")
    instance: str = Field("", description="detector instance named in alerts; default hostname")

    @model_validator(mode="after")
    def _endpoints(self) -> RunSettings:
        for key, value in (("source", self.source), ("sink", self.sink)):
            fixed = ("stdin", "kafka") if key == "source" else ("stdout", "kafka")
            if value not in fixed and not (value.startswith("file:") and len(value) > 5):
                raise ValueError(
                    f'{key} is {value!r}; expected "{fixed[0]}", "file:PATH" or "kafka"'
                )
        if self.dead_letter != "log" and not self.dead_letter.startswith("file:"):
            raise ValueError(f'dead_letter is {self.dead_letter!r}; expected "log" or "file:PATH"')
        return self


class StateSettings(_Section):
    """Checkpoints of per-stream state (embedded mode: local disk)."""

    dir: str = Field("", description="checkpoint directory; empty: no checkpoints")
    interval_s: float = Field(60.0, gt=0, description="seconds between checkpoints")


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
    scoring: ScoringSettings = ScoringSettings()
    streams: StreamSettings = StreamSettings()
    groups: list[GroupSettings] = Field(default_factory=list)
    run: RunSettings = RunSettings()
    state: StateSettings = StateSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _distinct_groups(self) -> Settings:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"groups: names must be distinct (got {names})")
        return self

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
