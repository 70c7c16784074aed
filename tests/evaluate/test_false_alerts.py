"""The synthetic null: plain Gaussian streams with a daily cycle rarely alert, spikes do.

200 streams of 5-minute points over five days (1,440 each): a level, a daily sine of 0.5 to 3
noise widths and Gaussian noise; 20 of them get one spike of 10 noise widths. Replayed with
the default settings through the production pipeline, at most 10% of the 180 clean streams
may alert (an SRE with 10,000 such streams would otherwise get thousands of false alerts a
week), and every spike must alert. Online retraining is off: the scores' calibration on
noise is under test, and the untrained model forecasts as persistence does.
"""

from __future__ import annotations

import numpy as np

from detector.config import RetrainingSettings, Settings
from detector.evaluate.corpus import SeriesFile
from detector.evaluate.replay import replay

STREAMS, SPIKED, POINTS = 200, 20, 1440
SPIKE = 10.0  # noise widths


def gaussian_streams(seed: int) -> tuple[list[SeriesFile], dict[str, int]]:
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000.0 + 300.0 * np.arange(POINTS)
    day = 2 * np.pi * np.arange(POINTS) / 288.0
    files, spikes = [], {}
    for k in range(STREAMS):
        level, amplitude, phase = rng.uniform(10, 100), rng.uniform(0.5, 3), rng.uniform(0, 6.3)
        values = level + amplitude * np.sin(day + phase) + rng.normal(0, 1.0, POINTS)
        name = f"null/{k}.csv"
        if k < SPIKED:
            at = int(rng.integers(400, POINTS - 10))  # past warm-up
            values[at] += SPIKE
            spikes[name] = at
        files.append(SeriesFile(name, ts.copy(), values))
    return files, spikes


def test_gaussian_streams_rarely_alert_and_every_spike_does() -> None:
    files, spikes = gaussian_streams(seed=0)
    settings = Settings(retraining=RetrainingSettings(enabled=False))
    outputs = replay(files, settings).outputs
    clean = [f.name for f in files if f.name not in spikes]
    alerting = sum(bool(outputs[name].alert.any()) for name in clean)
    assert alerting <= 0.1 * len(clean)
    caught = [bool(outputs[name].alert[at : at + 3].any()) for name, at in spikes.items()]
    assert all(caught), f"{caught.count(False)} of {len(caught)} spikes missed"
