"""Training data: shard files -> batches of (B, T, n_mels) audio and (B, T, 59) targets.

Two sources feed the same training loop:

- Ray Data (``ray_dataset`` + :class:`WindowCollate`): the shard files are read as a streaming
  dataset; Ray Train splits the train set across workers (``streaming_split(equal=True)``) and each
  worker reshapes Arrow batches into tensors in ``iter_torch_batches``' collate thread pool. No node
  ever holds more than its share of blocks in flight.
- :class:`LocalBatches`: the same shard files read in this process with pyarrow, a few files at a
  time (Tune trials that run in one process, the plain-PyTorch baseline, tests).

Augmentation (:mod:`a2bs.train.augment`) is applied to the train split only, and structurally so: the
train readers (:meth:`LocalBatches.torch_batches` of a reader given an augmenter, :func:`ray_train_batches`)
take an augmenter; the validation and test readers (:meth:`LocalBatches.arrays`, :func:`ray_val_arrays`)
have no way to apply one.

Validation keeps whole clips together: worker ``rank`` of ``world_size`` validates the clips with
``clip_rank(clip_id, world_size) == rank``, so every clip's windows meet in one metric accumulator.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import torch

from a2bs.errors import InputError
from a2bs.manifests import ShardsManifest
from a2bs.runtime import storage
from a2bs.schema import N_TARGETS
from a2bs.train.augment import Augmenter, augment_batches

TRAIN_COLUMNS: tuple[str, ...] = ("audio", "targets", "vad", "mask")
VAL_COLUMNS: tuple[str, ...] = ("clip_id", "start_s") + TRAIN_COLUMNS
IDENTITY_COLUMN = "identity"  # the window's face (shards built with sequence.identity_from)


def identity_columns(columns: tuple[str, ...], identities: tuple[str, ...]) -> tuple[str, ...]:
    """`columns` plus the identity column when the model has identities (shards without one are read
    only by models without identities, so old shards stay readable)."""
    return columns + (IDENTITY_COLUMN,) if identities and IDENTITY_COLUMN not in columns else columns


def identity_rows_of(names: np.ndarray | list[str], identities: tuple[str, ...]) -> np.ndarray:
    """Face names -> (N,) int64 rows of `identities`; "" or a face the model does not know -> the average row."""
    index = {name: i for i, name in enumerate(identities)}
    return np.array([index.get(str(n), len(identities)) for n in names], dtype=np.int64)


@dataclass(frozen=True)
class ShardInfo:
    """What the trainer needs to know about a shards folder before it starts (from its manifest)."""

    shards_dir: str
    manifest: ShardsManifest
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]

    @property
    def train_rows(self) -> int:
        return self.manifest.splits["train"].rows

    @property
    def val_rows(self) -> int:
        return self.manifest.splits["val"].rows

    @property
    def n_mels(self) -> int:
        return self.manifest.n_mels

    @property
    def frame_rate_hz(self) -> float:
        """Audio frames per second (start_s * frame_rate_hz = first frame index)."""
        return self.manifest.frame_rate_hz

    @property
    def overlap_frames(self) -> int:
        """Frames shared by consecutive windows of a clip."""
        return self.manifest.overlap_frames

    @property
    def train_means(self) -> list[float]:
        """(59,) mean of every target channel over the valid frames of the train split."""
        return self.manifest.splits["train"].channel_means()


def total_mb(files: tuple[str, ...] | list[str]) -> float:
    """Size of the files in MB (the Parquet files, i.e. compressed)."""
    total = 0
    for f in files:
        fs, path = storage.filesystem(f)
        total += fs.get_file_info(path).size or 0
    return total / 1e6


def shard_info(shards_dir: str) -> ShardInfo:
    """Files, row counts, audio settings and statistics of a shards folder, from its manifest.

    Raises:
        ManifestError: no shards manifest, or one of another version.
        FileNotFoundError: no train or no val shards.
    """
    manifest = ShardsManifest.load(shards_dir)
    train = tuple(manifest.files(shards_dir, "train"))
    val = tuple(manifest.files(shards_dir, "val"))
    if not train:
        raise FileNotFoundError(f"{shards_dir}: no 'train' shards (run `a2bs build` first)")
    if not val:
        raise FileNotFoundError(f"{shards_dir}: no 'val' shards (set sequence.val_fraction > 0 when building)")
    return ShardInfo(shards_dir, manifest, train, val)


def scored_mask(mask: np.ndarray, overlap_frames: int) -> np.ndarray:
    """Validation mask that scores each clip frame once, from the window where it sits most central.

    Consecutive windows share `overlap_frames`; dropping ``overlap_frames // 2`` frames at each end of
    every window tiles the clip exactly, whatever order the windows arrive in and whichever worker
    sees them (the first/last ``overlap_frames // 2`` frames of a clip are not scored).
    """
    edge = overlap_frames // 2
    if edge <= 0 or 2 * edge >= mask.shape[-1]:
        return mask
    out = mask.copy()
    out[..., :edge] = 0.0
    out[..., mask.shape[-1] - (overlap_frames - edge):] = 0.0
    return out


def steps_per_epoch(train_rows: int, world_size: int, batch_size: int) -> int:
    """Optimizer steps per epoch of each worker under an equal split (remainder rows dropped)."""
    return max(1, math.ceil((train_rows // max(world_size, 1)) / batch_size))


def clip_rank(clip_id: str, world_size: int) -> int:
    """The worker that validates `clip_id` (stable across processes, unlike ``hash``)."""
    return zlib.crc32(clip_id.encode("utf-8")) % max(world_size, 1)


def _flat(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    # flatten() honours slice offsets (ListArray.values would return the whole parent buffer).
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False)


def arrow_to_arrays(table: pa.Table, n_mels: int, identities: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Window rows -> audio (N, T, n_mels), targets (N, T, 59), vad/mask (N, T) float32 arrays
    (+ clip_id (N,) and start_s (N,) when present, and identity (N,) int64 rows of `identities` when
    they are given and the identity column is present)."""
    n = table.num_rows
    vad = _flat(table.column("vad")).astype(np.float32, copy=False)
    t = vad.size // n if n else 0
    out = {
        "audio": _flat(table.column("audio")).astype(np.float32, copy=False).reshape(n, t, n_mels),
        "targets": _flat(table.column("targets")).astype(np.float32, copy=False).reshape(n, t, N_TARGETS),
        "vad": vad.reshape(n, t),
        "mask": _flat(table.column("mask")).astype(np.float32, copy=False).reshape(n, t),
    }
    if "clip_id" in table.column_names:
        out["clip_id"] = np.asarray(table.column("clip_id").to_pylist(), dtype=object)
    if "start_s" in table.column_names:
        out["start_s"] = table.column("start_s").to_numpy()
    if identities and IDENTITY_COLUMN in table.column_names:
        out[IDENTITY_COLUMN] = identity_rows_of(table.column(IDENTITY_COLUMN).to_pylist(), identities)
    return out


def read_shard(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read one shard; a missing or damaged file raises InputError naming it (not a bare Arrow error)."""
    try:
        return storage.read_parquet(uri, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise InputError(uri, "shard listed in the manifest is missing (rerun `a2bs build`)") from None
        raise InputError(uri, f"corrupt or truncated Parquet shard ({' '.join(str(exc).split())[:160]}); "
                              "rerun `a2bs build`") from None


def to_tensors(arrays: dict[str, np.ndarray], device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The float arrays of :func:`arrow_to_arrays` (and its identity rows) as tensors on `device`
    (clip ids and starts are left out)."""
    # Arrow buffers are read-only; torch wants writable memory (np.require copies only when needed).
    keys = TRAIN_COLUMNS + ((IDENTITY_COLUMN,) if IDENTITY_COLUMN in arrays else ())
    return {k: torch.from_numpy(np.require(arrays[k], requirements=["C", "W"])).to(device or "cpu") for k in keys}


try:  # Ray Data's typed collate interface: the batch arrives as a pyarrow.Table (no numpy detour).
    from ray.data.collate_fn import ArrowBatchCollateFn as _CollateBase
except ImportError:  # pragma: no cover - ray[data] is a dependency; keeps this module importable alone
    _CollateBase = object  # type: ignore[assignment,misc]


class WindowCollate(_CollateBase):  # type: ignore[misc,valid-type]
    """``iter_torch_batches`` collate: Arrow batch of flat list columns -> dict of (B, T, C) tensors."""

    def __init__(self, n_mels: int, identities: tuple[str, ...] = ()) -> None:
        self.n_mels = n_mels
        self.identities = tuple(identities)

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        return to_tensors(arrow_to_arrays(batch, self.n_mels, self.identities))


def ray_dataset(files: tuple[str, ...] | list[str], columns: tuple[str, ...]) -> Any:
    """A streaming Ray dataset over shard files (local paths or s3:// URIs), in a random block order."""
    import ray

    files = list(files)
    kwargs: dict[str, Any] = {}
    if files and storage.is_remote(files[0]):
        # One S3 implementation for the whole project (endpoint and credentials from the environment).
        fs, _ = storage.filesystem(files[0])
        kwargs["filesystem"] = fs
        files = [storage.filesystem(f)[1] for f in files]
    return ray.data.read_parquet(files, **kwargs).select_columns(list(columns))  # projection is pushed into the read


def ray_train_batches(shard: Any, n_mels: int, batch_size: int, shuffle_rows: int, seed: int, epoch: int, rank: int,
                      device: torch.device, augmenter: Augmenter | None = None,
                      identities: tuple[str, ...] = ()) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of a Ray Train worker's train shard (a ``DataIterator``) as tensor batches on `device`.

    Shuffled within a local buffer of `shuffle_rows` (0 = no shuffle), seeded by (seed, epoch, rank);
    each batch then goes through `augmenter` (None = as read). With `identities` a batch holds each
    window's identity row (the dataset must hold the identity column).
    """
    batches = shard.iter_torch_batches(
        batch_size=batch_size, collate_fn=WindowCollate(n_mels, identities), device=device, prefetch_batches=2,
        local_shuffle_buffer_size=max(shuffle_rows, batch_size) if shuffle_rows else None,
        local_shuffle_seed=seed * 100_003 + epoch * 101 + rank)
    return augment_batches(batches, augmenter, epoch, rank)


def ray_val_arrays(shard: Any, n_mels: int, batch_size: int,
                   identities: tuple[str, ...] = ()) -> Iterator[dict[str, np.ndarray]]:
    """All rows of a validation (or test) ``DataIterator`` as numpy batches, exactly as stored."""
    for table in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        yield arrow_to_arrays(table, n_mels, identities)


class LocalBatches:
    """Batches from shard files read in this process (no Ray): a shuffle pool of whole files.

    Args:
        files: shard files.
        n_mels: mel bins of the shards.
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        columns: columns to read.
        shuffle_rows: shuffle within a pool of at least this many rows (0 = keep file order, no shuffle).
        seed: base seed; epoch `e` uses ``seed + e``.
        augmenter: applied by :meth:`torch_batches` (give one to the train split's reader only).
        identities: a model's identities: batches also hold each window's identity row (read from
            the identity column, which the shards must then have).
    """

    def __init__(self, files: tuple[str, ...] | list[str], n_mels: int, batch_size: int,
                 columns: tuple[str, ...] = TRAIN_COLUMNS, shuffle_rows: int = 0, seed: int = 0,
                 augmenter: Augmenter | None = None, identities: tuple[str, ...] = ()) -> None:
        self.files = list(files)
        self.n_mels = n_mels
        self.batch_size = batch_size
        self.identities = tuple(identities)
        self.columns = list(identity_columns(tuple(columns), self.identities))
        self.shuffle_rows = shuffle_rows
        self.seed = seed
        self.augmenter = augmenter

    def tables(self, epoch: int = 0) -> Iterator[pa.Table]:
        """Pools of rows (whole files, shuffled when `shuffle_rows` > 0)."""
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(len(self.files)) if self.shuffle_rows else np.arange(len(self.files))
        pool: list[pa.Table] = []
        rows = 0
        for i in order:
            pool.append(read_shard(self.files[i], self.columns))
            rows += pool[-1].num_rows
            if rows >= max(self.shuffle_rows, 1):
                yield self._mix(pool, rng)
                pool, rows = [], 0
        if pool:
            yield self._mix(pool, rng)

    def _mix(self, pool: list[pa.Table], rng: np.random.Generator) -> pa.Table:
        table = pa.concat_tables(pool)
        return table.take(rng.permutation(table.num_rows)) if self.shuffle_rows else table

    def arrays(self, epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Numpy batches of `batch_size` rows as stored (never augmented); leftovers carry into the next pool."""
        carry: pa.Table | None = None
        for table in self.tables(epoch):
            if carry is not None:
                table = pa.concat_tables([carry, table])
            n_full = table.num_rows // self.batch_size * self.batch_size
            for start in range(0, n_full, self.batch_size):
                yield arrow_to_arrays(table.slice(start, self.batch_size), self.n_mels, self.identities)
            carry = table.slice(n_full) if n_full < table.num_rows else None
        if carry is not None and carry.num_rows:
            yield arrow_to_arrays(carry, self.n_mels, self.identities)

    def torch_batches(self, epoch: int = 0, device: torch.device | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Tensor batches (audio, targets, vad, mask) on `device`, through the augmenter if one was given."""
        return augment_batches((to_tensors(arrays, device) for arrays in self.arrays(epoch)), self.augmenter, epoch)
