"""runtime.storage on local paths: URI rules, atomic writes (whole file or nothing), listing, copies.

(The s3:// side runs against a real S3 API in tests/integration/test_s3_chain.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from a2bs.runtime import storage


@pytest.mark.parametrize("uri, remote", [
    ("s3://bucket/key", True), ("gs://bucket/key", True), ("file:///tmp/x", False), ("/tmp/x", False),
    ("relative/dir", False), (Path("/tmp/x"), False),
])
def test_is_remote(uri, remote: bool) -> None:
    assert storage.is_remote(uri) is remote


def test_join() -> None:
    assert storage.join("s3://bucket/runs/", "a", "/b/", "c.json") == "s3://bucket/runs/a/b/c.json"
    assert storage.join("/data/runs", "a", "c.json") == str(Path("/data/runs/a/c.json"))
    assert storage.join(Path("rel"), "x") == str(Path("rel", "x"))


def test_filesystem_of_a_local_path_is_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = storage.filesystem("sub/file.txt")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "sub" / "file.txt")


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_creates_folders_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "data.bin"
    storage.atomic_write_bytes(target, b"x" * 1000)
    assert target.read_bytes() == b"x" * 1000
    storage.atomic_write_bytes(str(target), b"short")
    assert storage.read_bytes(target) == b"short"  # replaced, not overwritten in place
    storage.atomic_write_text(target.with_name("t.txt"), "grüße\n")
    assert storage.read_text(target.with_name("t.txt")) == "grüße\n"
    assert _names(target.parent) == ["data.bin", "t.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        storage.atomic_write_bytes(target, "not bytes")  # fails while writing the temporary file
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["data.bin"]
    folder = tmp_path / "taken"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        storage.atomic_write_bytes(folder, b"new")  # the rename fails: the target is a folder
    assert _names(tmp_path) == ["data.bin", "taken"] and _names(folder) == ["inside"]


def test_parquet_round_trip(tmp_path: Path) -> None:
    table = pa.table({"x": np.arange(5), "name": list("abcde")})
    uri = str(tmp_path / "t" / "part-00000.parquet")
    storage.write_parquet_atomic(table, uri)
    assert storage.read_parquet(uri).equals(table)
    assert storage.read_parquet(uri, columns=["name"]).column_names == ["name"]


def test_list_files_recurses_sorts_filters_and_skips_hidden_files(tmp_path: Path) -> None:
    for rel in ("b/2.parquet", "a/1.parquet", "a/notes.txt", "a/.1.parquet.abc.tmp", "3.parquet", ".hidden"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert storage.list_files(tmp_path) == [str(tmp_path / p) for p in ("3.parquet", "a/1.parquet", "a/notes.txt",
                                                                         "b/2.parquet")]
    assert storage.list_files(str(tmp_path), ".parquet") == [str(tmp_path / p) for p in ("3.parquet", "a/1.parquet",
                                                                                           "b/2.parquet")]
    assert storage.list_files(tmp_path / "missing") == [] and storage.list_files(tmp_path / "3.parquet") == []


def test_exists_makedirs_delete(tmp_path: Path) -> None:
    folder = tmp_path / "x" / "y"
    assert not storage.exists(folder)
    storage.makedirs(folder)
    storage.makedirs(folder)  # again: no error
    assert storage.exists(folder) and folder.is_dir()
    (folder / "f").write_text("1")
    storage.delete(folder / "f")
    assert not storage.exists(folder / "f")
    storage.delete(tmp_path / "x")  # a folder, recursively
    storage.delete(tmp_path / "never-there")  # nothing to do
    assert os.listdir(tmp_path) == []


def test_local_copy_of_a_local_path_is_the_path_itself(tmp_path: Path) -> None:
    src = tmp_path / "clip.wav"
    src.write_bytes(b"RIFF")
    work = tmp_path / "work"
    work.mkdir()
    assert storage.local_copy(str(src), work) == str(src)
    assert os.listdir(work) == []  # nothing downloaded


def test_ray_storage_kwargs_for_a_local_folder(tmp_path: Path) -> None:
    assert storage.ray_storage_kwargs(str(tmp_path)) == {"storage_path": str(tmp_path)}
