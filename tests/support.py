"""Plain helpers shared by tests (importable; conftest modules only hold fixtures)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DEMO_CORPUS = REPO / "a2bs" / "demo" / "corpus"


# The shared integration fixture (conftest.demo_features) extracts this many of the demo corpus' voices,
# taken in turn from each face: enough voices for every split, in under half of the corpus' extraction time.
FIXTURE_SPEAKERS = 6


def demo_clips() -> list[Path]:
    """The bundled demo clips, sorted."""
    return sorted(DEMO_CORPUS.rglob("*.mp4"))


def fixture_clips() -> list[Path]:
    """The demo clips of the shared integration fixture (`FIXTURE_SPEAKERS` voices), sorted."""
    from a2bs.demo.job import demo_clip_paths

    return demo_clip_paths(speakers=FIXTURE_SPEAKERS)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_split(shards_dir: str, split: str) -> dict[str, np.ndarray]:
    """Every window of a split as arrays, read the way training reads shards (LocalBatches)."""
    from a2bs.build.shards import shard_files
    from a2bs.config import AudioConfig
    from a2bs.train.data import VAL_COLUMNS, LocalBatches

    files = shard_files(shards_dir, split)
    assert files, f"{shards_dir}: no {split!r} shards"
    # One batch larger than any split: LocalBatches then yields the whole split at once.
    (arrays,) = LocalBatches(files, AudioConfig().n_mels, batch_size=1 << 40, columns=VAL_COLUMNS).arrays()
    return arrays


def listing_manifest(clips: dict[str, list[str]], shards: dict[str, list[str]] | None = None) -> Any:
    """A shards manifest that lists the given clip ids and shard files (one row each) per split, with
    default settings and empty statistics: for tests that need a manifest, not a build."""
    from a2bs.config import AudioConfig, SequenceConfig
    from a2bs.manifests import ShardFile, ShardsManifest, SplitStats

    def split(name: str) -> SplitStats:
        files = tuple(ShardFile(f, 1, 1) for f in (shards or {}).get(name, []))
        return SplitStats(speakers=(), clips=tuple(clips.get(name, [])), hours=0.0, rows=len(files), shards=files,
                          valid_frames=0.0, channels={}, mel_clipped=0)

    names = ["train", "val", *(s for s in clips if s not in ("train", "val"))]  # e.g. test, known
    return ShardsManifest("test", 100.0, 24, 12, AudioConfig(), SequenceConfig(), {s: split(s) for s in names})


def pushed_in_chunks(stream: Any, samples: np.ndarray, sizes: tuple[int, ...] = (100, 517, 1600, 3, 2000)) -> np.ndarray:
    """Every frame a streaming object (``push``/``flush``) gives for `samples` pushed in uneven chunks."""
    parts, i, k = [], 0, 0
    while i < len(samples):
        parts.append(stream.push(samples[i : i + sizes[k % len(sizes)]]))
        i, k = i + sizes[k % len(sizes)], k + 1
    parts.append(stream.flush())
    return np.concatenate(parts)


def lively_model(name: str = "tcn_full", seed: int = 0, **overrides: Any) -> Any:
    """A seeded untrained model of preset `name` (dropout 0, eval mode) whose outputs move with the
    input: its head's weights scaled up 40x (the init's std 0.01 gives nearly flat 0.5 curves)."""
    import torch

    from a2bs.models import build_model, preset

    torch.manual_seed(seed)
    net = build_model(preset(name, **{"dropout": 0.0, **overrides})).eval()
    with torch.no_grad():
        net.head.proj.weight.mul_(40.0)
    return net
