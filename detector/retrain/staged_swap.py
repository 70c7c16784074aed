"""New weights going live in the service without pausing scoring.

:func:`~detector.retrain.replay.replay_state` re-derives every stream's h, c and prediction
from its ring in one call: W LSTM steps per stream, a second or more of event-loop time on
a large table. A :class:`StagedSwap` does the same work on a worker thread while the loop
goes on scoring with the old weights, into a shadow copy of each table's h and c, in rounds:

- round 0 replays every stream from zero state through its newest ``W - margin`` inputs;
- each later round steps, from the shadow state, only the inputs scored since the row's
  last round (a catch-up), and replays again the rows that changed identity (a stream
  evicted and its row given to another, a new stream, a gap reset) or whose inputs the loop
  may have overwritten while the worker read them;
- once a round is at most ``loop_steps`` LSTM steps it runs on the loop between two
  batches, and the switch follows at once: the group takes the new weights, each table
  takes its shadow h and c (a reference swap, not a copy) and its rows' predictions.

The loop's share per call of :meth:`StagedSwap.advance` is therefore at most ``loop_steps``
steps plus a few vector operations over each table's rows (O(streams), no per-stream
Python). Rounds shrink geometrically as long as the worker replays faster than points
arrive; after ``max_rounds`` the last round runs on the loop whatever its size.

Why the worker reads the live ring safely: the loop takes every snapshot of ``seen``
between batches, so the entries a round reads were complete when it was handed them; the
loop writes a stream's next input at ``seen % W`` and overwrites position p only once the
stream has scored W more points, which the next round's planning checks for (``lo``). The
``margin`` oldest entries are left out of worker replays so that a few new points do not
force a stream to start over.

A gap reset restarts a stream's ``seen`` at 0; it is recognised when ``seen`` went back,
so a reset stream that scored as many points as it had before within one round keeps its
pre-reset shadow state: a state the stream really had, briefly stale, never another
stream's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import structlog
from numpy.typing import NDArray

from detector.model.params import LSTMParams
from detector.retrain.replay import REPLAY_CHUNK, replay_rows
from detector.stream.pipeline import ModelGroup
from detector.stream.scoring import check_compatible
from detector.stream.state import StreamStateTable

log = structlog.get_logger(__name__)

LOOP_STEPS = 16_384  # a round this small runs on the loop: ~2 ms at H = 32
MAX_ROUNDS = 8
_NO_READS = np.int64(1) << np.int64(62)  # `lo` of rows the running round does not read

Submit = Callable[[Callable[[], None]], "Future[None]"]


@dataclass(frozen=True, slots=True)
class _Round:
    """One table's share of a round: rows, their ring positions and their start state."""

    ring: NDArray[np.int16]  # float16 bits (replay_rows)
    rows: NDArray[np.int64]
    start: NDArray[np.int64]
    stop: NDArray[np.int64]
    fresh: NDArray[np.bool_]
    keys: NDArray[np.int64]

    @property
    def steps(self) -> int:
        return int((self.stop - self.start).sum())


class _Shadow:
    """The new weights' h, c and predictions of one table's rows, being brought up to date.

    ``done[row]``: the shadow holds the row's state after its inputs before this ``seen``
    (-1: not replayed); ``origin[row]``: where its last replay from zero started; ``key``:
    the row's identity then (:meth:`StreamStateTable.row_keys`); ``lo``: the oldest ring
    position the running round reads.
    """

    def __init__(self, table: StreamStateTable) -> None:
        self.table = table
        self.hc = table.blank_hc()
        capacity, dtype = table.capacity, table.hc.dtype
        self.pred = np.zeros((capacity, table.layout.n_values), dtype)
        self.done = np.full(capacity, -1, np.int64)
        self.origin = np.zeros(capacity, np.int64)
        self.key = np.full(capacity, -1, np.int64)
        self.lo = np.full(capacity, _NO_READS, np.int64)

    def fit(self) -> None:
        """Follow the table's growth (between rounds only: a worker holds the arrays)."""
        old = self.done.size
        if self.table.capacity == old:
            return
        hc = self.table.blank_hc()
        hc[:old] = self.hc
        self.hc = hc
        for name, fill in (("pred", 0), ("done", -1), ("origin", 0), ("key", -1)):
            array = getattr(self, name)
            grown = np.full((self.table.capacity, *array.shape[1:]), fill, array.dtype)
            grown[:old] = array
            setattr(self, name, grown)
        lo = np.full(self.table.capacity, _NO_READS, np.int64)
        lo[:old] = self.lo
        self.lo = lo

    def plan(self, margin: int) -> _Round:
        """The rows that are not up to date, and what each must step (no bookkeeping)."""
        table = self.table
        W = table.layout.buffer_len
        live = table.live_slots()
        seen = table.seen[live]
        keys = table.row_keys(live)
        done = self.done[live]
        stale = (
            (done < 0)
            | (keys != self.key[live])
            | (seen < done)  # a gap reset
            | (seen >= self.lo[live] + W)  # the loop may have overwritten what was read
            | (seen - done > W - margin)  # the inputs to catch up on are partly gone
        )
        todo = stale | (seen > done)
        stop = seen[todo]
        fresh = stale[todo]
        start = np.where(fresh, stop - np.minimum(stop, W - margin), done[todo])
        # The worker reads the ring only: the inputs still in the rows' tails go there now,
        # on the loop's thread (the kernel later copies the same bits to the same places).
        ring = table.ring_bits(live[todo])
        return _Round(ring, live[todo], start, stop, fresh, keys[todo])

    def record(self, r: _Round) -> None:
        """Bookkeeping for a round about to run: afterwards the rows are up to date."""
        self.lo[:] = _NO_READS
        self.lo[r.rows] = r.start
        self.done[r.rows] = r.stop
        self.key[r.rows] = r.keys
        self.origin[r.rows[r.fresh]] = r.start[r.fresh]

    def run(self, r: _Round, params: LSTMParams) -> None:
        replay_rows(
            r.ring,
            r.rows,
            r.start,
            r.stop,
            r.fresh,
            params.theta,
            params.shape,
            self.hc,
            self.pred,
            REPLAY_CHUNK,
        )

    def adopt(self) -> None:
        """The table takes the shadow's h, c and its rows' predictions."""
        live = self.table.live_slots()
        self.table.adopt_hc(self.hc)
        self.table.pred[live] = self.pred[live]


class StagedSwap:
    """Put ``params`` (as ``version``) into effect for ``group`` without pausing scoring.

    Call :meth:`advance` between batches until it returns True; ``submit`` runs a round on
    a worker thread (e.g. ``executor.submit``). Raises ValueError at once if the weights do
    not fit the group.
    """

    def __init__(
        self,
        group: ModelGroup,
        params: LSTMParams,
        version: str,
        submit: Submit,
        *,
        loop_steps: int = LOOP_STEPS,
        max_rounds: int = MAX_ROUNDS,
    ) -> None:
        params = params.astype(np.float32)
        check_compatible(group.layout, params, group.config)
        self.group, self.params, self.version = group, params, version
        self.loop_steps, self.max_rounds = loop_steps, max_rounds
        self.margin = max(1, group.layout.buffer_len // 8)
        self._submit = submit
        self._shadows: dict[int, _Shadow] = {}
        self._worker: Future[None] | None = None
        self.rounds = 0  # rounds run on the worker
        self.worker_steps = 0
        self.loop_steps_run = 0  # of the last round (on the loop)
        self.loop_seconds = 0.0  # the loop's time in advance(), all calls
        self.done = False
        self._started = time.perf_counter()

    def __repr__(self) -> str:
        return (
            f"StagedSwap(group={self.group.name!r}, version={self.version!r}, "
            f"rounds={self.rounds}, done={self.done})"
        )

    def advance(self) -> bool:
        """Between batches: plan and start the next round, or run the last one and switch.
        Returns True once the new weights are in effect."""
        if self.done:
            return True
        if self._worker is not None:
            if not self._worker.done():
                return False
            worker, self._worker = self._worker, None
            worker.result()  # a failed round fails the swap
        t0 = time.perf_counter()
        shadows = self._sync_shadows()
        rounds = [(shadow, shadow.plan(self.margin)) for shadow in shadows]
        steps = sum(r.steps for _, r in rounds)
        if steps > self.loop_steps and self.rounds < self.max_rounds:
            for shadow, r in rounds:
                shadow.record(r)
            self._worker = self._submit(lambda: self._run(rounds))
            self.rounds += 1
            self.worker_steps += steps
        else:
            # The last round: between these two batches, so no margin is needed.
            rounds = [(shadow, shadow.plan(0)) for shadow in shadows]
            for shadow, r in rounds:
                shadow.record(r)
            self._run(rounds)
            self.loop_steps_run = sum(r.steps for _, r in rounds)
            self._switch(shadows)
        self.loop_seconds += time.perf_counter() - t0
        return self.done

    def _sync_shadows(self) -> list[_Shadow]:
        """A shadow per table of the group now (partitions come and go during a swap)."""
        shadows = {}
        for partition, table in self.group.tables.items():
            shadow = self._shadows.get(partition)
            if shadow is None or shadow.table is not table:
                shadow = _Shadow(table)
            shadow.fit()
            shadows[partition] = shadow
        self._shadows = shadows
        return list(shadows.values())

    def _run(self, rounds: list[tuple[_Shadow, _Round]]) -> None:
        for shadow, r in rounds:
            shadow.run(r, self.params)

    def _switch(self, shadows: list[_Shadow]) -> None:
        previous = self.group.version
        self.group.swap_model(self.params, self.version)
        for shadow in shadows:
            shadow.adopt()
        self.done = True
        log.info(
            "model_swapped",
            group=self.group.name,
            version=self.version,
            previous=previous,
            streams_replayed=sum(len(s.table) for s in shadows),
            rounds=self.rounds + 1,
            worker_steps=self.worker_steps,
            last_round_steps=self.loop_steps_run,
            loop_ms=round(1e3 * self.loop_seconds, 2),
            seconds=round(time.perf_counter() - self._started, 4),
        )

    def origins(self, partition: int) -> NDArray[np.int64]:
        """Per row of the partition's table: the ``seen`` at which its replay from zero
        state started (for tests and diagnostics)."""
        return self._shadows[partition].origin
