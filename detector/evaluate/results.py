"""NAB results files: ``OUT/<category>/detector_<name>.csv``, one row per data row.

Columns ``timestamp,value,anomaly_score,label`` (NAB's own format): the timestamp as NAB
writes it, the value, the score in [0, 1] as the alert layer sees it (0 where the pipeline
did not score the row; detector.evaluate.alert_view) and 1 inside a labelled window.
Numbers are written with ``repr``, so reading a results file back gives exactly the scores
that were scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from detector.evaluate.corpus import SeriesFile, format_timestamps
from detector.evaluate.nab_scoring import Window

DETECTOR_NAME = "detector"


def results_path(out_dir: Path, f: SeriesFile) -> Path:
    return out_dir / f.category / f"{DETECTOR_NAME}_{f.stem}.csv"


def write_results(
    out_dir: str | Path,
    files: Sequence[SeriesFile],
    scores: Mapping[str, NDArray[np.float64]],
    windows: Mapping[str, Sequence[Window]],
) -> list[Path]:
    """Write one results file per data file; returns their paths."""
    root = Path(out_dir)
    written = []
    for f in files:
        label = np.zeros(len(f), np.int8)
        for l, r in windows[f.name]:
            label[l : r + 1] = 1
        path = results_path(root, f)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = zip(
            format_timestamps(f.timestamps),
            f.values.tolist(),
            scores[f.name].tolist(),
            label.tolist(),
            strict=True,
        )
        with path.open("w", encoding="utf-8", newline="") as out:
            out.write("timestamp,value,anomaly_score,label\n")
            out.writelines(f"{t},{v!r},{s!r},{y}\n" for t, v, s, y in rows)
        written.append(path)
    return written
