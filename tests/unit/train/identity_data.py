"""Small shards folders of synthetic windows with faces: each face rests at its own mouthSmile level."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from a2bs.build.shards import ShardRows, clip_identity
from a2bs.config import AudioConfig, SequenceConfig
from a2bs.manifests import ShardFile, ShardsManifest, SplitStats
from a2bs.runtime import storage
from a2bs.schema import BLENDSHAPE_INDEX, N_TARGETS, sequence_schema

N_MELS = 8
T = 24  # frames per window
SMILE = BLENDSHAPE_INDEX["mouthSmileLeft"]
REST = {"astronaut": 0.9, "hopper": 0.1, "newface": 0.6}  # each face's mouthSmile at rest


def windows(face: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` windows of a speaker of `face`: random log-mel, the jaw follows the loudness, smile at the face's rest."""
    rng = np.random.default_rng(seed)
    audio = rng.uniform(-60.0, 0.0, (n, T, N_MELS)).astype(np.float32)
    targets = np.full((n, T, N_TARGETS), 0.05, np.float32)
    targets[..., SMILE] = REST[face]
    targets[..., BLENDSHAPE_INDEX["jawOpen"]] = (audio.mean(axis=2) + 60.0) / 60.0
    targets[..., 52:] = 0.0
    targets[..., 55] = 1.0  # qw of the rest pose
    return {"start_s": np.arange(n) * 0.12, "audio": audio, "targets": targets,
            "vad": np.ones((n, T), np.float32), "mask": np.ones((n, T), np.float32)}


def write_shards(root: Path, speakers: dict[str, list[str]], per_speaker: int = 48, identity_from: str = "prefix",
                 with_identity_column: bool = True) -> Path:
    """A shards folder: split -> speakers (`<face>_<voice>`), one clip and one shard per speaker.

    `with_identity_column=False` writes shards as a2bs did before identities (no column, no faces listed).
    """
    splits = {}
    for split, names in speakers.items():
        files, identities = [], set()
        for k, speaker in enumerate(names):
            name = f"{split}/part-{k:05d}.parquet"
            face = clip_identity(speaker, identity_from)
            identities.add(face)
            data = windows(speaker.split("_")[0], per_speaker, seed=zlib.crc32(speaker.encode()))
            storage.makedirs(str(root / split))
            with storage.atomic_parquet_writer(str(root / name), sequence_schema(N_MELS)) as w:
                rows = ShardRows(w, split, N_MELS)
                rows.add(f"{speaker}_clip", speaker, data, face)
                rows.finish()
            if not with_identity_column:
                table = storage.read_parquet(str(root / name)).drop_columns(["identity"])
                storage.write_parquet_atomic(table, str(root / name))
            files.append(ShardFile(name, per_speaker, 1))
        splits[split] = SplitStats(speakers=tuple(names), clips=tuple(f"{s}_clip" for s in names), hours=0.01,
                                   rows=per_speaker * len(names), shards=tuple(files), valid_frames=0.0, channels={},
                                   mel_clipped=0,
                                   identities=tuple(sorted(identities - {""})) if with_identity_column else ())
    ShardsManifest("test", 100.0, T, T // 2, AudioConfig(n_mels=N_MELS), SequenceConfig(), splits).write(root)
    return root
