"""Preview: an MP4 of a simple 2-D face driven by the curves, with the audio muxed in, and PNG plots.

Each video frame holds, left to right: the original video frame (video inputs only), the face (eyes
with blinks and gaze, brows, jaw/lips: open, funnel, smile; head roll, yaw/pitch and offset), and a
scrolling panel with the log-mel strip and a few key curves. Frames are drawn with OpenCV and piped
as raw BGR into the ffmpeg bundled with imageio-ffmpeg (H.264 + AAC).
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from a2bs.config import AudioConfig
from a2bs.extract.audio import ffmpeg_exe, log_mel
from a2bs.infer.curves import Curves
from a2bs.infer.livelink import head_angles
from a2bs.schema import BLENDSHAPE_INDEX, N_BLENDSHAPES

KEY_CURVES: tuple[str, ...] = ("jawOpen", "mouthFunnel", "mouthSmileLeft", "eyeBlinkLeft", "browInnerUp")
_COLOURS = [(40, 40, 220), (200, 120, 0), (40, 160, 40), (160, 40, 160), (0, 140, 220), (90, 90, 90)]
WINDOW_S = 3.0  # seconds of history in the scrolling panel


def _even(n: float) -> int:
    return max(2, int(round(n / 2.0)) * 2)


def _rot(points: np.ndarray, centre: tuple[float, float], angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    p = points - centre
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], axis=1) + centre


def draw_face(values: np.ndarray, size: int) -> np.ndarray:
    """One (size, size, 3) BGR image of a cartoon face for one frame of 59 target values."""
    img = np.full((size, size, 3), 245, np.uint8)
    b = values[:N_BLENDSHAPES]

    def w(name: str) -> float:
        return float(np.clip(b[BLENDSHAPE_INDEX[name]], 0.0, 1.0))

    yaw, pitch, roll = head_angles(values[N_BLENDSHAPES + 3 : N_BLENDSHAPES + 7])
    tx, ty = float(values[N_BLENDSHAPES]), float(values[N_BLENDSHAPES + 1])
    u = size / 100.0  # drawing unit
    # Metres of offset and radians of turn -> drawing units, bounded so the face stays in the panel.
    cx = size / 2 + float(np.clip(tx * 200 + yaw * 25, -12, 12)) * u
    cy = size / 2 - float(np.clip(ty * 200 + pitch * 25, -8, 8)) * u
    centre = (cx, cy)
    # Roll: image y points down, so a counter-clockwise head tilt is a negative image angle.
    ang = -float(roll)

    def pts(xy: Sequence[tuple[float, float]]) -> np.ndarray:
        arr = np.array([(cx + x * u, cy + y * u) for x, y in xy], dtype=np.float64)
        return _rot(arr, centre, ang).round().astype(np.int32)

    axes = (int(34 * u), int(44 * u))
    cv2.ellipse(img, (int(cx), int(cy)), axes, math.degrees(ang), 0, 360, (180, 205, 235), -1, cv2.LINE_AA)
    cv2.ellipse(img, (int(cx), int(cy)), axes, math.degrees(ang), 0, 360, (90, 110, 140), 2, cv2.LINE_AA)
    for side, sx in (("Left", 1), ("Right", -1)):  # the subject's left eye is on the image right
        ex, ey = 13 * sx, -10
        open_h = max(0.4, 5.0 * (1.0 - w(f"eyeBlink{side}")) * (1 + 0.5 * w(f"eyeWide{side}")))
        (ecx, ecy), = pts([(ex, ey)])
        cv2.ellipse(img, (int(ecx), int(ecy)), (int(7 * u), max(1, int(open_h * u))), math.degrees(ang), 0, 360,
                    (255, 255, 255), -1, cv2.LINE_AA)
        cv2.ellipse(img, (int(ecx), int(ecy)), (int(7 * u), max(1, int(open_h * u))), math.degrees(ang), 0, 360,
                    (60, 60, 60), 1, cv2.LINE_AA)
        if open_h > 1.2:
            out_in = w(f"eyeLookOut{side}") - w(f"eyeLookIn{side}")
            gx = 3.5 * out_in * sx
            gy = 2.5 * (w(f"eyeLookDown{side}") - w(f"eyeLookUp{side}"))
            (px, py), = pts([(ex + gx, ey + gy)])
            cv2.circle(img, (int(px), int(py)), max(1, int(min(2.6, open_h) * u)), (60, 40, 20), -1, cv2.LINE_AA)
        lift = 5 * w("browInnerUp") - 4 * w(f"browDown{side}")
        outer = 5 * w(f"browOuterUp{side}") - 4 * w(f"browDown{side}")
        brow = pts([(ex - 7 * sx, ey - 9 - lift), (ex + 8 * sx, ey - 9 - outer)])
        cv2.line(img, tuple(brow[0]), tuple(brow[1]), (50, 60, 80), max(1, int(2 * u)), cv2.LINE_AA)
    nose = pts([(0, -6), (-3, 6), (3, 6)])
    cv2.polylines(img, [nose], False, (110, 130, 160), max(1, int(u)), cv2.LINE_AA)
    # Mouth: width from smile/stretch vs funnel/pucker, opening from the jaw, corners from smile/frown.
    jaw, funnel = w("jawOpen"), max(w("mouthFunnel"), w("mouthPucker"))
    smile = 0.5 * (w("mouthSmileLeft") + w("mouthSmileRight"))
    frown = 0.5 * (w("mouthFrownLeft") + w("mouthFrownRight"))
    half_w = 13 * (1 + 0.3 * smile + 0.2 * 0.5 * (w("mouthStretchLeft") + w("mouthStretchRight")) - 0.45 * funnel)
    my, open_h = 22 + 4 * jaw, 1 + 16 * jaw + 3 * funnel
    corner = -4 * smile + 3 * frown
    n = 12
    upper = [(half_w * math.cos(math.pi * i / n), my - 0.35 * open_h * math.sin(math.pi * i / n)
              + corner * abs(math.cos(math.pi * i / n))) for i in range(n + 1)]
    lower = [(-half_w * math.cos(math.pi * i / n), my + 0.65 * open_h * math.sin(math.pi * i / n)
              + corner * abs(math.cos(math.pi * i / n))) for i in range(n + 1)]
    lips = pts(upper + lower)
    cv2.fillPoly(img, [lips], (60, 40, 150), cv2.LINE_AA)
    cv2.polylines(img, [lips], True, (40, 30, 110), max(1, int(u)), cv2.LINE_AA)
    return img


class SidePanel:
    """Scrolling log-mel strip and key curves for frame times of a clip."""

    def __init__(self, curves: Curves, samples: np.ndarray, audio_cfg: AudioConfig, width: int, height: int,
                 names: Sequence[str] = KEY_CURVES) -> None:
        self.curves, self.width, self.height = curves, width, height
        self.names = list(names)
        mel = log_mel(samples, audio_cfg)  # (T, n_mels)
        lo, hi = np.percentile(mel, 2), np.percentile(mel, 99.5)
        img = np.clip((mel - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8).T[::-1]  # (n_mels, T)
        self.mel = cv2.applyColorMap(img, cv2.COLORMAP_MAGMA)
        self.mel_rate = audio_cfg.sample_rate / audio_cfg.hop_length
        self.series = [curves.channel(n) for n in self.names]
        self.series.append(np.clip(0.5 + head_angles(curves.pose[:, 3:])[:, 0], 0, 1))  # yaw around 0.5
        self.labels = self.names + ["headYaw"]

    def draw(self, k: int) -> np.ndarray:
        """Panel image for output frame `k`."""
        w, h = self.width, self.height
        panel = np.full((h, w, 3), 255, np.uint8)
        t = k / self.curves.fps
        strip_h = h // 3
        a, b = int(round((t - WINDOW_S) * self.mel_rate)), int(round(t * self.mel_rate)) + 1
        cols = np.clip(np.arange(a, b), 0, self.mel.shape[1] - 1)
        strip = self.mel[:, cols]
        strip[:, np.arange(a, b) < 0] = 0
        panel[:strip_h] = cv2.resize(strip, (w, strip_h), interpolation=cv2.INTER_NEAREST)
        top, bottom = strip_h + 8, h - 6
        n_win = int(WINDOW_S * self.curves.fps)
        idx = np.arange(k - n_win, k + 1)
        valid = idx >= 0
        xs = (np.arange(len(idx)) * (w - 1) / max(n_win, 1)).astype(np.int32)
        for i, (series, label) in enumerate(zip(self.series, self.labels)):
            colour = _COLOURS[i % len(_COLOURS)]
            ys = bottom - (np.clip(series[np.clip(idx, 0, len(series) - 1)], 0, 1) * (bottom - top))
            line = np.stack([xs[valid], ys[valid].astype(np.int32)], axis=1)
            if len(line) > 1:
                cv2.polylines(panel, [line], False, colour, 1, cv2.LINE_AA)
            cv2.putText(panel, label, (4, top + 12 + 13 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.38, colour, 1, cv2.LINE_AA)
        cv2.line(panel, (w - 2, top), (w - 2, bottom), (0, 0, 0), 1)
        cv2.putText(panel, f"{t:6.2f} s", (w - 70, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        return panel


def _video_frames(path: str, fps: float, width: int, height: int) -> subprocess.Popen:
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", path, "-map", "0:v:0",
           "-vf", f"fps={fps},scale={width}:{height}", "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def render_preview(curves: Curves, samples: np.ndarray, audio_cfg: AudioConfig, media_path: str | os.PathLike,
                   out_path: str | os.PathLike, height: int, video: tuple[int, int] | None = None) -> str:
    """Render the preview MP4 of `curves` with the audio of `media_path` muxed in.

    Args:
        curves: curves at the video's frame rate.
        samples: the mono audio (at ``audio_cfg.sample_rate``) for the mel strip.
        audio_cfg: audio front-end settings.
        media_path: the input file (its first audio stream is muxed in; its video shown if `video`).
        out_path: MP4 to write (local path).
        height: panel height in pixels.
        video: (width, height) of the input's video stream to show it beside the face; None = audio only.
    """
    h = _even(height)
    face_w, side_w = h, _even(h * 1.4)
    vid_w = _even(h * video[0] / video[1]) if video else 0
    width = vid_w + face_w + side_w
    side = SidePanel(curves, samples, audio_cfg, side_w, h)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp.mp4")
    cmd = [ffmpeg_exe(), "-nostdin", "-y", "-v", "error",
           "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{h}", "-r", f"{curves.fps}", "-i", "pipe:0",
           "-i", str(media_path), "-map", "0:v:0", "-map", "1:a:0",
           "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(tmp)]
    src = _video_frames(str(media_path), curves.fps, vid_w, h) if video else None
    last_src = np.zeros((h, vid_w, 3), np.uint8)
    with tempfile.TemporaryFile() as err:
        enc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
        try:
            for k in range(len(curves)):
                parts = []
                if src is not None:
                    raw = src.stdout.read(vid_w * h * 3)
                    if len(raw) == vid_w * h * 3:
                        last_src = np.frombuffer(raw, np.uint8).reshape(h, vid_w, 3)
                    parts.append(last_src)  # past the video's end: hold its last frame
                parts += [draw_face(curves.values[k], face_w), side.draw(k)]
                enc.stdin.write(np.ascontiguousarray(np.concatenate(parts, axis=1)).tobytes())
            enc.stdin.close()
            code = enc.wait()
        finally:
            if src is not None:
                src.kill()
                src.wait()
            if enc.poll() is None:
                enc.kill()
                enc.wait()
        if code != 0:
            err.seek(0)
            tmp.unlink(missing_ok=True)
            msg = err.read().decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(f"ffmpeg could not write the preview ({msg[-1] if msg else f'exit {code}'})")
    os.replace(tmp, out_path)
    return str(out_path)


def plot_curves(curves: Curves, path: str | os.PathLike, names: Sequence[str] | None = None) -> str:
    """PNG plot of key blendshape curves and the head angles over time; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(names or KEY_CURVES)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, height_ratios=[2, 1])
    t = curves.times_s
    for n in names:
        ax1.plot(t, curves.channel(n), label=n, lw=1)
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_ylabel("weight")
    ax1.legend(loc="upper right", fontsize=7, ncol=3)
    angles = np.degrees(head_angles(curves.pose[:, 3:])) if len(curves) else np.zeros((0, 3))
    for i, n in enumerate(("yaw", "pitch", "roll")):
        ax2.plot(t, angles[:, i] if len(angles) else [], label=n, lw=1)
    ax2.set_ylabel("head (deg)")
    ax2.set_xlabel("time (s)")
    ax2.legend(loc="upper right", fontsize=7, ncol=3)
    fig.suptitle(f"{len(curves)} frames at {curves.fps:g} fps")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def preview_file(model, input_path: str | os.PathLike, out_path: str | os.PathLike, cfg,
                 fps: float | None = None, identity: str | None = None) -> tuple[str, Curves]:
    """Predict curves for `input_path` (audio or video) and render its preview MP4.

    Args:
        model: a :class:`a2bs.infer.offline.LoadedModel`.
        input_path: local audio or video file.
        out_path: MP4 to write.
        cfg: resolved :class:`a2bs.config.Config`.
        fps: video frame rate (default ``cfg.infer.fps``).
        identity: the face to drive, one of the card's identities (None = their learned average).

    Returns:
        (path written, the curves drawn).
    """
    from a2bs.errors import InputError
    from a2bs.extract.audio import load_audio
    from a2bs.extract.media import probe
    from a2bs.infer.offline import predict_samples
    from a2bs.runtime.inputs import AUDIO_SUFFIXES

    model.identity_row(identity)  # an unknown identity: say so before decoding anything
    info = probe(input_path)
    if not info.has_audio:
        raise InputError(input_path, "no audio track")
    samples = load_audio(input_path, model.audio_cfg.sample_rate)
    curves = predict_samples(model, samples, cfg, fps, identity=identity)
    show_video = info.has_video and info.width and info.height and Path(input_path).suffix.lower() not in AUDIO_SUFFIXES
    video = (info.width, info.height) if show_video else None
    path = render_preview(curves, samples, model.audio_cfg, input_path, out_path, cfg.infer.preview_height, video)
    return path, curves
