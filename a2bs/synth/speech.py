"""The corpus's voices and the speech engines that speak them with phone timings.

flite and festival install as Debian packages and report when each phone ends:
- **flite** (``apt-get install flite``): ``flite -voice NAME -psdur`` prints ``phone:end_s`` pairs
  (US English CMU phones).
- **festival** (``apt-get install festival festvox-...``): a Scheme script synthesises the text and
  prints the Segment relation (one ``SEG <phone> <end_s>`` line per phone, in the voice's own phone
  set), then saves the wave.

Every voice is a different recorded speaker (the same speaker in two engines would be one voice):
flite's slt/rms/awb/kal and festival's ked plus the festvox voices of other languages, which speak
sentences of their own language (``a2bs.synth.sentences``).

A third engine, **espeak-ng** (``pip install espeakng-loader``, the ``synth`` extra: the wheel ships
libespeak-ng and its data), is driven through its C API with phoneme events, which report when each
phone starts. Its voices (ESPEAK_VOICES) are formant-synthesis variants of one engine, not recorded
speakers, so the demo corpus (VOICES) does not use them; they serve the many-voices benchmark.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from a2bs.synth.visemes import Segment, parse_psdur


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: `name` is unique in the corpus and ends its speaker folder."""

    name: str
    engine: str  # "flite", "festival" or "espeak-ng"
    ident: str  # flite's -voice name, festival's (voice_<ident>) function, espeak-ng's lang+variant
    language: str  # BCP-47 tag; picks the sentences
    phoneset: str  # key of a2bs.synth.visemes.PHONESETS
    package: str  # the Debian package that ships the voice (the PyPI one for espeak-ng)
    sex: str  # "f", "m" or "child", for the README's table
    encoding: str = "utf-8"  # the text encoding festival's front end for this language reads


# Order matters: voice i belongs to face i mod the number of faces (corpus.generate_corpus), so each
# language has a voice on each face and the language alone does not tell the face.
VOICES: tuple[Voice, ...] = (
    Voice("slt", "flite", "slt", "en-US", "cmu", "flite", "f"),
    Voice("awb", "flite", "awb", "en-GB", "cmu", "flite", "m"),  # Scottish English
    Voice("rms", "flite", "rms", "en-US", "cmu", "flite", "m"),
    Voice("kal16", "flite", "kal16", "en-US", "cmu", "flite", "m"),  # kal at 16 kHz
    Voice("ked", "festival", "ked_diphone", "en-US", "cmu", "festvox-kdlpc16k", "m"),
    Voice("lp", "festival", "lp_diphone", "it", "italian", "festvox-italp16k", "f", "latin-1"),
    Voice("pc", "festival", "pc_diphone", "it", "italian", "festvox-itapc16k", "m", "latin-1"),
    Voice("dita", "festival", "czech_dita", "cs", "czech", "festvox-czech-dita", "f",
          "iso-8859-2"),
    Voice("machac", "festival", "czech_machac", "cs", "czech", "festvox-czech-machac", "m",
          "iso-8859-2"),
    Voice("lj", "festival", "suo_fi_lj_diphone", "fi", "finnish", "festvox-suopuhe-lj", "f",
          "latin-1"),
    Voice("mv", "festival", "hy_fi_mv_diphone", "fi", "finnish", "festvox-suopuhe-mv", "m",
          "latin-1"),
    Voice("nsh", "festival", "msu_ru_nsh_clunits", "ru", "msu_ru", "festvox-ru", "m"),
    Voice("ona", "festival", "upc_ca_ona_hts", "ca", "catalan", "festvox-ca-ona-hts", "f",
          "latin-1"),
    Voice("ph", "festival", "czech_ph", "cs", "czech", "festvox-czech-ph", "m", "iso-8859-2"),
    Voice("krb", "festival", "czech_krb", "cs", "czech", "festvox-czech-krb", "child",
          "iso-8859-2"),
)
VOICE_BY_NAME: dict[str, Voice] = {v.name: v for v in VOICES}


def _espeak(ident: str, language: str, sex: str) -> Voice:
    """An espeak-ng voice: ``es_<variant>_<language>`` (no clash with VOICES' names)."""
    variant, lang = ident.split("+")[1].lower(), language.split("-")[0]
    phoneset = f"espeak_{lang}" if lang in ("en", "ru") else "espeak"  # visemes.PHONESETS
    return Voice(f"es_{variant}_{lang}", "espeak-ng", ident, language, phoneset,
                 "espeakng-loader", sex)


# Two per language, one on each face (same order rule as VOICES), over male and female variants.
ESPEAK_VOICES: tuple[Voice, ...] = (
    _espeak("en-us+m1", "en-US", "m"), _espeak("en-us+f1", "en-US", "f"),
    _espeak("it+f2", "it", "f"), _espeak("it+m2", "it", "m"),
    _espeak("cs+m3", "cs", "m"), _espeak("cs+f3", "cs", "f"),
    _espeak("fi+f4", "fi", "f"), _espeak("fi+m4", "fi", "m"),
    _espeak("ru+m5", "ru", "m"), _espeak("ru+f5", "ru", "f"),
    _espeak("ca+Annie", "ca", "f"), _espeak("ca+m6", "ca", "m"),
)
# Voice sets `python -m a2bs.synth.corpus --voices NAME` generates.
VOICE_SETS: dict[str, tuple[Voice, ...]] = {"demo": VOICES, "espeak": ESPEAK_VOICES}


def apt_packages(voices: tuple[Voice, ...] = VOICES) -> list[str]:
    """The Debian packages that generating `voices` needs (engines and voice data)."""
    debian = [v for v in voices if v.engine != "espeak-ng"]  # espeak-ng comes from PyPI
    return sorted({v.engine for v in debian} | {v.package for v in debian})


def require_engine(engine: str) -> None:
    """Fail with a one-line install hint if `engine` cannot run here."""
    if engine == "espeak-ng":
        _espeak_lib()
    else:
        engine_path(engine)


def engine_path(engine: str) -> str:
    """The engine's executable, or a clear error saying how to install the corpus's voices."""
    exe = shutil.which(engine)
    if exe is None:
        raise RuntimeError(f"the demo-corpus generator needs the {engine} speech synthesiser: "
                           f"apt-get install {' '.join(apt_packages())} (the committed corpus "
                           "does not)")
    return exe


def parse_festival_segments(text: str) -> list[Segment]:
    """Segments from the ``SEG <phone> <end_s>`` lines the festival script prints.

    Phones are kept as the voice's phone set spells them (``a:``, ``r~*``, ``@``, ``O1``); other lines
    (festival's own messages) are ignored.
    """
    segs: list[Segment] = []
    start = 0.0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] != "SEG":
            continue
        end_s = float(parts[2])
        segs.append(Segment(parts[1], start, end_s))
        start = end_s
    return segs


# Festival script: synthesise, print the Segment relation's end times, save a RIFF wave.
_FESTIVAL_SCRIPT = """(voice_{ident})
(set! utt1 (utt.synth (Utterance Text "{text}")))
(mapcar (lambda (s) (format t "SEG %s %f\\n" (item.name s) (item.feat s "end")))
        (utt.relation.items utt1 'Segment))
(utt.save.wave utt1 "{wav}" 'riff)
"""


def festival_script(text: str, voice: Voice, wav_path: Path) -> bytes:
    """The Scheme program that speaks `text`, encoded as the voice's front end reads text."""
    safe = text.replace("\\", " ").replace('"', " ")  # a quote would end the Scheme string
    return _FESTIVAL_SCRIPT.format(ident=voice.ident, text=safe, wav=wav_path).encode(
        voice.encoding)


class _EspeakId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _EspeakEvent(ctypes.Structure):  # espeak_EVENT of speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EspeakId)]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.POINTER(_EspeakEvent))
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_AUDIO_OUTPUT_SYNCHRONOUS, _INITIALIZE_PHONEME_EVENTS, _CHARS_UTF8 = 2, 1, 1


class _EspeakState:
    """The process's libespeak-ng (global state in C) and what its callback has collected."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise RuntimeError("the espeak-ng voices need libespeak-ng: pip install "
                               "espeakng-loader (or the a2bs[synth] extra)") from err
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.data_dir = Path(espeakng_loader.get_data_path())
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_dir).encode(), _INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise RuntimeError(f"libespeak-ng failed to initialise ({self.sample_rate})")
        self.audio: list[np.ndarray] = []
        self.phones: list[tuple[int, str]] = []  # (start_ms, mnemonic)
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept referenced: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n_samples: int, events) -> int:
        if n_samples > 0:
            self.audio.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self.phones.append((events[i].audio_position,
                                    events[i].id.string.decode("utf-8", errors="replace")))
            i += 1
        return 0  # 0 = go on synthesising


@functools.cache
def _espeak_lib() -> _EspeakState:
    return _EspeakState()


def espeak_segments(phones: list[tuple[int, str]], duration_s: float) -> list[Segment]:
    """Segments from espeak-ng's phoneme events (start times in ms): each phone ends where the
    next starts, the last at the audio's end; zero-length phones (a pause at a word join) go."""
    segs: list[Segment] = []
    for k, (start_ms, phone) in enumerate(phones):
        end_s = phones[k + 1][0] / 1000 if k + 1 < len(phones) else duration_s
        start_s = start_ms / 1000
        if end_s > start_s:
            segs.append(Segment(phone, start_s, min(end_s, duration_s)))
    return segs


def speak_espeak(text: str, voice: Voice, wav_path: Path) -> list[Segment]:
    """Speak `text` with espeak-ng's voice ``voice.ident`` into `wav_path` (16-bit, its own rate)."""
    state = _espeak_lib()
    variant = voice.ident.partition("+")[2]
    # espeak-ng ignores an unknown variant silently: check its file (voices/!v/<variant>) first
    if (variant and not (state.data_dir / "voices" / "!v" / variant).is_file()
            or state.lib.espeak_SetVoiceByName(voice.ident.encode()) != 0):
        raise RuntimeError(f"espeak-ng has no voice {voice.ident!r} (voice {voice.name!r})")
    state.audio, state.phones = [], []
    data = text.encode("utf-8")
    state.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, _CHARS_UTF8, None, None)
    state.lib.espeak_Synchronize()
    audio = np.concatenate(state.audio) if state.audio else np.zeros(0, np.int16)
    sf.write(str(wav_path), audio, state.sample_rate, subtype="PCM_16")
    return espeak_segments(state.phones, len(audio) / state.sample_rate)


def speak(text: str, voice: Voice, wav_path: Path) -> list[Segment]:
    """Synthesise `text` with the voice's engine into `wav_path`; returns its phone segments."""
    if voice.engine == "flite":
        res = subprocess.run([engine_path("flite"), "-voice", voice.ident, "-psdur", "-t", text,
                              "-o", str(wav_path)], capture_output=True, text=True, check=True)
        segs = parse_psdur(res.stdout)
    elif voice.engine == "festival":
        exe = engine_path("festival")
        with tempfile.TemporaryDirectory() as td:
            script = Path(td) / "speak.scm"
            script.write_bytes(festival_script(text, voice, wav_path))
            res = subprocess.run([exe, "-b", str(script)], capture_output=True, check=True)
        segs = parse_festival_segments(res.stdout.decode("utf-8", errors="replace"))
        if not wav_path.exists():
            raise RuntimeError(f"festival wrote no audio for voice {voice.name!r}: "
                               f"{res.stderr.decode(errors='replace').strip()[-300:]}")
    elif voice.engine == "espeak-ng":
        segs = speak_espeak(text, voice, wav_path)
    else:
        raise ValueError(f"unknown speech engine {voice.engine!r} of voice {voice.name!r}")
    if not segs:
        raise RuntimeError(f"{voice.engine} printed no phone segments for voice {voice.name!r}")
    return segs
