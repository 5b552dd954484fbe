"""Demo-corpus generator: viseme table, flite parsing, curves, rendering, committed corpus.

None of these need flite or festival: the generator's pieces are tested directly (engine output
from recorded samples, tests/unit/synth/test_speech.py) and the corpus is the committed one.
Rendering is checked with the real MediaPipe FaceLandmarker.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from support import DEMO_CORPUS

from a2bs.synth import visemes as V

CORPUS = DEMO_CORPUS
DEMO = CORPUS.parent

# Real `flite -voice slt -psdur -t "Hello world, my pop." -o x.wav` output.
PSDUR = ("pau:0.164 hh:0.255 ax:0.304 l:0.412 ow:0.548 w:0.663 er:0.789 l:0.971 d:1.025 "
         "pau:1.148 m:1.262 ay:1.414 p:1.554 aa:1.766 p:1.894 pau:2.050 \n")

# The US English phone set flite speaks (cmu_us_* voices).
FLITE_PHONES = ("pau aa ae ah ao aw ax axr ay b ch d dh eh el em en er ey f g hh ih iy jh k l m n "
                "ng ow oy p r s sh t th uh uw v w y z zh").split()


def _cls(phone: str) -> set[str]:
    return {V.VISEME_CLASS[v] for v in V.phone_visemes(phone)}


def test_viseme_table_maps_required_classes() -> None:
    for p in ("m", "b", "p"):
        assert _cls(p) == {"closed"}
    for p in ("ow", "uw", "uh", "w", "ao"):
        assert "rounded" in _cls(p)
    for p in ("iy", "ih", "eh"):
        assert _cls(p) == {"wide"}
    for p in ("aa", "ah"):
        assert _cls(p) == {"open"}
    for p in ("f", "v"):
        assert _cls(p) == {"teeth"}
    assert _cls("pau") == {"rest"}
    # Every flite phone has a viseme of its own (no silent fallback) and targets are in range.
    assert [p for p in FLITE_PHONES if p not in V.PHONE_VISEME] == []
    for p in FLITE_PHONES:
        for v in V.phone_visemes(p):
            assert set(V.VISEMES[v]) <= set(V.MOUTH_PARAMS)
            assert all(0.0 <= x <= 1.0 for x in V.VISEMES[v].values())
    assert V.VISEMES["closed"]["press"] == 1.0 and V.VISEMES["open"]["jaw"] > 0.8


def test_parse_psdur_segments() -> None:
    segs = V.parse_psdur(PSDUR)
    assert [s.phone for s in segs][:5] == ["pau", "hh", "ax", "l", "ow"]
    assert len(segs) == 16
    assert segs[0].start_s == 0.0 and segs[-1].end_s == pytest.approx(2.05)
    assert all(a.end_s == b.start_s for a, b in zip(segs, segs[1:]))  # contiguous
    shifted = V.parse_psdur(PSDUR, offset_s=1.5)
    assert shifted[3].start_s == pytest.approx(segs[3].start_s + 1.5)
    # A second utterance restarts flite's clock: it continues after the first.
    two = V.parse_psdur("pau:0.2 m:0.3\npau:0.1 aa:0.4")
    assert [round(s.end_s, 3) for s in two] == [0.2, 0.3, 0.4, 0.7]
    assert V.parse_psdur("no segments here") == []


def test_mouth_curves_follow_phones() -> None:
    segs = V.parse_psdur(PSDUR)
    fps = 30.0
    n = int(np.ceil(segs[-1].end_s * fps))
    cur = V.mouth_curves(segs, n, fps, np.random.default_rng(0))
    assert set(cur) == set(V.MOUTH_PARAMS)
    for k, v in cur.items():
        assert v.shape == (n,) and np.all((v >= 0) & (v <= 1)), k

    def at(phone: str, key: str) -> float:
        s = next(s for s in segs if s.phone == phone)
        return float(cur[key][int(round((s.start_s + s.end_s) / 2 * fps))])

    assert at("m", "press") > 0.7 and at("m", "jaw") < 0.15  # lips shut on /m/
    assert at("aa", "jaw") > 0.6  # jaw dropped on /aa/
    assert at("w", "pucker") > 0.6  # rounded on /w/
    assert cur["jaw"][0] < 0.05 and cur["jaw"][-1] < 0.05  # rest in the pauses
    # Deterministic given the generator's seed.
    again = V.mouth_curves(segs, n, fps, np.random.default_rng(0))
    assert all(np.array_equal(cur[k], again[k]) for k in cur)


def test_blink_and_head_curves() -> None:
    rng = np.random.default_rng(1)
    fps, n = 30.0, 300
    blink = V.blink_curve(n, fps, rng)
    assert blink.shape == (n,) and blink.min() >= 0 and blink.max() <= 1
    closed = blink > 0.8
    assert 1 <= np.sum(closed[1:] & ~closed[:-1]) <= 6  # a few blinks in 10 s
    assert closed.mean() < 0.15  # short ones
    head = V.head_curves(n, fps, rng, jaw=np.zeros(n))
    assert set(head) == set(V.HEAD_AMPLITUDE)
    for k, amp in V.HEAD_AMPLITUDE.items():
        centre = 1.0 if k == "scale" else 0.0
        assert np.abs(head[k] - centre).max() <= amp + 1e-9 and np.std(head[k]) > 0.05 * amp


@pytest.fixture(scope="module")
def hopper_rig():
    from a2bs.synth.face import FaceRig

    return FaceRig.from_photo("hopper", out_px=320)  # matplotlib's photo: no optional extra


def test_rendered_visemes_read_back_with_mediapipe(hopper_rig) -> None:
    from a2bs.synth.face import FrameParams, make_landmarker, mp_image

    def read(**kw: float) -> dict[str, float]:
        frame = hopper_rig.render(FrameParams(**kw))
        assert frame.shape == (320, 320, 3) and frame.dtype == np.uint8
        res = lm.detect(mp_image(frame))
        assert res.face_blendshapes, kw
        return {c.category_name: c.score for c in res.face_blendshapes[0]}

    with make_landmarker(video=False) as lm:
        closed = read(**V.VISEMES["closed"])
        opened = read(**V.VISEMES["open"])
        rounded = read(**V.VISEMES["rounded_tight"])
        wide = read(**V.VISEMES["wide"])
        rest = read()
        blink = read(blink=1.0)
    assert opened["jawOpen"] > closed["jawOpen"] + 0.3
    assert rounded["mouthPucker"] > rest["mouthPucker"] + 0.3
    assert wide["mouthSmileLeft"] + wide["mouthSmileRight"] > rest["mouthSmileLeft"] + \
        rest["mouthSmileRight"] + 0.5
    assert blink["eyeBlinkLeft"] + blink["eyeBlinkRight"] > \
        rest["eyeBlinkLeft"] + rest["eyeBlinkRight"] + 0.1


def test_render_is_deterministic(hopper_rig) -> None:
    from a2bs.synth.face import FrameParams

    fp = FrameParams(jaw=0.5, smile=0.3, blink=0.5, yaw=3, roll=-2, tx=0.01, scale=1.02)
    assert np.array_equal(hopper_rig.render(fp), hopper_rig.render(fp))


def test_encode_clip_roundtrip(tmp_path: Path) -> None:
    import cv2

    from a2bs.synth.corpus import SAMPLE_RATE, encode_clip

    frames = [np.full((64, 64, 3), 20 * i, np.uint8) for i in range(10)]
    audio = (0.1 * np.sin(np.arange(SAMPLE_RATE // 3) * 0.05)).astype(np.float32)
    out = tmp_path / "x" / "clip.mp4"
    encode_clip(iter(frames), audio, out, fps=30.0, size_px=64)
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    cap.release()
    assert not list(out.parent.glob("*.part.mp4"))


def test_generate_without_engines_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    from a2bs.synth import corpus, speech

    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install .*festival.*flite"):
        corpus.generate_corpus(tmp_path, n_clips=1)
    assert corpus.main(["--out", str(tmp_path), "--clips", "1"]) == 1
    assert not list(tmp_path.rglob("*.mp4"))  # refused before rendering anything


def test_committed_corpus_is_consistent() -> None:
    meta = json.loads((CORPUS / "corpus.json").read_text())
    clips = meta["clips"]
    assert len(clips) >= 60
    assert len({c["face"] for c in clips}) >= 2
    assert len({c["clip_id"] for c in clips}) == len(clips)
    listed = set()
    for c in clips:
        assert 5.0 <= c["duration_s"] <= 15.0, c["clip_id"]
        assert c["speaker"] == f"{c['face']}_{c['voice']}" and c["file"].startswith(c["speaker"] + "/")
        assert c["fps"] == 30.0 and c["text"]
        assert (CORPUS / c["file"]).stat().st_size > 10_000
        drv = np.load(CORPUS / c["driven"])
        n = drv["jawOpen"].shape[0]
        assert n == c["n_frames"] and abs(n - c["duration_s"] * c["fps"]) <= 1
        for key in ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmile",
                    "mouthStretch", "eyeBlink"):
            v = drv[key].astype(np.float32)
            assert v.shape == (n,) and v.min() >= 0 and v.max() <= 1, key
        for key in ("headRoll_deg", "headTx_frac", "headTy_frac"):
            assert drv[key].shape == (n,)
        listed.add(c["file"])
    on_disk = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.mp4")}
    assert on_disk == listed  # no stray or missing clips
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= 40 * 2**20


def test_committed_corpus_has_many_voices_each_on_one_face() -> None:
    from a2bs.synth.speech import VOICE_BY_NAME

    meta = json.loads((CORPUS / "corpus.json").read_text())
    clips, voices = meta["clips"], meta["voices"]
    names = [v["name"] for v in voices]
    assert len(set(names)) == len(names) >= 12  # distinct speakers, not variants of one
    assert len({v["engine"] for v in voices}) >= 2
    assert {c["voice"] for c in clips} == set(names)
    for v in voices:
        # The recorded voice is the generator's voice of that name (engine, language, package).
        assert {k: v[k] for k in v if k != "face"} == asdict(VOICE_BY_NAME[v["name"]])
        mine = [c for c in clips if c["voice"] == v["name"]]
        # One face per voice, as one actor has one voice: the audio can tell whose rest shape to predict.
        assert {c["face"] for c in mine} == {v["face"]}
        assert {c["engine"] for c in mine} == {v["engine"]} and len(mine) >= 5
        assert {p.parent.name for p in CORPUS.rglob(f"*_{v['name']}_*.mp4")} == {f"{v['face']}_{v['name']}"}
    # Every face speaks with several voices, and each folder holds one voice.
    assert all(sum(v["face"] == f for v in voices) >= 2 for f in {v["face"] for v in voices})
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir() and p.name != "driven"}
    assert folders == {f"{v['face']}_{v['name']}" for v in voices}


def test_readme_tables_are_the_verification_result() -> None:
    """The README's read-back tables are what verify renders from verification.json."""
    from a2bs.synth.verify import PAIRS, face_summary, voice_table

    meta = json.loads((CORPUS / "corpus.json").read_text())
    result = json.loads((CORPUS / "verification.json").read_text())
    readme = (CORPUS / "README.md").read_text()
    assert set(result["per_clip"]) == {c["clip_id"] for c in meta["clips"]}  # measured this corpus
    assert result["table"] in readme
    assert voice_table(result, meta) in readme
    assert face_summary(result, meta) in readme
    # The pooled table's rows are the stored numbers, one per driven pair.
    rows = result["table"].splitlines()[2:]
    assert len(rows) == len(PAIRS)
    assert f"| jawOpen | jawOpen | {result['overall']['jawOpen']:.3f} |" in rows[0]
    assert result["overall"]["jawOpen"] > 0.85 and result["face_ratio"] > 0.99


def test_committed_clip_decodes_with_speech_between_silences() -> None:
    import cv2

    from a2bs.config import AudioConfig
    from a2bs.extract.audio import extract_audio_features

    c = json.loads((CORPUS / "corpus.json").read_text())["clips"][0]
    cap = cv2.VideoCapture(str(CORPUS / c["file"]))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)
    assert abs(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) - c["n_frames"]) <= 1
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape[:2] == (384, 384)
    feats = extract_audio_features(CORPUS / c["file"], AudioConfig())
    assert abs(feats.duration_s - c["duration_s"]) < 0.1
    assert feats.vad[:30].max() < 0.5 and feats.vad[-30:].max() < 0.5  # silent lead-in and tail
    assert feats.vad.mean() > 0.4  # mostly speech
