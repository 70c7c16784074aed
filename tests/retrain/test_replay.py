"""The h/c replay after a model swap equals a plain step-by-step replay of each ring."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import orjson
import pytest

from detector.config import ModelSettings, ScoringSettings, Settings, StreamSettings
from detector.model.params import LSTMParams, make_shape
from detector.retrain.replay import read_state, replay_state, write_state
from detector.stream.pipeline import Pipeline
from detector.stream.state import StreamStateTable, TableLayout
from tests.reference import lstm_numpy

SEEN = {"empty": 0, "one": 1, "few": 3, "full": 7, "wrapped": 12, "long": 23}


def filled_table(dtype: str, rng: np.random.Generator) -> StreamStateTable:
    layout = TableLayout(
        layers=2, hidden=5, n_values=2, n_inputs=4, buffer_len=7, error_window=0, dtype=dtype
    )
    table = StreamStateTable(layout, max_streams=64, initial_capacity=2)
    slots = table.slots(list(SEEN), now=0.0)
    table.ring[:] = rng.standard_normal(table.ring.shape)
    table.seen[slots] = list(SEEN.values())
    table.refill_tail(slots)  # the newest inputs live in the tails (StreamStateTable)
    stale = np.full((len(slots), 2, 5), 9.0)  # the replay must not start from it
    write_state(table, slots, stale, stale)
    table.pred[:] = 9.0
    return table


def reference_replay(table: StreamStateTable, params: LSTMParams, slot: int):
    """Oldest to newest, one stream, one step at a time, with the NumPy reference LSTM."""
    W = table.layout.buffer_len
    seen = int(table.seen[slot])
    n = min(seen, W)
    x = table.ring[slot, (seen - n + np.arange(n)) % W].astype(np.float64)
    y, h, c = lstm_numpy.forward(params.astype(np.float64).tensors(), params.shape, x[:, None])
    return h[:, 0], c[:, 0], y[-1, 0]


@pytest.mark.parametrize(("dtype", "rtol"), [("float64", 1e-10), ("float32", 2e-5)])
@pytest.mark.parametrize("chunk", [1, 4, 4096])
def test_replay_equals_a_plain_step_by_step_replay(dtype, rtol, chunk):
    rng = np.random.default_rng(1)
    table = filled_table(dtype, rng)
    shape = make_shape(n_inputs=4, n_outputs=2, hidden=5, layers=2, head_hidden=3, residual=True)
    params = LSTMParams.init(shape, rng, np.dtype(dtype).type)
    assert replay_state(table, params, chunk=chunk) == len(SEEN) - 1
    for stream, seen in SEEN.items():
        slot = table.slot_of[stream]
        if seen == 0:  # nothing buffered: the row is left alone
            assert (read_state(table, np.array([slot]))[0] == 9.0).all()
            assert (table.pred[slot] == 9.0).all()
            continue
        h, c, y = reference_replay(table, params, slot)
        (h_slot,), (c_slot,) = read_state(table, np.array([slot]))
        npt.assert_allclose(h_slot, h, rtol=rtol, atol=rtol)
        npt.assert_allclose(c_slot, c, rtol=rtol, atol=rtol)
        npt.assert_allclose(table.pred[slot], y, rtol=rtol, atol=rtol)


def test_replay_of_some_rows_leaves_the_others():
    rng = np.random.default_rng(2)
    table = filled_table("float64", rng)
    shape = make_shape(n_inputs=4, n_outputs=2, hidden=5, layers=2)
    params = LSTMParams.init(shape, rng, np.float64)
    few, full = table.slot_of["few"], table.slot_of["full"]
    assert replay_state(table, params, np.array([few])) == 1
    h, _ = read_state(table, np.array([few, full]))
    assert not (h[0] == 9.0).any()
    assert (h[1] == 9.0).all()


def test_replay_refuses_a_model_of_other_sizes():
    table = filled_table("float32", np.random.default_rng(0))
    other = LSTMParams.init(
        make_shape(n_inputs=4, n_outputs=2, hidden=6, layers=2), np.random.default_rng(0)
    )
    with pytest.raises(ValueError, match="table"):
        replay_state(table, other)
    same64 = LSTMParams.init(
        make_shape(n_inputs=4, n_outputs=2, hidden=5, layers=2),
        np.random.default_rng(0),
        np.float64,
    )
    with pytest.raises(ValueError, match="dtype"):
        replay_state(table, same64)


def test_replaying_the_serving_model_reproduces_the_scored_state():
    """While a stream's whole history is in its ring, replaying it through the model that
    scored it gives back that stream's h, c and next prediction: predictions stay continuous."""
    settings = Settings(
        model=ModelSettings(hidden_size=6),
        streams=StreamSettings(buffer_len=64),
        scoring=ScoringSettings(warmup=10),
    )
    pipe = Pipeline(settings, "t")
    group = pipe.groups[0]
    rng = np.random.default_rng(5)
    group.swap_model(LSTMParams.init(group.shape, rng), "random")
    lengths = {"a": 40, "b": 64, "c": 5}
    for t in range(64):
        msgs = [
            orjson.dumps({"stream": s, "ts": 1e9 + 60 * t, "value": float(rng.normal(5, 2))})
            for s, n in lengths.items()
            if t < n
        ]
        pipe.process(msgs, now=0.0)
    table = group.tables[0]
    slots = np.array([table.slot_of[s] for s in lengths])
    h, c = read_state(table, slots)
    pred = table.pred[slots].copy()
    write_state(table, slots, np.zeros_like(h), np.zeros_like(c))
    table.pred[:] = 0.0
    assert replay_state(table, group.params) == 3
    h_replayed, c_replayed = read_state(table, slots)
    npt.assert_allclose(h_replayed, h, rtol=1e-5, atol=1e-6)
    npt.assert_allclose(c_replayed, c, rtol=1e-5, atol=1e-6)
    npt.assert_allclose(table.pred[slots], pred, rtol=1e-5, atol=1e-6)
