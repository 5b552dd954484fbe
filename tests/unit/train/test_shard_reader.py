"""The shard reader training uses: read_shard (named errors) and arrow_to_arrays (slices respected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from a2bs.errors import InputError
from a2bs.runtime import storage
from a2bs.schema import N_TARGETS, sequence_schema
from a2bs.train.data import VAL_COLUMNS, LocalBatches, arrow_to_arrays, read_shard

N_MELS, T = 3, 2


def _table(n: int) -> pa.Table:
    rows = np.arange(n, dtype=np.float32)
    return pa.Table.from_pydict({
        "clip_id": [f"c{i}" for i in range(n)], "speaker_id": ["s"] * n, "split": ["train"] * n, "identity": [""] * n,
        "start_s": (rows * 0.1).astype(np.float64), "n_frames": [T] * n,
        "audio": [np.full(T * N_MELS, r, np.float32) for r in rows],
        "targets": [np.full(T * N_TARGETS, r, np.float32) for r in rows],
        "vad": [np.full(T, r, np.float32) for r in rows], "mask": [np.ones(T, np.float32)] * n,
    }, schema=sequence_schema(N_MELS))


def test_arrow_to_arrays_respects_slices() -> None:
    a = arrow_to_arrays(_table(4).slice(1, 2), N_MELS)
    assert a["audio"].shape == (2, T, N_MELS) and a["targets"].shape == (2, T, N_TARGETS)
    assert a["audio"][:, 0, 0].tolist() == [1.0, 2.0] and a["vad"][:, 1].tolist() == [1.0, 2.0]
    assert a["clip_id"].tolist() == ["c1", "c2"] and a["start_s"] == pytest.approx([0.1, 0.2])


def test_local_batches_read_every_row_once(tmp_path: Path) -> None:
    files = []
    for i in range(2):
        files.append(str(tmp_path / f"part-{i:05d}.parquet"))
        storage.write_parquet_atomic(_table(3), files[-1])
    batches = list(LocalBatches(files, N_MELS, batch_size=4, columns=VAL_COLUMNS).arrays())
    assert [len(b["clip_id"]) for b in batches] == [4, 2]  # the leftover of file 0 carries into file 1
    assert np.concatenate([b["audio"][:, 0, 0] for b in batches]).tolist() == [0, 1, 2, 0, 1, 2]


def test_damaged_or_missing_shard_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "part-00000.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(InputError, match="part-00000.parquet: corrupt or truncated Parquet shard"):
        read_shard(str(bad))
    with pytest.raises(InputError, match="part-00001.parquet: shard listed in the manifest is missing"):
        read_shard(str(tmp_path / "part-00001.parquet"))
