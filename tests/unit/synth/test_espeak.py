"""espeak-ng, the third speech engine (libespeak-ng from the espeakng-loader wheel): real synthesis.

Each language's voice speaks a short sentence; its phoneme events must cover the audio in order,
line up with it (pauses quiet, vowels loud) and map onto visemes without falling back.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from a2bs.synth import visemes as V
from a2bs.synth.corpus import _read_wav
from a2bs.synth.sentences import SENTENCES
from a2bs.synth.speech import ESPEAK_VOICES, VOICE_SETS, VOICES, Voice, speak

SHORT = {"en": "Hello there, my friend. How are you today?", "it": "Buongiorno, come stai oggi?",
         "cs": "Dobrý den, jak se máte?", "fi": "Hyvää huomenta, mitä kuuluu?",
         "ru": "Доброе утро, как дела?", "ca": "Bon dia, com estàs avui?"}
VOWELS = ("open", "wide", "mid", "rounded", "rounded_tight")


def _first_of_each_language() -> list[Voice]:
    seen: dict[str, Voice] = {}
    for v in ESPEAK_VOICES:
        seen.setdefault(v.language.split("-")[0], v)
    return list(seen.values())


@pytest.mark.parametrize("voice", _first_of_each_language(), ids=lambda v: v.name)
def test_espeak_voice_speaks_with_phone_timings(voice: Voice, tmp_path: Path) -> None:
    wav = tmp_path / "s.wav"
    segs = speak(SHORT[voice.language.split("-")[0]], voice, wav)
    audio, sr = sf.read(str(wav))
    duration_s = len(audio) / sr
    assert duration_s > 0.5 and len(segs) > 10
    assert all(s.start_s < s.end_s for s in segs)
    assert all(a.end_s <= b.start_s + 1e-9 for a, b in pairwise(segs))  # in order, no overlap
    assert segs[0].start_s < 0.05 and duration_s - segs[-1].start_s < 0.1  # events cover the audio
    assert segs[-1].end_s == pytest.approx(duration_s)
    table = V.PHONESETS[voice.phoneset]
    assert [s.phone for s in segs if V.espeak_phone(s.phone) not in table] == []  # no fallback

    def rms(s) -> float:
        return float(np.sqrt(np.mean(audio[int(s.start_s * sr):int(s.end_s * sr)] ** 2)))

    pauses = [rms(s) for s in segs if V.espeak_phone(s.phone) == "_" and s.end_s - s.start_s > 0.04]
    vowels = [rms(s) for s in segs if V.phone_visemes(s.phone, voice.phoneset)[0] in VOWELS]
    assert pauses and vowels  # the comma's pause and the vowels are where the audio says
    assert max(pauses) < 0.2 * float(np.median(vowels))
    assert len(_read_wav(wav)) == pytest.approx(duration_s * 16000, abs=2)  # the corpus's rate


def test_espeak_mnemonics_map_onto_the_visemes() -> None:
    assert V.espeak_phone("'aI") == "aI" and V.espeak_phone(",u:") == "u" and V.espeak_phone("_:") == "_"
    assert V.espeak_phone("t;") == "t" and V.espeak_phone(";") == ";"
    for phoneset in ("espeak", "espeak_en", "espeak_ru"):
        cls = {p: [V.VISEME_CLASS[v] for v in V.phone_visemes(p, phoneset)]
               for p in ("p", "'b", "m", "f", "'a:", "i:", "'o", "u", "_:", "'aI", "oU")}
        assert cls["p"] == cls["'b"] == cls["m"] == ["closed"] and cls["f"] == ["teeth"]
        assert [cls[p][0] for p in ("'a:", "i:", "'o", "u", "_:")] == ["open", "wide", "rounded",
                                                                        "rounded", "rest"]
        assert cls["'aI"] == ["open", "wide"] and cls["oU"] == ["rounded", "rounded"]  # glides
    assert V.phone_visemes("r", "espeak_en") == ("rhotic",) and V.phone_visemes("r", "espeak") == ("alveolar",)
    assert V.phone_visemes("y", "espeak_ru") == ("wide",) and V.phone_visemes("y", "espeak") == ("rounded_tight",)


def test_espeak_voice_set_is_separate_from_the_demo_voices() -> None:
    assert VOICE_SETS["demo"] is VOICES  # the demo corpus's 15 recorded voices, unchanged
    assert [v.name for v in VOICES] == ["slt", "awb", "rms", "kal16", "ked", "lp", "pc", "dita", "machac",
                                        "lj", "mv", "nsh", "ona", "ph", "krb"]
    assert {v.engine for v in VOICES} == {"flite", "festival"}
    names = [v.name for v in ESPEAK_VOICES]
    assert len(ESPEAK_VOICES) == 12 and len(set(names)) == 12
    assert not set(names) & {v.name for v in VOICES} and all(n.startswith("es_") for n in names)
    assert {v.engine for v in ESPEAK_VOICES} == {"espeak-ng"} and {v.sex for v in ESPEAK_VOICES} == {"m", "f"}
    languages = [v.language.split("-")[0] for v in ESPEAK_VOICES]
    assert sorted(set(languages)) == ["ca", "cs", "en", "fi", "it", "ru"]
    for lang in set(languages):  # voice i is on face i mod 2: each language speaks on both faces
        assert sorted(i % 2 for i, x in enumerate(languages) if x == lang) == [0, 1]
        assert len(SENTENCES[lang]) >= 12


def test_unknown_espeak_voice_is_a_clear_error(tmp_path: Path) -> None:
    bad = Voice("es_x_en", "espeak-ng", "en-us+nosuchvariant", "en-US", "espeak_en", "espeakng-loader", "m")
    with pytest.raises(RuntimeError, match="espeak-ng has no voice 'en-us\\+nosuchvariant'"):
        speak("Hello.", bad, tmp_path / "a.wav")


def test_cli_synth_writes_an_espeak_clip(tmp_path: Path) -> None:
    """`a2bs synth --voices espeak --no-verify`: a clip of an espeak-ng voice and its record, no read-back."""
    import json

    from a2bs.cli import main

    assert main(["synth", "--out", str(tmp_path), "--voices", "espeak", "--clips", "1", "--no-verify"]) == 0
    (clip,) = json.loads((tmp_path / "corpus.json").read_text())["clips"]
    assert clip["engine"] == "espeak-ng" and clip["voice"] in {v.name for v in ESPEAK_VOICES}
    assert (tmp_path / clip["file"]).stat().st_size > 10_000
    assert not (tmp_path / "verification.json").exists()  # --no-verify
