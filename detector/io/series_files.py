"""Whole series from files, for training and evaluation: CSV and native JSON lines.

CSV: a header ``timestamp,<feature>[,<feature>...]`` then one row per point; the timestamp
is epoch seconds or milliseconds or an ISO date-time (NAB's "2014-04-02 14:29:00").
JSON lines: native records (detector.io.formats); one series per vector id (stream name and
tags), in file order. A single-value record's feature is named "value", as in a CSV file
with a ``value`` column.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from detector.errors import InputFileError, RecordDecodeError
from detector.io.formats import decode_native, parse_timestamp, vector_id

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    feature_names: tuple[str, ...]
    timestamps: NDArray[np.float64]  # (N,) epoch seconds
    values: NDArray[np.float64]  # (N, D)


def read_series(path: str | Path) -> list[Series]:
    """The series in one file, chosen by suffix; InputFileError names file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    if path.suffix.lower() in JSON_SUFFIXES:
        return _read_jsonl(path)
    return [_read_csv(path)]


def _read_csv(path: Path) -> Series:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0].strip().lower() != "timestamp" or len(header) < 2:
            raise InputFileError(f"{path}:1: expected a header 'timestamp,<feature>[,...]'")
        features = tuple(h.strip() for h in header[1:])
        timestamps: list[float] = []
        rows: list[list[float]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise InputFileError(f"{path}:{line_no}: {len(row)} fields; expected {len(header)}")
            try:
                timestamps.append(_csv_timestamp(row[0]))
                rows.append([float(v) for v in row[1:]])
            except (ValueError, RecordDecodeError) as exc:
                raise InputFileError(f"{path}:{line_no}: {exc}") from None
    if not rows:
        raise InputFileError(f"{path}: no data rows")
    return Series(path.stem, features, np.array(timestamps), np.array(rows, dtype=np.float64))


def _csv_timestamp(raw: str) -> float:
    raw = raw.strip()
    try:
        return parse_timestamp(float(raw))
    except ValueError:
        return parse_timestamp(raw)


def _read_jsonl(path: Path) -> list[Series]:
    by_stream: dict[str, tuple[list[float], list[list[float]], tuple[str, ...]]] = {}
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                sample = decode_native(line)
            except RecordDecodeError as exc:
                raise InputFileError(f"{path}:{line_no}: {exc}") from None
            stream = vector_id(sample.name, sample.tags)
            fields = sorted(sample.values)
            names = tuple(field or "value" for field in fields)
            ts, rows, known = by_stream.setdefault(stream, ([], [], names))
            if names != known:
                raise InputFileError(
                    f"{path}:{line_no}: stream {stream} has fields {list(names)}; "
                    f"earlier records had {list(known)}"
                )
            ts.append(sample.ts)
            rows.append([sample.values[field] for field in fields])
    if not by_stream:
        raise InputFileError(f"{path}: no records")
    return [
        Series(stream, names, np.array(ts), np.array(rows, dtype=np.float64))
        for stream, (ts, rows, names) in by_stream.items()
    ]
