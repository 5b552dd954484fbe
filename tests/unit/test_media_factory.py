"""Each generated case really has the property it claims (checked with ffmpeg / cv2 / pyarrow)."""

from __future__ import annotations

from pathlib import Path

import cv2
import media_factory as mf
import numpy as np
import pyarrow.parquet as pq
import pytest

SRC_SECONDS = 3.0


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Faceless 320x240 30 fps 3 s testsrc2 + 440 Hz AAC: no dependency on the demo corpus."""
    return mf.make_standin_source(tmp_path_factory.mktemp("src") / "standin.mp4",
                                  seconds=SRC_SECONDS)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, standin: Path) -> dict[str, Path]:
    return mf.build_corpus(tmp_path_factory.mktemp("corpus"), standin)


def _first_frame(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))  # cv2 applies rotation metadata by default
    ok, frame = cap.read()
    cap.release()
    assert ok, path
    return frame.astype(np.float32)


def test_registry_is_consistent(corpus: dict[str, Path]) -> None:
    assert set(corpus) == set(mf.CASES)
    for case in mf.CASES.values():
        assert case.expect in {"ok", "ok_audio_only", "ok_no_face", "error"}
        assert bool(case.error_hint) == (case.expect == "error"), case.name
        assert case.kind in {"media", "parquet"}
    assert set(mf.case_names(kind="parquet")) == {"corrupt_parquet", "truncated_parquet"}
    assert mf.CASES["no_audio"].hint_matches("clip.mp4: No audio track in the file")
    assert not mf.CASES["no_audio"].hint_matches("clip.mp4: empty file")


def test_build_corpus_subset_and_errors(tmp_path: Path, standin: Path) -> None:
    paths = mf.build_corpus(tmp_path, standin, ["zero_byte", "missing"])
    assert list(paths) == ["zero_byte", "missing"]
    with pytest.raises(KeyError, match="nope"):
        mf.build_corpus(tmp_path, standin, ["nope"])
    with pytest.raises(ValueError, match="needs a source"):
        mf.build_corpus(tmp_path, None, ["no_audio"])
    assert mf.build_corpus(tmp_path, None, ["text_as_mp4"])["text_as_mp4"].is_file()


def test_deterministic(tmp_path: Path, standin: Path) -> None:
    names = ["no_face", "vfr", "rotated_90", "silent_audio", "audio_only_mp3", "corrupt_parquet"]
    a = mf.build_corpus(tmp_path / "a", standin, names)
    b = mf.build_corpus(tmp_path / "b", standin, names)
    for n in names:
        assert a[n].read_bytes() == b[n].read_bytes(), n


def test_baseline_matches_source(corpus: dict[str, Path]) -> None:
    info = mf.probe(corpus["baseline"])
    assert (info["width"], info["height"], info["fps"], info["n_frames"]) == (320, 240, 30.0, 90)
    assert info["has_audio"] and info["audio_sample_rate"] == 48000
    assert info["audio_channels"] == 1 and info["rotation"] == 0
    assert info["duration_s"] == pytest.approx(SRC_SECONDS, abs=0.05)
    assert mf.audio_rms(corpus["baseline"]) > 0.05  # lavfi sine: amplitude 1/8, RMS ~0.088


def test_zero_byte(corpus: dict[str, Path]) -> None:
    assert corpus["zero_byte"].stat().st_size == 0
    with pytest.raises(mf.ProbeError):
        mf.probe(corpus["zero_byte"])


def test_truncated_loses_moov(corpus: dict[str, Path]) -> None:
    path = corpus["truncated"]
    assert 0 < path.stat().st_size < 0.5 * corpus["baseline"].stat().st_size
    assert "moov" not in mf.mp4_top_level_atoms(path)
    with pytest.raises(mf.ProbeError, match="Invalid data"):
        mf.probe(path)
    assert not cv2.VideoCapture(str(path)).isOpened()


def test_truncated_faststart_keeps_early_frames(corpus: dict[str, Path]) -> None:
    path = corpus["truncated_faststart"]
    assert path.stat().st_size < 0.5 * corpus["baseline"].stat().st_size
    atoms = mf.mp4_top_level_atoms(path)
    assert atoms.index("moov") < atoms.index("mdat")
    info = mf.probe(path)  # the header still claims the whole clip
    assert info["n_frames"] == 90 and info["duration_s"] == pytest.approx(SRC_SECONDS, abs=0.05)
    assert 5 < mf.decoded_frame_count(path) < 60


def test_text_as_mp4(corpus: dict[str, Path]) -> None:
    assert corpus["text_as_mp4"].suffix == ".mp4"
    assert corpus["text_as_mp4"].read_text().startswith("This is not a video")
    with pytest.raises(mf.ProbeError, match="Invalid data"):
        mf.probe(corpus["text_as_mp4"])


def test_no_audio(corpus: dict[str, Path]) -> None:
    info = mf.probe(corpus["no_audio"])
    assert info["has_video"] and not info["has_audio"] and info["n_frames"] == 90


@pytest.mark.parametrize("name, codec, rate", [("audio_only_wav", "pcm_s16le", 16000),
                                               ("audio_only_mp3", "mp3", 44100),
                                               ("audio_only_m4a", "aac", 48000)])
def test_audio_only(corpus: dict[str, Path], name: str, codec: str, rate: int) -> None:
    info = mf.probe(corpus[name])
    assert not info["has_video"] and info["has_audio"]
    audio = (info["audio_codec"], info["audio_sample_rate"], info["audio_channels"])
    assert audio == (codec, rate, 1)
    assert info["duration_s"] == pytest.approx(SRC_SECONDS, abs=0.1)
    assert mf.audio_rms(corpus[name]) > 0.05


def test_no_face_is_flat_with_audio(corpus: dict[str, Path]) -> None:
    frame = _first_frame(corpus["no_face"])
    assert frame.std() < 2.0  # one flat color: nothing a face detector could fire on
    assert _first_frame(corpus["baseline"]).std() > 20.0
    assert mf.audio_rms(corpus["no_face"]) > 0.05


def test_vfr_has_irregular_timestamps(corpus: dict[str, Path]) -> None:
    times = mf.frame_times(corpus["vfr"])
    gaps = np.round(np.diff(times), 4)
    assert set(gaps) == {round(1 / 60, 4), round(1 / 20, 4), round(1 / 30, 4)}
    assert len(times) == 90 and np.mean(gaps) == pytest.approx(1 / 30, rel=0.02)
    assert np.unique(np.round(np.diff(mf.frame_times(corpus["baseline"])), 4)).size == 1


def test_rotated_90(corpus: dict[str, Path]) -> None:
    info = mf.probe(corpus["rotated_90"])
    assert info["rotation"] == 90 and (info["width"], info["height"]) == (240, 320)
    cap = cv2.VideoCapture(str(corpus["rotated_90"]))
    assert cap.get(cv2.CAP_PROP_ORIENTATION_META) == 90
    cap.release()
    # Applying the metadata brings the picture back upright (== source), not upside down.
    upright, src = _first_frame(corpus["rotated_90"]), _first_frame(corpus["baseline"])
    assert upright.shape == src.shape
    assert np.abs(upright - src).mean() < 10
    assert np.abs(upright[::-1, ::-1] - src).mean() > 30


def test_one_frame(corpus: dict[str, Path]) -> None:
    info = mf.probe(corpus["one_frame"])
    assert info["n_frames"] == 1 and info["has_audio"]
    assert mf.decoded_frame_count(corpus["one_frame"]) == 1


def test_uhd_4k(corpus: dict[str, Path]) -> None:
    info = mf.probe(corpus["uhd_4k"])
    assert (info["width"], info["height"]) == (3840, 2160) and info["has_audio"]
    assert info["duration_s"] == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("name, rate, channels", [("stereo_44k", 44100, 2), ("mono_8k", 8000, 1)])
def test_audio_variants(corpus: dict[str, Path], name: str, rate: int, channels: int) -> None:
    info = mf.probe(corpus[name])
    assert (info["audio_sample_rate"], info["audio_channels"]) == (rate, channels)
    assert info["n_frames"] == 90 and mf.audio_rms(corpus[name]) > 0.05


def test_silent_audio_is_all_zero(corpus: dict[str, Path]) -> None:
    samples = mf.decode_audio(corpus["silent_audio"])
    assert samples.size >= 48000 * (SRC_SECONDS - 0.1)
    assert not np.any(samples) and mf.audio_rms(corpus["silent_audio"]) == 0.0
    assert mf.probe(corpus["silent_audio"])["n_frames"] == 90


def test_unicode_name(corpus: dict[str, Path]) -> None:
    path = corpus["unicode_name"]
    assert path.name == "Zoë interview – take 2.mp4" and path.exists()
    assert path.read_bytes() == corpus["baseline"].read_bytes()
    assert mf.probe(path)["n_frames"] == 90


def test_unreadable_and_missing_paths(corpus: dict[str, Path]) -> None:
    assert corpus["directory_named_mp4"].is_dir() and corpus["directory_named_mp4"].suffix == ".mp4"
    link = corpus["dangling_symlink"]
    assert link.is_symlink() and not link.exists()
    assert not corpus["missing"].exists() and not corpus["missing"].is_symlink()
    assert corpus["missing"].parent.is_dir()
    with pytest.raises(mf.ProbeError, match="Is a directory"):
        mf.probe(corpus["directory_named_mp4"])
    for name in ("dangling_symlink", "missing"):
        with pytest.raises(mf.ProbeError, match="No such file"):
            mf.probe(corpus[name])


@pytest.mark.parametrize("fps", [24, 60, 120])
def test_fps_variants(corpus: dict[str, Path], fps: int) -> None:
    info = mf.probe(corpus[f"fps_{fps}"])
    assert info["fps"] == fps and info["n_frames"] == fps * SRC_SECONDS
    assert np.allclose(np.diff(mf.frame_times(corpus[f"fps_{fps}"])), 1 / fps, atol=1e-3)


def test_corrupt_parquet_fails_on_read_not_open(corpus: dict[str, Path]) -> None:
    path = corpus["corrupt_parquet"]
    assert pq.ParquetFile(path).schema_arrow.names == ["clip_id", "frame", "blendshapes"]
    with pytest.raises(OSError):  # pyarrow: plain OSError "Couldn't deserialize thrift"
        pq.read_table(path)


def test_truncated_parquet_fails_on_open(corpus: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="magic bytes"):  # pyarrow.ArrowInvalid
        pq.read_table(corpus["truncated_parquet"])


def test_long_clip(tmp_path: Path, standin: Path) -> None:
    out = mf.make_long_clip(standin, tmp_path / "long.mp4", minutes=1)
    info = mf.probe(out)
    assert info["duration_s"] == pytest.approx(60, abs=0.2) and info["has_audio"]
    assert info["fps"] == 30.0 and info["n_frames"] == pytest.approx(1800, abs=2)
    # Video loops seamlessly (no timestamp gap at the seams).
    assert np.allclose(np.diff(mf.frame_times(out)), 1 / 30, atol=1e-3)
