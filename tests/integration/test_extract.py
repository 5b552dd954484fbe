"""Per-clip extraction with the real MediaPipe model, ffmpeg and librosa (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import media_factory as mf
import numpy as np
import pytest
from support import demo_clips

from a2bs import cli
from a2bs.config import Config, VideoConfig
from a2bs.errors import ModelFileError
from a2bs.extract.audio import extract_audio_features
from a2bs.extract.face import FaceTracker, load_model_bytes
from a2bs.extract.pipeline import run_extract
from a2bs.extract.store import SegmentPart, concat_parts, iter_segments
from a2bs.extract.video import iter_frames
from a2bs.manifests import ClipEntry, ClipsManifest
from a2bs.schema import ARKIT_BLENDSHAPES, N_BLENDSHAPES, N_TARGETS, POSE_REST

CFG = Config()


def _clip(clips_dir: Path, summary_rows: list[dict], source: Path) -> tuple[ClipEntry, SegmentPart]:
    """A clip's manifest entry and its features, all segments joined."""
    row = next(r for r in summary_rows if r["source"] == str(source))
    assert row["status"] == "ok", row
    entry = ClipsManifest.load(clips_dir).clips[row["clip_id"]]
    return entry, concat_parts(list(iter_segments(str(clips_dir), row["clip_id"], entry.segments)))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, demo_clip: Path):
    work = tmp_path_factory.mktemp("extract")
    inputs = work / "in"
    inputs.mkdir()
    clip30 = mf.make_baseline(inputs, demo_clip)
    clip60 = mf.make_fps(inputs, demo_clip, 60)
    no_face = mf.make_no_face(inputs, demo_clip)
    out = work / "clips"
    summary = run_extract([str(inputs)], str(out), CFG, write_json=True, use_ray=False, progress=False)
    rows = json.loads((out / "_summary.json").read_text())["clips"]
    return {"summary": summary, "rows": rows, "out": out, "30": clip30, "60": clip60, "no_face": no_face}


def test_face_clip_and_60fps_reencode(extracted) -> None:
    assert extracted["summary"].ok == 3 and extracted["summary"].failed == 0
    e30, r30 = _clip(extracted["out"], extracted["rows"], extracted["30"])
    e60, r60 = _clip(extracted["out"], extracted["rows"], extracted["60"])
    assert (e30.frame_interval, e60.frame_interval) == (1, 2)
    assert e60.video_fps == pytest.approx(60.0, abs=0.1) and e60.face_fps == pytest.approx(30.0, abs=0.1)
    for e, r in ((e30, r30), (e60, r60)):
        idx = r.frame_index
        assert r.targets.shape == (len(idx), N_TARGETS) == (len(idx), 52 + 7) and e.frames == len(idx)
        assert r.has_face.all()
        np.testing.assert_allclose(r.frame_time_s, idx / e.video_fps, atol=1e-9)
        assert (np.diff(idx) == e.frame_interval).all()
        assert 0.0 <= r.targets[:, :N_BLENDSHAPES].min() and r.targets[:, :N_BLENDSHAPES].max() <= 1.0
        assert np.abs(r.targets[:, N_BLENDSHAPES:N_BLENDSHAPES + 3]).max() < 0.2  # metres from rest
    # Same footage at twice the rate, every 2nd frame: about the same number of selected frames
    # (the 30 fps copy is cut at packet boundaries, so it may carry a frame or two more).
    assert abs(len(r60.frame_index) - len(r30.frame_index)) <= 3
    jaw = ARKIT_BLENDSHAPES.index("jawOpen")
    j30, j60 = r30.targets[:, jaw], r60.targets[:, jaw]
    n = min(len(j30), len(j60))
    assert np.corrcoef(j30[:n], j60[:n])[0, 1] > 0.9


def test_labels_do_not_depend_on_the_clip_tracked_before(demo_clip: Path) -> None:
    # An actor's tracker runs many clips; a clip's labels must be the same whatever ran before it.
    face = demo_clip.parent.name.split("_")[0]  # speaker folders are <face>_<voice>
    other = next(c for c in demo_clips() if c.parent.name.split("_")[0] != face)  # another face and voice

    def track(tracker: FaceTracker, path: Path):
        return tracker.track(iter_frames(path, CFG.video.fps_limit)[1])

    with FaceTracker(CFG.video) as tracker:
        alone = track(tracker, demo_clip)
    with FaceTracker(CFG.video) as tracker:
        track(tracker, other)
        after = track(tracker, demo_clip)
    assert alone.has_face.all() and len(alone.frame_index) > 100
    np.testing.assert_array_equal(after.blendshapes, alone.blendshapes)
    np.testing.assert_array_equal(after.pose, alone.pose)


def test_seed_json_shapes(extracted) -> None:
    _, r30 = _clip(extracted["out"], extracted["rows"], extracted["30"])
    face = json.loads((extracted["out"] / "json" / f"{r30.clip_id}.face.json").read_text())
    assert set(face) == {"sessionInfo", "frameCount", "frames"}
    assert set(face["sessionInfo"]) == {"sessionId", "targetFPS", "originalFPS", "frameInterval"}
    assert face["frameCount"] == len(face["frames"]) == len(r30.frame_index)
    frame = face["frames"][3]
    assert set(frame) == {"frame_index", "timestamp", "sessionId", "blendshapes", "headPosition", "headRotation",
                          "has_face"}
    assert list(frame["blendshapes"]) == list(ARKIT_BLENDSHAPES)
    assert set(frame["headPosition"]) == {"x", "y", "z"} and list(frame["headRotation"]) == ["w", "x", "y", "z"]
    assert frame["timestamp"] == pytest.approx(frame["frame_index"] / face["sessionInfo"]["originalFPS"])
    assert [f["blendshapes"]["jawOpen"] for f in face["frames"]] == r30.targets[:, ARKIT_BLENDSHAPES.index("jawOpen")].tolist()
    audio = json.loads((extracted["out"] / "json" / f"{r30.clip_id}.audio.json").read_text())
    assert audio["sample_rate"] == 16000 and audio["mel_frame_rate"] == 100.0
    n = audio["n_frames"]
    assert len(audio["timestamps"]) == len(audio["mel_features"]) == len(audio["voice_activity"]) == n
    assert len(audio["zero_crossing_rate"]) == n and len(audio["mel_features"][0]) == 80


def test_no_face_clip_gives_placeholders_with_the_same_shape(extracted) -> None:
    _, face = _clip(extracted["out"], extracted["rows"], extracted["30"])
    _, blank = _clip(extracted["out"], extracted["rows"], extracted["no_face"])
    assert blank.targets.shape[1] == face.targets.shape[1] == N_TARGETS
    assert len(blank.has_face) > 0 and not blank.has_face.any()
    assert (blank.targets[:, :N_BLENDSHAPES] == 0).all()
    np.testing.assert_allclose(blank.targets[:, N_BLENDSHAPES:], np.tile(POSE_REST, (len(blank.has_face), 1)))
    assert blank.mel_db.shape[1] == 80  # audio features are still there


def test_audio_timeline_and_vad_on_a_demo_clip(demo_clip: Path) -> None:
    feats = extract_audio_features(demo_clip, CFG.audio)
    samples = mf.decode_audio(demo_clip, 16000)
    assert feats.mel_db.shape == (1 + len(samples) // 160, 80)
    assert feats.time_s[-1] == pytest.approx(feats.duration_s, abs=0.011)
    # The demo clips start and end in silence and speak in between.
    assert feats.vad[:10].max() < 0.1 and feats.vad[-5:].max() < 0.1
    assert np.percentile(feats.vad, 75) > 0.9


def test_bad_inputs_are_reported_and_the_batch_goes_on(tmp_path: Path, demo_clip: Path, capsys) -> None:
    cases = ["zero_byte", "truncated", "text_as_mp4", "no_audio", "missing", "directory_named_mp4"]
    built = mf.build_corpus(tmp_path / "in", demo_clip, cases + ["baseline"])
    args = [str(p) for p in built.values()] + ["--out", str(tmp_path / "clips"), "--no-ray", "--quiet"]
    assert cli.main(["extract", *args]) == 0
    err = capsys.readouterr()
    failed = [line for line in err.err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == len(cases)
    for name in cases:
        line = next(x for x in failed if x.startswith(f"failed: {built[name]}:"))
        assert mf.CASES[name].hint_matches(line), line
    assert "1 ok, 6 failed" in err.out
    saved = json.loads((tmp_path / "clips" / "_failures.json").read_text())
    assert {f["source"] for f in saved} == {str(built[n]) for n in cases}


def test_vendored_model_hash_is_checked(tmp_path: Path, demo_clip: Path, capsys) -> None:
    assert len(load_model_bytes(VideoConfig())) == 3_758_596
    wrong = tmp_path / "face_landmarker.task"
    wrong.write_bytes(b"not the model" * 100)
    with pytest.raises(ModelFileError, match="does not match"):
        load_model_bytes(VideoConfig(model_path=str(wrong)))
    with pytest.raises(ModelFileError, match="not found"):
        load_model_bytes(VideoConfig(model_path=str(tmp_path / "nope.task")))
    assert load_model_bytes(VideoConfig(model_path=str(wrong), model_sha256="")) == wrong.read_bytes()
    assert cli.main(["extract", str(demo_clip), "--out", str(tmp_path / "o"), "--no-ray",
                     f"video.model_path={wrong}"]) == 1
    assert "does not match" in capsys.readouterr().err
