"""A staged model swap: scoring goes on with the old weights while a worker replays, and at
the switch every stream holds the new weights' state over its own inputs."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.testing as npt
import orjson
import pytest

from detector.config import ModelSettings, ScoringSettings, Settings, StreamSettings
from detector.model.params import LSTMParams
from detector.retrain.replay import replay_state
from detector.retrain.scheduler import Retrainer
from detector.retrain.staged_swap import LOOP_STEPS, StagedSwap
from detector.stream.pipeline import ModelGroup, Pipeline
from tests.reference import lstm_numpy

W = 32  # ring length: worker rounds leave out the oldest W // 8 = 4 inputs


class Deferred:
    """An executor whose work runs only when the test says so (a worker that is slow)."""

    def __init__(self) -> None:
        self.queue: list[tuple[Any, Future[None]]] = []

    def submit(self, fn: Any) -> Future[None]:
        future: Future[None] = Future()
        self.queue.append((fn, future))
        return future

    def run(self, fail: bool = False) -> int:
        done, self.queue = self.queue, []
        for fn, future in done:
            if fail:
                future.set_exception(RuntimeError("replay failed"))
            else:
                fn()
                future.set_result(None)
        return len(done)


class Feed:
    """A pipeline on a random model, and every stream's model inputs in the order scored
    (read back from the ring after each batch), to check replays against."""

    def __init__(self, seed: int = 3) -> None:
        settings = Settings(
            model=ModelSettings(hidden_size=6),
            streams=StreamSettings(buffer_len=W),
            scoring=ScoringSettings(warmup=5),
        )
        self.pipe = Pipeline(settings, "t")
        self.group: ModelGroup = self.pipe.groups[0]
        self.rng = np.random.default_rng(seed)
        self.group.swap_model(LSTMParams.init(self.group.shape, self.rng), "old")
        self.new = LSTMParams.init(self.group.shape, self.rng)
        self.inputs: dict[tuple[int, str], list[np.ndarray]] = {}
        self.t = 0

    def points(self, counts: dict[str, int], partition: int = 0) -> list[Any]:
        """``counts[stream]`` points per stream, interleaved, in batches of fewer than W
        points per stream (so the ring still holds each batch's inputs afterwards);
        returns the scores kept."""
        scores = []
        left = dict(counts)
        while any(left.values()):
            now = {s: min(n, W - 1) for s, n in left.items()}
            left = {s: n - now[s] for s, n in left.items()}
            scores += self._batch(now, partition)
        return scores

    def _batch(self, counts: dict[str, int], partition: int) -> list[Any]:
        messages = []
        for k in range(max(counts.values())):
            self.t += 1
            messages += [
                orjson.dumps(
                    {"stream": s, "ts": 1e9 + 60 * self.t, "value": float(self.rng.normal(5, 2))}
                )
                for s, n in counts.items()
                if k < n
            ]
        out = self.pipe.process(messages, now=0.0, partition=partition, keep_scores=True)
        table = self.group.tables[partition]
        for s, n in counts.items():
            if not n:
                continue
            slot = table.slot_of[s]
            history = self.inputs.setdefault((partition, s), [])
            inputs, _ = table.ring_window(slot)  # the last min(seen, W), oldest first
            new = int(table.seen[slot]) - len(history)
            history += list(inputs[len(inputs) - new :])
        assert out.scores is not None
        return out.scores

    def forget(self, stream: str, partition: int = 0) -> None:
        self.group.tables[partition].remove(stream)
        del self.inputs[(partition, stream)]

    def check_new_state(self, swap: StagedSwap, partition: int = 0) -> None:
        """Every stream of the partition holds the new weights' h, c and prediction after
        its inputs from where its replay started to its newest."""
        table = self.group.tables[partition]
        origins = swap.origins(partition)
        params = self.new.astype(np.float64)
        for (p, stream), history in self.inputs.items():
            if p != partition:
                continue
            slot = table.slot_of[stream]
            seen = int(table.seen[slot])
            origin = int(origins[slot])
            assert 0 <= origin < seen and seen - origin <= len(history)
            x = np.array(history[origin:seen], np.float64)
            y, h, c = lstm_numpy.forward(params.tensors(), params.shape, x[:, None])
            npt.assert_allclose(table.h[slot], h[:, 0], rtol=2e-5, atol=2e-5, err_msg=stream)
            npt.assert_allclose(table.c[slot], c[:, 0], rtol=2e-5, atol=2e-5, err_msg=stream)
            npt.assert_allclose(table.pred[slot], y[-1, 0], rtol=2e-5, atol=2e-5)


def streams(n: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def test_a_swap_small_enough_for_the_loop_equals_an_inline_replay():
    feed, twin = Feed(), Feed()
    for f in (feed, twin):
        f.points(dict.fromkeys(streams(20), 20))
        f.points({"s000": 25, "s001": 3})
    swap = StagedSwap(feed.group, feed.new, "new", Deferred().submit, loop_steps=10**9)
    assert swap.advance()
    twin.group.swap_model(twin.new, "new")
    replay_state(twin.group.tables[0], twin.group.params)
    for name in ("hc", "rec"):
        assert np.array_equal(
            getattr(feed.group.tables[0], name), getattr(twin.group.tables[0], name)
        )
    assert feed.group.version == "new" and swap.rounds == 0


def test_scoring_goes_on_with_the_old_weights_and_the_switch_catches_up():
    feed, twin = Feed(), Feed()  # the twin never swaps: scores until the switch must match
    ids = streams(30)
    both = (feed, twin)
    for f in both:
        f.points(dict.fromkeys(ids, 40))
    worker = Deferred()
    swap = StagedSwap(feed.group, feed.new, "new", worker.submit, loop_steps=40)
    assert not swap.advance() and len(worker.queue) == 1  # round 0 went to the worker

    def step(counts: dict[str, int], partition: int = 0) -> None:
        scored = [f.points(counts, partition) for f in both]
        for a, b in zip(*scored, strict=True):
            assert np.array_equal(a.score, b.score)
            assert np.array_equal(a.predicted, b.predicted, equal_nan=True)

    # While round 0 is out: a few points for most streams, many (past the margin, so the
    # oldest inputs it reads are overwritten) for one, a new stream, a row given to
    # another stream, and a partition that did not exist when the swap began.
    step({s: 1 + i % 3 for i, s in enumerate(ids[:20])} | {"s029": 12, "new-a": 7})
    reused = feed.group.tables[0].slot_of["s028"]
    for f in both:
        f.forget("s028")
    step({"new-b": 3})
    assert feed.group.tables[0].slot_of["new-b"] == reused
    step({"p1-a": 30, "p1-b": 9}, partition=1)
    assert feed.group.tables[0].slot_of["new-b"] == twin.group.tables[0].slot_of["new-b"]
    assert worker.run() == 1
    rounds = 1
    while not swap.advance():
        assert feed.group.version == "old"
        step({s: 1 for s in ids[:3]})
        worker.run()
        rounds += 1
        assert rounds < 10
    assert feed.group.version == "new" and swap.done
    assert swap.loop_steps_run <= 40  # the loop's own share: the last, small round
    for partition in (0, 1):
        feed.check_new_state(swap, partition)
    origins = swap.origins(0)
    table = feed.group.tables[0]
    # A stream that scored nothing during the swap was replayed once, by the worker, over
    # its newest W - W // 8 inputs; the one that overran the margin was replayed again.
    assert origins[table.slot_of["s025"]] == 40 - (W - W // 8)
    assert origins[table.slot_of["s029"]] > 40 - (W - W // 8)


def test_a_swap_under_real_concurrency_ends_in_the_new_state():
    feed = Feed(seed=11)
    ids = streams(300)
    feed.points(dict.fromkeys(ids, 40))
    with ThreadPoolExecutor(1) as pool:
        swap = StagedSwap(feed.group, feed.new, "new", pool.submit, loop_steps=200)
        batches = 0
        while not swap.advance():
            chosen = feed.rng.choice(len(ids), 50, replace=False)
            feed.points({ids[i]: int(feed.rng.integers(1, 4)) for i in chosen})
            batches += 1
            assert batches < 10_000
    assert swap.rounds >= 1 and feed.group.version == "new"
    feed.check_new_state(swap)


def test_weights_that_do_not_fit_are_refused_at_once():
    feed = Feed()
    other = Pipeline(Settings(model=ModelSettings(hidden_size=7)), "t").groups[0]
    bigger = LSTMParams.init(other.shape, np.random.default_rng(0))
    with pytest.raises(ValueError, match="hidden"):
        StagedSwap(feed.group, bigger, "x", Deferred().submit)


def _retrainer(feed: Feed, worker: Deferred) -> Retrainer:
    """On enough streams that round 0 (28 steps each) is too big for the loop."""
    feed.points(dict.fromkeys(streams(2 * LOOP_STEPS // (W - W // 8)), 40))
    return Retrainer(feed.pipe, feed.pipe.settings, executor=worker, staged_swaps=True)  # type: ignore[arg-type]


def test_the_retrainer_puts_requested_weights_into_effect_through_poll():
    feed, worker = Feed(), Deferred()
    retrainer = _retrainer(feed, worker)
    retrainer.request_swap(feed.group, feed.new, "new")
    assert retrainer.swapping() == {"default": "new"}
    asyncio.run(retrainer.poll(0.0, start=False))
    assert len(worker.queue) == 1 and feed.group.version == "old"
    retrainer.request_swap(feed.group, feed.new, "new")  # on its way: nothing more to do
    assert retrainer.swapping() == {"default": "new"} and len(worker.queue) == 1
    for _ in range(10):
        asyncio.run(retrainer.poll(0.0, start=False))
        worker.run()
        if feed.group.version == "new":
            break
    assert feed.group.version == "new" and retrainer.swapping() == {}


def test_a_newer_request_supersedes_a_swap_under_way_and_a_failed_one_changes_nothing():
    feed, worker = Feed(), Deferred()
    retrainer = _retrainer(feed, worker)
    retrainer.request_swap(feed.group, feed.new, "first")
    asyncio.run(retrainer.poll(0.0, start=False))  # round 0 is out
    newest = LSTMParams.init(feed.group.shape, np.random.default_rng(9))
    retrainer.request_swap(feed.group, newest, "second")
    assert retrainer.swapping() == {"default": "second"}
    for _ in range(10):
        worker.run()
        asyncio.run(retrainer.poll(0.0, start=False))
    assert feed.group.version == "second" and retrainer.swapping() == {}

    before = feed.group.tables[0].hc.copy()
    retrainer.request_swap(feed.group, feed.new, "third")
    asyncio.run(retrainer.poll(0.0, start=False))
    worker.run(fail=True)
    asyncio.run(retrainer.poll(0.0, start=False))
    assert feed.group.version == "second" and retrainer.swapping() == {}
    assert np.array_equal(feed.group.tables[0].hc, before)
