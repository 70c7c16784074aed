"""Event-loop lag and scoring throughput while a retraining runs, against retraining off.

Question (from the issue): how late does the event loop run (p50, p99 of the project's
:class:`~detector.service.looplag.LoopLagMonitor`) and how many points per second does the
scoring take, while a model group retrains in the thread pool, compared with the same
figures with retraining off, in the same run?

What runs is the embedded runner's loop (detector/service/runner.py) without its file
source: ``Pipeline.process`` on a batch, then ``await Retrainer.poll(now, start=...)``,
which starts due runs in the pool and swaps finished ones in between batches. The input is
a synthetic stream set fed at a steady rate: ``--streams`` native JSON streams
(``{"stream": "s00042", "ts": ..., "value": ...}``, noisy sines, one point per stream per
60 s of ``ts``), in batches of ``--batch`` points every ``batch / rate`` seconds.

Phases, in this order:

1. Warm-up, untimed: ``streams.buffer_len`` points per stream as fast as the loop goes
   (fills every ring), then one retraining run inline (``Retrainer.run_due``), so numba's
   training kernels are loaded and the group serves a trained model (the untrained cold
   start skips the LSTM step) before anything is timed.
2. ``--rounds`` rounds of two phases of ``--seconds`` each, ``off`` then ``on`` (the order
   swaps every round, so a drift of the machine's load hits both alike):
   - ``off``: the loop calls ``poll(now, start=False)``: nothing starts;
   - ``on``: a fresh Retrainer as the runners make it (``staged_swaps``) with
     ``retraining.interval_points = 1``, so a run is due at every due check (once a
     second) and runs follow each other for the whole phase. Its costs on the loop are all
     counted: picking streams and copying their rings (``_prepare``), and each step of a
     staged swap (planning a replay round; the last, small round and the switch). At the
     end of the phase the retrainer is closed (its run stops at its next mini-batch).
   In both, a LoopLagMonitor samples every ``--lag-interval`` s (default 5 ms), and every
   batch's ``Pipeline.process`` is timed.
3. Figures per phase kind (all rounds pooled): lag p50, p99 and max; batch duration p50 and
   p99; *capacity* = points / time spent in ``process`` (what the loop could score flat
   out); the rate actually fed; for ``on``, the share of the phase a run was in progress
   and the runs finished. Ratios on/off. The stated bound (README, "Retraining"): lag p99
   with retraining on at most ``LAG_P99_BOUND_MS``; the last line says whether it held.

Thread variables: NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS
are 1, as in the other benches (one scoring thread, one training thread: on a 2-core
machine each gets a core). The GIL is the shared resource: the training thread holds it
outside its nogil kernels (Python between mini-batches), and the loop waits for it.

    python bench/retrain_lag.py            # 2,000 streams, 50,000 points/s, 2 x (15 s + 15 s)
    python bench/retrain_lag.py --quick    # 200 streams, 10,000 points/s, 1 x (2 s + 2 s)
    #   --streams --rate --batch --seconds --rounds --lag-interval --hidden --epochs
    #   --max-windows --seed --json FILE
"""

from __future__ import annotations

import os

# One thread for everyone, set before numpy / numba are imported.
for _var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

LAG_P99_BOUND_MS = 25.0  # the README's bound on the loop's lag p99 while retraining

import argparse  # noqa: E402
import asyncio  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import structlog  # noqa: E402
from machine import cpu_model, git_revision  # noqa: E402  (bench/ is the script's directory)

from detector.config import (  # noqa: E402
    ModelSettings,
    RetrainingSettings,
    ScoringSettings,
    Settings,
    TrainingSettings,
)
from detector.retrain.scheduler import Retrainer  # noqa: E402
from detector.service.looplag import LoopLagMonitor  # noqa: E402
from detector.stream.pipeline import Pipeline  # noqa: E402

T0 = 1_732_000_000
STEP_S = 60


class LagRecorder(LoopLagMonitor):
    """The project's monitor, keeping every sample (it keeps a window for its p99)."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(None, interval_s=interval_s)
        self.samples: list[float] = []

    def record(self, lag_s: float) -> None:
        super().record(lag_s)
        self.samples.append(lag_s)


@dataclass
class Phase:
    kind: str  # "off" or "on"
    seconds: float = 0.0
    points: int = 0
    busy_s: float = 0.0  # in Pipeline.process
    batches: list[float] = field(default_factory=list)  # seconds per process call
    lag: list[float] = field(default_factory=list)
    training_share: float = 0.0  # of the batches, those with a run in progress
    polls: list[float] = field(default_factory=list)  # seconds per Retrainer.poll (on the loop)
    runs: dict[str, int] = field(default_factory=dict)


class Feed:
    """Native JSON points, round robin over the streams; cheap to make (one %-format)."""

    def __init__(self, streams: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.streams = streams
        self.phase = rng.uniform(0, 2 * np.pi, streams)
        self.period = rng.uniform(20, 200, streams)
        self.level = rng.uniform(1, 100, streams)
        self.i = 0  # points made so far

    def batch(self, n: int) -> tuple[list[bytes], float]:
        idx = np.arange(self.i, self.i + n)
        self.i += n
        s = idx % self.streams
        t = idx // self.streams
        noise = np.random.default_rng(self.i).normal(0, 0.05, n)
        values = self.level[s] * (1 + 0.2 * np.sin(2 * np.pi * t / self.period[s] + self.phase[s]))
        values += noise * self.level[s]
        ts = T0 + STEP_S * t
        msgs = [
            b'{"stream":"s%05d","ts":%d,"value":%.5f}' % (a, b, c)
            for a, b, c in zip(s.tolist(), ts.tolist(), values.tolist(), strict=True)
        ]
        return msgs, float(ts[-1])


def settings_for(args: argparse.Namespace, retraining: bool) -> Settings:
    return Settings(
        model=ModelSettings(hidden_size=args.hidden),
        training=TrainingSettings(epochs=args.epochs, seed=args.seed),
        scoring=ScoringSettings(),
        retraining=RetrainingSettings(
            enabled=retraining,
            interval_points=1,  # a run is due at every due check: back-to-back runs
            max_windows=args.max_windows,
            threads=1,
        ),
    )


async def run_phase(
    kind: str,
    pipe: Pipeline,
    feed: Feed,
    settings: Settings,
    args: argparse.Namespace,
) -> Phase:
    phase = Phase(kind)
    retrainer = Retrainer(pipe, settings, staged_swaps=True) if kind == "on" else None
    period = args.batch / args.rate
    running_batches = 0
    monitor = LagRecorder(args.lag_interval)
    await monitor.start()
    start = time.perf_counter()
    deadline = start + args.seconds
    next_tick = start
    try:
        while (now := time.perf_counter()) < deadline:
            if now < next_tick:
                await asyncio.sleep(next_tick - now)
            next_tick += period
            msgs, ts = feed.batch(args.batch)
            t0 = time.perf_counter()
            pipe.process(msgs, now=ts)
            dt_s = time.perf_counter() - t0
            phase.batches.append(dt_s)
            phase.busy_s += dt_s
            phase.points += len(msgs)
            if retrainer is not None:
                t0 = time.perf_counter()
                results = await retrainer.poll(ts, start=True)
                phase.polls.append(time.perf_counter() - t0)
                for r in results:
                    phase.runs[r.result] = phase.runs.get(r.result, 0) + 1
                running_batches += bool(retrainer.running())
            else:
                await asyncio.sleep(0)  # the poll's await, as with retraining off in the runner
            if time.perf_counter() - next_tick > 1.0:
                next_tick = time.perf_counter()  # behind by a second: do not burst to catch up
    finally:
        phase.seconds = time.perf_counter() - start
        await monitor.stop()
        if retrainer is not None:
            retrainer.close()
    phase.lag = monitor.samples
    phase.training_share = running_batches / max(len(phase.batches), 1)
    await asyncio.sleep(0.3)  # a cancelled run ends at its next mini-batch
    return phase


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile, as LoopLagMonitor.recent computes its p99."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def summary(phases: list[Phase]) -> dict[str, Any]:
    lag = [x for p in phases for x in p.lag]
    batches = [x for p in phases for x in p.batches]
    points = sum(p.points for p in phases)
    runs: dict[str, int] = {}
    for p in phases:
        for k, v in p.runs.items():
            runs[k] = runs.get(k, 0) + v
    return {
        "phases": len(phases),
        "seconds": sum(p.seconds for p in phases),
        "points": points,
        "fed_points_per_s": points / sum(p.seconds for p in phases),
        "capacity_points_per_s": points / sum(p.busy_s for p in phases),
        "batch_p50_ms": 1e3 * pct(batches, 0.5),
        "batch_p99_ms": 1e3 * pct(batches, 0.99),
        "lag_samples": len(lag),
        "lag_p50_ms": 1e3 * pct(lag, 0.5),
        "lag_p99_ms": 1e3 * pct(lag, 0.99),
        "lag_max_ms": 1e3 * max(lag, default=math.nan),
        "training_share": float(np.mean([p.training_share for p in phases])),
        # The retrainer's own work on the loop: sampling windows, swapping weights in.
        "poll_max_ms": 1e3 * max((x for p in phases for x in p.polls), default=0.0),
        "poll_total_s": sum(x for p in phases for x in p.polls),
        "runs": runs,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: seconds, not minutes")
    ap.add_argument("--streams", type=int, default=None, help="streams (2,000; quick 200)")
    ap.add_argument("--rate", type=float, default=None, help="points/s fed (50,000; quick 10,000)")
    ap.add_argument("--batch", type=int, default=1024, help="points per batch (run.batch_size)")
    ap.add_argument("--seconds", type=float, default=None, help="per phase (15; quick 2)")
    ap.add_argument("--rounds", type=int, default=None, help="off+on rounds (2; quick 1)")
    ap.add_argument("--lag-interval", type=float, default=0.005, help="lag sampling period, s")
    ap.add_argument("--hidden", type=int, default=32, help="LSTM width (model.hidden_size)")
    ap.add_argument("--epochs", type=int, default=30, help="training.epochs (default 30)")
    ap.add_argument(
        "--max-windows", type=int, default=4096, help="retraining.max_windows (default 4096)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures to FILE")
    args = ap.parse_args(argv)
    quick = args.quick
    args.streams = args.streams or (200 if quick else 2000)
    args.rate = args.rate or (10_000.0 if quick else 50_000.0)
    args.seconds = args.seconds or (2.0 if quick else 15.0)
    args.rounds = args.rounds or (1 if quick else 2)
    return args


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    off_settings, on_settings = settings_for(args, False), settings_for(args, True)
    pipe = Pipeline(off_settings, "bench")
    feed = Feed(args.streams, args.seed)
    t0 = time.perf_counter()
    fill = args.streams * off_settings.streams.buffer_len
    while feed.i < fill:
        msgs, ts = feed.batch(args.batch)
        pipe.process(msgs, now=ts)
    t1 = time.perf_counter()
    # A short run (3 epochs) is enough to load the kernels and leave the cold start.
    short = on_settings.model_copy(
        update={"training": on_settings.training.model_copy(update={"epochs": 3})}
    )
    warm = Retrainer(pipe, short)
    first = warm.run_due(ts)
    warm.close()
    print(
        f"warm-up: {fill:,} points in {t1 - t0:.1f} s, one inline run "
        f"({', '.join(r.result for r in first) or 'none'}) in {time.perf_counter() - t1:.1f} s",
        flush=True,
    )
    phases: dict[str, list[Phase]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for kind in ("off", "on") if r % 2 == 0 else ("on", "off"):
            settings = on_settings if kind == "on" else off_settings
            p = await run_phase(kind, pipe, feed, settings, args)
            phases[kind].append(p)
            print(
                f"round {r + 1}/{args.rounds} {kind:>3}: "
                f"{p.points / p.seconds:>9,.0f} points/s fed, "
                f"capacity {p.points / p.busy_s:>9,.0f} points/s, lag p99 "
                f"{1e3 * pct(p.lag, 0.99):6.2f} ms, training {100 * p.training_share:3.0f} %"
                + (f", runs {p.runs}" if kind == "on" else ""),
                flush=True,
            )
    return {k: summary(v) for k, v in phases.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The retrainer's log lines (one per run) would drown the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    print(
        f"retrain_lag: {args.streams:,} streams, {args.rate:,.0f} points/s in batches of "
        f"{args.batch}, H={args.hidden}, {args.rounds} x ({args.seconds:g} s off + "
        f"{args.seconds:g} s on) | {cpu_model()}, {os.cpu_count()} CPUs, load "
        f"{load_start[0]:.2f} | numba {numba.__version__}, numpy {np.__version__}",
        flush=True,
    )
    figures = asyncio.run(bench(args))
    off, on = figures["off"], figures["on"]
    print(f"{'':13}{'lag p50':>9}{'lag p99':>9}{'lag max':>9}{'batch p99':>11}{'capacity':>14}")
    # The loop's own share of retraining: _prepare (ring copies) and the swap's steps.
    for kind, f in (("retrain off", off), ("retrain on", on)):
        print(
            f"{kind:<13}{f['lag_p50_ms']:>6.2f} ms{f['lag_p99_ms']:>6.2f} ms"
            f"{f['lag_max_ms']:>6.1f} ms{f['batch_p99_ms']:>8.2f} ms"
            f"{f['capacity_points_per_s']:>10,.0f} p/s"
        )
    print(
        f"retraining on the loop: longest poll {on['poll_max_ms']:.1f} ms, "
        f"{on['poll_total_s']:.2f} s in all over {on['seconds']:.0f} s"
    )
    ratios = {
        "lag_p50": on["lag_p50_ms"] / off["lag_p50_ms"],
        "lag_p99": on["lag_p99_ms"] / off["lag_p99_ms"],
        "capacity": on["capacity_points_per_s"] / off["capacity_points_per_s"],
    }
    print(
        f"retrain_lag {args.streams:,} streams at {args.rate:,.0f} points/s: lag p99 "
        f"{off['lag_p99_ms']:.2f} ms off, {on['lag_p99_ms']:.2f} ms with retraining "
        f"(ratio {ratios['lag_p99']:.2f}; p50 ratio {ratios['lag_p50']:.2f}); capacity "
        f"{off['capacity_points_per_s']:,.0f} -> {on['capacity_points_per_s']:,.0f} points/s "
        f"(ratio {ratios['capacity']:.2f}); a run in progress {100 * on['training_share']:.0f} % "
        f"of the time, runs {on['runs']}; bound lag p99 <= {LAG_P99_BOUND_MS:g} ms with "
        f"retraining: {'met' if on['lag_p99_ms'] <= LAG_P99_BOUND_MS else 'NOT met'}"
    )
    if args.json is not None:
        result = {
            "benchmark": "retrain_lag",
            "started_utc": started.isoformat(timespec="seconds"),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "env": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "numba": numba.__version__,
                "git": git_revision(),
                "cpu": cpu_model(),
                "cpus": os.cpu_count(),
                "loadavg_start": load_start,
                "loadavg_end": os.getloadavg(),
                "switch_interval_s": sys.getswitchinterval(),
            },
            "off": off,
            "on": on,
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
