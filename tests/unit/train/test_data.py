"""Training data: `scored_mask` tiles each clip once; `LocalBatches` covers every row once per epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from a2bs.runtime.storage import write_parquet_atomic
from a2bs.schema import N_TARGETS, sequence_schema
from a2bs.train.data import (
    VAL_COLUMNS,
    LocalBatches,
    clip_rank,
    scored_mask,
    steps_per_epoch,
)

N_MELS = 4
T = 6
FILE_ROWS = (5, 3, 7, 1)  # 16 rows in files of uneven size


@pytest.mark.parametrize("window, overlap", [(24, 12), (10, 5), (10, 3), (1000, 800)])
def test_scored_mask_scores_every_inner_frame_of_a_clip_once(window: int, overlap: int) -> None:
    step, n_windows = window - overlap, 9
    clip_frames = step * (n_windows - 1) + window
    scored = np.zeros(clip_frames)
    masks = scored_mask(np.ones((n_windows, window), np.float32), overlap)
    for k in np.random.default_rng(0).permutation(n_windows):  # any arrival order
        scored[k * step : k * step + window] += masks[k]
    edge = overlap // 2
    inner = slice(edge, clip_frames - (overlap - edge))
    assert (scored[inner] == 1).all()  # once each
    assert scored.sum() == clip_frames - overlap  # and nothing outside: only the clip's ends are unscored


def test_scored_mask_keeps_unseen_frames_and_its_input() -> None:
    mask = np.ones((2, 24), np.float32)
    mask[0, 10:14] = 0.0  # no face there
    before = mask.copy()
    out = scored_mask(mask, 12)
    np.testing.assert_array_equal(mask, before)  # the input is not changed
    assert (out <= mask).all() and out[0, 10:14].sum() == 0
    np.testing.assert_array_equal(out[:, 6:18], mask[:, 6:18])  # the centre keeps the mask
    assert scored_mask(mask, 0) is mask  # no overlap: every frame is scored already
    assert scored_mask(mask, 48) is mask  # an overlap past the window leaves the mask as is


def _shard(path: Path, first_row: int, n: int) -> None:
    """`n` window rows whose values all encode their global row number (row r: audio = r, targets = r/100)."""
    rows = np.arange(first_row, first_row + n)
    table = pa.Table.from_pydict({
        "clip_id": [f"clip{r // 4}" for r in rows],
        "speaker_id": ["spk"] * n,
        "split": ["train"] * n,
        "identity": [""] * n,
        "start_s": (rows * 0.12).tolist(),
        "n_frames": [T] * n,
        "audio": [np.full(T * N_MELS, r, np.float32) for r in rows],
        "targets": [np.full(T * N_TARGETS, r / 100, np.float32) for r in rows],
        "vad": [np.linspace(0, 1, T, dtype=np.float32)] * n,
        "mask": [(np.arange(T) != r % T).astype(np.float32) for r in rows],  # frame r % T unseen
    }, schema=sequence_schema(N_MELS))
    write_parquet_atomic(table, path)


@pytest.fixture
def shard_files(tmp_path: Path) -> list[str]:
    files, first = [], 0
    for i, n in enumerate(FILE_ROWS):
        files.append(str(tmp_path / f"part-{i:05d}.parquet"))
        _shard(Path(files[-1]), first, n)
        first += n
    return files


def _row_ids(batches: list[dict[str, np.ndarray]]) -> list[int]:
    return [int(r) for b in batches for r in b["audio"][:, 0, 0]]


@pytest.mark.parametrize("batch_size", [1, 4, 5, 16, 40])
@pytest.mark.parametrize("shuffle_rows", [0, 4, 100])
def test_local_batches_cover_every_row_once_with_full_batches(shard_files, batch_size: int, shuffle_rows: int) -> None:
    n_rows = sum(FILE_ROWS)
    batches = list(LocalBatches(shard_files, N_MELS, batch_size, shuffle_rows=shuffle_rows, seed=3).arrays(epoch=1))
    assert sorted(_row_ids(batches)) == list(range(n_rows))
    sizes = [len(b["audio"]) for b in batches]
    assert sizes == [batch_size] * (n_rows // batch_size) + ([n_rows % batch_size] if n_rows % batch_size else [])
    for b in batches:
        ids = b["audio"][:, 0, 0].astype(int)
        assert b["audio"].shape == (len(ids), T, N_MELS) and b["targets"].shape == (len(ids), T, N_TARGETS)
        assert b["vad"].shape == b["mask"].shape == (len(ids), T)
        assert all(a.dtype == np.float32 for a in b.values())
        np.testing.assert_array_equal(b["audio"], np.broadcast_to(ids[:, None, None], b["audio"].shape))
        np.testing.assert_allclose(b["targets"], np.broadcast_to(ids[:, None, None] / 100, b["targets"].shape))
        np.testing.assert_array_equal(b["mask"], (np.arange(T)[None, :] != (ids % T)[:, None]).astype(np.float32))


def test_local_batches_order(shard_files) -> None:
    ordered = LocalBatches(shard_files, N_MELS, 4)
    assert _row_ids(list(ordered.arrays(0))) == list(range(sum(FILE_ROWS)))  # no shuffle: file order
    shuffled = LocalBatches(shard_files, N_MELS, 4, shuffle_rows=8, seed=1)
    first, again = _row_ids(list(shuffled.arrays(0))), _row_ids(list(shuffled.arrays(0)))
    assert first == again  # seeded: an epoch is reproducible
    assert first != _row_ids(list(shuffled.arrays(1))) and first != sorted(first)  # epochs differ; rows are mixed


def test_local_batches_validation_columns_and_tensors(shard_files) -> None:
    source = LocalBatches(shard_files, N_MELS, 6, columns=VAL_COLUMNS)
    batch = next(source.arrays())
    np.testing.assert_allclose(batch["start_s"], np.arange(6) * 0.12)
    assert batch["clip_id"].tolist() == ["clip0"] * 4 + ["clip1"] * 2
    tensors = next(source.torch_batches())
    assert set(tensors) == {"audio", "targets", "vad", "mask"}  # ids stay out of the tensors
    assert tensors["audio"].shape == (6, T, N_MELS) and tensors["audio"].dtype == torch.float32
    tensors["audio"] += 1  # writable memory, not Arrow's read-only buffers


def test_steps_per_epoch_and_clip_rank() -> None:
    assert steps_per_epoch(train_rows=130, world_size=2, batch_size=64) == 2  # 65 rows per worker
    assert steps_per_epoch(train_rows=128, world_size=2, batch_size=64) == 1
    assert steps_per_epoch(train_rows=0, world_size=2, batch_size=64) == 1
    ids = [f"clip{i}" for i in range(200)]
    ranks = [clip_rank(c, 3) for c in ids]
    assert set(ranks) == {0, 1, 2} and ranks == [clip_rank(c, 3) for c in ids]
    assert clip_rank("clip7", 1) == 0
