"""A NAB-format corpus on disk: its series, their labelled windows, and the arrival order.

Layout (nab-dev/README.md): ``DIR/<category>/<name>.csv`` files with a ``timestamp,value``
header and naive timestamps (read as UTC), and a labels JSON ``{"<category>/<name>.csv":
[[start, end], ...]}``. Every data file is one stream, named by its path without ``.csv``
(``realTraffic/speed_7578``). The labels are read by :func:`load_labels` for the scorer
only; nothing here hands them to the detector. Neither are the train points
(:func:`load_train_points`, telemetry-dev's ``train_points.json``): where each file's test
part starts, for the event-level metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detector.errors import InputFileError
from detector.evaluate.nab_scoring import Window, windows_from_timestamps
from detector.io.series_files import read_series


@dataclass(frozen=True, slots=True)
class SeriesFile:
    """One data file of the corpus."""

    name: str  # path relative to the data directory, "/"-separated: the labels key
    timestamps: NDArray[np.float64]  # (N,) epoch seconds
    values: NDArray[np.float64]  # (N,)

    @property
    def stream(self) -> str:
        """The stream id the file's points carry: its name without ``.csv``."""
        return self.name.removesuffix(".csv")

    @property
    def category(self) -> str:
        """The folder of the file ("" for a file at the top of the data directory)."""
        return self.name.rpartition("/")[0]

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def __len__(self) -> int:
        return int(self.timestamps.size)


def read_corpus(data_dir: str | Path) -> list[SeriesFile]:
    """Every ``*.csv`` under ``data_dir`` (recursively), sorted by name."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputFileError(f"{root}: no such directory")
    files = []
    for path in sorted(root.rglob("*.csv")):
        (series,) = read_series(path)
        if series.values.shape[1] != 1:
            raise InputFileError(
                f"{path}: {series.values.shape[1]} value columns {list(series.feature_names)}; "
                "a NAB data file has one (timestamp,value)"
            )
        name = path.relative_to(root).as_posix()
        files.append(SeriesFile(name, series.timestamps, series.values[:, 0].copy()))
    if not files:
        raise InputFileError(f"{root}: no *.csv data files")
    return files


def load_labels(labels_path: str | Path, files: list[SeriesFile]) -> dict[str, list[Window]]:
    """Every file's labelled windows as inclusive row ranges (for the scorer only).

    Each data file needs an entry (``[]`` for none); entries of files not in the corpus are
    ignored, so a trimmed data directory can be scored with the full labels file.
    """
    path = Path(labels_path)
    labels = _read_file_table(path, files, "labels", "file name -> windows")
    windows = {}
    for f in files:
        stamps = _datetimes(f.timestamps)
        try:
            windows[f.name] = windows_from_timestamps(stamps, labels[f.name], f.name)
        except (ValueError, TypeError) as exc:
            raise InputFileError(f"{path}: {exc}") from None
    return windows


TRAIN_POINTS_FILE = "train_points.json"  # looked for beside the labels file


def train_points_beside(labels_path: str | Path) -> Path | None:
    """``train_points.json`` in the labels file's folder, if there is one."""
    path = Path(labels_path).parent / TRAIN_POINTS_FILE
    return path if path.is_file() else None


def load_train_points(path: str | Path, files: list[SeriesFile]) -> dict[str, int]:
    """Every file's train part (telemetry-dev/README.md): ``{"<category>/<name>.csv": rows}``,
    the number of rows before its test part. For the event-level metrics only.

    Each data file needs an entry, between 0 and its row count; entries of files not in the
    corpus are ignored, as in :func:`load_labels`.
    """
    path = Path(path)
    table = _read_file_table(path, files, "train points", "file name -> train points")
    points = {}
    for f in files:
        n = table[f.name]
        # bool is an int to Python, never a row count
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(f):
            raise InputFileError(
                f"{path}: {f.name}: train points must be a whole number from 0 to the file's "
                f"{len(f)} rows, got {n!r}"
            )
        points[f.name] = n
    return points


def arrival_order(
    files: list[SeriesFile],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """(file index, row index, merge key) of every point, all files interleaved by
    timestamp: the keys come out non-decreasing.

    Ties go to the file first by name. Each file's own row order is kept even where its
    timestamps go backwards (the pipeline then drops those points, as in production): the
    merge key of a row is the largest timestamp of its file up to it.
    """
    if not files:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    key = np.concatenate([np.maximum.accumulate(f.timestamps) for f in files])
    file_idx = np.concatenate([np.full(len(f), k, np.int64) for k, f in enumerate(files)])
    row_idx = np.concatenate([np.arange(len(f), dtype=np.int64) for f in files])
    order = np.lexsort((row_idx, file_idx, key))
    return file_idx[order], row_idx[order], key[order]


def format_timestamps(ts: NDArray[np.float64]) -> list[str]:
    """Epoch seconds as NAB writes them: "YYYY-MM-DD HH:MM:SS" (UTC, naive)."""
    text = np.datetime_as_string(_datetimes(ts), unit="s")
    return [t.replace("T", " ") for t in text.tolist()]


def _datetimes(ts: NDArray[np.float64]) -> NDArray[np.datetime64]:
    return np.round(ts * 1e6).astype(np.int64).astype("datetime64[us]")


def _read_file_table(path: Path, files: list[SeriesFile], entry: str, what: str) -> dict[str, Any]:
    """A JSON object keyed by data file name, with an entry for every file of ``files``."""
    try:
        doc: object = json.loads(path.read_bytes())
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read the file ({exc.strerror})") from None
    except ValueError as exc:
        raise InputFileError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputFileError(f"{path}: expected an object of {what}")
    missing = [f.name for f in files if f.name not in doc]
    if missing:
        raise InputFileError(f"{path}: no {entry} for {missing[:5]} ({len(missing)} files)")
    return doc
