"""`a2bs preview`: an MP4 with video and audio of the right duration, frames that are drawn, and a PNG plot."""

from __future__ import annotations

import math

import cv2
import numpy as np
from infer_support import causal_model, speech_wav  # noqa: F401  (fixtures)
from media_factory import decode_audio, decoded_frame_count, make_standin_source, probe

import a2bs
from a2bs.cli import main
from a2bs.infer.preview import draw_face
from a2bs.schema import BLENDSHAPE_INDEX, N_TARGETS, POSE_REST

DURATION_S = 2.013


def read_frames(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def test_preview_of_a_wav(causal_model, speech_wav, tmp_path, capsys):
    out, png = tmp_path / "preview.mp4", tmp_path / "curves.png"
    assert main(["preview", str(causal_model), str(speech_wav), "--out", str(out), "--fps", "30",
                 "--plot", str(png)]) == 0
    assert "preview: 61 frames at 30 fps" in capsys.readouterr().out
    info = probe(out)
    assert info["has_video"] and info["has_audio"]
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert decoded_frame_count(out) == math.ceil(DURATION_S * 30)
    audio_s = len(decode_audio(out, 16000)) / 16000
    assert abs(audio_s - DURATION_S) < 0.06  # AAC frames round the end a little
    frames = read_frames(out)
    assert frames[0].shape[0] == 360 and frames[0].shape[1] == 360 + 504  # face + side panel
    for f in frames[::15]:
        assert f.std() > 20  # drawn, not blank
    face = np.stack([f[:, :360].astype(np.float32) for f in frames])
    assert np.abs(np.diff(face, axis=0)).mean() > 0.05  # the face moves with the audio
    side = np.stack([f[:, 360:].astype(np.float32) for f in frames])
    assert np.abs(side[-1] - side[5]).mean() > 1.0  # the strip scrolls
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 100 and img.std() > 5


def test_preview_of_a_video_shows_its_frames(causal_model, tmp_path):
    video = make_standin_source(tmp_path / "talk.mp4", seconds=1.0, size="320x240")
    out = tmp_path / "talk_preview.mp4"
    assert main(["preview", str(causal_model), str(video), "--out", str(out), "infer.preview_height=240"]) == 0
    info = probe(out)
    assert info["has_video"] and info["has_audio"] and info["width"] == 320 + 240 + 336 and info["height"] == 240
    frames = read_frames(out)
    assert abs(len(frames) - 30) <= 1
    original = frames[10][:, :320]
    # testsrc2 is colourful; the drawn panels are mostly grey/white.
    saturation = cv2.cvtColor(original, cv2.COLOR_BGR2HSV)[..., 1]
    assert saturation.mean() > 60


def test_face_drawing_follows_the_curves():
    rest = np.zeros(N_TARGETS, np.float32)
    rest[52:] = POSE_REST
    open_jaw, blink = rest.copy(), rest.copy()
    open_jaw[BLENDSHAPE_INDEX["jawOpen"]] = 1.0
    blink[BLENDSHAPE_INDEX["eyeBlinkLeft"]] = blink[BLENDSHAPE_INDEX["eyeBlinkRight"]] = 1.0

    def dark_pixels(img: np.ndarray, rows: slice) -> int:
        return int((img[rows].sum(axis=2) < 300).sum())

    mouth, eyes = slice(180, 300), slice(100, 190)
    assert dark_pixels(draw_face(open_jaw, 360), mouth) > 3 * dark_pixels(draw_face(rest, 360), mouth)
    white = lambda img: int((img[eyes].min(axis=2) > 250).sum())  # noqa: E731
    assert white(draw_face(blink, 360)) < white(draw_face(rest, 360)) - 500  # closed eyes lose their whites


def test_plot_curves_api(causal_model, speech_wav, tmp_path):
    curves = a2bs.load_model(causal_model).predict(speech_wav, fps=30)
    path = a2bs.plot_curves(curves, tmp_path / "plot.png")
    img = cv2.imread(path)
    assert img.shape == (500, 1000, 3)
