"""Model files: one ``.npz`` holding the named weight tensors and a JSON metadata entry.

Read with ``allow_pickle=False``; the metadata carries a SHA-256 of the weights, so a file
that was truncated, corrupted or edited is refused with a :class:`ModelFileError` naming the
file and the problem, never a bare numpy or zipfile traceback. Writes are atomic (temporary
file, fsync, rename), so a crash never leaves half a model where a model was.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from detector import __version__
from detector.atomic import write_atomically
from detector.errors import ModelFileError
from detector.model.params import LSTMParams, shape_from_dict, shape_to_dict, tensor_layout

FORMAT_VERSION = 1
_METADATA_KEY = "__metadata__"


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    feature_names: tuple[str, ...]
    normalization: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""  # RFC 3339, UTC; filled in by save_model when empty
    content_hash: str = ""  # "sha256:<hex>" of the weights; computed by save_model
    detector_version: str = __version__
    format_version: int = FORMAT_VERSION


def content_hash(params: LSTMParams) -> str:
    """Hash of everything that determines the model's output: sizes, dtype and weights."""
    h = hashlib.sha256()
    h.update(orjson.dumps(shape_to_dict(params.shape), option=orjson.OPT_SORT_KEYS))
    h.update(str(params.dtype).encode())
    h.update(np.ascontiguousarray(params.theta).tobytes())
    return "sha256:" + h.hexdigest()


def save_model(path: str | Path, params: LSTMParams, metadata: ModelMetadata) -> ModelMetadata:
    """Write atomically; return the metadata as stored (with creation time and hash)."""
    raw, stored = encode_model(params, metadata)

    def write(f: BinaryIO) -> None:
        f.write(raw)

    write_atomically(Path(path), write)
    return stored


def encode_model(params: LSTMParams, metadata: ModelMetadata) -> tuple[bytes, ModelMetadata]:
    """The bytes of a model file (also the value of a models-topic record) and its metadata."""
    if len(metadata.feature_names) != params.shape.n_inputs:
        raise ValueError(
            f"{len(metadata.feature_names)} feature names for {params.shape.n_inputs} inputs"
        )
    stored = replace(
        metadata,
        created_at=metadata.created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        content_hash=content_hash(params),
        format_version=FORMAT_VERSION,
    )
    document = {
        "format_version": stored.format_version,
        "detector_version": stored.detector_version,
        "created_at": stored.created_at,
        "shape": shape_to_dict(params.shape),
        "dtype": str(params.dtype),
        "feature_names": list(stored.feature_names),
        "normalization": stored.normalization,
        "training": stored.training,
        "content_hash": stored.content_hash,
    }
    arrays: dict[str, np.ndarray] = dict(params.tensors())
    arrays[_METADATA_KEY] = np.frombuffer(
        orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), dtype=np.uint8
    )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue(), stored


def load_model(path: str | Path) -> tuple[LSTMParams, ModelMetadata]:
    """Read and verify a model file; every failure is a ModelFileError naming the problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror})") from None
    return decode_model(raw, path)


def decode_model(raw: bytes, path: object) -> tuple[LSTMParams, ModelMetadata]:
    """Verify and read model-file bytes; ``path`` names their origin in errors."""
    arrays = _read_npz(path, raw)
    document = _read_metadata(path, arrays)
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            path, f"format version {version!r} is not supported (this build reads {FORMAT_VERSION})"
        )
    try:
        shape = shape_from_dict(document["shape"])
        dtype = np.dtype(document["dtype"])
        feature_names = tuple(str(n) for n in document["feature_names"])
        expected_hash = str(document["content_hash"])
        normalization = dict(document["normalization"])
        training = dict(document.get("training", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(path, f"metadata is invalid ({exc})") from None
    if dtype not in (np.float32, np.float64):
        raise ModelFileError(path, f"dtype {dtype} is not float32 or float64")
    if len(feature_names) != shape.n_inputs:
        raise ModelFileError(
            path, f"{len(feature_names)} feature names for a model of {shape.n_inputs} inputs"
        )
    theta = np.empty(sum(int(np.prod(s)) for _, _, s in tensor_layout(shape)), dtype=dtype)
    for name, offset, tshape in tensor_layout(shape):
        if name not in arrays:
            raise ModelFileError(path, f"tensor {name} is missing")
        tensor = arrays[name]
        if tensor.shape != tshape or tensor.dtype != dtype:
            raise ModelFileError(
                path,
                f"tensor {name} has shape {tensor.shape} and dtype {tensor.dtype}; "
                f"the metadata says {tshape} {dtype}",
            )
        theta[offset : offset + tensor.size] = tensor.ravel()
    params = LSTMParams(shape, theta)
    if content_hash(params) != expected_hash:
        raise ModelFileError(path, "content hash does not match the weights (file was altered)")
    metadata = ModelMetadata(
        feature_names=feature_names,
        normalization=normalization,
        training=training,
        created_at=str(document.get("created_at", "")),
        content_hash=expected_hash,
        detector_version=str(document.get("detector_version", "")),
        format_version=FORMAT_VERSION,
    )
    return params, metadata


def _read_npz(path: object, raw: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except ValueError as exc:
        # numpy raises ValueError for object arrays when pickles are not allowed.
        if "pickle" in str(exc).lower():
            raise ModelFileError(path, "holds pickled objects, which are never loaded") from None
        raise ModelFileError(path, f"is not a readable npz archive ({exc})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ModelFileError(path, f"is truncated or corrupted ({exc})") from None


def _read_metadata(path: object, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    if _METADATA_KEY not in arrays:
        raise ModelFileError(path, "has no metadata: not a detector model file")
    try:
        document = orjson.loads(arrays[_METADATA_KEY].tobytes())
    except orjson.JSONDecodeError as exc:
        raise ModelFileError(path, f"metadata is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ModelFileError(path, "metadata is not a JSON object")
    return document
