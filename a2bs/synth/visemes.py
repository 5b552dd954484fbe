"""Phone -> viseme tables and per-frame drive curves (mouth, blinks, head motion).

flite's ``-psdur`` prints the phone segments of what it speaks as ``phone:end_s`` pairs
(``pau:0.164 hh:0.255 ax:0.304 ...``; US English CMU phone set); festival's voices spell phones in
their language's set (PHONESETS). Each phone maps to one viseme
(two for diphthongs, which glide); each viseme is a target of the renderer's mouth parameters.
Targets become keyframes that are eased into each other (coarticulation), so a closure such as
/p/ is reached exactly while the transitions in and out take the neighbouring phones' time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

MOUTH_PARAMS: tuple[str, ...] = ("jaw", "press", "funnel", "pucker", "smile", "stretch", "teeth")

# Mouth parameter targets of each viseme (unlisted parameters are 0).
VISEMES: dict[str, dict[str, float]] = {
    "rest": {},
    "closed": {"press": 1.0},  # m b p: lips pressed together
    "teeth": {"jaw": 0.08, "teeth": 1.0},  # f v: lower lip under the upper teeth
    "rounded": {"jaw": 0.4, "funnel": 0.9, "pucker": 0.3},  # o-shapes: open, funnelled
    "rounded_tight": {"jaw": 0.12, "funnel": 0.35, "pucker": 1.0},  # u w: small, protruded
    "wide": {"jaw": 0.18, "smile": 0.75, "stretch": 0.6},  # i e: spread lips
    "mid": {"jaw": 0.45, "smile": 0.3, "stretch": 0.35},  # eh ae: half-open, spread
    "open": {"jaw": 0.9},  # a: jaw dropped
    "schwa": {"jaw": 0.35},
    "rhotic": {"jaw": 0.22, "funnel": 0.45, "pucker": 0.35},  # r er: slightly rounded
    "postalveolar": {"jaw": 0.15, "funnel": 0.65, "pucker": 0.3},  # sh ch jh zh: flared lips
    "dental": {"jaw": 0.2, "stretch": 0.15},  # th dh: tongue between the teeth
    "alveolar": {"jaw": 0.15, "stretch": 0.2},  # t d n l s z: near-closed teeth
    "velar": {"jaw": 0.3},  # k g ng hh y: mouth shaped by the neighbours
}

# flite US English phones -> viseme (a tuple glides from the first to the second).
PHONE_VISEME: dict[str, str | tuple[str, str]] = {
    "pau": "rest", "h#": "rest", "brth": "rest",
    "m": "closed", "b": "closed", "p": "closed", "em": "closed",
    "f": "teeth", "v": "teeth",
    "ow": ("rounded", "rounded_tight"), "ao": "rounded", "oy": ("rounded", "wide"),
    "uw": "rounded_tight", "uh": "rounded_tight", "w": "rounded_tight",
    "iy": "wide", "ih": "wide", "y": "wide", "ey": ("mid", "wide"),
    "eh": "mid", "ae": "mid",
    "aa": "open", "ah": "open", "ay": ("open", "wide"), "aw": ("open", "rounded_tight"),
    "ax": "schwa", "er": "rhotic", "axr": "rhotic", "r": "rhotic",
    "sh": "postalveolar", "zh": "postalveolar", "ch": "postalveolar", "jh": "postalveolar",
    "th": "dental", "dh": "dental",
    "t": "alveolar", "d": "alveolar", "n": "alveolar", "l": "alveolar", "s": "alveolar",
    "z": "alveolar", "dx": "alveolar", "el": "alveolar", "en": "alveolar",
    "k": "velar", "g": "velar", "ng": "velar", "hh": "velar",
}

# Festival phone sets of the other languages (SAMPA-like names; a digit 1 marks stress, Russian
# doubles a letter for a palatalised consonant or a stressed vowel).
ITALIAN_VISEME: dict[str, str | tuple[str, str]] = {
    "#": "rest",
    **dict.fromkeys(("a", "a1"), "open"), **dict.fromkeys(("e", "e1", "E", "E1"), "mid"),
    **dict.fromkeys(("i", "i1", "j"), "wide"), **dict.fromkeys(("o", "o1", "O", "O1"), "rounded"),
    **dict.fromkeys(("u", "u1", "w"), "rounded_tight"),
    **dict.fromkeys(("p", "b", "m"), "closed"), **dict.fromkeys(("f", "v", "nf"), "teeth"),
    **dict.fromkeys(("S", "Z", "tS", "dZ"), "postalveolar"),
    **dict.fromkeys(("t", "d", "s", "z", "ts", "dz", "n", "l", "r"), "alveolar"),
    **dict.fromkeys(("k", "g", "ng", "J", "L"), "velar"),
}
CZECH_VISEME: dict[str, str | tuple[str, str]] = {  # long vowels (a:) look up without the colon
    "#": "rest", "_": "rest", "a": "open", "e": "mid", "i": "wide", "j": "wide",
    "o": "rounded", "u": "rounded_tight",
    **dict.fromkeys(("p", "b", "m"), "closed"), **dict.fromkeys(("f", "v"), "teeth"),
    **dict.fromkeys(("c~", "dz~", "s~", "z~", "r~", "r~*"), "postalveolar"),
    **dict.fromkeys(("t", "d", "s", "z", "c", "dz", "n", "l", "r", "t~", "d~", "n~"), "alveolar"),
    **dict.fromkeys(("k", "g", "h", "ch", "n*"), "velar"),
}
FINNISH_VISEME: dict[str, str | tuple[str, str]] = {  # long sounds (a:, t:) without the colon
    "#": "rest", "##": "rest", "a": "open", "e": "mid", "@": "mid", "i": "wide", "j": "wide",
    "o": "rounded", "7": "rounded", "u": "rounded_tight", "y": "rounded_tight",
    "w": "rounded_tight", "&": "schwa",  # @ = ä, 7 = ö, y = ü
    **dict.fromkeys(("p", "b", "m"), "closed"), **dict.fromkeys(("f", "v"), "teeth"),
    **dict.fromkeys(("T", "D"), "dental"), **dict.fromkeys(("S", "Z"), "postalveolar"),
    **dict.fromkeys(("t", "d", "s", "z", "n", "l", "L", "r"), "alveolar"),
    **dict.fromkeys(("k", "g", "N", "h"), "velar"),
}
RUSSIAN_VISEME: dict[str, str | tuple[str, str]] = {
    "pau": "rest", **dict.fromkeys(("aa", "a"), "open"), "ay": "schwa",  # ay: reduced a
    **dict.fromkeys(("ee", "e", "ae"), "mid"), **dict.fromkeys(("ii", "i", "yy", "y", "j"), "wide"),
    "oo": "rounded", **dict.fromkeys(("uu", "u", "ur"), "rounded_tight"),
    **dict.fromkeys(("p", "pp", "b", "bb", "m", "mm"), "closed"),
    **dict.fromkeys(("f", "ff", "v", "vv"), "teeth"),
    **dict.fromkeys(("sh", "sch", "zh", "ch"), "postalveolar"),
    **dict.fromkeys(("t", "tt", "d", "dd", "s", "ss", "z", "zz", "c", "n", "nn", "l", "ll", "r",
                     "rr"), "alveolar"),
    **dict.fromkeys(("k", "kk", "g", "gg", "h", "hh"), "velar"),
}
CATALAN_VISEME: dict[str, str | tuple[str, str]] = {
    **dict.fromkeys(("pau", "_", "#"), "rest"), "ax": "schwa",
    **dict.fromkeys(("a", "a1"), "open"), **dict.fromkeys(("e", "e1", "E", "E1"), "mid"),
    **dict.fromkeys(("i", "i1", "j"), "wide"), **dict.fromkeys(("o", "o1", "O", "O1"), "rounded"),
    **dict.fromkeys(("u", "u1", "w"), "rounded_tight"),
    **dict.fromkeys(("p", "b", "m"), "closed"), "f": "teeth",
    **dict.fromkeys(("S", "Z"), "postalveolar"),
    **dict.fromkeys(("t", "d", "s", "z", "n", "l", "r", "rr"), "alveolar"),
    **dict.fromkeys(("k", "g", "J", "L"), "velar"),
}
# espeak-ng's phoneme mnemonics (Kirshenbaum-like, the same across its languages; espeak_phone
# strips stress marks, ":" length and ";" palatalisation first). A digit, "#" or "-" marks a
# language's variant of a sound; "_" pauses; two-vowel names are diphthongs.
ESPEAK_VISEME: dict[str, str | tuple[str, str]] = {
    **dict.fromkeys(("_", "_!", "_^", "_|"), "rest"),
    **dict.fromkeys(("p", "b", "m", "B"), "closed"), **dict.fromkeys(("f", "v", "M"), "teeth"),
    **dict.fromkeys(("0", "O", "O2", "o", "Y", "Yy", "8"), "rounded"),
    **dict.fromkeys(("u", "U", "w", "w2", "y"), "rounded_tight"),  # y: Finnish ü
    **dict.fromkeys(("i", "I", "I#", "I2", "j"), "wide"),
    **dict.fromkeys(("e", "E", "&"), "mid"), **dict.fromkeys(("a", "A", "aa", "V"), "open"),
    **dict.fromkeys(("@", "@2", "@-", "a#"), "schwa"), **dict.fromkeys(("3", "r-"), "rhotic"),
    "oU": ("rounded", "rounded_tight"), "OI": ("rounded", "wide"), "oi": ("rounded", "wide"),
    "O@": ("rounded", "rhotic"), "o@": ("rounded", "rhotic"), "U@": ("rounded_tight", "rhotic"),
    "eI": ("mid", "wide"), "ei": ("mid", "wide"), "&i": ("mid", "wide"), "e@": ("mid", "schwa"),
    "aI": ("open", "wide"), "ai": ("open", "wide"), "aI@": ("open", "wide"),
    "aI3": ("open", "wide"), "aU": ("open", "rounded_tight"), "au": ("open", "rounded_tight"),
    "A@": ("open", "rhotic"), "i@": ("wide", "schwa"), "i@3": ("wide", "schwa"),
    "uo": ("rounded_tight", "rounded"), "ui": ("rounded_tight", "wide"),
    "ja": ("wide", "open"), "ju": ("wide", "rounded_tight"), "jo": ("wide", "rounded"),
    "je": ("wide", "mid"),
    **dict.fromkeys(("S", "Z", "tS", "dZ", "R^"), "postalveolar"),  # R^: Czech ř
    **dict.fromkeys(("T", "D"), "dental"),
    **dict.fromkeys(("t", "t2", "t#", "d", "n", "l", "l-", "@L", "l^", "n^", "s", "s2", "ss",
                     "z", "ts", "ts2", "dz", "r", "R", "*", "**"), "alveolar"),  # r: a trill
    **dict.fromkeys(("k", "g", "N", "h", "x", "J", "Q", ";"), "velar"),  # ";" alone: a juncture
}
# Phone set name (speech.Voice.phoneset) -> table.
PHONESETS: dict[str, dict[str, str | tuple[str, str]]] = {
    "cmu": PHONE_VISEME, "italian": ITALIAN_VISEME, "czech": CZECH_VISEME,
    "finnish": FINNISH_VISEME, "msu_ru": RUSSIAN_VISEME, "catalan": CATALAN_VISEME,
    "espeak": ESPEAK_VISEME,
    "espeak_en": {**ESPEAK_VISEME, "r": "rhotic"},  # English r is an approximant
    "espeak_ru": {**ESPEAK_VISEME, "y": "wide"},  # Russian y is ы (unrounded)
}
_LENGTH_MARKED = ("czech", "finnish")  # sets that mark a long sound with a trailing ":"


def espeak_phone(phone: str) -> str:
    """An espeak-ng phoneme mnemonic as ESPEAK_VISEME spells it: without stress marks (``'``
    ``,``), a trailing ``:`` (long) or ``;`` (palatalised: looks like the plain sound)."""
    phone = phone.lstrip("',%=")
    if len(phone) > 1:
        phone = phone.removesuffix(":")
    if len(phone) > 1:
        phone = phone.removesuffix(";")
    return phone


# Required visual classes (what the demo corpus promises): phone -> class.
VISEME_CLASS: dict[str, str] = {
    "rest": "rest", "closed": "closed", "teeth": "teeth", "rounded": "rounded",
    "rounded_tight": "rounded", "wide": "wide", "mid": "wide", "open": "open", "schwa": "open",
    "rhotic": "rounded", "postalveolar": "rounded", "dental": "other", "alveolar": "other",
    "velar": "other",
}

_SEGMENT_RE = re.compile(r"([A-Za-z#]+):(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Segment:
    """One phone spoken from ``start_s`` to ``end_s`` (seconds from the clip start)."""

    phone: str
    start_s: float
    end_s: float


def phone_visemes(phone: str, phoneset: str = "cmu") -> tuple[str, ...]:
    """Viseme(s) of a phone of `phoneset` (PHONESETS); unknown phones are neutral consonants."""
    if phoneset == "cmu":
        phone = phone.lower()  # flite and festival spell CMU phones in either case
    elif phoneset in _LENGTH_MARKED and len(phone) > 1:
        phone = phone.removesuffix(":")  # a long sound looks like the short one
    elif phoneset.startswith("espeak"):
        phone = espeak_phone(phone)
    v = PHONESETS[phoneset].get(phone, "velar")
    return v if isinstance(v, tuple) else (v,)


def parse_psdur(text: str, offset_s: float = 0.0) -> list[Segment]:
    """Segments from flite ``-psdur`` output (``phone:end_s`` pairs, each ending a phone).

    Args:
        text: flite's stdout; lines without pairs are ignored.
        offset_s: added to every time (where this utterance starts in the clip).
    """
    segs: list[Segment] = []
    start = 0.0
    for phone, end in _SEGMENT_RE.findall(text):
        end_s = float(end)
        if end_s < start:  # a new utterance restarts its clock: continue after the last one
            offset_s += start
            start = 0.0
        segs.append(Segment(phone.lower(), start + offset_s, end_s + offset_s))
        start = end_s
    return segs


def _keyframes(segments: list[Segment], rng: np.random.Generator, jaw_scale: float,
               phoneset: str) -> tuple[np.ndarray, np.ndarray]:
    """Keyframe times (s) and mouth targets (K, P), stressed vowels varied a little."""
    times: list[float] = []
    targets: list[np.ndarray] = []

    def add(t: float, viseme: str, gain: float) -> None:
        vec = np.array([VISEMES[viseme].get(k, 0.0) for k in MOUTH_PARAMS])
        vec[0] *= gain  # jaw varies with emphasis; the lip shapes keep their identity
        times.append(t)
        targets.append(np.clip(vec, 0.0, 1.0))

    for seg in segments:
        vis = phone_visemes(seg.phone, phoneset)
        dur = seg.end_s - seg.start_s
        gain = jaw_scale * float(rng.uniform(0.85, 1.1))
        if vis == ("rest",) and dur > 0.2:  # hold the rest pose through a pause
            add(seg.start_s + 0.08, "rest", 1.0)
            add(seg.end_s - 0.08, "rest", 1.0)
        elif len(vis) == 2:  # diphthong: glide between two targets
            add(seg.start_s + 0.3 * dur, vis[0], gain)
            add(seg.start_s + 0.8 * dur, vis[1], gain)
        else:
            add(seg.start_s + 0.5 * dur, vis[0], gain)
    return np.array(times), np.array(targets).reshape(-1, len(MOUTH_PARAMS))


def ease_keyframes(times: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Values at `t` moving between keyframes with smoothstep easing (zero speed at keys)."""
    if len(times) == 0:
        return np.zeros((len(t),) + values.shape[1:])
    i = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 1)
    j = np.minimum(i + 1, len(times) - 1)
    span = np.maximum(times[j] - times[i], 1e-6)
    u = np.clip((t - times[i]) / span, 0.0, 1.0)
    u = u * u * (3 - 2 * u)
    return values[i] + (values[j] - values[i]) * u[:, None]


def mouth_curves(segments: list[Segment], n_frames: int, fps: float,
                 rng: np.random.Generator, jaw_scale: float = 1.0,
                 smile_drift: float = 0.0, phoneset: str = "cmu") -> dict[str, np.ndarray]:
    """Per-frame mouth parameters in [0, 1] (keys: MOUTH_PARAMS) for a list of phone segments.

    Args:
        segments: phones with clip times.
        n_frames: number of video frames (frame k is at k / fps).
        fps: video frame rate.
        rng: seeded generator (per-phone emphasis, expression drift).
        jaw_scale: speaker style (how wide the jaw opens overall).
        smile_drift: amplitude of a slow, phone-independent smile (mood), 0 = none.
        phoneset: the phone set the segments are spelled in (PHONESETS).
    """
    t = np.arange(n_frames) / fps
    times, targets = _keyframes(segments, rng, jaw_scale, phoneset)
    cur = ease_keyframes(times, targets, t) if len(times) else np.zeros((n_frames, 7))
    cur = gaussian_filter1d(cur, 0.6, axis=0, mode="nearest")  # soften frame-rate corners
    out = {k: cur[:, i] for i, k in enumerate(MOUTH_PARAMS)}
    if smile_drift > 0:
        out["smile"] = out["smile"] + smile_drift * _smooth_noise(n_frames, fps, 1.5, rng, True)
    return {k: np.clip(v, 0.0, 1.0) for k, v in out.items()}


def blink_curve(n_frames: int, fps: float, rng: np.random.Generator,
                interval_s: tuple[float, float] = (2.0, 6.0)) -> np.ndarray:
    """Blinks at random 2-6 s intervals: ~60 ms closing, ~30 ms shut, ~90 ms opening."""
    t = np.arange(n_frames) / fps
    out = np.zeros(n_frames)
    at = float(rng.uniform(0.3, interval_s[1]))
    end_s = float(t[-1]) if n_frames else 0.0
    while at < end_s:
        close, hold, open_ = 0.06, float(rng.uniform(0.02, 0.06)), float(rng.uniform(0.08, 0.12))
        depth = float(rng.uniform(0.85, 1.0))
        u = np.interp(t - at, [0, close, close + hold, close + hold + open_], [0, 1, 1, 0],
                      left=0, right=0)
        out = np.maximum(out, depth * u * u * (3 - 2 * u))
        at += float(rng.uniform(*interval_s))
    return out


def _smooth_noise(n: int, fps: float, sigma_s: float, rng: np.random.Generator,
                  positive: bool = False) -> np.ndarray:
    """Unit-scale smooth random signal (gaussian-filtered white noise)."""
    pad = int(3 * sigma_s * fps) + 1
    x = gaussian_filter1d(rng.standard_normal(n + 2 * pad), sigma_s * fps)[pad:pad + n]
    x = x / (np.abs(x).max() + 1e-9)
    return (x + 1) / 2 if positive else x


# Head-motion amplitudes: degrees for angles, frame fractions for offsets, ratio for scale.
HEAD_AMPLITUDE = {"yaw": 6.0, "pitch": 4.0, "roll": 4.0, "tx": 0.03, "ty": 0.02, "scale": 0.04}


def head_curves(n_frames: int, fps: float, rng: np.random.Generator,
                jaw: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Small smooth head motion; nods follow speech emphasis (jaw) a little, as people do."""
    out = {}
    for name, amp in HEAD_AMPLITUDE.items():
        x = amp * _smooth_noise(n_frames, fps, float(rng.uniform(0.4, 0.9)), rng)
        out[name] = 1.0 + x if name == "scale" else x
    if jaw is not None and len(jaw):
        out["pitch"] = out["pitch"] + 1.5 * gaussian_filter1d(jaw, 0.1 * fps)
    return out
