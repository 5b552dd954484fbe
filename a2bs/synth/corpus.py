"""Generate the demo corpus: public-domain face photos speaking with many synthetic voices.

Each clip joins 2-4 sentences spoken by one voice (flite or festival, ``a2bs.synth.speech``; with
silence at both ends and short pauses between, so voice-activity detection has something to find),
drives one face's mouth from the engine's phone timings, adds blinks and head motion, and writes an
H.264 + AAC mp4 with the drive curves beside it. Generation needs the engines and voices
(``speech.apt_packages()``); the committed corpus does not.

Usage: ``python -m a2bs.synth.corpus --out a2bs/demo/corpus --clips 90 --seed 0``
(``--verify-only`` re-measures an existing corpus; ``--no-verify`` skips the check;
``--voices espeak`` speaks with espeak-ng's voices instead of the demo's, for benchmarks).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf

from a2bs.synth.face import FACES, FaceRig, FrameParams
from a2bs.synth.sentences import SENTENCES
from a2bs.synth.speech import VOICE_SETS, VOICES, Voice, require_engine, speak
from a2bs.synth.visemes import Segment, blink_curve, head_curves, mouth_curves

FPS = 30.0
SAMPLE_RATE = 16000
FRAME_PX = 384
CLIP_RANGE_S = (5.0, 10.0)  # short clips: many voices and `a2bs demo` still quick
CLIPS_PER_VOICE = 6
DEFAULT_CLIPS = CLIPS_PER_VOICE * len(VOICES)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "demo" / "corpus"



def _read_wav(path: Path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:  # festival's Finnish voices speak at 22.05 kHz, the others at 16 kHz
        import librosa

        audio = librosa.resample(audio, orig_sr=sr, target_sr=SAMPLE_RATE)
    return audio


def assemble_speech(sentences: list[str], voice: Voice, rng: np.random.Generator,
                    work: Path) -> tuple[np.ndarray, list[Segment]]:
    """One clip's audio: silence, sentences separated by short pauses, silence."""
    parts = [np.zeros(int(rng.uniform(0.5, 0.9) * SAMPLE_RATE), np.float32)]
    segments: list[Segment] = []
    t0 = len(parts[0]) / SAMPLE_RATE
    segments.append(Segment("pau", 0.0, t0))
    for i, text in enumerate(sentences):
        wav = work / f"s{i}.wav"
        segs = speak(text, voice, wav)
        audio = _read_wav(wav)
        segments += [Segment(s.phone, s.start_s + t0, min(s.end_s, len(audio) / SAMPLE_RATE)
                             + t0) for s in segs]
        gap_s = rng.uniform(0.25, 0.6) if i < len(sentences) - 1 else rng.uniform(0.5, 0.9)
        parts += [audio, np.zeros(int(gap_s * SAMPLE_RATE), np.float32)]
        t_end = t0 + len(audio) / SAMPLE_RATE
        segments.append(Segment("pau", t_end, t_end + gap_s))
        t0 = t_end + gap_s
    return np.concatenate(parts), segments


def drive_curves(segments: list[Segment], duration_s: float, rng: np.random.Generator,
                 fps: float = FPS, phoneset: str = "cmu") -> dict[str, np.ndarray]:
    """All per-frame drive values of a clip (FrameParams names)."""
    n = int(np.ceil(duration_s * fps))
    mouth = mouth_curves(segments, n, fps, rng, jaw_scale=float(rng.uniform(0.9, 1.15)),
                         smile_drift=float(rng.choice([0.0, 0.25, 0.5])), phoneset=phoneset)
    curves = dict(mouth)
    curves["blink"] = blink_curve(n, fps, rng)
    curves.update(head_curves(n, fps, rng, jaw=mouth["jaw"]))
    return curves


# Stored drive curves: file key -> FrameParams field (ARKit names where one exists).
DRIVEN_KEYS: dict[str, str] = {
    "jawOpen": "jaw", "mouthClose": "press", "mouthFunnel": "funnel", "mouthPucker": "pucker",
    "mouthSmile": "smile", "mouthStretch": "stretch", "mouthTeeth": "teeth", "eyeBlink": "blink",
    "headYaw_deg": "yaw", "headPitch_deg": "pitch", "headRoll_deg": "roll",
    "headTx_frac": "tx", "headTy_frac": "ty", "headScale": "scale",
}


def encode_clip(frames, audio: np.ndarray, out_path: Path, fps: float = FPS,
                size_px: int = FRAME_PX, crf: int = 29) -> None:
    """H.264 (yuv420p) + AAC mono mp4 from an iterator of RGB frames, via imageio-ffmpeg."""
    import imageio_ffmpeg

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.stem + ".part.mp4")
    with tempfile.TemporaryDirectory() as td:
        wav = Path(td) / "a.wav"
        sf.write(str(wav), audio, SAMPLE_RATE, subtype="PCM_16")
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size_px}x{size_px}",
               "-r", f"{fps:g}", "-i", "-", "-i", str(wav),
               "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "slow",
               "-crf", str(crf), "-pix_fmt", "yuv420p", "-threads", "1",
               "-c:a", "aac", "-b:a", "40k", "-ac", "1", "-ar", str(SAMPLE_RATE),
               "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
               "-flags:a", "+bitexact", "-movflags", "+faststart", str(tmp)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for frame in frames:
                proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
        finally:
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace")
            code = proc.wait()
        if code != 0:
            raise RuntimeError(f"ffmpeg failed ({code}): {err.strip()[-500:]}")
    tmp.replace(out_path)  # atomic: a crash never leaves a half-written clip under its name


def _pick_sentences(rng: np.random.Generator, language: str) -> list[str]:
    """2-4 different sentences of the language (the caller checks the spoken length)."""
    pool = SENTENCES[language.split("-")[0]]
    k = int(rng.integers(2, 5))
    idx = rng.choice(len(pool), size=k, replace=False)
    return [pool[i] for i in idx]


def speak_clip(voice: Voice, rng: np.random.Generator, work: Path
               ) -> tuple[list[str], np.ndarray, list[Segment]]:
    """A clip's sentences, audio and phone segments, redrawn until its length is in range."""
    for _ in range(20):
        sentences = _pick_sentences(rng, voice.language)
        audio, segments = assemble_speech(sentences, voice, rng, work)
        duration_s = len(audio) / SAMPLE_RATE
        if CLIP_RANGE_S[0] + 0.3 <= duration_s <= CLIP_RANGE_S[1] - 0.3:
            return sentences, audio, segments
    raise RuntimeError(f"could not assemble a clip of voice {voice.name!r} within "
                       f"{CLIP_RANGE_S} s")


def _record(sentences: list[str], audio: np.ndarray, fps: float) -> dict:
    duration_s = len(audio) / SAMPLE_RATE
    return {"text": " ".join(sentences), "duration_s": round(duration_s, 3), "fps": fps,
            "n_frames": int(np.ceil(duration_s * fps))}


def make_clip(rig: FaceRig, voice: Voice, rng: np.random.Generator, work: Path,
              out_path: Path, fps: float = FPS) -> dict:
    """Speak, animate and encode one clip; returns its corpus.json record (plus curves)."""
    sentences, audio, segments = speak_clip(voice, rng, work)
    rec = _record(sentences, audio, fps)
    curves = drive_curves(segments, len(audio) / SAMPLE_RATE, rng, fps, voice.phoneset)
    names = FrameParams.names()
    frames = (rig.render(FrameParams(**{k: float(curves[k][i]) for k in names}))
              for i in range(rec["n_frames"]))
    encode_clip(frames, audio, out_path, fps, rig.out_px)
    return {**rec, "curves": curves}


@functools.cache
def _rig(face: str) -> FaceRig:
    """One rig per face and process (the photo's landmarks are detected once)."""
    return FaceRig.from_photo(face, out_px=FRAME_PX)


def _clip(out_dir: Path, seed: int, i: int, face: str, voice: Voice, clip_id: str) -> dict:
    """Clip `i` of the corpus: rendered, or only re-spoken when a rerun finds it written."""
    speaker = f"{face}_{voice.name}"
    mp4, npz = out_dir / speaker / f"{clip_id}.mp4", out_dir / "driven" / f"{clip_id}.npz"
    rng = np.random.default_rng([seed, i])  # each clip reproducible on its own
    with tempfile.TemporaryDirectory() as td:
        if mp4.exists() and npz.exists():  # a rerun resumes: the record needs only the speech
            sentences, audio, _ = speak_clip(voice, rng, Path(td))
            rec = _record(sentences, audio, FPS)
        else:
            rec = make_clip(_rig(face), voice, rng, Path(td), mp4)
            curves = rec.pop("curves")
            part = npz.with_name(npz.stem + ".part.npz")
            with open(part, "wb") as f:
                np.savez_compressed(f, fps=np.float32(FPS),
                                    **{k: curves[v].astype(np.float16) for k, v in DRIVEN_KEYS.items()})
            part.replace(npz)
    return {"clip_id": clip_id, "file": f"{speaker}/{clip_id}.mp4", "speaker": speaker,
            "face": face, "voice": voice.name, "engine": voice.engine, "language": voice.language,
            **rec, "driven": f"driven/{clip_id}.npz"}


def generate_corpus(out_dir: Path = DEFAULT_OUT, n_clips: int = DEFAULT_CLIPS, seed: int = 0,
                    voices: tuple[Voice, ...] = VOICES, faces: tuple[str, ...] = FACES,
                    progress: bool = True, jobs: int = 1) -> list[dict]:
    """Write `n_clips` clips spread evenly over the speakers; returns the records.

    Each voice belongs to one face (voice *i* to face *i* mod the number of faces), as each actor
    in real footage has one voice: an audio model can then tell whose rest shape to predict.
    `jobs` > 1 renders clips in that many processes; a rerun keeps the clips already written.

    Layout: ``<out>/<face>_<voice>/<clip_id>.mp4``, ``<out>/driven/<clip_id>.npz`` (float16
    drive curves at the video fps), ``<out>/corpus.json``. Deterministic given `seed`.
    """
    for engine in sorted({v.engine for v in voices}):
        require_engine(engine)  # fail before rendering anything if an engine is missing
    out_dir = Path(out_dir)
    speakers = sorted(((faces[i % len(faces)], v) for i, v in enumerate(voices)),
                      key=lambda fv: (fv[0], fv[1].name))
    t_start = time.time()
    (out_dir / "driven").mkdir(parents=True, exist_ok=True)
    work = []
    for i in range(n_clips):
        face, voice = speakers[i % len(speakers)]
        work.append((out_dir, seed, i, face, voice, f"{face}_{voice.name}_{i // len(speakers):02d}"))
    # spawn: the parent holds MediaPipe state a fork would copy half-initialised
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        records = []
        for rec in pool.map(_clip, *zip(*work)):
            records.append(rec)
            if progress:
                size_kb = (out_dir / rec["file"]).stat().st_size / 1024
                print(f"[{len(records)}/{n_clips}] {rec['file']} {rec['duration_s']:.1f}s "
                      f"{size_kb:.0f} KB ({time.time() - t_start:.0f}s)", flush=True)
    meta = {"fps": FPS, "frame_px": FRAME_PX, "sample_rate": SAMPLE_RATE, "seed": seed,
            "generator": "a2bs.synth.corpus",
            "voices": [{**asdict(v), "face": f} for f, v in speakers], "clips": records}
    tmp = out_dir / "corpus.json.part"
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(out_dir / "corpus.json")
    if progress:
        total = sum(r["duration_s"] for r in records)
        size_mb = sum((out_dir / r["file"]).stat().st_size for r in records) / 2**20
        print(f"corpus: {len(records)} clips, {len({r['speaker'] for r in records})} speakers, "
              f"{total / 60:.1f} min, {size_mb:.1f} MB video in {time.time() - t_start:.0f}s "
              f"-> {out_dir}")
    return records


def main(argv: list[str] | None = None) -> int:
    """Command line: generate the corpus, then check it with MediaPipe (README table)."""
    ap = argparse.ArgumentParser(prog="a2bs synth", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpus folder")
    ap.add_argument("--clips", type=int, default=None,
                    help=f"number of clips, spread evenly over the voices (default "
                         f"{CLIPS_PER_VOICE} per voice)")
    ap.add_argument("--voices", choices=sorted(VOICE_SETS), default="demo",
                    help="voice set: the demo corpus's, or espeak-ng's variants (benchmarks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="clips rendered (and verified) at once")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--verify-only", action="store_true",
                      help="only measure driven vs MediaPipe-extracted curves of --out")
    mode.add_argument("--no-verify", action="store_true", help="skip the MediaPipe check")
    args = ap.parse_args(argv)
    try:
        if not args.verify_only:
            voices = VOICE_SETS[args.voices]
            n_clips = CLIPS_PER_VOICE * len(voices) if args.clips is None else args.clips
            generate_corpus(args.out, n_clips=n_clips, seed=args.seed, voices=voices,
                            jobs=args.jobs)
        if not args.no_verify:
            from a2bs.synth.verify import face_summary, verify_corpus, voice_table

            res = verify_corpus(args.out, progress=True, jobs=args.jobs)
            meta = json.loads((Path(args.out) / "corpus.json").read_text())
            print(f"{face_summary(res, meta)}\n\n{voice_table(res, meta)}")  # README's tables
            print(f"verified {len(res['per_clip'])} clips: jawOpen r={res['overall']['jawOpen']:.3f}"
                  f" -> {Path(args.out) / 'verification.json'}")
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
        print(f"a2bs synth: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
