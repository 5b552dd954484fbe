"""storage.atomic_write_csv: the one writer of plain CSV tables (training history, tune results)."""

from __future__ import annotations

import csv
from pathlib import Path

from a2bs.runtime import storage


def test_columns_header_first_then_first_seen(tmp_path: Path) -> None:
    uri = tmp_path / "sub" / "table.csv"
    rows = [{"b": 1, "a": "x,y"}, {"c": 2.5, "b": 3}]
    storage.atomic_write_csv(uri, rows, header=["rank"])
    with open(uri, newline="") as f:
        got = list(csv.reader(f))
    assert got == [["rank", "b", "a", "c"], ["", "1", "x,y", ""], ["", "3", "", "2.5"]]
    assert [p.name for p in uri.parent.iterdir()] == ["table.csv"]  # no temporary file left


def test_rewrite_replaces_the_whole_file(tmp_path: Path) -> None:
    uri = tmp_path / "history.csv"
    storage.atomic_write_csv(uri, [{"epoch": 0}, {"epoch": 1}])
    storage.atomic_write_csv(uri, [{"epoch": 0}])
    assert uri.read_text().splitlines() == ["epoch", "0"]
