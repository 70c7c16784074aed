"""Local-disk checkpoints of embedded mode: every group's state plus the input position.

One file, replaced atomically (write to a temporary file, fsync, rename, fsync the
directory), so a crash leaves either the previous checkpoint or the new one, never a mix:

    b"DCK1" | u32 manifest length | manifest (JSON) | blobs

The manifest names the source and the position after the last message the state reflects,
and lists each group's blob (name, length) in order. On restart the state is restored and
a seekable source resumes at that position: no point is scored twice and none is skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from detector import __version__
from detector.atomic import write_atomically
from detector.errors import StateFormatError

_MAGIC = b"DCK1"
_LEN = struct.Struct("<I")
FILE_NAME = "checkpoint.bin"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    source: str
    position: int
    groups: dict[str, bytes]


def save_checkpoint(directory: str | Path, checkpoint: Checkpoint) -> Path:
    directory = Path(directory)
    manifest = {
        "detector_version": __version__,
        "source": checkpoint.source,
        "position": checkpoint.position,
        "groups": [[name, len(blob)] for name, blob in checkpoint.groups.items()],
    }
    head = orjson.dumps(manifest)
    path = directory / FILE_NAME

    def write(f: BinaryIO) -> None:
        f.write(_MAGIC + _LEN.pack(len(head)) + head)
        for blob in checkpoint.groups.values():
            f.write(blob)

    write_atomically(path, write)
    return path


def load_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The checkpoint in ``directory``; None if there is none; StateFormatError if damaged."""
    path = Path(directory) / FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if data[:4] != _MAGIC or len(data) < 8:
        raise StateFormatError(f"{path} is not a detector checkpoint")
    (n,) = _LEN.unpack(data[4:8])
    try:
        manifest = orjson.loads(data[8 : 8 + n])
        offset = 8 + n
        groups: dict[str, bytes] = {}
        for name, size in manifest["groups"]:
            groups[str(name)] = data[offset : offset + int(size)]
            offset += int(size)
        source, position = str(manifest["source"]), int(manifest["position"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise StateFormatError(f"{path} has a damaged manifest: {exc}") from None
    if offset != len(data):
        raise StateFormatError(f"{path} is {len(data)} bytes; its manifest says {offset}")
    return Checkpoint(source, position, groups)
