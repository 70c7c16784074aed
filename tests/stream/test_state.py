"""State tables: slots, growth, eviction, the stream cap, serialisation."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import pytest

from detector.config import ScoringSettings, StreamSettings
from detector.errors import StateFormatError
from detector.stream.scoring import score_batch
from detector.stream.state import TAIL, StreamIds, StreamStateTable, TableLayout, encode_ids
from tests.stream.test_scoring import make_group, run_batches, synthetic_points

LAYOUT = TableLayout(layers=1, hidden=4, n_values=1, n_inputs=1, buffer_len=8, error_window=0,
                     dtype="float32")  # fmt: skip


def test_stream_ids_as_bytes_find_the_rows_their_strings_do() -> None:
    names = ["a", "web-1.cpu", "é{x=1}", "", "a"]
    ids = StreamIds(*encode_ids(names))
    assert len(ids) == 5 and list(ids) == names and [ids[i] for i in range(5)] == names
    assert ids[-1] == "a" and ids[-4] == "web-1.cpu"
    with pytest.raises(IndexError):
        ids[5]
    table = StreamStateTable(LAYOUT, max_streams=100)
    by_bytes = table.slots(ids, now=0.0)
    assert by_bytes[0] == by_bytes[4] and len(table) == 4
    assert table.slots(names, now=0.0).tolist() == by_bytes.tolist()


def test_slots_are_stable_and_growth_keeps_rows() -> None:
    table = StreamStateTable(LAYOUT, max_streams=100, initial_capacity=2)
    first = table.slots(["a", "b"], now=0.0)
    table.h[first[0]] = 1.5
    more = table.slots([f"s{i}" for i in range(40)], now=0.0)
    assert table.capacity >= 42
    assert len(set(more.tolist()) | set(first.tolist())) == 42
    again = table.slots(["b", "a"], now=0.0)
    assert again.tolist() == [first[1], first[0]]
    assert np.all(table.h[first[0]] == 1.5)  # survived the copies of growth


def test_cap_refuses_new_streams_and_counts_them() -> None:
    table = StreamStateTable(LAYOUT, max_streams=3)
    slots = table.slots(["a", "b", "c", "d", "a", "d"], now=0.0)
    assert (slots[:3] >= 0).all()
    assert slots[3] == -1 and slots[5] == -1
    assert slots[4] == slots[0]  # known streams still get their row
    assert table.refused == 2
    assert len(table) == 3
    assert table.capacity == 3  # growth stops at the cap


def test_idle_streams_are_evicted_and_their_rows_reused_clean() -> None:
    table = StreamStateTable(LAYOUT, max_streams=10)
    table.slots(["old", "fresh"], now=0.0)
    table.h[table.slot_of["old"]] = 7.0
    table.seen[table.slot_of["old"]] = 5
    table.slots(["fresh"], now=500.0)
    evicted = table.evict_idle(now=1000.0, ttl_s=600.0)
    assert evicted == ["old"]
    assert "old" not in table and "fresh" in table
    [slot] = table.slots(["new"], now=1000.0)
    assert np.all(table.h[slot] == 0) and table.seen[slot] == 0
    # An evicted stream that comes back starts over.
    [back] = table.slots(["old"], now=1000.0)
    assert table.seen[back] == 0


def test_eviction_frees_room_under_the_cap() -> None:
    table = StreamStateTable(LAYOUT, max_streams=2)
    table.slots(["a", "b"], now=0.0)
    assert table.slots(["c"], now=10.0)[0] == -1
    table.evict_idle(now=10.0, ttl_s=5.0)
    assert table.slots(["c"], now=10.0)[0] >= 0


@pytest.mark.parametrize("mode", ["zscore", "dynamic", "likelihood"])
@pytest.mark.parametrize("granularity", ["stream", "table"])
def test_restore_then_continue_equals_an_uninterrupted_run(mode: str, granularity: str) -> None:
    scoring = ScoringSettings(mode=mode, warmup=10, threshold=0.15, dynamic_window=16)
    streams = StreamSettings(buffer_len=8)
    keys, ts, values = synthetic_points(np.random.default_rng(11), 900, n_streams=4, D=2)
    cut = 512  # a batch boundary: both runs then step the same batches

    table, params, config = make_group(scoring, streams, D=2, dtype="float32", calendar=True)
    whole = run_batches(table, params, config, keys, ts, values, batch=64)

    first, params, config = make_group(scoring, streams, D=2, dtype="float32", calendar=True)
    run_batches(first, params, config, keys[:cut], ts[:cut], values[:cut], batch=64)
    if granularity == "table":
        second = StreamStateTable.from_bytes(first.to_bytes(), max_streams=100, now=0.0)
    else:
        second = StreamStateTable(first.layout, max_streams=100)
        for key in sorted(first):  # another order: other slots, same rows
            second.restore_stream(key, first.stream_bytes(key), now=0.0)
    rest = run_batches(second, params, config, keys[cut:], ts[cut:], values[cut:], batch=64)

    for name in ("status", "gap", "score", "alert", "error", "predicted"):
        npt.assert_array_equal(rest[name], whole[name][cut:], err_msg=name)
    assert whole["alert"][cut:].any()


def test_damaged_or_foreign_state_is_refused_with_a_reason() -> None:
    table = StreamStateTable(LAYOUT, max_streams=10)
    table.slots(["a"], now=0.0)
    good = table.stream_bytes("a")
    other = StreamStateTable(LAYOUT._replace(hidden=8), max_streams=10)
    with pytest.raises(StateFormatError, match="layout"):
        other.restore_stream("a", good, now=0.0)
    with pytest.raises(StateFormatError, match="bytes after its header"):
        table.restore_stream("a", good[:-3], now=0.0)
    with pytest.raises(StateFormatError, match="not detector state"):
        table.restore_stream("a", b"XYZ" + good[3:], now=0.0)
    with pytest.raises(StateFormatError, match="format version"):
        table.restore_stream("a", good[:3] + b"\x63" + good[4:], now=0.0)
    whole = table.to_bytes()
    with pytest.raises(StateFormatError, match="truncated"):
        StreamStateTable.from_bytes(whole[:-1], max_streams=10, now=0.0)
    with pytest.raises(StateFormatError, match="trailing"):
        StreamStateTable.from_bytes(whole + b"\0", max_streams=10, now=0.0)
    with pytest.raises(StateFormatError, match="shorter than its header"):
        StreamStateTable.from_bytes(b"DS", max_streams=10, now=0.0)


def test_empty_table_round_trips() -> None:
    table = StreamStateTable(LAYOUT, max_streams=10)
    back = StreamStateTable.from_bytes(table.to_bytes(), max_streams=10, now=0.0, layout=LAYOUT)
    assert len(back) == 0 and back.layout == LAYOUT


def test_stream_index_equals_a_dict_through_inserts_removals_growth_and_compaction() -> None:
    """The jitted index (hash table + key arena) against a plain dict: the same streams
    get the same rows, through growth, removals (backward-shift deletion), row reuse and
    arena compaction; ids of every length, non-ASCII and lone surrogates included."""
    rng = np.random.default_rng(0)
    table = StreamStateTable(LAYOUT, max_streams=5000, initial_capacity=2)
    ref: dict[str, int] = {}
    pool = ["", "a", "é", "\ud800", "x" * 300]
    pool += [f"s{i}" * int(rng.integers(1, 4)) for i in range(3000)]
    compacted = False
    for round_ in range(12):
        garbage = int(table._counters[1])
        batch = [pool[i] for i in rng.integers(0, len(pool), 400)]
        slots = table.slots(batch, now=float(round_))
        compacted |= int(table._counters[1]) < garbage
        for stream, slot in zip(batch, slots.tolist(), strict=True):
            assert ref.setdefault(stream, slot) == slot  # same row for the same stream
        assert len(set(ref.values())) == len(ref) == len(table)
        for stream in rng.choice(sorted(ref), size=len(ref) // 3, replace=False).tolist():
            table.remove(stream)
            del ref[stream]
        assert sorted(table) == sorted(ref)
        assert {k: table.slot_of[k] for k in ref} == ref
        assert all(stream not in table for stream in pool if stream not in ref)
    assert compacted, "the arena was never compacted: the test proves less than it says"


def test_rows_of_removed_streams_come_back_clean() -> None:
    table = StreamStateTable(LAYOUT, max_streams=10)
    [a] = table.slots(["a"], now=0.0)
    table.offset[a] = 41
    table.marks[a] = 255
    table.remove("a")
    [b] = table.slots(["b"], now=0.0)
    assert b == a  # the freed row is reused, cleared
    assert table.offset_of("b") == -1 and not table.marks[b].any()
    with pytest.raises(KeyError):
        table.remove("a")


def test_dirty_and_removed_streams_are_reported_once() -> None:
    scoring = ScoringSettings(warmup=2)
    table, params, config = make_group(scoring, StreamSettings(), dtype="float32")
    slots = table.slots(["a", "b", "c"], now=0.0)
    assert table.take_dirty() == ["a", "b", "c"]  # new rows count as changed
    assert table.take_dirty() == []
    ts = np.array([10.0, 10.0, 10.0])
    score_batch(table, params, config, slots[:2], ts[:2], np.ones((2, 1)))
    assert sorted(table.take_dirty()) == ["a", "b"]
    # A dropped point without an offset changes nothing.
    score_batch(table, params, config, slots[:1], ts[:1], np.ones((1, 1)))
    assert table.take_dirty() == []
    table.slots(["c"], now=100.0)
    assert table.evict_idle(now=100.0, ttl_s=50.0) == ["a", "b"]
    assert table.take_removed() == ["a", "b"] and table.take_removed() == []
    assert table.take_dirty() == []  # evicted streams are tombstones, not states
    table.remove("c")
    table.slots(["c", "a"], now=100.0)  # back after their removal: new states supersede
    assert table.take_removed() == [] and sorted(table.take_dirty()) == ["a", "c"]


def test_restored_streams_are_not_dirty_and_keep_offset_and_marks() -> None:
    scoring = ScoringSettings(mode="zscore", warmup=4, threshold=0.05)
    keys, ts, values = synthetic_points(np.random.default_rng(2), 300, n_streams=3, D=1)
    table, params, config = make_group(scoring, StreamSettings(buffer_len=8), dtype="float32")
    run_batches(table, params, config, keys, ts, values, 50, np.arange(300, dtype=np.int64))
    for back in (
        StreamStateTable.from_bytes(table.to_bytes(), max_streams=10, now=0.0),
        _restored_one_by_one(table),
    ):
        assert back.take_dirty() == [] and back.take_removed() == []
        for key in table:
            assert back.offset_of(key) == table.offset_of(key) > 0
            for got, want in zip(back.ring_window(key), table.ring_window(key), strict=True):
                npt.assert_array_equal(got, want)
    assert any(table.ring_window(k)[1].any() for k in table), "no marks: proves little"


def _restored_one_by_one(table: StreamStateTable) -> StreamStateTable:
    back = StreamStateTable(table.layout, max_streams=10)
    for key in table:
        back.restore_stream(key, table.stream_bytes(key), now=0.0)
    return back


def test_ring_window_is_oldest_first_after_the_ring_wraps() -> None:
    table = StreamStateTable(LAYOUT, max_streams=2)  # W = 8
    [slot] = table.slots(["a"], now=0.0)
    for n in range(11):  # as the kernel writes: tail entry n (TAIL > 11), then seen = n + 1
        table.tail[slot, n % TAIL, 0] = n
        table.marks[slot, 0] ^= np.uint8(1 << (n % 8)) if n % 3 == 0 else np.uint8(0)
        table.seen[slot] = n + 1
    inputs, marks = table.ring_window("a")
    assert inputs[:, 0].tolist() == list(range(3, 11))
    assert marks.tolist() == [bool((table.marks[slot, 0] >> (n % 8)) & 1) for n in range(3, 11)]
    assert table.ring_window(slot)[0].shape == (8, 1)


@pytest.mark.parametrize("seen", [1, TAIL - 1, TAIL, TAIL + 1, 2 * TAIL, 3 * TAIL + 5])
def test_the_ring_takes_the_tails_inputs_when_read(seen: int) -> None:
    """Inputs before the tail's start, ((seen - 1) // TAIL) * TAIL, are in the ring (the
    kernel copied them there); the later ones only in the tail until the ring is read."""
    layout = LAYOUT._replace(buffer_len=2 * TAIL)
    table = StreamStateTable(layout, max_streams=2)
    [slot] = table.slots(["a"], now=0.0)
    start = (seen - 1) // TAIL * TAIL
    for p in range(seen):
        if p < start:
            table.ring[slot, p % (2 * TAIL), 0] = p
        else:
            table.tail[slot, p % TAIL, 0] = p
    table.seen[slot] = seen
    inputs, _ = table.ring_window(slot)
    assert inputs[:, 0].tolist() == list(range(max(0, seen - 2 * TAIL), seen))
    table.tail[slot] = -1
    table.refill_tail(np.array([slot]))  # and back: what a restore does
    assert table.tail[slot, : seen - start, 0].tolist() == list(range(start, seen))


def test_state_of_format_version_1_is_refused_by_name() -> None:
    table = StreamStateTable(LAYOUT, max_streams=10)
    table.slots(["a"], now=0.0)
    good = table.stream_bytes("a")
    reads = "version 1; this build reads 2 or 3 or 4 or 5 or 6 or 7 or 8"
    with pytest.raises(StateFormatError, match=reads):
        table.restore_stream("a", good[:3] + b"\x01" + good[4:], now=0.0)


def _stream_bytes_of_version(
    table: StreamStateTable, stream: str, version: int, **fields: object
) -> bytes:
    """The stream's state as an older format version would have written it, with ``fields``
    in place of the table's values (what only that version could hold)."""
    from detector.stream.state import _HEADER, _row_dtype

    current = table.stream_bytes(stream)
    row = np.frombuffer(current[_HEADER.size :], _row_dtype(table.layout))
    old = np.empty(1, _row_dtype(table.layout, version))
    for name in old.dtype.names or ():
        # A field this version no longer has (pick) is 0 unless given
        old[name] = fields.get(name, row[name] if name in (row.dtype.names or ()) else 0)
    return current[:3] + bytes([version]) + current[4 : _HEADER.size] + old.tobytes()


def test_state_of_format_version_2_restores_with_a_range_around_the_mean() -> None:
    """Version 2 had no x_min, x_max: the range restarts as the mean +- RESTORED_RANGE_STD
    std, everything else as saved."""
    from detector.stream.state import RESTORED_RANGE_STD

    table = StreamStateTable(LAYOUT, max_streams=10)
    slot = table.slots(["a"], now=0.0)[0]
    table.x_mean[slot] = 5.0
    table.x_var[slot] = 4.0
    table.seen[slot] = 7
    other = StreamStateTable(LAYOUT, max_streams=10)
    other.restore_stream("a", _stream_bytes_of_version(table, "a", 2), now=0.0)
    s = other.slot_of["a"]
    assert other.seen[s] == 7
    npt.assert_allclose(other.x_min[s], 5.0 - 2.0 * RESTORED_RANGE_STD)
    npt.assert_allclose(other.x_max[s], 5.0 + 2.0 * RESTORED_RANGE_STD)
    whole = table.to_bytes()
    assert StreamStateTable.from_bytes(whole, max_streams=10, now=0.0).seen[0] == 7


def test_state_of_format_version_3_restores_with_an_empty_daily_profile() -> None:
    """Version 3 had no daily profile (seasonal score): it starts empty, everything else as
    saved, also over a row of this table that had one."""
    table = StreamStateTable(LAYOUT, max_streams=10)
    slot = table.slots(["a"], now=0.0)[0]
    table.x_mean[slot] = 5.0
    table.seen[slot] = 7
    table.season_mean[slot] = 1000
    table.season_dev[slot] = 64
    table.restore_stream("a", _stream_bytes_of_version(table, "a", 3), now=0.0)
    assert table.seen[slot] == 7 and table.x_mean[slot] == 5.0
    assert not table.season_mean[slot].any() and not table.season_dev[slot].any()
    assert not table.season[slot].any()


def test_state_of_format_version_8_drops_pick_and_starts_the_error_tail_afresh() -> None:
    """Versions 5 to 8 had pick (a forecast choice since removed) and no error tail: the
    pick is dropped, the tail restarts at 0, everything else as saved."""
    table = StreamStateTable(LAYOUT, max_streams=10)
    slot = table.slots(["a"], now=0.0)[0]
    table.seen[slot] = 7
    table.season_mean[slot] = 1000
    table.peaks[slot] = [0.5, 0.25, 0.125, 3.0]
    table.restore_stream("a", table.stream_bytes("a"), now=0.0)
    npt.assert_array_equal(table.peaks[slot], [0.5, 0.25, 0.125, 3.0])  # this version keeps it
    for version in (5, 8):
        table.restore_stream(
            "a", _stream_bytes_of_version(table, "a", version, pick=-0.25), now=0.0
        )
        assert table.seen[slot] == 7 and table.season_mean[slot][0] == 1000
        assert not table.peaks[slot].any()
        table.peaks[slot] = [0.5, 0.25, 0.125, 3.0]


def test_state_of_format_version_5_restores_its_ring_at_half_precision() -> None:
    """Version 5 kept the ring in the table's float type: it is rounded to float16 (through
    float32), and the newest inputs go back into the tail, where the kernel reads them."""
    table = StreamStateTable(LAYOUT, max_streams=10)
    slot = table.slots(["a"], now=0.0)[0]
    table.seen[slot] = 11
    inputs = 0.1 + np.arange(8) / 3  # not float16 numbers
    v5 = _stream_bytes_of_version(table, "a", 5, ring=inputs.reshape(8, 1))
    table.restore_stream("a", v5, now=0.0)
    half = inputs.astype(np.float32).astype(np.float16)
    npt.assert_array_equal(table.ring[slot, :, 0], half)
    npt.assert_array_equal(table.tail[slot, 3:11, 0], half[np.arange(3, 11) % 8])
    window, _ = table.ring_window("a")  # inputs 3 .. 10 (W = 8), oldest first
    npt.assert_array_equal(window[:, 0], half[np.arange(3, 11) % 8].astype(np.float32))


def test_state_of_format_version_6_keeps_its_cooldown_plain() -> None:
    """Version 6 had no alert_score and its cooldown count in an int32: the count is kept
    (at most the uint16's 65535 points) and nothing escalates before it runs out, as under
    the plain cooldown that wrote it."""
    table = StreamStateTable(LAYOUT, max_streams=10)
    slot = table.slots(["a"], now=0.0)[0]
    table.seen[slot] = 7
    table.cooldown[slot] = 80
    table.alert_score[slot] = 30_000
    table.restore_stream("a", table.stream_bytes("a"), now=0.0)
    assert (table.cooldown[slot], table.alert_score[slot]) == (80, 30_000)  # this version keeps
    table.restore_stream("a", _stream_bytes_of_version(table, "a", 6), now=0.0)
    assert (table.seen[slot], table.cooldown[slot], table.alert_score[slot]) == (7, 80, 65_535)
    # a cooldown setting of the time: int32
    table.restore_stream("a", _stream_bytes_of_version(table, "a", 6, cooldown=100_000), now=0.0)
    assert table.cooldown[slot] == 65_535


def test_state_of_format_version_7_keeps_16_bits_of_hist_and_no_level_shift_run() -> None:
    """Version 7 had hist in a uint32 and no shift_run: the low 16 bits are kept (hysteresis_n
    is at most 16 now) and no run is under way; version 8 keeps both."""
    table = StreamStateTable(LAYOUT, max_streams=10)
    slot = table.slots(["a"], now=0.0)[0]
    table.seen[slot] = 7
    table.hist[slot] = 0b101
    table.shift_run[slot] = -5
    table.restore_stream("a", table.stream_bytes("a"), now=0.0)
    assert (table.hist[slot], table.shift_run[slot]) == (0b101, -5)  # version 8 keeps
    # decisions 16 points back and more: no longer kept
    table.restore_stream("a", _stream_bytes_of_version(table, "a", 7, hist=0xFFFF_0005), now=0.0)
    assert (table.seen[slot], table.hist[slot], table.shift_run[slot]) == (7, 5, 0)
