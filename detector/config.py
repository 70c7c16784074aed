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

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
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
        "likelihood",
        description="zscore: smoothed error against its running distribution; dynamic: the "
        "nonparametric threshold of Hundman et al. (2018); likelihood: tail probability of the "
        "short-term mean error under the long-term error distribution",
    )
    forecast: Literal["model", "persistence"] = Field(
        "model",
        description="the forecast each point is scored against: the model group's LSTM, or "
        "persistence (the stream's previous value), the baseline every evaluation compares with",
    )
    threshold: float = Field(0.5, gt=0, le=1, description="alert when score >= threshold")
    warmup: int = Field(200, ge=0, description="points of a stream before it may alert")
    error_span: int = Field(5, ge=1, description="EWMA span of the smoothed error")
    stats_span: int = Field(8000, ge=2, description="EWMA span of the normal-error statistics")
    stats_learn_all: bool = Field(
        True,
        description="the normal-error statistics learn from every point past the first half of "
        "warm-up (as Numenta's anomaly likelihood does); false: not from points that exceed the "
        "threshold once the stream is warm",
    )
    min_error_std: float = Field(0.3, gt=0, description="floor of the error spread")
    short_span: int = Field(8, ge=1, description="likelihood: span of the short-term mean")
    dynamic_window: int = Field(256, ge=8, le=65_536, description="dynamic: errors per window")
    dynamic_refresh: int = Field(16, ge=1, description="dynamic: points between recomputations")
    dynamic_prune: float = Field(0.13, ge=0, lt=1, description="dynamic: minimum decrease p")
    # The record keeps the last hysteresis_n decisions in 16 bits (detector.stream.state).
    hysteresis_k: int = Field(1, ge=1, le=16, description="alert when k of the last n exceed")
    hysteresis_n: int = Field(1, ge=1, le=16)
    # The kernel counts both down in a uint16 record field (state.MAX_ESCALATION_WINDOW).
    cooldown: int = Field(20, ge=0, le=65_535, description="points after an alert without another")
    escalation_window: int = Field(
        100,
        ge=0,
        le=65_535,
        description="points after an alert (its cooldown included) in which the stream "
        "alerts again only on a higher score than that alert's; at most the cooldown: none "
        "(a plain cooldown)",
    )
    peaks_quantile: float = Field(
        0.02,
        ge=0,
        lt=0.5,
        description="the peaks score: each stream's prediction errors above their (1 - q) "
        "quantile are fitted with a generalized Pareto tail, and an error scores its tail "
        "probability under it (zscore and likelihood modes); 0: off",
    )
    novelty_scale: float = Field(
        0.2,
        ge=0,
        description="score at least r / (r + novelty_scale), r = how far a value lies outside "
        "the range of the stream's earlier values, in units of that range, once the stream "
        "has run a day; 0: off",
    )
    seasonal: bool = Field(
        False,
        description="score the deviation from the stream's daily profile (time-of-day bins) "
        "too, while that profile explains at least seasonal_gate of the input's variance "
        "(likelihood and zscore modes, one value per point); what it alone lifts over the "
        "threshold alerts but stays in retraining windows",
    )
    seasonal_gate: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="share of the normalised input's variance the daily profile must explain "
        "before its deviations score",
    )
    seasonal_warmup_days: float = Field(
        1.0,
        ge=0,
        le=365,
        description="the seasonal score starts once the stream has run this long (its points "
        "times its usual interval): before a day has passed, a bin's profile holds only the "
        "same day's points, so its deviations are short-term ones the prediction error scores",
    )

    @model_validator(mode="after")
    def _alert_rule(self) -> ScoringSettings:
        if self.hysteresis_k > self.hysteresis_n:
            raise ValueError(
                f"hysteresis_k ({self.hysteresis_k}) must not exceed hysteresis_n "
                f"({self.hysteresis_n})"
            )
        if self.escalation_window < self.cooldown:
            # No escalation, a plain cooldown: also what a config written before the window
            # existed meant by a cooldown longer than the window's default.
            object.__setattr__(self, "escalation_window", self.cooldown)
        return self


class StreamSettings(_Section):
    """Per-stream state: input normalisation, buffers, limits, disorder and gaps."""

    buffer_len: int = Field(256, ge=1, le=65_536, description="W: inputs kept per stream")
    norm_span: int = Field(1000, ge=2, description="EWMA span of the input mean and variance")
    norm_clip: float = Field(
        5.0, gt=0, description="deviations beyond this many std move the statistics no further"
    )
    input_clip: float = Field(10.0, gt=0, description="normalised inputs are clipped to +-this")
    # The run's inputs are re-expressed in the record's tail, which holds the last 32
    # (detector.stream.state.TAIL).
    level_shift_points: int = Field(
        24,
        ge=0,
        le=32,
        description="a run of this many consecutive points beyond level_shift_std standard "
        "deviations on one side, started by a value beyond the stream's earlier range by more "
        "than that, after its first day, is a level shift: the input mean jumps to the run's "
        "last value (one value per point); 0: off (the mean follows at the EWMA's pace)",
    )
    level_shift_std: float = Field(
        3.0, gt=0, description="how far (in std) a point of a level-shift run lies from the mean"
    )
    min_std: float = Field(1e-6, gt=0, description="floor of a stream's standard deviation")
    max_streams: int = Field(1_000_000, ge=1, description="per group and partition")
    idle_ttl_s: float = Field(
        604_800.0, gt=0, description="evict streams idle this long (default: a week)"
    )
    gap_factor: float = Field(
        10.0, gt=1, description="a gap is longer than this many usual intervals"
    )
    gap_policy: Literal["reset", "continue"] = "continue"

    @model_validator(mode="after")
    def _shift_inside_clip(self) -> StreamSettings:
        if self.level_shift_points and self.level_shift_std >= self.input_clip:
            # The run is counted on the clipped normalised input.
            raise ValueError(
                f"level_shift_std ({self.level_shift_std}) must be less than input_clip "
                f"({self.input_clip})"
            )
        return self


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
    dead_letter: str = Field(
        "log", description='"log", "file:PATH" or "kafka" (kafka.dead_letter_topic)'
    )
    batch_size: int = Field(1024, ge=1, le=1_000_000, description="points per kernel call")
    instance: str = Field("", description="detector instance named in alerts; default hostname")
    clock: Literal["auto", "wall", "data"] = Field(
        "auto",
        description="what the retraining schedule and idle eviction run on: wall time, or data "
        "time (the newest point timestamp read so far); auto: data for a file read once "
        "(no --follow), wall otherwise",
    )

    @model_validator(mode="after")
    def _endpoints(self) -> RunSettings:
        for key, value in (("source", self.source), ("sink", self.sink)):
            fixed = ("stdin", "kafka") if key == "source" else ("stdout", "kafka")
            if value not in fixed and not (value.startswith("file:") and len(value) > 5):
                raise ValueError(
                    f'{key} is {value!r}; expected "{fixed[0]}", "file:PATH" or "kafka"'
                )
        if self.dead_letter not in ("log", "kafka") and not (
            self.dead_letter.startswith("file:") and len(self.dead_letter) > 5
        ):
            raise ValueError(
                f'dead_letter is {self.dead_letter!r}; expected "log", "file:PATH" or "kafka"'
            )
        return self


class KafkaSettings(_Section):
    """Production mode (`run.source = "kafka"` / `run.sink = "kafka"`): topics, group, security."""

    bootstrap_servers: str = Field("localhost:9092", description="comma-separated host:port")
    client_id: str = "detector"
    group_id: str = Field("detector", min_length=1, description="the consumer group")
    group_instance_id: str = Field(
        "", description="static membership id (e.g. the pod name); empty: dynamic membership"
    )
    input_topic: str = Field("metrics", min_length=1)
    alerts_topic: str = Field("detector-alerts", min_length=1)
    dead_letter_topic: str = Field("detector-dead-letter", min_length=1)
    changelog_topic: str = Field(
        "", description="compacted per-stream state; empty: '<group_id>-changelog'"
    )
    models_topic: str = Field("detector-models", min_length=1)
    create_topics: bool = Field(True, description="create missing topics at start")
    partitions: int = Field(4, ge=1, le=10_000, description="partitions of a created input topic")
    replication_factor: int = Field(1, ge=1, le=16, description="of every created topic")
    alerts_retention_ms: int = Field(7 * 86_400_000, ge=-1, description="-1: keep for ever")
    dead_letter_retention_ms: int = Field(7 * 86_400_000, ge=-1)
    session_timeout_ms: int = Field(45_000, ge=1000)
    heartbeat_interval_ms: int = Field(3000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    fetch_max_wait_ms: int = Field(100, ge=0, description="wait this long for a fuller batch")
    metadata_max_age_ms: int = Field(
        30_000,
        ge=1000,
        description="the input consumer refreshes topic metadata this often: a re-created "
        "input topic or added partitions are noticed, and the group rebalances, within it",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a group with no committed offset starts"
    )
    request_timeout_ms: int = Field(30_000, ge=1000)
    max_batch_bytes: int = Field(
        512 * 1024,
        ge=16 * 1024,
        le=64 * 1024 * 1024,
        description="largest record batch the producers build; at most the broker's "
        "message.max.bytes",
    )
    retry_backoff_s: float = Field(1.0, gt=0, description="first wait after a failed connect")
    retry_backoff_max_s: float = Field(30.0, gt=0, description="longest wait between connects")
    exactly_once: bool = Field(
        False, description="alerts, changelog and offsets in one transaction per partition"
    )
    transactional_id_prefix: str = Field(
        "detector", min_length=1, description="exactly_once: ids are '<prefix>-<topic>-<p>'"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_cafile: str = Field("", description="CA bundle; empty: the system's")
    ssl_certfile: str = Field("", description="client certificate (mutual TLS)")
    ssl_keyfile: str = ""
    ssl_password: SecretStr = Field(SecretStr(""), description="of the key file")

    @model_validator(mode="after")
    def _sasl_has_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not self.sasl_username:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be less than session_timeout_ms")
        return self

    @property
    def changelog(self) -> str:
        return self.changelog_topic or f"{self.group_id}-changelog"


class HttpSettings(_Section):
    """Prometheus /metrics, /healthz and /readyz."""

    listen: str = Field(
        "", description='"host:port" to serve on (e.g. "0.0.0.0:9464"); empty: no HTTP server'
    )
    stall_s: float = Field(
        120.0, gt=0, description="/healthz fails when no batch has finished for this long"
    )

    @model_validator(mode="after")
    def _host_port(self) -> HttpSettings:
        if self.listen:
            _host, sep, port = self.listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f'listen is {self.listen!r}; expected "host:port"')
        return self


class RetrainingSettings(_Section):
    """Online retraining of each model group from its streams' buffers."""

    enabled: bool = Field(True, description="retrain in the background while scoring")
    interval_s: float = Field(3600.0, gt=0, description="seconds between retraining runs")
    interval_points: int = Field(
        0, ge=0, description="also retrain after this many points of a group; 0: time only"
    )
    min_windows: int = Field(
        16,
        ge=2,
        description="fewest windows a run trains on; at most what one stream's full buffer "
        "gives ((buffer_len - window_len) // stride + 1, 25 by default), or a group of one "
        "stream never trains",
    )
    max_windows: int = Field(4096, ge=2, description="windows sampled per run, at most")
    tolerance: float = Field(
        0.1,
        ge=0,
        description="a candidate must beat the current loss by this fraction: a swap leaves "
        "the streams' error statistics describing the old model's errors",
    )
    persistent_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="a stream with more than this fraction of its buffer flagged anomalous "
        "has a new normal: its windows are trained on, flags ignored; 1: never",
    )
    threads: int = Field(1, ge=1, le=64, description="training threads (nogil kernels)")
    models_dir: str = Field(
        "", description="embedded mode: model versions are kept here; empty: <state.dir>/models"
    )


class StateSettings(_Section):
    """Checkpoints of per-stream state (embedded mode: local disk)."""

    dir: str = Field("", description="checkpoint directory; empty: no checkpoints")
    interval_s: float = Field(60.0, gt=0, description="seconds between checkpoints")
    grace_s: float = Field(
        30.0, gt=0, description="SIGTERM: longest wait to finish, checkpoint and commit"
    )


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
    kafka: KafkaSettings = KafkaSettings()
    http: HttpSettings = HttpSettings()
    retraining: RetrainingSettings = RetrainingSettings()
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
