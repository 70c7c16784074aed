"""Small synthetic NAB-format corpora, written into a test's tmp_path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

T0 = datetime(2014, 4, 1, tzinfo=UTC)
STEP = timedelta(minutes=5)


@dataclass(frozen=True)
class SyntheticFile:
    name: str  # "<category>/<name>.csv"
    values: np.ndarray
    stamps: list[str]
    windows: list[tuple[int, int]]  # inclusive rows


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def noisy_series(
    n: int, seed: int, start: datetime = T0, spike_at: int | None = None, spike: float = 0.0
) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    values = 50 + 5 * np.sin(2 * np.pi * i / 288) + rng.normal(0, 0.5, n)
    if spike_at is not None:
        values[spike_at] += spike
    return np.round(values, 3), [stamp(start + k * STEP) for k in range(n)]


def write_corpus(root: Path, files: list[SyntheticFile]) -> tuple[Path, Path]:
    """Write ``root/data/<category>/<name>.csv`` and ``root/labels.json``; returns both."""
    data = root / "data"
    labels: dict[str, list[list[str]]] = {}
    for f in files:
        path = data / f.name
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{t},{v!r}\n" for t, v in zip(f.stamps, f.values.tolist(), strict=True))
        path.write_text("timestamp,value\n" + rows)
        labels[f.name] = [[f.stamps[l], f.stamps[r]] for l, r in f.windows]
    (root / "labels.json").write_text(json.dumps(labels))
    return data, root / "labels.json"


def spike_corpus(root: Path, n: int = 600) -> tuple[Path, Path, list[SyntheticFile]]:
    """Three files in two categories; one has an obvious spike inside its labelled window."""
    values, stamps = noisy_series(n, 1, spike_at=400, spike=40.0)
    quiet_a, stamps_a = noisy_series(n, 2)
    quiet_b, stamps_b = noisy_series(n, 3, start=T0 + 7 * STEP)
    files = [
        SyntheticFile("artificialWithAnomaly/spike.csv", values, stamps, [(390, 430)]),
        SyntheticFile("artificialNoAnomaly/quiet_a.csv", quiet_a, stamps_a, []),
        SyntheticFile("realTraffic/quiet_b.csv", quiet_b, stamps_b, []),
    ]
    data, labels = write_corpus(root, files)
    return data, labels, files


def telemetry_corpus(root: Path, n: int = 600, train: int = 300) -> tuple[Path, Path, Path]:
    """Two categories in telemetry-dev's layout: every file's first ``train`` rows are its
    train part (``root/train_points.json``, beside the labels). MSL/a and UCR/c have a spike
    inside a window; MSL/b a spike in its train part (not counted by the event metrics) and
    one in its test part, outside every window: one false-positive event."""
    a, stamps = noisy_series(n, 11, spike_at=450, spike=40.0)
    b, _ = noisy_series(n, 12, spike_at=250, spike=40.0)
    b[480] += 40.0
    c, _ = noisy_series(n, 13, spike_at=500, spike=40.0)
    files = [
        SyntheticFile("MSL/a.csv", a, stamps, [(440, 470)]),
        SyntheticFile("MSL/b.csv", b, stamps, []),
        SyntheticFile("UCR/c.csv", c, stamps, [(490, 520)]),
    ]
    data, labels = write_corpus(root, files)
    (root / "train_points.json").write_text(json.dumps({f.name: train for f in files}))
    return data, labels, root / "train_points.json"
