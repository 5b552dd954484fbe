"""Augmentation on the Ray Train path: a real run's validation is scored on the rows exactly as stored
(a model file scored outside training gives the same numbers), and a worker's train batches are
augmented while its validation rows are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from a2bs.config import AudioConfig, load_config
from a2bs.models.model_file import load_model_file
from a2bs.train.augment import make_augmenter
from a2bs.train.data import (
    TRAIN_COLUMNS,
    VAL_COLUMNS,
    LocalBatches,
    arrow_to_arrays,
    ray_dataset,
    ray_train_batches,
    ray_val_arrays,
    read_shard,
    shard_info,
)
from a2bs.train.trainer import read_history, train
from a2bs.train.validation import score_batches
from tests.support import listing_manifest
from tests.unit.train.test_augment import M, write_split

EVERY = ["augment.enabled=true"] + [f"augment.{k}=1.0" for k in ("gain_prob", "noise_prob", "speed_prob",
                                                                  "vtlp_prob", "time_mask_prob", "freq_mask_prob")]


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    root = tmp_path / "shards"
    files = {"train": [write_split(root, "train", 32, 0)], "val": [write_split(root, "val", 16, 1)]}
    listing_manifest({"train": ["train0"], "val": ["val0"]}, files).write(root)
    return root


def test_ray_worker_batches_augment_train_only(ray_cluster, shards: Path) -> None:
    info = shard_info(str(shards))
    aug = make_augmenter(load_config(None, EVERY).augment, AudioConfig())
    cpu = torch.device("cpu")

    def epoch(augmenter, e: int = 0) -> list[dict[str, torch.Tensor]]:
        it = ray_dataset(info.train_files, TRAIN_COLUMNS).iterator()
        return list(ray_train_batches(it, M, 8, 0, seed=0, epoch=e, rank=0, device=cpu, augmenter=augmenter))

    on, off = epoch(aug), epoch(None)
    # Ray Data does not keep row order across blocks: compare rows as sets.
    stored = _rows(arrow_to_arrays(read_shard(info.train_files[0]), M))
    assert _rows({k: np.concatenate([b[k].numpy() for b in off]) for k in TRAIN_COLUMNS}) == stored
    augmented = _rows({k: np.concatenate([b[k].numpy() for b in on]) for k in TRAIN_COLUMNS})
    assert len(augmented) == len(stored) and not set(augmented) & set(stored)  # every window changed
    val = list(ray_val_arrays(ray_dataset(info.val_files, VAL_COLUMNS).iterator(), M, 5))
    stored_val = arrow_to_arrays(read_shard(info.val_files[0]), M)
    assert _rows({k: np.concatenate([v[k] for v in val]) for k in TRAIN_COLUMNS}) == _rows(stored_val)


def _rows(arrays: dict[str, np.ndarray]) -> list[bytes]:
    """Each window's audio, targets, vad and mask as bytes, sorted."""
    n = len(arrays["audio"])
    return sorted(b"".join(np.ascontiguousarray(arrays[k][i]).tobytes() for k in TRAIN_COLUMNS) for i in range(n))


def test_ray_train_run_validates_on_unaugmented_rows(ray_cluster, shards: Path, tmp_path: Path) -> None:
    cfg = load_config(None, EVERY + ["train.epochs=1", "train.batch_size=8", "train.init_output_bias=false",
                                     "model.channels=16", "model.dilations=[1,2]", "train.num_workers=1"])
    result = train(str(shards), str(tmp_path / "run"), cfg, use_ray=True)
    (row,) = read_history(result.run_dir)
    model, _ = load_model_file(result.model_path)
    info = shard_info(str(shards))
    # The same scoring as the run's validation, on the stored val rows: equal only if training's
    # validation saw them unaugmented (every transform has probability 1 here).
    scored = score_batches(model, LocalBatches(info.val_files, M, 16, columns=VAL_COLUMNS).arrays(),
                           info.frame_rate_hz, info.overlap_frames, torch.device("cpu"))
    assert row["val_mae"] == pytest.approx(scored.metrics["mae"], rel=1e-5, abs=1e-7)
    assert row["val_frames"] == scored.metrics["n_frames"]
