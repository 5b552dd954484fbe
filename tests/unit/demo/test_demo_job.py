"""The demo job's choice of a held-out clip to run inference on, and its two held-out numbers."""

from __future__ import annotations

from support import demo_clips, listing_manifest

from a2bs.config import AudioConfig
from a2bs.demo.job import _held_out_clip, held_out_lines
from a2bs.manifests import ClipEntry, ClipsManifest
from a2bs.train.metrics import target_table


def test_held_out_clip_is_in_the_validation_split(tmp_path) -> None:
    """The manifests map the validation clip ids to their source files (no file is hashed)."""
    clips = demo_clips()
    val = clips[len(clips) // 2]  # any clip, not the first: the fallback is the first clip
    ids = {c: f"clip{i:03d}" for i, c in enumerate(clips)}
    ClipsManifest(AudioConfig(), {ids[c]: ClipEntry(str(c), "s", 1.0, 30.0, 30.0, 100.0, 30, 30, 1, 60.0, 1, (0,))
                                  for c in clips}).write(tmp_path / "clips")
    listing_manifest({"train": [ids[c] for c in clips if c != val], "val": [ids[val]]}).write(tmp_path / "shards")
    assert _held_out_clip(str(tmp_path / "clips"), str(tmp_path / "shards"), clips) == val


def test_held_out_clip_prefers_the_test_split(tmp_path) -> None:
    clips = demo_clips()
    ids = {c: f"clip{i:03d}" for i, c in enumerate(clips)}
    ClipsManifest(AudioConfig(), {ids[c]: ClipEntry(str(c), "s", 1.0, 30.0, 30.0, 100.0, 30, 30, 1, 60.0, 1, (0,))
                                  for c in clips}).write(tmp_path / "clips")
    val, test = clips[3], clips[-2]
    listing_manifest({"train": [ids[c] for c in clips if c not in (val, test)], "val": [ids[val]],
                      "test": [ids[test]]}).write(tmp_path / "shards")
    assert _held_out_clip(str(tmp_path / "clips"), str(tmp_path / "shards"), clips) == test


def _entry(speakers: list[str], lip_corr: float) -> dict:
    metrics = {"n_clips": 2, "n_frames": 100, "mae": 0.02, "mouth_mae": 0.03, "jaw_corr": 0.9, "lip_corr": lip_corr}
    return {"metrics": metrics, "targets": target_table(metrics), "speakers": speakers}


def test_the_demo_shows_both_held_out_numbers_against_the_seed_targets() -> None:
    splits = {"test": _entry(["astronaut_slt"], 0.4), "val": _entry(["hopper_awb"], 0.5),
              "known": _entry(["astronaut_rms", "hopper_kal16"], 0.7)}
    known, unseen = held_out_lines(splits, "speaker")
    assert known.startswith("demo: known voices, unseen clips (known split: astronaut_rms, hopper_kal16): ")
    assert "lip_corr 0.700" in known and known.endswith("(4/4 seed targets)")
    assert unseen.startswith("demo: unseen voices (test split: astronaut_slt): ")
    assert "lip_corr 0.400" in unseen and unseen.endswith("(3/4 seed targets)")
    # By clip, the test clips are of known voices and no voice is unseen.
    known, unseen = held_out_lines({"test": splits["known"], "val": splits["val"]}, "clip")
    assert known.startswith("demo: known voices, unseen clips (test split: ")
    assert unseen == "demo: unseen voices: none held out (too few speakers, or sequence.*_fraction 0)"
    # A model with identities: the average face, then each voice's own face.
    own = _entry(["astronaut_slt"], 0.65)
    splits["test"]["with_identity"] = {**own, "identities": ["astronaut"]}
    _, unseen = held_out_lines(splits, "speaker")
    average, faces = unseen.split("; ")
    assert average.startswith("demo: unseen voices (test split: astronaut_slt): average face: mae 0.0200")
    assert "lip_corr 0.400" in average and average.endswith("(3/4 seed targets)")
    assert faces.startswith("with their face (astronaut): ") and "lip_corr 0.650" in faces
    assert faces.endswith("(4/4 seed targets)")


def test_a_speaker_subset_takes_voices_from_every_face_in_turn() -> None:
    from a2bs.demo.job import demo_clip_paths

    every = demo_clip_paths()
    assert len(every) == len(demo_clips())
    subset = demo_clip_paths(clips_per_speaker=2, speakers=4)
    speakers = sorted({c.parent.name for c in subset})
    assert len(subset) == 8 and len(speakers) == 4
    faces = [s.split("_")[0] for s in speakers]
    assert faces.count("astronaut") == faces.count("hopper") == 2, speakers
    # The first voices of each face, in the corpus' order.
    by_face = {f: sorted({c.parent.name for c in every if c.parent.name.startswith(f + "_")}) for f in set(faces)}
    assert speakers == sorted(by_face["astronaut"][:2] + by_face["hopper"][:2])
