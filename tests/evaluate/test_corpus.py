"""Reading a corpus's train points (telemetry-dev's ``labels/train_points.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.errors import InputFileError
from detector.evaluate.corpus import load_train_points, read_corpus, train_points_beside

from .corpus_factory import telemetry_corpus


def test_train_points_are_read_beside_the_labels(tmp_path: Path) -> None:
    data, labels, train_points = telemetry_corpus(tmp_path)
    assert train_points_beside(labels) == train_points
    files = read_corpus(data)
    assert load_train_points(train_points, files) == {
        "MSL/a.csv": 300,
        "MSL/b.csv": 300,
        "UCR/c.csv": 300,
    }


def test_no_train_points_file_beside_the_labels(tmp_path: Path) -> None:
    _, labels, train_points = telemetry_corpus(tmp_path)
    train_points.unlink()
    assert train_points_beside(labels) is None


def test_entries_of_other_files_are_ignored(tmp_path: Path) -> None:
    data, _, train_points = telemetry_corpus(tmp_path)
    table = json.loads(train_points.read_text()) | {"MSL/elsewhere.csv": 5}
    train_points.write_text(json.dumps(table))
    assert "MSL/elsewhere.csv" not in load_train_points(train_points, read_corpus(data))


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (None, r"no train points for \['UCR/c\.csv'\]"),
        (601, "from 0 to the file's 600 rows, got 601"),
        (-1, "got -1"),
        (True, "got True"),
        (2.5, "got 2.5"),
    ],
)
def test_bad_train_points_name_the_file(tmp_path: Path, entry: object, match: str) -> None:
    data, _, train_points = telemetry_corpus(tmp_path)
    table = json.loads(train_points.read_text())
    if entry is None:
        del table["UCR/c.csv"]
    else:
        table["UCR/c.csv"] = entry
    train_points.write_text(json.dumps(table))
    with pytest.raises(InputFileError, match=match):
        load_train_points(train_points, read_corpus(data))


def test_unreadable_train_points(tmp_path: Path) -> None:
    data, _, train_points = telemetry_corpus(tmp_path)
    train_points.write_text("[1, 2]")
    with pytest.raises(InputFileError, match="expected an object"):
        load_train_points(train_points, read_corpus(data))
    train_points.write_text("{")
    with pytest.raises(InputFileError, match="not JSON"):
        load_train_points(train_points, read_corpus(data))
