"""Model versions on local disk (embedded mode): one file per version, a pointer per group.

Layout of the registry directory (``retraining.models_dir``, default ``<state.dir>/models``)::

    <group>/<version>.npz     the weights (detector.model.modelfile: hash-checked, atomic)
    <group>/<version>.json    what the registry knows of it (VersionInfo)
    <group>/current.json      {"version", "previous", "updated_at"}: the version in use

A version id is the first 12 hex digits of the weights' content hash, as for a model file
named in ``groups.<name>.model_file``, so the same weights always get the same id and
publishing them twice is a no-op. Every file is written atomically (a crash leaves the old
file or the new one), the weights before their JSON, so a version listed is complete.

Switching the pointer is how a version goes live and how an operator rolls back
(``detector model rollback VERSION``); a running daemon notices through
:meth:`ModelRegistry.poll_changes`, which its runner calls now and then.
"""

from __future__ import annotations

import builtins
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import structlog

from detector.atomic import write_atomically
from detector.config import Settings
from detector.errors import DetectorError, ModelFileError
from detector.model.modelfile import ModelMetadata, content_hash, load_model, save_model
from detector.model.params import LSTMParams, shape_to_dict

log = structlog.get_logger(__name__)

VERSION_CHARS = 12  # hex digits of the content hash that name a version
POLL_INTERVAL_S = 5.0  # how often a runner should call poll_changes (a few small reads)
_POINTER = "current.json"
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_VERSION_NAME = re.compile(r"^[0-9a-f]{4,64}$")


class RegistryError(DetectorError):
    """A model version or group is unknown, ambiguous or unreadable in the registry.
    Operator action: `detector model list` shows what the registry holds."""


def version_of(params: LSTMParams) -> str:
    """The version id of weights: a prefix of their content hash."""
    return content_hash(params).removeprefix("sha256:")[:VERSION_CHARS]


def models_dir(settings: Settings) -> Path | None:
    """``retraining.models_dir``, else ``<state.dir>/models``, else None (no registry)."""
    if settings.retraining.models_dir:
        return Path(settings.retraining.models_dir)
    if settings.state.dir:
        return Path(settings.state.dir) / "models"
    return None


@dataclass(frozen=True, slots=True)
class VersionMeta:
    """What the publisher says about new weights (the registry adds id, group and time)."""

    feature_names: tuple[str, ...]
    parent: str | None = None  # the version it was trained from (or replaced), if any
    source: str = "retrain"  # "retrain" (online) or "train" (offline command)
    candidate_loss: float | None = None  # validation loss of these weights
    parent_loss: float | None = None  # the parent's, on the same held-out windows
    windows: int = 0  # training windows it saw
    data: dict[str, Any] = field(default_factory=dict)  # streams, points, ts range seen
    training: dict[str, Any] = field(default_factory=dict)  # report, settings
    normalization: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version as the registry stores it (``<group>/<version>.json``)."""

    version: str
    group: str
    created_at: str  # RFC 3339, UTC
    content_hash: str
    shape: dict[str, Any]
    parent: str | None
    source: str
    candidate_loss: float | None
    parent_loss: float | None
    windows: int
    data: dict[str, Any]
    training: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersionInfo:
        return cls(
            version=str(d["version"]),
            group=str(d["group"]),
            created_at=str(d["created_at"]),
            content_hash=str(d["content_hash"]),
            shape=dict(d["shape"]),
            parent=None if d.get("parent") is None else str(d["parent"]),
            source=str(d.get("source", "")),
            candidate_loss=_float_or_none(d.get("candidate_loss")),
            parent_loss=_float_or_none(d.get("parent_loss")),
            windows=int(d.get("windows", 0)),
            data=dict(d.get("data", {})),
            training=dict(d.get("training", {})),
        )


@dataclass(frozen=True, slots=True)
class ModelChange:
    """A group's current version changed on disk (another process switched the pointer)."""

    group: str
    version: str
    params: LSTMParams


class ModelRegistry:
    """The registry in one directory; cheap to create, safe to share between processes
    (each file is replaced atomically; the last pointer written wins)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        # group -> version this process last saw as current (poll_changes reports others)
        self._known: dict[str, str | None] = {}

    def __repr__(self) -> str:
        return f"ModelRegistry(dir={str(self.dir)!r})"

    # ------------------------------------------------------------------ writing

    def publish(
        self, group: str, params: LSTMParams, meta: VersionMeta, *, make_current: bool = True
    ) -> str:
        """Store weights as a version of ``group`` (and, by default, make it current);
        returns the version id. Publishing weights the group already holds stores nothing."""
        gdir = self._group_dir(group)
        version = version_of(params)
        info_path = gdir / f"{version}.json"
        if not info_path.exists():
            stored = save_model(
                gdir / f"{version}.npz",
                params,
                ModelMetadata(
                    feature_names=meta.feature_names,
                    normalization=meta.normalization,
                    training={"registry_group": group, "parent": meta.parent, **meta.training},
                    # microseconds: versions published within a second still list in order
                    created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
                ),
            )
            info = VersionInfo(
                version=version,
                group=group,
                created_at=stored.created_at,
                content_hash=stored.content_hash,
                shape=shape_to_dict(params.shape),
                parent=meta.parent,
                source=meta.source,
                candidate_loss=_float_or_none(meta.candidate_loss),
                parent_loss=_float_or_none(meta.parent_loss),
                windows=meta.windows,
                data=meta.data,
                training=meta.training,
            )
            _write_json(info_path, info.to_dict())
            log.info("model_version_published", group=group, version=version, parent=meta.parent)
        if make_current:
            self.set_current(group, version)
        return version

    def set_current(self, group: str, version: str) -> None:
        """Point ``group`` at one of its versions (a rollback is this, to an older one). The
        weights are loaded and verified first: a broken file never becomes current."""
        self.params(version, group)  # raises if unknown or damaged
        previous = self.current(group)
        if previous == version:
            self._known[group] = version
            return
        _write_json(
            self._group_dir(group) / _POINTER,
            {
                "version": version,
                "previous": previous,
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        self._known[group] = version
        log.info("model_version_current", group=group, version=version, previous=previous)

    # ------------------------------------------------------------------ reading

    def groups(self) -> builtins.list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(
            p.name for p in self.dir.iterdir() if p.is_dir() and _GROUP_NAME.match(p.name)
        )

    def current(self, group: str) -> str | None:
        """The version ``group`` uses, or None when nothing was made current."""
        path = self._group_dir(group) / _POINTER
        try:
            doc = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise RegistryError(f"{path} cannot be read: {exc}") from None
        version = doc.get("version") if isinstance(doc, dict) else None
        if not isinstance(version, str):
            raise RegistryError(f"{path} names no version")
        return version

    def current_params(self, group: str) -> tuple[str, LSTMParams] | None:
        """(version, weights) ``group`` should run with, or None; what a service loads at
        start (poll_changes then reports only later switches)."""
        version = self.current(group)
        self._known[group] = version
        if version is None:
            return None
        return version, self.params(version, group)

    def get(self, version: str, group: str | None = None) -> VersionInfo:
        """The stored record of a version (a unique prefix of at least 4 digits will do)."""
        return self._read_info(*self._find(version, group))

    def params(self, version: str, group: str | None = None) -> LSTMParams:
        """The verified weights of a version."""
        gdir, full = self._find(version, group)
        try:
            params, _ = load_model(gdir / f"{full}.npz")
        except ModelFileError as exc:
            raise RegistryError(f"version {full} of group {gdir.name}: {exc}") from None
        return params

    def poll_changes(self) -> builtins.list[ModelChange]:
        """Groups whose current version changed since this registry object last saw it
        (set it, loaded it, or polled it), with the new weights. A pointer to a version that
        cannot be loaded is logged once and skipped: the running model stays."""
        changes = []
        for group in self.groups():
            try:
                version = self.current(group)
            except RegistryError as exc:
                log.error("model_pointer_unreadable", group=group, error=str(exc))
                continue
            if version is None or version == self._known.get(group):
                continue
            self._known[group] = version
            try:
                params = self.params(version, group)
            except RegistryError as exc:
                log.error("model_version_unusable", group=group, version=version, error=str(exc))
                continue
            changes.append(ModelChange(group, version, params))
        return changes

    def list(self, group: str | None = None) -> builtins.list[VersionInfo]:
        """Every version (of one group, or of all), oldest first."""
        groups = [group] if group is not None else self.groups()
        infos = []
        for g in groups:
            gdir = self._group_dir(g)
            if not gdir.is_dir():
                continue
            for path in gdir.glob("*.json"):
                if path.name != _POINTER and _VERSION_NAME.match(path.stem):
                    infos.append(self._read_info(gdir, path.stem))
        return sorted(infos, key=lambda i: (i.created_at, i.group, i.version))

    # ------------------------------------------------------------------ helpers

    def _group_dir(self, group: str) -> Path:
        if not _GROUP_NAME.match(group) or group in (".", ".."):
            raise RegistryError(f"group name {group!r} is not valid (letters, digits, _ . -)")
        return self.dir / group

    def _find(self, version: str, group: str | None) -> tuple[Path, str]:
        if not _VERSION_NAME.match(version):
            raise RegistryError(f"version {version!r} is not a version id (hex digits)")
        groups = [group] if group is not None else self.groups()
        found = []
        for g in groups:
            gdir = self._group_dir(g)
            if (gdir / f"{version}.json").is_file():
                found.append((gdir, version))
            elif gdir.is_dir():
                found += [
                    (gdir, p.stem)
                    for p in gdir.glob(f"{version}*.json")
                    if _VERSION_NAME.match(p.stem)
                ]
        if not found:
            where = f"group {group!r}" if group is not None else str(self.dir)
            raise RegistryError(f"version {version} is not in {where}")
        if len(found) > 1:
            names = ", ".join(f"{d.name}/{v}" for d, v in found)
            raise RegistryError(f"version {version} is ambiguous ({names}); give the group")
        return found[0]

    def _read_info(self, gdir: Path, version: str) -> VersionInfo:
        path = gdir / f"{version}.json"
        try:
            return VersionInfo.from_dict(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{path} cannot be read: {exc}") from None


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)

    def write(f: BinaryIO) -> None:
        f.write(data)

    write_atomically(path, write)


def _float_or_none(v: object) -> float | None:
    if v is None:
        return None
    f = float(v)  # type: ignore[arg-type]
    return f if math.isfinite(f) else None
