"""The demo job's choice of a held-out clip to run inference on."""

from __future__ import annotations

from support import demo_clips, listing_manifest

from a2bs.config import AudioConfig
from a2bs.demo.job import _held_out_clip
from a2bs.manifests import ClipEntry, ClipsManifest


def test_held_out_clip_is_in_the_validation_split(tmp_path) -> None:
    """The manifests map the validation clip ids to their source files (no file is hashed)."""
    clips = demo_clips()
    val = clips[len(clips) // 2]  # any clip, not the first: the fallback is the first clip
    ids = {c: f"clip{i:03d}" for i, c in enumerate(clips)}
    ClipsManifest(AudioConfig(), {ids[c]: ClipEntry(str(c), "s", 1.0, 30.0, 30.0, 100.0, 30, 30)
                                  for c in clips}).write(tmp_path / "clips")
    listing_manifest({"train": [ids[c] for c in clips if c != val], "val": [ids[val]]}).write(tmp_path / "shards")
    assert _held_out_clip(str(tmp_path / "clips"), str(tmp_path / "shards"), clips) == val
