"""The corpus's voices and the two speech engines that speak them with phone timings.

Both engines install as Debian packages and report when each phone ends:
- **flite** (``apt-get install flite``): ``flite -voice NAME -psdur`` prints ``phone:end_s`` pairs
  (US English CMU phones).
- **festival** (``apt-get install festival festvox-...``): a Scheme script synthesises the text and
  prints the Segment relation (one ``SEG <phone> <end_s>`` line per phone, in the voice's own phone
  set), then saves the wave.

Every voice is a different recorded speaker (the same speaker in two engines would be one voice):
flite's slt/rms/awb/kal and festival's ked plus the festvox voices of other languages, which speak
sentences of their own language (``a2bs.synth.sentences``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from a2bs.synth.visemes import Segment, parse_psdur


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: `name` is unique in the corpus and ends its speaker folder."""

    name: str
    engine: str  # "flite" or "festival"
    ident: str  # flite's -voice name, or festival's (voice_<ident>) function
    language: str  # BCP-47 tag; picks the sentences
    phoneset: str  # key of a2bs.synth.visemes.PHONESETS
    package: str  # the Debian package that ships the voice
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


def apt_packages(voices: tuple[Voice, ...] = VOICES) -> list[str]:
    """The Debian packages that generating `voices` needs (engines and voice data)."""
    return sorted({v.engine for v in voices} | {v.package for v in voices})


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
    else:
        raise ValueError(f"unknown speech engine {voice.engine!r} of voice {voice.name!r}")
    if not segs:
        raise RuntimeError(f"{voice.engine} printed no phone segments for voice {voice.name!r}")
    return segs
