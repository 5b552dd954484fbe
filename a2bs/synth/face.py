"""Animate a still face photo: MediaPipe landmarks + piecewise-affine mesh warp.

The 478 landmarks are detected once on the photo. Each frame moves them (jaw, lips, lids, a
small 3D head turn using the landmarks' depth), warps the photo over a Delaunay triangulation of
the landmarks plus fixed border points, paints a mouth interior between the inner lips, and applies
a global similarity (roll, translation, scale) for head motion. Displacement fields are smooth and
monotone so the mesh does not fold, which keeps the image one a landmarker can read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import cv2
import numpy as np
from scipy.spatial import Delaunay

FACES: tuple[str, ...] = ("astronaut", "hopper")

# MediaPipe face-mesh landmark indices (canonical topology).
UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_CORNERS = (61, 291, 78, 308)
FACE_SIDES = (234, 454)
EYES = (  # (upper lid, lower lid), corner to corner
    ((33, 246, 161, 160, 159, 158, 157, 173, 133), (33, 7, 163, 144, 145, 153, 154, 155, 133)),
    ((263, 466, 388, 387, 386, 385, 384, 398, 362), (263, 249, 390, 373, 374, 380, 381, 382, 362)),
)


# Deformation gains (fractions of the mouth width W unless noted), tuned so MediaPipe reads each
# shape back on its own channel (e.g. a pucker that opened the lips would read as jawOpen).
GAIN: dict[str, float] = {
    "jaw_drop": 0.6,  # lower lip drop at jaw=1
    "jaw_aspect": 2.5,  # drop scaled by 1 + this x (relative mouth-width change)
    "jaw_narrow": 0.18, "funnel_narrow": 0.18, "pucker_narrow": 0.38,  # corner pull-in ratios
    "smile_widen": 0.13, "stretch_widen": 0.16,  # corner push-out ratios
    "smile_lift": 0.20, "stretch_drop": 0.05,
    # Lips apart at the centre ("O"): kept small, MediaPipe reads any rounder opening as jawOpen.
    "funnel_open": 0.03, "pucker_open": 0.0,
    "pucker_shut": 1.0,  # a pucker closes the lips (the opening comes from the jaw only)
    "press_thin": 0.15,  # m/b/p: lips pressed thin (reads as mouthPress/mouthRoll)
}


@dataclass
class FrameParams:
    """Per-frame drive values: shapes in [0, 1], angles in degrees, offsets as frame fractions."""

    jaw: float = 0.0
    press: float = 0.0
    funnel: float = 0.0
    pucker: float = 0.0
    smile: float = 0.0
    stretch: float = 0.0
    teeth: float = 0.0
    blink: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    scale: float = 1.0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def make_landmarker(video: bool):
    """A FaceLandmarker with blendshapes and transformation matrices (one face)."""
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision import FaceLandmarker, FaceLandmarkerOptions
    from mediapipe.tasks.python.vision.core.vision_task_running_mode import (
        VisionTaskRunningMode,
    )

    from a2bs.config import VideoConfig
    from a2bs.extract.face import (
        load_model_bytes,  # the one hash-checked loader of the vendored model
    )

    mode = VisionTaskRunningMode.VIDEO if video else VisionTaskRunningMode.IMAGE
    opts = FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_buffer=load_model_bytes(VideoConfig())), running_mode=mode,
        output_face_blendshapes=True, output_facial_transformation_matrixes=True, num_faces=1,
    )
    return FaceLandmarker.create_from_options(opts)


def mp_image(rgb: np.ndarray):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))


def detect_landmarks(rgb: np.ndarray) -> np.ndarray:
    """(478, 3) landmarks in pixels (z scaled like x) of the one face in a still image."""
    with make_landmarker(video=False) as lm:
        res = lm.detect(mp_image(rgb))
    if not res.face_landmarks:
        raise RuntimeError("no face found in the photo")
    h, w = rgb.shape[:2]
    return np.array([(p.x * w, p.y * h, p.z * w) for p in res.face_landmarks[0]], np.float64)


def load_photo(face: str) -> np.ndarray:
    """RGB uint8 public-domain portrait shipped inside a dependency's wheel."""
    if face == "astronaut":
        import skimage.data  # optional extra: a2bs[synth]

        return np.ascontiguousarray(skimage.data.astronaut())
    if face == "hopper":
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB")).copy()
    raise ValueError(f"unknown face {face!r}; choose from {FACES}")


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _curve(points: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y of a left-to-right polyline at x (clamped at the ends)."""
    order = np.argsort(points[:, 0])
    return np.interp(x, points[order, 0], points[order, 1])


@dataclass
class FaceRig:
    """A photo cropped around its face, its landmarks and mesh, ready to render frames."""

    canvas: np.ndarray  # RGB, with a margin around the output frame for head motion
    points: np.ndarray  # (478, 3) landmarks on the canvas, pixels
    out_px: int
    tri: np.ndarray = field(init=False)
    mesh: np.ndarray = field(init=False)  # (N, 2) landmarks + fixed border points

    def __post_init__(self) -> None:
        p = self.points
        self.center = p[:, :2].mean(axis=0)
        self.face_w = float(np.linalg.norm(p[FACE_SIDES[0], :2] - p[FACE_SIDES[1], :2]))
        lips = np.array(UPPER_INNER + LOWER_INNER)
        self.mouth_c = p[lips, :2].mean(axis=0)
        self.mouth_w = float(np.linalg.norm(p[61, :2] - p[291, :2]))
        # Midline between the inner lips: which side of the mouth each landmark is on.
        mid = (p[list(UPPER_INNER), :2] + p[list(LOWER_INNER), :2]) / 2
        t = (p[:, 1] - _curve(mid, p[:, 0])) / self.mouth_w
        t[list(UPPER_INNER)] = np.minimum(t[list(UPPER_INNER)], -1e-3)
        t[list(LOWER_INNER)] = np.maximum(t[list(LOWER_INNER)], 1e-3)
        self.t = t
        self.lower = t > 0
        # Corners are shared by both lips: they move half with the jaw.
        self.corner = np.zeros(len(p), bool)
        self.corner[list(MOUTH_CORNERS)] = True
        self.gap0 = self._gap(p[:, :2])  # base opening between the inner lips (astronaut smiles)
        h, w = self.canvas.shape[:2]
        border = [(x, y) for x in np.linspace(0, w - 1, 7) for y in (0, h - 1)]
        border += [(x, y) for y in np.linspace(0, h - 1, 7)[1:-1] for x in (0, w - 1)]
        # A fixed halo around the face keeps the deformation local to it.
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        halo = self.center + 0.9 * self.face_w * np.stack([np.cos(ang), 1.25 * np.sin(ang)], 1)
        halo = [q for q in halo if 0 < q[0] < w - 1 and 0 < q[1] < h - 1]
        self.mesh = np.vstack([p[:, :2], np.array(border + halo, np.float64)])
        self.tri = Delaunay(self.mesh).simplices.astype(np.int32)
        self.grid = np.mgrid[0:h, 0:w].astype(np.float32)  # (2, H, W): y, x

    @classmethod
    def from_photo(cls, face: str, out_px: int = 384, face_frac: float = 0.5,
                   margin: float = 1.2) -> "FaceRig":
        """Crop `face` so the face spans `face_frac` of an `out_px` frame, plus a motion margin."""
        photo = load_photo(face)
        pts = detect_landmarks(photo)
        c = pts[:, :2].mean(axis=0)
        fw = np.linalg.norm(pts[FACE_SIDES[0], :2] - pts[FACE_SIDES[1], :2])
        canvas_px = int(round(out_px * margin))
        scale = out_px * face_frac / fw
        # Affine photo -> canvas; the face centre sits slightly above the frame centre.
        m = np.array([[scale, 0, canvas_px / 2 - scale * c[0]],
                      [0, scale, canvas_px * 0.47 - scale * c[1]]])
        canvas = cv2.warpAffine(photo, m, (canvas_px, canvas_px), flags=cv2.INTER_AREA
                                if scale < 1 else cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        return cls(canvas=canvas, points=detect_landmarks(canvas), out_px=out_px)

    # -- geometry ---------------------------------------------------------------------------
    def _gap(self, xy: np.ndarray) -> np.ndarray:
        """Opening between inner lips at every landmark's current x (pixels, >= 0)."""
        up = _curve(xy[list(UPPER_INNER)], xy[:, 0])
        lo = _curve(xy[list(LOWER_INNER)], xy[:, 0])
        return np.maximum(lo - up, 0.0)

    def deform(self, fp: FrameParams) -> np.ndarray:
        """Target (478, 2) landmark positions for one frame (before the global similarity)."""
        p = self.points
        x, y = p[:, 0], p[:, 1]
        W = self.mouth_w
        dx = np.zeros(len(p))
        dy = np.zeros(len(p))
        ux = (x - self.mouth_c[0]) / (W / 2)  # -1..1 across the mouth
        uy = (y - self.mouth_c[1]) / (W / 2)
        t = self.t
        inside = 1 - _smoothstep((np.abs(ux) - 0.6) / 0.7)  # 1 between the corners, 0 beside
        band = 1 - _smoothstep(np.abs(t) / 0.6)  # 1 at the lips, fading into chin and nose
        bump = np.cos(np.clip(ux, -1, 1) * np.pi / 2)  # lip centre 1, corners 0

        # Jaw: lower lip and everything below drop (the chin most); beside the mouth the skin
        # stretches part-way; the corners follow half-way and draw in a little.
        side = 0.5 + 0.5 * _smoothstep(t / 0.5)
        v = np.where(self.lower, inside + (1 - inside) * side,
                     (1 - inside) * 0.5 * (1 - _smoothstep(-t / 0.5)))
        v = v * (1 + 0.25 * _smoothstep((t - 0.3) / 0.8) * self.lower)
        v[self.corner] = 0.45
        lat = np.exp(-(((x - self.mouth_c[0]) / (0.5 * self.face_w)) ** 2))
        # Mouth-region gaussian for corner moves (pucker/funnel/smile/stretch).
        g = np.exp(-0.5 * ((ux / 1.8) ** 2 + (uy / 1.1) ** 2))
        narrow = (GAIN["jaw_narrow"] * fp.jaw + GAIN["funnel_narrow"] * fp.funnel
                  + GAIN["pucker_narrow"] * fp.pucker)
        widen = GAIN["smile_widen"] * fp.smile + GAIN["stretch_widen"] * fp.stretch
        # A landmarker reads jaw opening from the mouth's height/width: scale the drop with the
        # width change of the other shapes so rounding or spreading does not leak into jawOpen.
        aspect = max(1.0 + GAIN["jaw_aspect"] * (widen - narrow + GAIN["jaw_narrow"] * fp.jaw), 0.3)
        # jaw ** 0.8: landmarkers hardly register the smallest openings; lift them a little.
        dy += max(fp.jaw, 0.0) ** 0.8 * GAIN["jaw_drop"] * W * aspect * v * lat

        dx += (widen - narrow) * (x - self.mouth_c[0]) * g
        lift = GAIN["stretch_drop"] * fp.stretch - GAIN["smile_lift"] * fp.smile
        dy += lift * W * np.clip(np.abs(ux), 0, 1.5) ** 2 * g
        # f/v: lower lip tucks up under the upper teeth; the upper lip lifts to show them.
        dy += np.where(self.lower, -fp.teeth * (self.gap0 + 0.06 * W) * band * inside,
                       -fp.teeth * 0.08 * W * band * bump)

        # m/b/p (and the tight lips of a pucker): close the opening the moves above produced.
        sgn = np.where(self.lower, 1.0, -1.0)
        xy = p[:, :2] + np.stack([dx, dy], 1)
        gap = self._gap(xy)
        shut = min(fp.press + GAIN["pucker_shut"] * fp.pucker, 0.97)
        close = shut * gap * 0.5 * band * (~self.corner)
        dy += np.where(self.lower, -close, close)
        # Rounding then opens a small "O" at the centre and thickens the lips (protrusion);
        # pressing thins them (outer lip only, so the inner lips never cross).
        rounding = GAIN["funnel_open"] * fp.funnel + GAIN["pucker_open"] * fp.pucker
        dy += sgn * band * bump * W * rounding
        outer = _smoothstep(np.abs(t) / 0.15) * band * bump
        dy += -sgn * fp.press * GAIN["press_thin"] * W * outer

        # Head turn: rotate the landmarks in 3D about the face centre (orthographic).
        xy = p[:, :2] + np.stack([dx, dy], 1) - self.center
        z = p[:, 2] - p[:, 2].mean()
        # Signs chosen so positive yaw/pitch read back positive in MediaPipe's head matrix.
        a, e = -np.radians(fp.yaw), np.radians(fp.pitch)
        x2 = xy[:, 0] * np.cos(a) + z * np.sin(a)
        z2 = -xy[:, 0] * np.sin(a) + z * np.cos(a)
        y2 = xy[:, 1] * np.cos(e) - z2 * np.sin(e)
        return np.stack([x2, y2], 1) + self.center

    # -- rendering --------------------------------------------------------------------------
    def warp(self, target: np.ndarray) -> np.ndarray:
        """Piecewise-affine warp of the canvas so landmarks land on `target` (478, 2)."""
        dst = np.vstack([target, self.mesh[len(target):]])
        src_t = self.mesh[self.tri]  # (T, 3, 2)
        dst_t = dst[self.tri]
        area, area0 = _signed_area(dst_t), _signed_area(src_t)
        folded = (np.sign(area) != np.sign(area0)) & (np.abs(area) > 0.5)
        thin = np.abs(area) <= 0.5
        a = np.concatenate([dst_t, np.ones((len(dst_t), 3, 1))], 2)  # (T, 3, 3)
        # Affine per triangle mapping output (target) pixels back to canvas (source) pixels;
        # a collapsed triangle (closed lid, pressed lips) gets the least-squares map.
        inv = np.linalg.pinv(a)
        m = (inv @ src_t).transpose(0, 2, 1)  # (T, 2, 3)
        h, w = self.canvas.shape[:2]
        idx = np.full((h, w), len(self.tri), np.int32)
        # Collapsed ones first so real neighbours overwrite them; then large to small.
        order = np.argsort(np.abs(area))[::-1]
        order = np.concatenate([order[thin[order]], order[~thin[order] & ~folded[order]]])
        for k in order:
            cv2.fillConvexPoly(idx, np.round(dst_t[k] * 16).astype(np.int32), int(k), shift=4)
        m = np.concatenate([m, [[[1, 0, 0], [0, 1, 0]]]], 0)  # identity for uncovered pixels
        gy, gx = self.grid
        mi = m[idx].astype(np.float32)  # (H, W, 2, 3)
        mx = mi[..., 0, 0] * gx + mi[..., 0, 1] * gy + mi[..., 0, 2]
        my = mi[..., 1, 0] * gx + mi[..., 1, 1] * gy + mi[..., 1, 2]
        return cv2.remap(self.canvas, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    def paint_mouth(self, img: np.ndarray, target: np.ndarray) -> None:
        """Dark mouth cavity with upper and lower teeth between the (moved) inner lips."""
        poly = np.vstack([target[list(UPPER_INNER)], target[list(LOWER_INNER)][::-1][1:-1]])
        x0, y0 = np.floor(poly.min(0)).astype(int) - 3
        x1, y1 = np.ceil(poly.max(0)).astype(int) + 4
        h, w = img.shape[:2]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 3 or y1 - y0 < 2:
            return
        ss = 4  # supersampled mask: thin openings stay smooth instead of aliased
        mask = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), np.uint8)
        cv2.fillPoly(mask, [np.round((poly - [x0, y0]) * ss * 16).astype(np.int32)], 255, shift=4,
                     lineType=cv2.LINE_AA)
        alpha = cv2.resize(mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA) / 255.0
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        yu = np.interp(xx, *_sorted(target[list(UPPER_INNER)]))
        yl = np.interp(xx, *_sorted(target[list(LOWER_INNER)]))
        u = (xx - self.mouth_c[0]) / (self.mouth_w / 2)
        W = self.mouth_w
        shade = np.clip(1 - np.abs(u) ** 2, 0, 1)[..., None]  # darker towards the corners
        cavity = np.array([60, 22, 28.0]) * (0.4 + 0.6 * shade)
        teeth_c = np.array([238, 234, 224.0]) * (0.45 + 0.55 * shade)
        # Soft (1-2 px) edges so the teeth do not flicker as blocks between frames.
        upper_t = (np.clip((yu + 0.11 * W - yy) / 1.5, 0, 1)
                   * np.clip((0.85 - np.abs(u)) / 0.15, 0, 1))
        lower_t = (np.clip((yy - (yl - 0.05 * W)) / 1.5, 0, 1)
                   * np.clip((0.7 - np.abs(u)) / 0.2, 0, 1)
                   * np.clip(((yl - yu) - 0.25 * W) / (0.1 * W), 0, 1))  # only when wide open
        wt = np.maximum(upper_t, lower_t)[..., None]
        col = teeth_c * wt + cavity * (1 - wt)
        roi = img[y0:y1, x0:x1].astype(np.float64)
        img[y0:y1, x0:x1] = (roi * (1 - alpha[..., None]) + col * alpha[..., None]).astype(np.uint8)

    def paint_eyes(self, img: np.ndarray, target: np.ndarray, blink: float) -> None:
        """Close the eyes by painting lids: a warp would drag brows and glasses with them."""
        if blink <= 0.01:
            return
        for upper, lower in EYES:
            up, lo = target[list(upper)], target[list(lower)]
            x0, x1 = float(up[:, 0].min()), float(up[:, 0].max())
            xs = np.linspace(x0, x1, 24)
            arch = np.sin(np.linspace(0, np.pi, 24))
            yu, yl = _curve(up, xs), _curve(lo, xs)
            h = max(float((yl - yu).max()), 1.0)
            # Landmark lids sit inside the visible eye: start above them, end below the lower lid.
            top = yu - 0.25 * h * arch
            edge = top + min(blink, 1.0) * (yl + 0.05 * h * arch - top)
            poly = np.vstack([np.stack([xs, top], 1), np.stack([xs, edge], 1)[::-1]])
            bx0, by0 = np.floor(poly.min(0)).astype(int) - 2
            bx1, by1 = np.ceil(poly.max(0)).astype(int) + 3
            bx0, by0 = max(bx0, 0), max(by0, 0)
            bx1, by1 = min(bx1, img.shape[1]), min(by1, img.shape[0])
            if bx1 - bx0 < 2 or by1 - by0 < 2:
                continue
            ss = 4
            mask = np.zeros(((by1 - by0) * ss, (bx1 - bx0) * ss), np.uint8)
            off = np.array([bx0, by0])
            cv2.fillPoly(mask, [np.round((poly - off) * ss * 16).astype(np.int32)], 255,
                         lineType=cv2.LINE_AA, shift=4)
            lash = np.zeros_like(mask)
            cv2.polylines(lash, [np.round((np.stack([xs, edge], 1) - off) * ss * 16)
                                 .astype(np.int32)], False, 255, thickness=int(1.6 * ss),
                          lineType=cv2.LINE_AA, shift=4)
            size = (bx1 - bx0, by1 - by0)
            a = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)[..., None] / 255.0
            la = cv2.resize(lash, size, interpolation=cv2.INTER_AREA)[..., None] / 255.0
            la *= min(1.0, 2 * blink)
            # Lid texture: the skin just above the eye, mirrored down and compressed, so its
            # shading continues across the top edge instead of showing a flat patch.
            gy, gx = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
            tc = np.interp(gx, xs, top).astype(np.float32)
            src_y = tc - 0.4 * (gy - tc)
            skin = cv2.remap(img, gx, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            depth = np.clip((gy - tc) / h, 0, 1.5)[..., None]
            skin = skin.astype(np.float64) * (1 - 0.12 * depth)  # lid curves away: darker
            roi = img[by0:by1, bx0:bx1].astype(np.float64)
            roi = roi * (1 - a) + skin * a
            roi = roi * (1 - la) + np.array([45.0, 32, 30]) * la
            img[by0:by1, bx0:bx1] = roi.astype(np.uint8)

    def render(self, fp: FrameParams) -> np.ndarray:
        """One RGB frame (out_px x out_px) for the given drive values."""
        target = self.deform(fp)
        img = self.warp(target)
        self.paint_mouth(img, target)
        self.paint_eyes(img, target, fp.blink)
        h, w = img.shape[:2]
        n = self.out_px
        # Similarity about the face centre, then crop the central out_px square.
        m = cv2.getRotationMatrix2D((float(self.center[0]), float(self.center[1])), fp.roll,
                                    fp.scale)
        m[0, 2] += (n - w) / 2 + fp.tx * n
        m[1, 2] += (n - h) / 2 + fp.ty * n
        return cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)


def _signed_area(tri: np.ndarray) -> np.ndarray:
    """Twice the signed area of (T, 3, 2) triangles (sign = orientation)."""
    a, b = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    return a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]


def _sorted(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(pts[:, 0])
    return pts[order, 0], pts[order, 1]
