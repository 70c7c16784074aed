"""One PNG per evaluated series: what the detector saw, said and missed.

Top: the values and the model's predictions, the pipeline's alerts (at the configured
threshold, after warm-up, hysteresis, cooldown and escalation) and the rows detected at the
corpus threshold NAB chose. Bottom: the kernel's score, the anomaly score NAB sees (the alert
layer's view, detector.evaluate.alert_view) and both thresholds. Labelled windows are shaded
orange on both, NAB's probation period (not scored) grey.

Figures are drawn with matplotlib's object API on the Agg canvas: no pyplot, no global
state, no display needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from detector.evaluate.corpus import SeriesFile
from detector.evaluate.nab_scoring import FileScore, Window, probation_length
from detector.evaluate.replay import SeriesOutput

_WINDOW_COLOUR = "tab:orange"
_DPI = 100


def plot_path(plots_dir: Path, f: SeriesFile) -> Path:
    return plots_dir / f.category / f"{f.stem}.png"


def plot_series(
    path: str | Path,
    f: SeriesFile,
    output: SeriesOutput,
    nab_score: NDArray[np.float64],
    windows: list[Window],
    nab_threshold: float,
    alert_threshold: float,
    file_score: FileScore | None = None,
) -> None:
    """Draw one series (module docstring) into a PNG at ``path``."""
    x = np.round(f.timestamps * 1e6).astype(np.int64).astype("datetime64[us]")
    fig = Figure(figsize=(14, 6.5), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    probation = probation_length(len(f))
    for ax in (top, bottom):
        _shade(ax, x, windows, probation)

    top.plot(x, f.values, lw=0.7, color="tab:blue", label="value")
    top.plot(x, output.predicted, lw=0.7, color="tab:green", alpha=0.8, label="predicted")
    detected = nab_score >= nab_threshold
    detected[:probation] = False
    top.scatter(
        x[detected], f.values[detected], s=12, color="tab:purple", zorder=3,
        label=f"anomaly score ≥ {nab_threshold:.3f} (NAB threshold)",
    )  # fmt: skip
    top.scatter(
        x[output.alert], f.values[output.alert], s=60, marker="v", color="red", zorder=4,
        label=f"alert (threshold {alert_threshold:g})",
    )  # fmt: skip
    top.set_ylabel("value")
    top.legend(loc="upper left", fontsize=8, ncols=4)

    bottom.plot(x, output.score, lw=0.7, color="grey", label="kernel score")
    shown = nab_score > 0.0
    bottom.vlines(
        x[shown], 0.0, nab_score[shown], lw=1.0, color="black", label="anomaly score (NAB)"
    )
    bottom.axhline(nab_threshold, color="tab:purple", ls="--", lw=1, label="NAB threshold")
    bottom.axhline(alert_threshold, color="red", ls=":", lw=1, label="alert threshold")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_ylabel("anomaly score")
    bottom.legend(loc="upper left", fontsize=8, ncols=4)

    title = f.name
    if file_score is not None:
        title += (
            f"  (standard profile: {file_score.tp_windows}/{len(windows)} windows found, "
            f"{file_score.fp_detections} false rows, raw {file_score.raw_score:+.2f})"
        )
    top.set_title(title, fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def _shade(ax: Axes, x: np.ndarray, windows: list[Window], probation: int) -> None:
    if probation > 0:
        ax.axvspan(x[0], x[probation - 1], color="grey", alpha=0.15, lw=0)
    for l, r in windows:
        ax.axvspan(x[l], x[r], color=_WINDOW_COLOUR, alpha=0.25, lw=0)
