"""When and how a model group retrains, and how new weights go live.

A :class:`Retrainer` watches the groups of one :class:`~detector.stream.pipeline.Pipeline`
on an explicit clock (``now``, passed in: wall time in the daemon, data time in a replay):

- a group is due when ``retraining.interval_s`` passed since its last run, or (when
  ``retraining.interval_points`` > 0) that many of its points were scored since; a group
  still on the untrained persistence start runs as soon as its rings hold
  ``retraining.min_windows`` windows;
- a run samples windows from the rings (:mod:`detector.retrain.sampler`), holds a fraction
  (``training.val_fraction``) out, trains a copy of the group's current weights on the rest
  (warm start, :func:`detector.model.train.train`), and scores the current and the
  candidate weights on the held-out windows. The candidate is accepted only when
  ``candidate_loss < current_loss * (1 - retraining.tolerance)``;
- accepted weights are published to the registry (when there is one) and put into effect:
  every stream's h, c and next prediction are re-derived from its ring under the new
  weights. In the service (``staged_swaps``) that replay runs on the pool while scoring
  goes on (:mod:`detector.retrain.staged_swap`), and an accepted run is reported once its
  weights are in effect; otherwise it runs inline
  (:func:`detector.retrain.replay.replay_state`).

Two ways to drive it. In the service (the event loop never trains)::

    await retrainer.maybe_start(now)   # between batches: due groups start in the pool
    await retrainer.poll(now)          # between batches: start due runs, advance swaps
    retrainer.apply_registry_changes() # now and then: pointer switches (rollbacks)

and synchronously, for deterministic replays (evaluation): ``retrainer.run_due(now)``
trains inline and applies before returning.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import structlog
from numpy.typing import NDArray

from detector.config import Settings, TrainingSettings
from detector.model.params import LSTMParams
from detector.model.train import TrainReport, evaluate_loss, train, validation_count
from detector.retrain.registry import (
    ModelRegistry,
    RegistryError,
    VersionMeta,
    version_of,
)
from detector.retrain.replay import replay_state
from detector.retrain.sampler import Ring, count_windows, windows_from_rings
from detector.retrain.staged_swap import StagedSwap
from detector.stream.pipeline import UNTRAINED, ModelGroup, Pipeline
from detector.stream.state import DT_MEAN, StreamStateTable

log = structlog.get_logger(__name__)

Outcome = Literal["accepted", "rejected", "skipped", "failed"]
CALENDAR_NAMES = ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos")
# A run needs windows to train on (train() holds some out for early stopping) and windows
# to judge on: with fewer than this it is skipped whatever retraining.min_windows says.
_FEWEST_WINDOWS = 3
_HISTORY = 100  # results kept in Retrainer.history
# A runner polls every batch; whether a run is due reads every row of the group's tables,
# so that check is made at most this often (wall clock), never per batch.
_DUE_CHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class RetrainResult:
    """What one run did; ``version`` is the group's version after it."""

    group: str
    result: Outcome
    seconds: float
    windows: int
    current_loss: float | None  # the parent's loss on the held-out windows
    candidate_loss: float | None  # the candidate's, on the same windows
    version: str
    parent: str  # the version the run started from
    started_at: float  # the clock value the run started at
    reason: str = ""
    epochs: int = 0  # epochs trained (early stopping may end a run before training.epochs)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Rings:
    """Copies of the rings a run cuts its windows from: taken on the loop in one gather
    per table (:meth:`StreamStateTable.ring_windows`), cut in the pool."""

    inputs: NDArray[np.floating]  # (S, W, n_inputs), oldest first, aligned on the newest
    anomalous: NDArray[np.bool_]  # (S, W)
    buffered: NDArray[np.int64]  # (S,) the last buffered[k] entries of row k are inputs

    def rings(self) -> list[Ring]:
        W = self.inputs.shape[1]
        return [
            (self.inputs[k, W - n :], self.anomalous[k, W - n :])
            for k, n in enumerate(self.buffered.tolist())
        ]


@dataclass(frozen=True, slots=True)
class _Job:
    """Everything a training run needs, copied off the live tables (the run never reads
    them, so scoring goes on while it trains)."""

    group: str
    parent: str
    params: LSTMParams  # a copy of the group's current weights
    rings: _Rings
    rng: np.random.Generator  # draws the windows' sample (after the streams' on the loop)
    estimate: int  # windows estimated at a cold start (-1 otherwise)
    training: TrainingSettings  # with this run's seed
    tolerance: float
    started_at: float
    prepare_s: float
    meta: VersionMeta  # for the registry, if the candidate is accepted (windows: 0)


@dataclass(frozen=True, slots=True)
class _Trained:
    job: _Job
    result: Outcome
    seconds: float
    windows: int
    candidate: LSTMParams | None = None
    version: str | None = None  # of the accepted candidate
    current_loss: float | None = None
    candidate_loss: float | None = None
    reason: str = ""
    epochs: int = 0


@dataclass(slots=True)
class _GroupState:
    last_run: float | None = None  # clock value of the last run's start
    runs: int = 0
    trained: bool = False  # a run got as far as training (ends the cold start)
    cold_estimate: int = -1  # windows estimated at the last cold start that was skipped
    seen_at_run: dict[int, NDArray[np.int32]] = field(default_factory=dict)
    job: Future[_Trained] | None = None


@dataclass(slots=True)
class _PendingSwap:
    """Weights on their way into effect, and the accepted run to report when they are."""

    swap: StagedSwap
    result: RetrainResult | None
    started: float = field(default_factory=time.perf_counter)


class _Cancelled(Exception):
    """Raised inside training (from its batch callback) when the retrainer closes."""


class Retrainer:
    """Retraining schedule and model swaps for every group of one pipeline."""

    def __init__(
        self,
        pipeline: Pipeline,
        settings: Settings,
        registry: ModelRegistry | None = None,
        *,
        executor: Executor | None = None,
        staged_swaps: bool = False,
    ) -> None:
        """``staged_swaps``: new weights go into effect through a :class:`StagedSwap`
        advanced by :meth:`poll` (the service); otherwise at once, inline."""
        self.pipeline = pipeline
        self.settings = settings
        self.registry = registry
        self.config = settings.retraining
        self.history: deque[RetrainResult] = deque(maxlen=_HISTORY)
        self.counts: Counter[str] = Counter()
        self._state = {g.name: _GroupState() for g in pipeline.groups}
        self._executor = executor
        self._own_executor = executor is None
        self._cancel = threading.Event()
        self._pending: list[RetrainResult] = []  # superseded swaps' runs, reported later
        self.staged_swaps = staged_swaps
        self._swaps: dict[str, _PendingSwap] = {}
        self._last_due_check = -float("inf")
        W, T = settings.streams.buffer_len, settings.training.window_len
        if self.config.enabled and W < T:
            log.warning(
                "retraining_impossible",
                reason="streams.buffer_len is shorter than training.window_len",
                buffer_len=W,
                window_len=T,
            )

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={self.counts[k]}" for k in sorted(self.counts))
        running = sum(st.job is not None for st in self._state.values())
        return (
            f"Retrainer(groups={len(self._state)}, running={running}, "
            f"swapping={len(self._swaps)}, {counts})"
        )

    def __enter__(self) -> Retrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop: a run in progress ends at its next batch; nothing more is applied."""
        self._cancel.set()
        self._swaps.clear()  # a shadow being replayed is dropped; the old weights stay
        if self._executor is not None and self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ schedule

    def due(self, now: float) -> list[ModelGroup]:
        """Groups whose run is due at clock ``now`` (not already running, and no new
        weights on their way into effect)."""
        if not self.config.enabled:
            return []
        return [
            g
            for g in self.pipeline.groups
            if self._state[g.name].job is None
            and g.name not in self._swaps
            and self._is_due(g, self._state[g.name], now)
        ]

    def _is_due(self, group: ModelGroup, st: _GroupState, now: float) -> bool:
        if group.version == UNTRAINED and not st.trained:
            estimate = self._window_estimate(group)
            if estimate >= self._fewest() and estimate > st.cold_estimate:
                return True
        if st.last_run is None or now < st.last_run:  # start the clock (or it went back)
            st.last_run = now
            return False
        if now - st.last_run >= self.config.interval_s:
            return True
        return (
            self.config.interval_points > 0
            and self._points_since(group, st) >= self.config.interval_points
        )

    def _fewest(self) -> int:
        return max(self.config.min_windows, _FEWEST_WINDOWS)

    def _window_estimate(self, group: ModelGroup) -> int:
        """Windows the rings give at most (before anomalous ones are left out)."""
        W, T = group.layout.buffer_len, self.settings.training.window_len
        stride = self.settings.training.stride
        return sum(count_windows(np.minimum(t.seen, W), T, stride) for t in group.tables.values())

    def _points_since(self, group: ModelGroup, st: _GroupState) -> int:
        total = 0
        for partition, table in group.tables.items():
            seen = table.seen
            before = np.zeros_like(seen)
            old = st.seen_at_run.get(partition)
            if old is not None:
                k = min(old.size, seen.size)
                before[:k] = old[:k]
            # A stream that started over (gap reset, or a reused row) counts from zero.
            total += int(np.where(seen >= before, seen - before, seen).sum())
        return total

    # ------------------------------------------------------------------ running

    async def maybe_start(self, now: float) -> list[str]:
        """Start the due groups' runs in the thread pool; returns the groups started. Only
        picking the streams and copying their rings (at most ``max_windows`` streams) runs
        here."""
        started = []
        for group in self.due(now):
            job = self._prepare(group, now)
            self._state[group.name].job = self._pool().submit(self._train, job)
            started.append(group.name)
        return started

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.config.threads, thread_name_prefix="retrain"
            )
        return self._executor

    async def poll(self, now: float, start: bool = True) -> list[RetrainResult]:
        """For a runner, between every two batches: start due runs (``start``: this instance
        trains), checked at most every ``_DUE_CHECK_S``, and advance the swaps under way;
        returns the finished runs (accepted ones once their weights are in effect)."""
        mono = time.monotonic()
        if start and mono - self._last_due_check >= _DUE_CHECK_S:
            self._last_due_check = mono
            await self.maybe_start(now)
        return self.apply_finished() + self.advance_swaps()

    def apply_finished(self) -> list[RetrainResult]:
        """Put finished runs into effect (call between batches); returns their results,
        and those of runs whose swap was superseded. With ``staged_swaps`` an accepted run
        is returned by :meth:`advance_swaps` once its weights are live."""
        results, self._pending = self._pending, []
        for group in self.pipeline.groups:
            st = self._state[group.name]
            if st.job is None or not st.job.done():
                continue
            future, st.job = st.job, None
            result = self._apply(group, future.result())
            if result is not None:
                results.append(result)
        return results

    def swapping(self) -> dict[str, str]:
        """Group -> version of the weights on their way into effect."""
        return {name: pending.swap.version for name, pending in self._swaps.items()}

    def advance_swaps(self) -> list[RetrainResult]:
        """One step of every swap under way (between batches); returns the accepted runs
        whose weights went into effect, and those whose swap failed."""
        results = []
        for name, pending in list(self._swaps.items()):
            try:
                if not pending.swap.advance():
                    continue
            # A failed replay must not stop scoring: the old weights stay in effect.
            except Exception as exc:  # noqa: BLE001
                del self._swaps[name]
                reason = f"model swap failed: {type(exc).__name__}: {exc}"
                version = pending.swap.version
                log.error("model_swap_failed", group=name, version=version, error=reason)
                self._restore_pointer(pending.swap.group)
                if pending.result is not None:
                    failed = dataclasses.replace(pending.result, result="failed", reason=reason)
                    results.append(self._record(failed))
                continue
            del self._swaps[name]
            self._state[name].trained = True
            if pending.result is not None:
                elapsed = time.perf_counter() - pending.started
                done = dataclasses.replace(pending.result, seconds=pending.result.seconds + elapsed)
                results.append(self._record(done))
        return results

    def _restore_pointer(self, group: ModelGroup) -> None:
        """After a failed swap the registry's current version is the one in effect."""
        if self.registry is None or group.version == UNTRAINED:
            return
        try:
            self.registry.set_current(group.name, group.version)
        except RegistryError as exc:
            log.error("registry_pointer_not_restored", group=group.name, error=str(exc))

    def running(self) -> list[str]:
        return [name for name, st in self._state.items() if st.job is not None]

    def run_due(self, now: float) -> list[RetrainResult]:
        """Run every due group inline and put accepted weights into effect: the
        deterministic mode (evaluation replays, tests). Blocks for the training."""
        results = []
        for group in self.due(now):
            result = self._apply(group, self._train(self._prepare(group, now)))
            if result is not None:
                results.append(result)
        return results

    def _prepare(self, group: ModelGroup, now: float) -> _Job:
        """On the loop: pick the streams and copy their rings (bounded by ``max_windows``
        streams); the pool cuts the windows and trains."""
        t0 = time.perf_counter()
        st = self._state[group.name]
        cold = group.version == UNTRAINED and not st.trained
        estimate = self._window_estimate(group) if cold else -1
        st.last_run = now
        st.runs += 1
        st.seen_at_run = {p: t.seen.copy() for p, t in group.tables.items()}
        tcfg = self.settings.training
        seeds = np.random.SeedSequence([tcfg.seed, group.index, st.runs])
        rng = np.random.default_rng(seeds)
        rings, data = self._collect(group, rng)
        data["clock"] = now
        job = _Job(
            group=group.name,
            parent=group.version,
            params=group.params.copy(),
            rings=rings,
            rng=rng,
            estimate=estimate,
            training=tcfg.model_copy(update={"seed": int(seeds.generate_state(1)[0])}),
            tolerance=self.config.tolerance,
            started_at=now,
            prepare_s=time.perf_counter() - t0,
            meta=VersionMeta(
                feature_names=feature_names(group),
                parent=group.version,
                source="retrain",
                windows=0,
                data=data,
                normalization=self._normalization(),
            ),
        )
        streams = data["streams"]
        log.info("retraining_started", group=group.name, streams=streams, parent=group.version)
        return job

    def _collect(
        self, group: ModelGroup, rng: np.random.Generator
    ) -> tuple[_Rings, dict[str, Any]]:
        """The rings to cut windows from, and what they cover. With more streams than
        ``max_windows`` a random ``max_windows`` of them are read (each gives at least one
        window), so the cost of a run does not grow with the number of streams."""
        T = self.settings.training.window_len
        picked: list[tuple[StreamStateTable, NDArray[np.int64]]] = []
        for table in group.tables.values():
            slots = table.live_slots()
            slots = slots[np.minimum(table.seen[slots], table.layout.buffer_len) >= T]
            if slots.size:
                picked.append((table, slots))
        total = sum(s.size for _, s in picked)
        if total > self.config.max_windows:
            keep = np.zeros(total, np.bool_)
            keep[rng.choice(total, self.config.max_windows, replace=False)] = True
            cuts = np.cumsum([0] + [s.size for _, s in picked]).tolist()
            picked = [
                (t, s[keep[lo:hi]])
                for (t, s), lo, hi in zip(picked, cuts[:-1], cuts[1:], strict=True)
            ]
        parts = [table.ring_windows(slots) for table, slots in picked]
        W, n_inputs = group.layout.buffer_len, group.layout.n_inputs
        rings = _Rings(
            np.concatenate([p[0] for p in parts]) if parts else np.empty((0, W, n_inputs)),
            np.concatenate([p[1] for p in parts]) if parts else np.empty((0, W), np.bool_),
            np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.int64),
        )
        points, first, last = int(rings.buffered.sum()), np.inf, -np.inf
        for table, slots in picked:
            n = np.minimum(table.seen[slots], table.layout.buffer_len)
            last = max(last, float(table.last_ts[slots].max()))
            spans = (n - 1) * table.err[slots, DT_MEAN]
            first = min(first, float((table.last_ts[slots] - spans).min()))
        data: dict[str, Any] = {
            "streams": len(rings.buffered),
            "points": points,
            "first_ts": first if np.isfinite(first) else None,  # estimated from intervals
            "last_ts": last if np.isfinite(last) else None,
        }
        return rings, data

    def _normalization(self) -> dict[str, Any]:
        s = self.settings.streams
        return {
            "method": "online_ewma",
            "norm_span": s.norm_span,
            "norm_clip": s.norm_clip,
            "input_clip": s.input_clip,
            "min_std": s.min_std,
        }

    def _train(self, job: _Job) -> _Trained:
        """Train, judge and (when accepted and there is a registry) publish; runs in a
        pool thread or inline. Never raises: a failure is a "failed" result."""
        t0 = time.perf_counter()
        n = 0
        try:
            windows = windows_from_rings(
                job.rings.rings(),
                job.training.window_len,
                job.training.stride,
                self.config.max_windows,
                job.rng,
                persistent=self.config.persistent_fraction,
            )
            n = len(windows)
            if n < self._fewest():
                reason = f"{n} usable windows; at least {self._fewest()} needed"
                return _Trained(job, "skipped", time.perf_counter() - t0, n, reason=reason)
            return self._train_and_judge(job, windows, t0)
        except _Cancelled:
            return _Trained(job, "failed", time.perf_counter() - t0, n, reason="cancelled")
        # A failed run must not stop scoring: the current model stays, the error is reported
        # in the result and logged by _apply (with its type, so a bug is still visible).
        except Exception as exc:  # noqa: BLE001
            reason = f"{type(exc).__name__}: {exc}"
            return _Trained(job, "failed", time.perf_counter() - t0, n, reason=reason)

    def _train_and_judge(self, job: _Job, windows: NDArray[np.floating], t0: float) -> _Trained:
        tcfg = job.training
        rng = np.random.default_rng(tcfg.seed)
        n_hold = validation_count(len(windows), tcfg.val_fraction)
        order = rng.permutation(len(windows))
        held = windows[np.sort(order[:n_hold])]
        n_out = job.params.shape.n_outputs
        x_held, y_held = held[:, :-1, :], held[:, 1:, :n_out]

        def on_batch(_n: int) -> None:
            if self._cancel.is_set():
                raise _Cancelled

        dtype = np.float32 if tcfg.dtype == "float32" else np.float64
        trained, report = train(
            windows[np.sort(order[n_hold:])], job.params.astype(dtype), tcfg, on_batch=on_batch
        )
        # Both judged as they would serve: in float32.
        current = job.params.astype(np.float32)
        candidate = trained.astype(np.float32)
        current_loss = evaluate_loss(current, x_held, y_held, tcfg.washout)
        candidate_loss = evaluate_loss(candidate, x_held, y_held, tcfg.washout)
        better = np.isfinite(candidate_loss) and (
            not np.isfinite(current_loss) or candidate_loss < current_loss * (1 - job.tolerance)
        )
        cur, cand = _finite(current_loss), _finite(candidate_loss)
        if not better:
            reason = f"candidate loss {candidate_loss:.6g} vs current {current_loss:.6g}"
            if job.tolerance:
                reason += f" (tolerance {job.tolerance:g})"
            return _Trained(
                job,
                "rejected",
                time.perf_counter() - t0,
                len(windows),
                reason=reason,
                current_loss=cur,
                candidate_loss=cand,
                epochs=len(report.epochs),
            )
        version = version_of(candidate)
        if self.registry is not None:
            meta = job.meta
            training = {"report": _report(report), "settings": tcfg.model_dump(mode="json")}
            version = self.registry.publish(
                job.group,
                candidate,
                VersionMeta(
                    feature_names=meta.feature_names,
                    parent=meta.parent,
                    source=meta.source,
                    candidate_loss=candidate_loss,
                    parent_loss=current_loss,
                    windows=len(windows),
                    data=meta.data,
                    training=training,
                    normalization=meta.normalization,
                ),
                make_current=False,  # the pointer moves when the weights go live
            )
        return _Trained(
            job,
            "accepted",
            time.perf_counter() - t0,
            len(windows),
            candidate,
            version,
            current_loss=cur,
            candidate_loss=cand,
            epochs=len(report.epochs),
        )

    def _apply(self, group: ModelGroup, done: _Trained) -> RetrainResult | None:
        """Report a finished run and put accepted weights into effect; None when they are
        on their way (a staged swap reports the run when they arrive)."""
        t0 = time.perf_counter()
        result, reason, version = done.result, done.reason, group.version
        st = self._state[group.name]
        if result == "skipped":  # a cold start retries when more windows may exist
            st.cold_estimate = done.job.estimate
        else:
            st.trained = True  # it got as far as training: the cold start is over
        staged: StagedSwap | None = None
        if result == "accepted" and (group.version != done.job.parent or group.name in self._swaps):
            result = "rejected"
            changed = self.swapping().get(group.name, group.version)
            reason = (
                f"the group's model changed from {done.job.parent} to {changed} "
                "during training (a rollback or another run)"
            )
        elif result == "accepted" and done.candidate is not None and done.version is not None:
            try:
                if self.registry is not None:
                    self.registry.set_current(group.name, done.version)
                if self.staged_swaps:
                    staged = self._staged_swap(group, done.candidate, done.version)
                else:
                    self.swap(group, done.candidate, done.version)
                version = done.version
            except (RegistryError, ValueError) as exc:
                result, reason = "failed", f"{type(exc).__name__}: {exc}"
        report = RetrainResult(
            group=group.name,
            result=result,
            seconds=done.job.prepare_s + done.seconds + time.perf_counter() - t0,
            windows=done.windows,
            current_loss=done.current_loss,
            candidate_loss=done.candidate_loss,
            version=version,
            parent=done.job.parent,
            started_at=done.job.started_at,
            reason=reason,
            epochs=done.epochs,
        )
        if staged is not None:
            self._swaps[group.name] = _PendingSwap(staged, report)
            return None
        return self._record(report)

    def _record(self, r: RetrainResult) -> RetrainResult:
        self.history.append(r)
        self.counts[r.result] += 1
        level = log.error if r.result == "failed" else log.info
        level("retraining_finished", **r.as_dict())
        return r

    # ------------------------------------------------------------------ swaps

    def request_swap(
        self, group: ModelGroup, params: LSTMParams, version: str, *, at_once: bool = False
    ) -> None:
        """Put weights into effect for ``group``: through a staged swap in the service
        (unless ``at_once``), else now. Nothing to do when ``version`` is in effect or on
        its way; a newer request replaces one under way. ValueError if they do not fit."""
        if version in (group.version, self.swapping().get(group.name)):
            return
        if self.staged_swaps and not at_once:
            self._swaps[group.name] = _PendingSwap(self._staged_swap(group, params, version), None)
        else:
            self._drop_swap(group.name, superseded_by=version)
            self.swap(group, params, version)

    def _staged_swap(self, group: ModelGroup, params: LSTMParams, version: str) -> StagedSwap:
        swap = StagedSwap(group, params, version, self._pool().submit)
        self._drop_swap(group.name, superseded_by=version)
        return swap

    def _drop_swap(self, name: str, superseded_by: str) -> None:
        """A swap under way gives way to newer weights; its run, if any, reports so."""
        pending = self._swaps.pop(name, None)
        if pending is None:
            return
        version = pending.swap.version
        log.info("model_swap_superseded", group=name, version=version, by=superseded_by)
        if pending.result is not None:
            reason = f"superseded by {superseded_by} before its weights went into effect"
            failed = dataclasses.replace(pending.result, result="failed", reason=reason)
            self._pending.append(self._record(failed))

    def swap(self, group: ModelGroup, params: LSTMParams, version: str) -> int:
        """Put weights into effect for ``group`` now (between batches) and re-derive every
        stream's h, c and prediction from its ring; returns the streams replayed."""
        t0 = time.perf_counter()
        parent = group.version
        group.swap_model(params, version)
        streams = sum(replay_state(table, group.params) for table in group.tables.values())
        st = self._state.get(group.name)
        if st is not None:
            st.trained = True
        log.info(
            "model_swapped",
            group=group.name,
            version=version,
            previous=parent,
            streams_replayed=streams,
            seconds=round(time.perf_counter() - t0, 4),
        )
        return streams

    def apply_registry_changes(self) -> list[tuple[str, str]]:
        """Swap in versions another process made current (``detector model rollback``);
        returns (group, version) of each swap started (staged ones are in effect once
        :meth:`poll` has advanced them). Call it now and then between batches."""
        if self.registry is None:
            return []
        by_name = {g.name: g for g in self.pipeline.groups}
        applied = []
        for change in self.registry.poll_changes():
            group = by_name.get(change.group)
            if group is None or change.version in (
                group.version,
                self.swapping().get(group.name),
            ):
                continue
            try:
                self.request_swap(group, change.params, change.version)
            except ValueError as exc:
                log.error(
                    "model_version_incompatible",
                    group=change.group,
                    version=change.version,
                    error=str(exc),
                )
                continue
            applied.append((group.name, change.version))
        return applied

    def load_registry_models(self) -> list[tuple[str, str]]:
        """At start: every group with a current version in the registry runs it (restored
        streams are replayed through it); returns (group, version) of each swap."""
        if self.registry is None:
            return []
        loaded = []
        for group in self.pipeline.groups:
            current = self.registry.current_params(group.name)
            if current is not None and current[0] != group.version:
                self.swap(group, current[1], current[0])
                loaded.append((group.name, current[0]))
        return loaded


def feature_names(group: ModelGroup) -> tuple[str, ...]:
    """Names of a group's model inputs, as model files record them."""
    values = group.field_names if group.settings.layout == "vector" else ("value",)
    return (*values, *(CALENDAR_NAMES if group.config.calendar else ()))


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _report(report: TrainReport) -> dict[str, Any]:
    d = report.to_dict()
    d["epochs"] = len(report.epochs)  # the per-epoch figures are in the logs
    return d
