"""Reading training series from CSV and native JSON lines."""

from __future__ import annotations

import numpy.testing as npt
import pytest

from detector.errors import InputFileError
from detector.io.series_files import read_series


def test_csv_with_iso_timestamps_and_several_columns(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("timestamp,cpu,mem\n2014-04-02 14:29:00,0.5,1\n2014-04-02 14:34:00,0.7,2\n")
    (s,) = read_series(p)
    assert s.name == "m" and s.feature_names == ("cpu", "mem")
    npt.assert_array_equal(s.values, [[0.5, 1.0], [0.7, 2.0]])
    assert s.timestamps[1] - s.timestamps[0] == 300


def test_csv_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("timestamp,value\n1700000000,1\n1700000060,abc\n")
    with pytest.raises(InputFileError, match=r"bad\.csv:3"):
        read_series(p)
    p.write_text("time,value\n1,2\n")
    with pytest.raises(InputFileError, match=r"bad\.csv:1: expected a header"):
        read_series(p)
    p.write_text("timestamp,value\n1,2,3\n")
    with pytest.raises(InputFileError, match="3 fields; expected 2"):
        read_series(p)


def test_jsonl_groups_by_stream_in_file_order(tmp_path):
    p = tmp_path / "points.jsonl"
    p.write_text(
        '{"stream": "a", "ts": 1700000000, "value": 1}\n'
        '{"stream": "b", "ts": 1700000000000, "values": {"y": 2, "x": 3}}\n'
        "\n"
        '{"stream": "a", "ts": "2023-11-14T22:14:20Z", "value": 4}\n'
    )
    a, b = read_series(p)
    assert (a.name, b.name) == ("a", "b")
    npt.assert_array_equal(a.values[:, 0], [1, 4])
    assert b.feature_names == ("x", "y")
    npt.assert_array_equal(b.values, [[3, 2]])
    assert b.timestamps[0] == 1700000000.0  # milliseconds recognised
    assert a.timestamps[1] == 1700000060.0


def test_jsonl_decode_error_names_the_line(tmp_path):
    p = tmp_path / "points.jsonl"
    p.write_text('{"stream": "a", "ts": 1, "value": 1}\n{"stream": "a", "ts": 2}\n')
    with pytest.raises(InputFileError, match=r"points\.jsonl:2: neither \"value\""):
        read_series(p)


def test_jsonl_tags_make_separate_series(tmp_path):
    p = tmp_path / "tagged.jsonl"
    p.write_text(
        '{"stream": "cpu", "ts": 1, "value": 1, "tags": {"host": "a"}}\n'
        '{"stream": "cpu", "ts": 1, "value": 2, "tags": {"host": "b"}}\n'
        '{"stream": "cpu", "ts": 2, "value": 3, "tags": {"host": "a"}}\n'
    )
    a, b = read_series(p)
    assert (a.name, b.name) == ("cpu{host=a}", "cpu{host=b}")
    assert a.feature_names == ("value",)
    npt.assert_array_equal(a.values[:, 0], [1, 3])
