"""The project's exception tree. Each error's docstring says what the operator should do."""

from __future__ import annotations

from typing import ClassVar


class DetectorError(Exception):
    """Root of every error the daemon raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigError(DetectorError):
    """The configuration is invalid. Operator action: fix the key named in the message."""


class ModelFileError(DetectorError):
    """A model file cannot be used. Operator action: retrain, or restore the file from the
    model store; never edit a model file by hand (its content hash is checked)."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"model file {path}: {problem}")
        self.path = path
        self.problem = problem


class InputFileError(DetectorError):
    """A training or replay input file cannot be read. Operator action: fix the file at the
    line named in the message, or leave it out."""


class RecordDecodeError(DetectorError):
    """One record could not be decoded; it is counted and dead-lettered, never fatal.
    Operator action: check the producer's format and schema version."""


class StateFormatError(DetectorError):
    """Saved stream state cannot be restored (damaged, or written for another model layout).
    Operator action: none needed for one stream, which starts afresh; if every restore fails,
    check that the model sizes in the configuration match the running deployment."""


class TopicSetupError(DetectorError):
    """A topic the daemon needs is missing or incompatible (e.g. the changelog has another
    partition count than the input). Operator action: create or fix the topic named in the
    message, or set kafka.create_topics = true."""
