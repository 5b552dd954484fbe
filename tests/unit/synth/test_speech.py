"""The corpus's voices and engines: festival's segment output, its script, every phone set's visemes.

Engine output is recorded (festival 2.5 on Debian, the script of `a2bs.synth.speech`), so these run
without flite or festival installed.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from a2bs.synth import visemes as V
from a2bs.synth.sentences import SENTENCES
from a2bs.synth.speech import (
    VOICE_BY_NAME,
    VOICES,
    apt_packages,
    festival_script,
    parse_festival_segments,
)

# Recorded: voice_czech_dita speaking "Dobrý den, jak se máte?" (ISO-8859-2 text), festival's own
# message line included. Czech spells long vowels "a:" and ř "r~*".
FESTIVAL_CZECH = """SEG # 0.100000
SEG d 0.162000
SEG o 0.251000
SEG b 0.318000
SEG r 0.378000
SEG i: 0.455000
SEG d 0.517620
SEG e 0.617610
SEG n 0.693360
SEG # 0.703200
SEG j 0.764300
SEG a 0.856420
SEG k 0.931620
SEG s 1.023740
SEG e 1.116800
SEG m 1.180720
SEG a: 1.272840
SEG t 1.349920
SEG e 1.442980
SEG # 1.653705
closing a file left open: speak.scm
"""

# Each festival voice's phone set as `(PhoneSet.list)` and the phone names print it (festival 2.5).
PHONE_SETS: dict[str, str] = {
    "italian": "i e E a o O u i1 e1 E1 a1 o1 O1 u1 j w p t k b d g f s S v z Z ts tS dz dZ m n J ng "
               "nf l L r #",
    "czech": "# _ a a: b c c~ ch d d~ dz dz~ e e: f g h i i: j k l m n n* n~ o o: p r r~ r~* s s~ t "
             "t~ u u: v z z~",
    "finnish": "a e i o u y @ 7 & a: e: i: o: u: y: @: 7: p t k b d g f T s S h v m n N l L r j w "
               "p: t: k: b: d: g: f: T: D: s: z: S: Z: h: v: m: n: N: w: l: L: r: j: ## #",
    "msu_ru": "pau ii yy uu ee oo aa a e i y u ae ay ur p pp b bb t tt d dd k kk g gg c ch f ff v vv "
              "s ss z zz sh sch zh h hh m mm n nn l ll r rr j",
    "catalan": "ax a a1 b d e e1 E E1 f g i i1 j J k l L m n o o1 O O1 p r rr s S t u u1 w z Z pau "
               "_ #",
}


def test_parse_festival_segments() -> None:
    segs = parse_festival_segments(FESTIVAL_CZECH)
    assert [s.phone for s in segs][:6] == ["#", "d", "o", "b", "r", "i:"]
    assert len(segs) == 20  # festival's message line is not a segment
    assert segs[0].start_s == 0.0 and segs[-1].end_s == pytest.approx(1.653705)
    assert all(a.end_s == b.start_s for a, b in pairwise(segs))  # contiguous
    assert parse_festival_segments("SIOD ERROR: unbound variable") == []


@pytest.mark.parametrize("phoneset", sorted(PHONE_SETS))
def test_every_festival_phone_has_a_viseme(phoneset: str) -> None:
    phones = PHONE_SETS[phoneset].split()
    table = V.PHONESETS[phoneset]
    missing = [p for p in phones if p not in table and p.removesuffix(":") not in table]
    assert missing == []  # no phone falls back to the neutral consonant
    cls = {p: {V.VISEME_CLASS[v] for v in V.phone_visemes(p, phoneset)} for p in phones}
    for p in ("p", "b", "m"):
        assert cls[p] == {"closed"}, p
    assert cls["f"] == {"teeth"}
    vowels = {"italian": ("a", "i", "o", "u"), "czech": ("a:", "i", "o:", "u"),
              "finnish": ("a:", "i", "o", "u:"), "msu_ru": ("aa", "ii", "oo", "uu"),
              "catalan": ("a1", "i", "O1", "u")}[phoneset]
    assert [next(iter(cls[v])) for v in vowels] == ["open", "wide", "rounded", "rounded"]


def test_mouth_curves_follow_czech_phones() -> None:
    segs = parse_festival_segments(FESTIVAL_CZECH)
    fps = 30.0
    n = int(np.ceil(segs[-1].end_s * fps))
    cur = V.mouth_curves(segs, n, fps, np.random.default_rng(0), phoneset="czech")

    def at(i: int, key: str) -> float:
        return float(cur[key][round((segs[i].start_s + segs[i].end_s) / 2 * fps)])

    assert at(15, "press") > 0.7  # m of "máte": lips shut
    assert at(16, "jaw") > 0.6  # the long a: after it opens the jaw
    assert at(3, "press") > 0.7  # b of "dobrý"


def test_voices_are_distinct_speakers_of_two_engines() -> None:
    assert len(VOICES) >= 12 and len({v.name for v in VOICES}) == len(VOICES)
    assert {v.engine for v in VOICES} == {"flite", "festival"}
    # One recorded speaker is one voice: festival's kal and slt are flite's, so neither is listed.
    assert not {"kal_diphone", "cmu_us_slt_arctic_hts"} & {v.ident for v in VOICES}
    for v in VOICES:
        assert v.phoneset in V.PHONESETS and v.language.split("-")[0] in SENTENCES
        assert len(SENTENCES[v.language.split("-")[0]]) >= 12
    pkgs = apt_packages()
    assert {"flite", "festival"} <= set(pkgs) and len(pkgs) == 2 + len({v.package for v in VOICES} - {"flite"})


def test_festival_script_encodes_the_text_for_the_voice(tmp_path: Path) -> None:
    czech = festival_script('Příliš "žluťoučký" kůň', VOICE_BY_NAME["dita"], tmp_path / "a.wav")
    assert czech.startswith(b"(voice_czech_dita)")
    assert "Příliš  žluťoučký  kůň".encode("iso-8859-2") in czech  # quotes cannot end the string
    assert str(tmp_path / "a.wav").encode() in czech and b"'Segment" in czech
    russian = festival_script("Доброе утро", VOICE_BY_NAME["nsh"], tmp_path / "a.wav")
    assert "Доброе утро".encode() in russian
    with pytest.raises(UnicodeEncodeError):  # a text the voice cannot read is refused, not mangled
        festival_script("Доброе утро", VOICE_BY_NAME["lj"], tmp_path / "a.wav")
