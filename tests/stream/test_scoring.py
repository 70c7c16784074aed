"""The scoring kernel against its point-by-point reference, and its stream-level rules."""

from __future__ import annotations

import math

import numpy as np
import numpy.testing as npt
import pytest
from pydantic import ValidationError

from detector.config import ScoringSettings, StreamSettings
from detector.model.params import LSTMParams, make_shape
from detector.stream.scoring import (
    CALENDAR_FEATURES,
    DROPPED,
    GAP_CONTINUED,
    GAP_RESET,
    NO_PREDICTION,
    REPLAYED,
    SCORED,
    ScoringConfig,
    score_batch,
)
from detector.stream.state import (
    MAX_ESCALATION_WINDOW,
    OFFSET_SET,
    SEEN_LIMIT,
    TAIL,
    StreamStateTable,
    TableLayout,
    seen_rewind,
    wrapped_seen,
)
from detector.stream.threshold import tail_scores
from tests.reference.stream_scoring import RefScorer, ref_tail_score

STATUS = {
    "scored": SCORED,
    "no_prediction": NO_PREDICTION,
    "dropped": DROPPED,
    "replayed": REPLAYED,
}
GAPS = {"": 0, "reset": GAP_RESET, "continued": GAP_CONTINUED}


def make_group(
    scoring: ScoringSettings,
    streams: StreamSettings,
    *,
    D: int = 1,
    hidden: int = 8,
    layers: int = 1,
    calendar: bool = False,
    dtype: str = "float64",
    seed: int = 0,
    persistence: bool = False,
) -> tuple[StreamStateTable, LSTMParams, ScoringConfig]:
    n_inputs = D + (CALENDAR_FEATURES if calendar else 0)
    shape = make_shape(n_inputs=n_inputs, n_outputs=D, hidden=hidden, layers=layers, residual=True)
    init = LSTMParams.init_persistence if persistence else LSTMParams.init
    params = init(shape, np.random.default_rng(seed), np.dtype(dtype).type)
    E = scoring.dynamic_window if scoring.mode == "dynamic" else 0
    layout = TableLayout(layers, hidden, D, n_inputs, streams.buffer_len, E, dtype)
    table = StreamStateTable(layout, streams.max_streams, initial_capacity=2)
    return table, params, ScoringConfig.from_settings(scoring, streams, calendar)


def synthetic_points(
    rng: np.random.Generator,
    n: int,
    n_streams: int,
    D: int,
    interval: float = 60.0,
    shift_std: float = 5.0,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Interleaved noisy sine streams with spikes, level shifts (of shift_std), disorder
    and gaps."""
    keys, ts, values = [], [], []
    clock = np.zeros(n_streams)
    level = rng.normal(0, 10, size=(n_streams, D))
    for _ in range(n):
        k = int(rng.integers(n_streams))
        step = interval
        u = rng.random()
        if u < 0.02:
            step = -2 * interval  # out of order
        elif u < 0.03:
            step = 0.0  # duplicate timestamp
        elif u < 0.04:
            step = interval * 50  # a gap
        clock[k] += step
        v = level[k] + np.sin(clock[k] / (10 * interval)) + rng.normal(0, 0.1, D)
        if rng.random() < 0.02:
            v = v + rng.choice([-1, 1]) * rng.uniform(3, 8, D)  # spike
        if rng.random() < 0.005:
            level[k] += rng.normal(0, shift_std, D)  # level shift
        keys.append(f"s{k}")
        ts.append(1_700_000_000.0 + clock[k])
        values.append(v)
    return keys, np.array(ts), np.array(values).reshape(n, D)


def replayed_offsets(rng: np.random.Generator, keys: list[str]) -> np.ndarray:
    """Input offsets for the points: increasing, except that ~3% of the points repeat the
    offset of an earlier point of their stream (a replay), and ~1% carry none (-1)."""
    offsets = np.arange(len(keys), dtype=np.int64)
    last: dict[str, int] = {}
    for i, key in enumerate(keys):
        u = rng.random()
        if u < 0.03 and key in last:
            offsets[i] = last[key] - int(rng.integers(0, 2))  # at or below the stream's
        elif u < 0.04:
            offsets[i] = -1
        if offsets[i] >= 0:
            last[key] = max(last.get(key, -1), int(offsets[i]))
    return offsets


def run_batches(table, params, config, keys, ts, values, batch: int, offsets=None):
    results = []
    for lo in range(0, len(keys), batch):
        hi = lo + batch
        slots = table.slots(keys[lo:hi], now=0.0)
        offs = None if offsets is None else offsets[lo:hi]
        out = score_batch(table, params, config, slots, ts[lo:hi], values[lo:hi], offs)
        results.append(out)
    cat = lambda name: np.concatenate([getattr(r, name) for r in results])  # noqa: E731
    names = ("status", "gap", "score", "alert", "escalated", "predicted", "error")
    return {n: cat(n) for n in names}


CASES = {
    "zscore": dict(scoring=ScoringSettings(mode="zscore", warmup=10, threshold=0.12)),
    "zscore-hysteresis": dict(
        scoring=ScoringSettings(
            mode="zscore", warmup=10, threshold=0.08, hysteresis_k=2, hysteresis_n=3, cooldown=4
        )
    ),
    "likelihood": dict(scoring=ScoringSettings(mode="likelihood", warmup=10, threshold=0.12)),
    "dynamic": dict(
        scoring=ScoringSettings(
            mode="dynamic", warmup=10, dynamic_window=32, dynamic_refresh=4, min_error_std=0.01
        )
    ),
    "zscore-escalation": dict(  # a short cooldown, then only higher scores alert
        scoring=ScoringSettings(
            mode="zscore", warmup=10, threshold=0.08, cooldown=2, escalation_window=40
        )
    ),
    "likelihood-plain-cooldown": dict(  # no escalation
        scoring=ScoringSettings(
            mode="likelihood", warmup=10, threshold=0.12, cooldown=10, escalation_window=10
        )
    ),
    "likelihood-no-novelty": dict(
        scoring=ScoringSettings(
            mode="likelihood", warmup=10, threshold=0.12, novelty_scale=0.0, cooldown=10
        )
    ),
    "likelihood-persistence-forecast": dict(  # the baseline: the previous input
        scoring=ScoringSettings(
            mode="likelihood", warmup=10, threshold=0.12, forecast="persistence"
        )
    ),
    "likelihood-novelty": dict(
        scoring=ScoringSettings(mode="likelihood", warmup=10, threshold=0.5, novelty_scale=0.2)
    ),
    "zscore-learn-normal": dict(  # the statistics leave out points that exceed
        scoring=ScoringSettings(
            mode="zscore", warmup=10, threshold=0.12, stats_span=50, stats_learn_all=False
        )
    ),
    "likelihood-learn-normal": dict(
        scoring=ScoringSettings(
            mode="likelihood", warmup=10, threshold=0.12, stats_span=50, stats_learn_all=False
        )
    ),
    "vector-calendar-2layers": dict(
        scoring=ScoringSettings(mode="zscore", warmup=10, threshold=0.12),
        D=3,
        layers=2,
        calendar=True,
    ),
    "gap-continue": dict(
        scoring=ScoringSettings(mode="likelihood", warmup=10, threshold=0.12),
        streams=StreamSettings(gap_policy="continue", buffer_len=16),
    ),
    # Short runs, so that the synthetic shifts end many, of streams that run for days (a
    # run starts only after a stream's first day), with shifts beyond the range their
    # spikes span (a run starts only on a value far outside it).
    "level-shifts": dict(
        scoring=ScoringSettings(mode="likelihood", warmup=10, threshold=0.12),
        streams=StreamSettings(level_shift_points=6, level_shift_std=2.0, buffer_len=16),
        interval=900.0,
        points=3000,
        shift_std=30.0,
        shifts=True,
    ),
    "level-shifts-short-ring-calendar": dict(  # runs longer than the ring, across tail ends
        scoring=ScoringSettings(mode="zscore", warmup=10, threshold=0.12),
        streams=StreamSettings(level_shift_points=12, level_shift_std=1.5, buffer_len=5),
        calendar=True,
        interval=900.0,
        points=3000,
        shift_std=30.0,
        shifts=True,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_equals_point_by_point_reference(case: str) -> None:
    """Every output and the final state, replayed points (input offsets) included, and
    the ring's inputs and anomaly marks after every batch."""
    spec = dict(CASES[case])
    scoring = spec.pop("scoring")
    streams = spec.pop("streams", StreamSettings(buffer_len=16, gap_policy="reset"))
    shifts = spec.pop("shifts", False)
    interval, n = spec.pop("interval", 60.0), spec.pop("points", 1500)
    shift_std = spec.pop("shift_std", 5.0)
    D = spec.get("D", 1)
    table, params, config = make_group(scoring, streams, **spec)
    params.tensors()["head.V2"][:] *= 0.1  # near persistence: spikes stand out of the noise
    rng = np.random.default_rng(7)
    keys, ts, values = synthetic_points(rng, n, 5, D, interval, shift_std)
    offsets = replayed_offsets(rng, keys)
    ref = RefScorer(params, scoring, streams, calendar=spec.get("calendar", False))
    want, parts, marked = [], [], 0
    for lo in range(0, len(keys), 97):  # batch by batch, the ring's marks compared after each
        hi = lo + 97
        batch = (keys[lo:hi], ts[lo:hi], values[lo:hi], offsets[lo:hi])
        parts.append(run_batches(table, params, config, *batch[:3], 97, batch[3]))
        ref.new_batch()
        want += [ref.point(k, t, v, int(o)) for k, t, v, o in zip(*batch, strict=True)]
        for key, stream in ref.streams.items():
            inputs, marks = table.ring_window(key)
            npt.assert_array_equal(marks, stream.marks)
            ring = np.array(stream.ring).reshape(inputs.shape)
            npt.assert_allclose(inputs, ring, rtol=1e-7, atol=1e-9)
            marked += int(marks.sum())
    got = {n: np.concatenate([part[n] for part in parts]) for n in parts[0]}

    npt.assert_array_equal(got["status"], [STATUS[r.status] for r in want])
    npt.assert_array_equal(got["gap"], [GAPS[r.gap] for r in want])
    npt.assert_allclose(got["score"], [r.score for r in want], rtol=1e-7, atol=1e-9)
    npt.assert_array_equal(got["alert"], [r.alert for r in want])
    npt.assert_array_equal(got["escalated"], [r.escalation for r in want])
    npt.assert_allclose(got["error"], [r.error for r in want], rtol=1e-7, atol=1e-9)
    ref_pred = [r.predicted if r.predicted is not None else np.full(D, np.nan) for r in want]
    npt.assert_allclose(got["predicted"], ref_pred, rtol=1e-7, atol=1e-9)
    # The cases must exercise what they claim to.
    assert got["alert"].sum() >= 3, "no alerts: the comparison would prove little"
    assert (got["status"] == DROPPED).any()
    assert (got["status"] == REPLAYED).any()
    assert (got["gap"] != 0).any()
    if scoring.mode == "dynamic":
        assert ref.pruned > 0, "pruning never removed a run: the case proves little"
    assert marked > 0, "no ring entry was ever marked: comparing marks would prove little"
    if shifts:
        assert ref.level_shifts >= 3, "few level shifts: the case proves little"
    for key, s in ref.streams.items():
        slot = table.slot_of[key]
        npt.assert_allclose(table.h[slot], s.h, rtol=1e-7, atol=1e-9)
        npt.assert_allclose(table.c[slot], s.c, rtol=1e-7, atol=1e-9)
        npt.assert_allclose(table.x_mean[slot], s.mean, rtol=1e-9)
        npt.assert_allclose(table.pred[slot], s.pred, rtol=1e-7, atol=1e-9)
        assert table.seen[slot] == s.seen
        assert table.offset_of(key) == s.offset
        inputs, marks = table.ring_window(key)
        npt.assert_allclose(inputs, np.array(s.ring).reshape(inputs.shape), rtol=1e-7, atol=1e-9)
        npt.assert_array_equal(marks, s.marks)


def test_batch_size_does_not_change_results() -> None:
    """One point per call, odd batches and one big batch give the same scores (waves)."""
    scoring = ScoringSettings(mode="zscore", warmup=5, threshold=0.3)
    keys, ts, values = synthetic_points(np.random.default_rng(3), 600, n_streams=3, D=1)
    runs = []
    for batch in (1, 13, 600):
        table, params, config = make_group(scoring, StreamSettings(buffer_len=8), dtype="float32")
        runs.append(run_batches(table, params, config, keys, ts, values, batch))
    for other in runs[1:]:
        npt.assert_array_equal(other["status"], runs[0]["status"])
        npt.assert_allclose(other["score"], runs[0]["score"], rtol=1e-5, atol=1e-6)
        npt.assert_array_equal(other["alert"], runs[0]["alert"])


def test_spike_on_a_steady_stream_alerts_once_past_warmup() -> None:
    # (Without the novelty score: Gaussian noise reaches new extremes by chance.)
    scoring = ScoringSettings(mode="zscore", warmup=50, novelty_scale=0.0)
    table, params, config = make_group(scoring, StreamSettings(), dtype="float32", persistence=True)
    rng = np.random.default_rng(0)
    n = 400
    values = (10 + rng.normal(0, 0.1, n)).reshape(n, 1)
    values[300] += 5.0
    ts = 1_700_000_000.0 + 60.0 * np.arange(n)
    out = run_batches(table, params, config, ["a"] * n, ts, values, batch=64)
    assert np.flatnonzero(out["alert"]).tolist() == [300]
    assert out["score"][300] >= 0.5
    assert np.all((out["score"] >= 0) & (out["score"] <= 1))


@pytest.mark.parametrize("window", [5, 50])
def test_after_the_cooldown_only_a_higher_score_alerts_until_the_window_ends(window: int) -> None:
    """One-point spikes (each errs on its way up and back; the smoothed error peaks on the
    return). Cooldown 5: the stream is silent after the alert at 201, even on a higher
    score (204). Escalation window 50: then a lower score (211) does not alert, a higher one
    (221) does, and once the window is over a lower one (281) does again. With a window of
    5 (a plain cooldown) every exceeding point after the cooldown alerts."""
    scoring = ScoringSettings(
        mode="zscore", warmup=50, threshold=0.2, novelty_scale=0.0, peaks_quantile=0.0,
        stats_learn_all=False, cooldown=5, escalation_window=window,
        min_error_std=1.0,  # the scores the steps need
    )  # fmt: skip
    table, params, config = make_group(scoring, StreamSettings(), dtype="float32", persistence=True)
    rng = np.random.default_rng(0)
    n = 400
    values = (10 + rng.normal(0, 0.1, n)).reshape(n, 1)
    for at, height in ((200, 0.7), (203, 1.4), (210, 0.7), (220, 2.0), (280, 0.7)):
        values[at] += height
    ts = 1_700_000_000.0 + 60.0 * np.arange(n)
    out = run_batches(table, params, config, ["a"] * n, ts, values, batch=64)
    score = out["score"]
    # The scores this test needs
    assert score[204] > score[201] > score[211] >= 0.2 > score[207:211].max()
    assert score[221] > score[201] > score[281] >= 0.2
    alerts = np.flatnonzero(out["alert"]).tolist()
    assert alerts == ([201, 221, 281] if window == 50 else [201, 211, 221, 281])
    assert np.flatnonzero(out["escalated"]).tolist() == ([221] if window == 50 else [])


def test_no_alerts_during_warmup() -> None:
    scoring = ScoringSettings(mode="zscore", warmup=100)
    table, params, config = make_group(scoring, StreamSettings(), dtype="float32", persistence=True)
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.1, (100, 1))
    values[70] += 100.0
    ts = 1_700_000_000.0 + np.arange(100.0)
    out = run_batches(table, params, config, ["a"] * 100, ts, values, batch=100)
    assert out["score"][70] > 0.5  # scored, just not allowed to alert
    assert not out["alert"].any()


def test_out_of_order_and_duplicate_points_are_dropped_without_touching_state() -> None:
    table, params, config = make_group(ScoringSettings(), StreamSettings(), dtype="float32")
    ts = np.array([10.0, 20.0, 15.0, 20.0, 30.0])
    values = np.array([[1.0], [2.0], [99.0], [99.0], [3.0]])
    out = run_batches(table, params, config, ["a"] * 5, ts, values, batch=5)
    assert out["status"].tolist() == [NO_PREDICTION, SCORED, DROPPED, DROPPED, SCORED]
    slot = table.slot_of["a"]
    assert table.seen[slot] == 3
    assert table.last_ts[slot] == 30.0
    assert table.x_mean[slot, 0] < 10  # 99 never entered the statistics


@pytest.mark.parametrize("policy", ["reset", "continue"])
def test_gap_policies(policy: str) -> None:
    streams = StreamSettings(gap_policy=policy, gap_factor=5.0)
    table, params, config = make_group(ScoringSettings(), streams, dtype="float32")
    ts = np.concatenate([60.0 * np.arange(20), [60.0 * 19 + 60.0 * 6], [60.0 * 19 + 60.0 * 7]])
    values = np.linspace(0, 1, ts.size).reshape(-1, 1)
    out = run_batches(table, params, config, ["a"] * ts.size, ts, values, batch=ts.size)
    slot = table.slot_of["a"]
    assert out["gap"][:20].tolist() == [0] * 20
    if policy == "reset":
        assert out["gap"][20] == GAP_RESET
        assert out["status"][20] == NO_PREDICTION  # the stream starts over
        assert table.seen[slot] == 2
    else:
        assert out["gap"][20] == GAP_CONTINUED
        assert out["status"][20] == SCORED
        assert table.seen[slot] == 22
    assert out["gap"][21] == 0  # the interval estimate was not blown up by the gap


def test_wrapper_rejects_non_finite_values_and_refused_slots() -> None:
    table, params, config = make_group(ScoringSettings(), StreamSettings(), dtype="float32")
    slots = table.slots(["a", "b"], 0.0)
    with pytest.raises(ValueError, match="finite"):
        score_batch(table, params, config, slots, np.array([1.0, 2.0]), np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="slots"):
        score_batch(table, params, config, np.array([0, -1]), np.ones(2), np.ones((2, 1)))


def test_wrapper_rejects_a_model_that_does_not_fit_the_table() -> None:
    table, _, config = make_group(ScoringSettings(), StreamSettings(), hidden=8)
    other = LSTMParams.init(
        make_shape(n_inputs=1, n_outputs=1, hidden=4), np.random.default_rng(0), np.float64
    )
    slots = table.slots(["a"], 0.0)
    with pytest.raises(ValueError, match="the table needs"):
        score_batch(table, other, config, slots, np.ones(1), np.ones((1, 1)))


@pytest.mark.parametrize("mode", ["zscore", "dynamic"])
def test_replay_after_restore_equals_an_uninterrupted_run(mode: str) -> None:
    """Kafka replay: the state is saved after offset 599, the consumer restarts from an
    older committed offset (450): the points it sees again are skipped as REPLAYED, and
    everything after them is as if the process had never stopped."""
    scoring = ScoringSettings(  # novelty: alerts to restore in the dynamic mode too
        mode=mode, warmup=10, threshold=0.15, dynamic_window=16, novelty_scale=0.03
    )
    streams = StreamSettings(buffer_len=8)
    # 10-minute points: the streams pass a day (novelty) before the restore
    keys, ts, values = synthetic_points(
        np.random.default_rng(5), 900, n_streams=4, D=1, interval=600.0
    )
    offsets = np.arange(900, dtype=np.int64) + 10_000
    table, params, config = make_group(scoring, streams, dtype="float32")
    whole = run_batches(table, params, config, keys, ts, values, batch=50, offsets=offsets)

    first, params, config = make_group(scoring, streams, dtype="float32")
    run_batches(first, params, config, keys[:600], ts[:600], values[:600], 50, offsets[:600])
    saved = {key: first.stream_bytes(key) for key in first}
    second = StreamStateTable(first.layout, max_streams=100)
    for key, data in saved.items():
        second.restore_stream(key, data, now=0.0)
        assert second.offset_of(key) == first.offset_of(key)
    rest = run_batches(
        second, params, config, keys[450:], ts[450:], values[450:], 64, offsets[450:]
    )  # other batch boundaries too: replayed points sit anywhere in a batch

    assert (rest["status"][:150] == REPLAYED).all()
    assert np.isnan(rest["error"][:150]).all() and not rest["alert"][:150].any()
    for name in ("status", "gap", "score", "alert", "error", "predicted"):
        npt.assert_allclose(rest[name][150:], whole[name][600:], rtol=1e-5, atol=1e-6)
    assert whole["alert"][600:].any()


def test_cooldown_and_escalation_window_fit_the_records_uint16_count() -> None:
    top = MAX_ESCALATION_WINDOW
    assert ScoringSettings(cooldown=top, escalation_window=top).escalation_window == top
    for key in ("cooldown", "escalation_window"):
        with pytest.raises(ValidationError, match=key):
            ScoringSettings(**{key: top + 1})


@pytest.mark.parametrize("W", [1, 8, 256])
def test_a_restored_stream_forecasts_persistence_from_the_same_inputs(W: int) -> None:
    """The persistence forecast reads the stream's previous input from the record's tail,
    which a saved row does not hold (it is refilled from the ring). Saved
    after any count, right after a tail completed included (seen % TAIL == 1, where the
    tail's older places hold the round before), a restored stream scores on as the
    uninterrupted one."""
    n = 4 * TAIL + 40
    rng = np.random.default_rng(3)
    values = 5.0 + rng.normal(0.0, 1.0, (n, 1))
    values[::9] += 6.0  # one-point spikes
    ts = 1_700_000_000.0 + 60.0 * np.arange(n)
    keys = ["a"] * n
    scoring = ScoringSettings(mode="likelihood", warmup=10, forecast="persistence")
    streams = StreamSettings(buffer_len=W)
    table, params, config = make_group(scoring, streams, persistence=True)
    whole = run_batches(table, params, config, keys, ts, values, 16)
    for cut in (TAIL + 1, 2 * TAIL, 2 * TAIL + 1, 2 * TAIL + 2, 3 * TAIL + 3):
        first, params, config = make_group(scoring, streams, persistence=True)
        run_batches(first, params, config, keys[:cut], ts[:cut], values[:cut], 16)
        second = StreamStateTable(first.layout, max_streams=4)
        second.restore_stream("a", first.stream_bytes("a"), now=0.0)
        rest = run_batches(second, params, config, keys[cut:], ts[cut:], values[cut:], 16)
        for name in ("score", "error", "predicted"):
            npt.assert_allclose(rest[name], whole[name][cut:], rtol=1e-7, atol=1e-9)


def test_replayed_points_change_nothing_and_a_newer_one_goes_on() -> None:
    table, params, config = make_group(ScoringSettings(), StreamSettings(), dtype="float32")
    slots = table.slots(["a", "a"], now=0.0)
    score_batch(table, params, config, slots, np.array([1.0, 2.0]), np.ones((2, 1)),
                np.array([5, 7]))  # fmt: skip
    assert table.offset_of("a") == 7
    table.take_dirty()
    before = table.stream_bytes("a")
    out = score_batch(
        table, params, config, slots, np.array([3.0, 4.0]), np.ones((2, 1)), np.array([6, 7])
    )
    assert out.status.tolist() == [REPLAYED, REPLAYED]
    assert table.stream_bytes("a") == before and table.take_dirty() == []
    out = score_batch(
        table, params, config, slots[:1], np.array([1.5]), np.ones((1, 1)), np.array([8])
    )
    assert out.status.tolist() == [DROPPED]  # not newer: dropped, but the offset moves on
    assert table.offset_of("a") == 8 and table.take_dirty() == ["a"]
    out = score_batch(
        table, params, config, slots[:1], np.array([5.0]), np.ones((1, 1)), np.array([-1])
    )
    assert out.status.tolist() == [SCORED]  # no offset: no check, and the offset stays
    assert table.offset_of("a") == 8
    with pytest.raises(ValueError, match="offsets"):
        score_batch(table, params, config, slots, np.ones(2), np.ones((2, 1)), np.ones(2))


def test_points_of_one_message_share_its_offset_and_are_all_scored() -> None:
    """An Influx or Telegraf message holds several points of a stream at one offset: all
    are scored; after a save and restore, the same message again is a replay."""
    table, params, config = make_group(ScoringSettings(), StreamSettings(), dtype="float32")
    slots = table.slots(["a", "b", "a", "a"], now=0.0)
    ts, values = np.array([1.0, 1.0, 2.0, 3.0]), np.ones((4, 1))
    out = score_batch(table, params, config, slots, ts, values, np.array([5, 5, 5, 6]))
    assert out.status.tolist() == [NO_PREDICTION, NO_PREDICTION, SCORED, SCORED]
    assert table.offset_of("a") == 6 and table.offset_of("b") == 5
    assert not (table.flags & OFFSET_SET).any()  # the kernel's own, within a call
    again = StreamStateTable(table.layout, max_streams=10)
    for key in table:
        again.restore_stream(key, table.stream_bytes(key), now=0.0)
    slots = again.slots(["a", "b", "a", "a", "b"], now=0.0)
    ts, values = np.array([1.0, 1.0, 2.0, 3.0, 4.0]), np.ones((5, 1))
    out = score_batch(again, params, config, slots, ts, values, np.array([5, 5, 5, 6, 7]))
    assert out.status.tolist() == [REPLAYED] * 4 + [SCORED]


def test_tail_scores_equal_the_reference_everywhere() -> None:
    """The kernel's piecewise-polynomial tail score against scipy (via ref_tail_score):
    inside the table, beyond both ends, and at the point where the score becomes 1."""
    z = np.concatenate([np.linspace(-12.0, 12.0, 24_001), [6.361340902404056, -40.0, 40.0]])
    got = np.empty_like(z)
    tail_scores(z, got, z.size)
    want = np.array([ref_tail_score(v) for v in z])
    npt.assert_allclose(got, want, rtol=1e-7, atol=1e-14)
    assert np.all((got >= 0.0) & (got <= 1.0))


def test_novelty_scores_a_value_never_seen_once() -> None:
    """A bounded stream (a sine): a level beyond its range scores high the first time,
    a recurrence of the same level does not; off (novelty_scale 0), neither does."""
    n = 600
    values = np.sin(np.arange(n) / 10.0).reshape(n, 1)
    values[400] = values[500] = 2.0  # the range is [-1, 1]: r = 0.5 the first time
    ts = 1_700_000_000.0 + 300.0 * np.arange(n)  # past a day (novelty) by point 288
    scores = {}
    for scale in (0.0, 0.02):
        scoring = ScoringSettings(
            mode="likelihood", warmup=50, novelty_scale=scale, min_error_std=0.5
        )  # the floor the error-score bounds below were set for
        table, params, config = make_group(scoring, StreamSettings(), persistence=True)
        scores[scale] = run_batches(table, params, config, ["a"] * n, ts, values, 64)["score"]
        assert np.all((scores[scale] >= 0) & (scores[scale] <= 1))
    assert scores[0.02][400] == pytest.approx(0.5 / 0.52)
    assert scores[0.02][500] < 0.2  # seen before: only its prediction error scores
    assert scores[0.0][400] < scores[0.02][400]
    assert np.max(scores[0.02][100:400]) < 0.5  # inside the range: nothing new


def test_a_float32_table_scores_a_constant_start_as_float64_does() -> None:
    """A stream that starts on a value float32 cannot hold (0.066, as ec2_cpu_utilization
    c6585a of NAB does) and later moves: a float32 table must score it as a float64 one.
    Compared against the float64 value, the stored mean once left the constant start a
    variance of ~1e-20, which norm_clip then kept from growing: inputs clipped to +-10 and
    scores of 1 for thousands of points, and a "novel" repeat of the first value."""
    n = 1200
    rng = np.random.default_rng(5)
    values = np.full(n, 0.066)
    values[150::7] = 0.134  # from point 150 on, a regular excursion
    values[400:] += rng.normal(0.0, 0.004, n - 400)
    ts = 1_700_000_000.0 + 300.0 * np.arange(n)
    got = {}
    for dtype in ("float32", "float64"):
        scoring = ScoringSettings(mode="likelihood", warmup=100)
        table, params, config = make_group(scoring, StreamSettings(), dtype=dtype, persistence=True)
        keys = ["a"] * n
        got[dtype] = run_batches(table, params, config, keys, ts, values.reshape(n, 1), 64)
    assert got["float64"]["score"][1] == 0.0  # the same value again: nothing new
    # After the first excursions (10: beyond a spread of 0 or near it) the spread is learnt.
    assert np.max(got["float64"]["error"][600:]) < 5.0
    npt.assert_allclose(got["float32"]["error"], got["float64"]["error"], rtol=0, atol=5e-3)
    npt.assert_allclose(got["float32"]["score"], got["float64"]["score"], rtol=0, atol=5e-3)


def test_the_persistence_forecast_is_the_previous_value_whatever_the_model() -> None:
    """forecast = "persistence" scores every point against the stream's previous input
    (normalised, as the ring keeps it), whatever the model's weights; "model" scores the
    model's own forecast."""
    n = 400
    values = (10.0 * np.sin(np.arange(n) / 30.0)).reshape(n, 1)
    ts = 1_700_000_000.0 + 60.0 * np.arange(n)
    runs = {}
    for forecast in ("model", "persistence"):
        for offset in (0.0, 1.0):
            scoring = ScoringSettings(mode="likelihood", warmup=50, forecast=forecast)
            table, params, config = make_group(scoring, StreamSettings(), seed=3)
            params.tensors()["head.V2"][:] += offset  # a model far from persistence
            runs[forecast, offset] = run_batches(table, params, config, ["a"] * n, ts, values, 64)
    for name in ("score", "error", "predicted"):
        npt.assert_array_equal(runs["persistence", 0.0][name], runs["persistence", 1.0][name])
    # In the input's units through the stream's current normalisation, which has moved a
    # little since the previous point
    npt.assert_allclose(runs["persistence", 0.0]["predicted"][300:], values[299:-1], atol=0.1)
    late = slice(100, None)
    assert np.mean(runs["model", 1.0]["error"][late]) > 2.0 * np.mean(
        runs["persistence", 1.0]["error"][late]
    )


def _extrapolating_model(
    scoring: ScoringSettings,
) -> tuple[StreamStateTable, LSTMParams, ScoringConfig]:
    """A group whose model extrapolates linearly, x̃_t + (x̃_t - x̃_t-1), by hand: one LSTM
    unit holds 0.1 x̃_t, another 0.1 x̃_t-1 (gates saturated open, forget gate shut; tanh
    near linear), and the head takes 10 times their difference."""
    table, params, config = make_group(scoring, StreamSettings(), persistence=True)
    t, H = params.tensors(), params.shape.hidden
    for name in ("layer0.W", "layer0.U", "layer0.b", "head.V2"):
        t[name][:] = 0.0
    t["layer0.b"][:H] = t["layer0.b"][3 * H :] = 10.0  # input and output gates open
    t["layer0.b"][H : 2 * H] = -10.0  # forget gate shut
    t["layer0.W"][0, 2 * H] = 0.1  # unit 0: x̃_t
    t["layer0.U"][0, 2 * H + 1] = 1.0  # unit 1: unit 0 a step back
    t["head.V2"][0, 0], t["head.V2"][1, 0] = 10.0, -10.0
    return table, params, config


def test_the_model_forecast_is_scored_where_it_errs() -> None:
    """On a slow sine with one-point spikes, the extrapolating model extrapolates each spike
    on the way back (its error above 2), and that error is the point's: the model's
    forecast is what is scored, persistence is never put in its place."""
    n = 400
    rng = np.random.default_rng(4)
    values = 10.0 * np.sin(np.arange(n) / 15.0) + rng.normal(0, 0.1, n)
    spikes = np.arange(100, n, 50)
    values[spikes] += 8.0
    values = values.reshape(n, 1)
    ts = 1_700_000_000.0 + 60.0 * np.arange(n)
    scoring = ScoringSettings(mode="likelihood", warmup=50)
    table, params, config = _extrapolating_model(scoring)
    out = run_batches(table, params, config, ["a"] * n, ts, values, 64)
    assert (out["error"][spikes + 1] > 2.0).all()
    calm = np.setdiff1d(np.arange(60, n), np.concatenate([spikes, spikes + 1, spikes + 2]))
    assert np.median(out["error"][calm]) < 0.3  # the model extrapolates the sine well


@pytest.mark.parametrize("W", [256, 100])
def test_a_count_past_the_limit_steps_back_and_scoring_runs_on(W: int) -> None:
    """``seen`` (int32) steps back by whole ring lengths at SEEN_LIMIT: a stream crossing it
    scores exactly as one far below it with the same ring position."""
    scoring = ScoringSettings(mode="likelihood", warmup=10, seasonal=False)
    table, params, config = make_group(scoring, StreamSettings(buffer_len=W))
    rng = np.random.default_rng(5)
    n = 400
    values = np.repeat(rng.normal(size=(n, 1)), 2, axis=0)
    ts = np.repeat(1_700_000_000.0 + 60.0 * np.arange(n), 2)
    keys = ["near", "far"] * n
    run_batches(table, params, config, keys[:400], ts[:400], values[:400], 64)
    near, far = table.slot_of["near"], table.slot_of["far"]
    seen = int(table.seen[near])  # 200, as far's
    table.seen[far] = seen + 40 * W  # past every warm-up, and the same ring position
    table.seen[near] = seen + ((SEEN_LIMIT - 3 - seen) // W) * W
    out = run_batches(table, params, config, keys[400:], ts[400:], values[400:], 64)
    for name in ("score", "error", "predicted", "alert"):
        npt.assert_array_equal(out[name][0::2], out[name][1::2])
    assert SEEN_LIMIT - seen_rewind(W) <= table.seen[near] < SEEN_LIMIT
    assert (table.seen[near] - table.seen[far]) % W == 0
    npt.assert_array_equal(table.ring[near], table.ring[far])
    npt.assert_array_equal(table.hc[near], table.hc[far])
    # A saved count beyond the limit (int64 on the wire) comes back the same way.
    saved = np.array([5, SEEN_LIMIT - 1, SEEN_LIMIT, SEEN_LIMIT + 7 * W + 3, 3 * SEEN_LIMIT])
    back = wrapped_seen(saved, W)
    assert back[0] == 5 and back[1] == SEEN_LIMIT - 1
    assert np.all(back < SEEN_LIMIT) and np.all(back[2:] >= SEEN_LIMIT - seen_rewind(W))
    assert np.all((back - saved) % W == 0)


def _daily_square_wave(days: int, skip_day: int) -> tuple[np.ndarray, np.ndarray]:
    """5-minute points of a daily square wave (high 08:00-16:00 UTC) with a little noise;
    day ``skip_day`` has no high phase."""
    rng = np.random.default_rng(5)
    ts = 1_700_006_400.0 + 300.0 * np.arange(days * 288)  # starts at 00:00 UTC
    hour = (ts % 86_400.0) / 3600.0
    high = (hour >= 8) & (hour < 16) & ((ts - ts[0]) // 86_400 != skip_day)
    values = np.where(high, 80.0, 20.0) + rng.normal(0.0, 1.0, ts.size)
    return ts, values.reshape(-1, 1)


@pytest.mark.parametrize("seasonal", [True, False])
def test_seasonal_score_sees_a_missing_daily_peak(seasonal: bool) -> None:
    """A day without its peak: the LSTM (memory shorter than a day) predicts the low phase
    well, the daily profile does not; the kernel equals the reference throughout, ring
    marks included, and what exceeds by the seasonal score alone is not marked."""
    scoring = ScoringSettings(mode="likelihood", warmup=200, seasonal=seasonal)
    streams = StreamSettings(buffer_len=16)
    table, params, config = make_group(scoring, streams, persistence=True)
    # The gate opens once the profile's residual, averaged since the start (the first days
    # included, while the input statistics settle), is below half the variance: a week.
    ts, values = _daily_square_wave(days=10, skip_day=8)
    ref = RefScorer(params, scoring, streams, calendar=False)
    scores, seasonal_only = [], 0
    for lo in range(0, ts.size, 128):  # batch by batch, the ring's marks compared after each
        hi = min(lo + 128, ts.size)
        out = run_batches(table, params, config, ["s"] * (hi - lo), ts[lo:hi], values[lo:hi], 128)
        want = [ref.point("s", t, v) for t, v in zip(ts[lo:hi], values[lo:hi], strict=True)]
        npt.assert_allclose(out["score"], [r.score for r in want], rtol=1e-7, atol=1e-9)
        _, marks = table.ring_window("s")
        npt.assert_array_equal(marks, ref.streams["s"].marks)
        exceeded = out["score"][-marks.size :] >= scoring.threshold
        seasonal_only += int((exceeded & ~marks).sum())
        scores.append(out["score"])
    score = np.concatenate(scores)
    slot = table.slot_of["s"]
    npt.assert_array_equal(table.season_dev[slot], ref.streams["s"].season_dev)
    missing = slice(8 * 288 + 8 * 12, 8 * 288 + 16 * 12)  # the high phase of day 8
    if seasonal:
        assert score[missing].max() >= 0.5
        assert seasonal_only > 0, "no seasonal-only exceedance in a ring: proves little"
    else:
        assert score[missing].max() < 0.2
        assert seasonal_only == 0
    assert score[7 * 288 + 16 * 12 : 8 * 288].max() < 0.5  # a normal evening


def test_seasonal_gate_must_lie_in_0_1() -> None:
    with pytest.raises(ValueError, match="seasonal_gate"):
        ScoringSettings(seasonal_gate=1.0)


def test_seasonal_score_waits_for_a_day_of_the_stream() -> None:
    """Before a day has passed a bin holds only that day's points: with seasonal_warmup_days
    = 1 the first day scores as without the seasonal score, with 0 the profile's same-day
    deviations already score; kernel and reference agree in all three runs."""
    rng = np.random.default_rng(5)
    day = 288  # 5-minute points
    ts = 1_700_006_400.0 + 300.0 * np.arange(2 * day)
    values = 20.0 * np.sin(2.0 * np.pi * (ts - ts[0]) / 43_200.0) + rng.normal(0.0, 1.0, ts.size)
    values[150:156] += 8.0
    values = values.reshape(-1, 1)
    streams = StreamSettings(buffer_len=16)
    scores = {}
    for name, kw in (
        ("off", dict(seasonal=False)),
        ("day", dict(seasonal=True, seasonal_warmup_days=1.0)),
        ("none", dict(seasonal=True, seasonal_warmup_days=0.0)),
    ):
        scoring = ScoringSettings(mode="likelihood", warmup=100, **kw)
        table, params, config = make_group(scoring, streams, persistence=True)
        out = run_batches(table, params, config, ["s"] * ts.size, ts, values, 128)
        ref = RefScorer(params, scoring, streams, calendar=False)
        want = [ref.point("s", t, v).score for t, v in zip(ts, values, strict=True)]
        npt.assert_allclose(out["score"], want, rtol=1e-7, atol=1e-9)
        scores[name] = out["score"]
    npt.assert_array_equal(scores["day"][:day], scores["off"][:day])
    assert np.any(scores["none"][:day] > scores["off"][:day] + 0.01)
    assert np.any(scores["day"][day:] > scores["off"][day:] + 0.01)


def test_seasonal_warmup_days_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="seasonal_warmup_days"):
        ScoringSettings(seasonal_warmup_days=-1.0)


def _shifted_stream(n_before: int = 1500, n_after: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """5-minute points of a stream at 6 that shifts to 15 (30 std of its noise) and stays."""
    rng = np.random.default_rng(1)
    values = np.concatenate([6 + rng.normal(0, 0.3, n_before), 15 + rng.normal(0, 0.3, n_after)])
    ts = 1_700_000_000.0 + 300.0 * np.arange(values.size)
    return ts, values.reshape(-1, 1)


def _level_shifts_of(ts: np.ndarray, values: np.ndarray, streams: StreamSettings) -> list[int]:
    """The points at which the kernel moved the stream's mean to the point's own value (one
    point per call)."""
    table, params, config = make_group(ScoringSettings(), streams, persistence=True)
    shifts = []
    for i in range(ts.size):
        run_batches(table, params, config, ["s"], ts[i : i + 1], values[i : i + 1], 1)
        if i > 0 and table.x_mean[0, 0] == values[i, 0]:
            shifts.append(i)
    return shifts


def test_a_level_shift_moves_the_mean_to_the_new_level_at_the_end_of_its_run() -> None:
    """The run's points (beyond level_shift_std, from the first far outside the range on)
    count up in the record; at level_shift_points the mean jumps to the last one, the
    variance stays as it was, and the run's inputs are relative to the last one, in the
    ring too where the tail had been copied there (so the persistence forecast sees the new
    level, not a jump). Without it the mean has not got halfway there a day later."""
    ts, values = _shifted_stream()
    shifted = 1500 + 24 - 1
    streams = StreamSettings(buffer_len=64)
    table, params, config = make_group(ScoringSettings(), streams, persistence=True)
    run_batches(table, params, config, ["s"] * shifted, ts[:shifted], values[:shifted], 64)
    assert table.shift_run[0] == 23
    var = float(table.x_var[0, 0])
    run_batches(table, params, config, ["s"], ts[shifted:][:1], values[shifted:][:1], 1)
    assert table.shift_run[0] == 0
    assert table.x_mean[0, 0] == values[shifted, 0] and table.x_var[0, 0] == var
    inputs, _ = table.ring_window("s")
    run = inputs[-24:, 0]
    assert run[-1] == 0.0 and np.abs(run).max() < 5.0  # was clipped at input_clip = 10
    assert (np.abs(inputs[-40:-24, 0]) < 5.0).all()  # before the run: as they were
    assert _level_shifts_of(ts[:1600], values[:1600], streams) == [shifted]

    off, params, config = make_group(ScoringSettings(), StreamSettings(level_shift_points=0))
    day = 1500 + 288
    run_batches(off, params, config, ["s"] * day, ts[:day], values[:day], 64)
    assert off.x_mean[0, 0] < 10.5 and off.shift_run[0] == 0


def test_after_a_level_shift_a_noise_burst_scores_as_before_it() -> None:
    """The symptom level shifts cure: after a shift of 30 std, every deviation beyond
    norm_clip std inflates the input variance, and without a new baseline it stays inflated
    for days (every error is small in input units). A burst of noise 4 times the stream's
    then scores nearly as high (at least 0.4 times) 300 points after the shift as the same
    burst before it, and ten times lower without level shifts. (Without the novelty score,
    which sees the burst before the shift as never-seen values.)"""
    ts, values = _shifted_stream()
    burst = 1.2 * np.random.default_rng(2).normal(0, 1, (30, 1))
    values[1000:1030] += burst
    values[1800:1830] += burst
    scoring = ScoringSettings(novelty_scale=0.0, threshold=0.15)
    peaks, alerts = {}, {}
    for points in (24, 0):
        table, params, config = make_group(
            scoring, StreamSettings(level_shift_points=points), persistence=True
        )
        out = run_batches(table, params, config, ["s"] * ts.size, ts, values, 64)
        peaks[points] = out["score"][1000:1030].max(), out["score"][1800:1830].max()
        alerts[points] = out["alert"][1800:1830].any()
    before, after = peaks[24]
    assert after >= 0.4 * before and alerts[24]
    assert peaks[0][0] == before and peaks[0][1] < 0.1 * before and not alerts[0]


def test_a_recurring_excursion_shifts_the_level_once_at_most() -> None:
    """A daily high phase of 8 hours is a run of 96 points beyond 3 std. Its first one is no
    level shift within the stream's first day (a day has to pass before a stream's daily
    cycle is known); the first one after it is (its values lie far outside those seen), no
    later one (a run starts only far outside the range), and the fall at its end is none
    either: its values lie at most at the edge of the first day's."""
    streams = StreamSettings(buffer_len=16)
    ts, values = _daily_square_wave(days=4, skip_day=-1)
    assert _level_shifts_of(ts, values, streams) == []
    ts, values = _daily_square_wave(days=4, skip_day=0)  # the first high phase on day 1
    assert _level_shifts_of(ts, values, streams) == [288 + 8 * 12 + 24 - 1]


@pytest.mark.parametrize("cut", [1505, 1510, 1522, 1523, 1524, 1530])
def test_a_restored_stream_goes_on_with_its_level_shift_run(cut: int) -> None:
    """Saved within a run, at its end and after it: the run's count and the inputs it
    re-expressed (in the ring too, where the tail had already been copied) are restored, so
    the stream scores on as the uninterrupted one."""
    ts, values = _shifted_stream(n_after=200)
    keys = ["s"] * ts.size
    streams = StreamSettings(buffer_len=20)
    table, params, config = make_group(ScoringSettings(), streams, persistence=True)
    whole = run_batches(table, params, config, keys, ts, values, 16)
    first, params, config = make_group(ScoringSettings(), streams, persistence=True)
    run_batches(first, params, config, keys[:cut], ts[:cut], values[:cut], 16)
    second = StreamStateTable(first.layout, max_streams=4)
    second.restore_stream("s", first.stream_bytes("s"), now=0.0)
    assert second.shift_run[0] == first.shift_run[0] == (cut - 1500 if cut <= 1523 else 0)
    rest = run_batches(second, params, config, keys[cut:], ts[cut:], values[cut:], 16)
    for name in ("score", "error", "predicted"):
        npt.assert_allclose(rest[name], whole[name][cut:], rtol=1e-7, atol=1e-9)
    npt.assert_array_equal(second.ring_window("s")[0], table.ring_window("s")[0])


def test_level_shift_settings_fit_the_record_and_the_clip() -> None:
    """The run's inputs are re-expressed in the record's tail (TAIL inputs); the run is
    counted on the clipped normalised input; hist keeps 16 decisions."""
    assert StreamSettings(level_shift_points=TAIL).level_shift_points == TAIL
    with pytest.raises(ValidationError, match="level_shift_points"):
        StreamSettings(level_shift_points=TAIL + 1)
    with pytest.raises(ValidationError, match="level_shift_std"):
        StreamSettings(level_shift_std=10.0, input_clip=10.0)
    assert StreamSettings(level_shift_points=0, level_shift_std=10.0).level_shift_std == 10.0
    with pytest.raises(ValidationError, match="hysteresis_n"):
        ScoringSettings(hysteresis_n=17)


def test_peaks_score_equals_the_generalized_pareto_tail() -> None:
    """peaks_score against scipy's GPD survival function, through the reference."""
    from detector.stream.threshold import peaks_score
    from tests.reference.stream_scoring import ref_peaks_score

    for y, m1, m2, q in (
        (0.5, 0.2, 0.08, 0.02),  # exponential (var = m1²): xi 0
        (2.0, 0.2, 0.2, 0.02),  # heavy: xi clipped at 1/2
        (1.0, 0.3, 0.15, 0.05),
        (0.01, 0.3, 0.15, 0.05),  # just over u
        (3.0, 0.2, 0.05, 0.02),  # light (var < m1²): xi 0
        (50.0, 0.1, 0.02, 0.02),  # far out: 1
    ):
        assert peaks_score(y, m1, m2, q) == pytest.approx(ref_peaks_score(y, m1, m2, q), abs=1e-9)


def test_the_tails_threshold_settles_at_its_quantile() -> None:
    """u moves by factors up when exceeded and down otherwise: on exponential errors it
    settles near their (1 - q) quantile, -ln q, also from a first error 100 times too high
    (a stream whose normalisation is still settling)."""
    from detector.stream.threshold import peaks_factors, peaks_learn

    rng = np.random.default_rng(1)
    up, down = peaks_factors(0.02)
    for first in (1.0, 400.0):
        rec = np.zeros((1, 4))
        peaks_learn(rec, 0, 0, first, True, up, down)
        for e in rng.exponential(1.0, 20_000):
            peaks_learn(rec, 0, 0, float(e), False, up, down)
        assert rec[0, 0] == pytest.approx(-math.log(0.02), rel=0.25)
        assert rec[0, 1] == pytest.approx(1.0, rel=0.5)  # the mean excess of an exponential


def test_peaks_catch_a_spike_in_gaussian_noise_without_false_alerts() -> None:
    """20 streams of Gaussian noise, one 8-sigma spike each: no noise point reaches 0.5
    (56,000 of them: the tail's 1e-5 is about one), while the peaks score lifts most spikes
    over it, which the likelihood's short-term mean alone dilutes below."""
    rng = np.random.default_rng(7)
    S, n = 20, 3000
    values = rng.normal(0, 1, (n, S))
    values[2000] += 8.0
    keys = [f"s{k}" for k in range(S)] * n
    ts = np.repeat(1_700_000_000.0 + 60.0 * np.arange(n), S)
    caught = {}
    for q in (0.0, 0.02):
        scoring = ScoringSettings(
            mode="likelihood", warmup=100, novelty_scale=0.0, seasonal=False, peaks_quantile=q
        )
        table, params, config = make_group(scoring, StreamSettings(), persistence=True)
        out = run_batches(table, params, config, keys, ts, values.reshape(-1, 1), 1024)
        score = out["score"].reshape(n, S)
        noise = np.delete(score, [2000, 2001], axis=0)[200:]
        assert (noise < 0.5).all()
        caught[q] = int((score[2000:2002].max(axis=0) >= 0.5).sum())
    assert caught[0.0] == 0 and caught[0.02] >= 6


def test_peaks_learn_that_a_stepped_signals_steps_are_ordinary() -> None:
    """A flat signal that steps by 60 noise widths every 200 points: its errors are tiny
    but for the steps, a heavy tail; the first step scores high, the later ones do not
    alert."""
    rng = np.random.default_rng(7)
    n = 6000
    step = np.where(np.arange(n) % 200 == 100, 3.0, 0.0)
    values = np.cumsum(step * np.where((np.arange(n) // 200) % 2 == 0, 1, -1))
    values = (values + rng.normal(0, 0.05, n)).reshape(n, 1)
    ts = 1_700_000_000.0 + 60.0 * np.arange(n)
    scoring = ScoringSettings(mode="likelihood", warmup=100, novelty_scale=0.0, seasonal=False)
    table, params, config = make_group(
        scoring, StreamSettings(level_shift_points=0), persistence=True
    )
    out = run_batches(table, params, config, ["a"] * n, ts, values, 1024)
    steps = out["score"][np.arange(100, n, 200)]
    assert steps[0] > 0.5 and steps[1:].max() < 0.4
