"""Generate the demo corpus: public-domain face photos speaking flite sentences.

Each clip joins 2-4 sentences spoken by one flite voice (with silence at both ends and short
pauses between, so voice-activity detection has something to find), drives one face's mouth from
flite's phone timings, adds blinks and head motion, and writes an H.264 + AAC mp4 with the drive
curves beside it. Generation needs the ``flite`` program; the committed corpus does not.

Usage: ``python -m a2bs.synth.corpus --out a2bs/demo/corpus --clips 48 --seed 0``
(``--verify-only`` re-measures an existing corpus; ``--no-verify`` skips the check).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from a2bs.synth.face import FACES, FaceRig, FrameParams
from a2bs.synth.visemes import (
    Segment,
    blink_curve,
    head_curves,
    mouth_curves,
    parse_psdur,
)

VOICES: tuple[str, ...] = ("slt", "awb", "rms", "kal16")  # kal16: kal at 16 kHz
FPS = 30.0
SAMPLE_RATE = 16000
FRAME_PX = 384
CLIP_RANGE_S = (5.0, 15.0)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "demo" / "corpus"

# Varied English: statements, questions, numbers, lists, rounded and spread vowels, closures.
SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Please bring me the blue book from the top shelf.",
    "Would you like a cup of hot coffee before we go?",
    "My mother moved to Boston in the middle of May.",
    "We will meet at half past nine on Monday morning.",
    "Five fine vans drove very fast over the bridge.",
    "Who knew the moon would look so smooth tonight?",
    "She sells sea shells by the sea shore.",
    "Peter picked a peck of pickled peppers.",
    "The weather is wonderful for a walk in the woods.",
    "I think the answer is simpler than it seems.",
    "Open the window, it is far too warm in here.",
    "Our team finished the project two weeks early.",
    "How much money do we need for the trip?",
    "A large bowl of soup is waiting on the table.",
    "Every evening we read a chapter of an old novel.",
    "The museum opens at ten and closes at five.",
    "Could you repeat that a little more slowly?",
    "The orange cat sleeps all afternoon by the fire.",
    "Bright lights flashed above the busy market square.",
    "We measured the room and ordered a new carpet.",
    "Do you remember the name of that little village?",
    "The pilot announced a short delay before take off.",
    "Mix the flour, the butter and the sugar in a bowl.",
    "Thank you very much for your patience today.",
    "The river flows slowly towards the open sea.",
    "Few people knew the true value of the old map.",
    "Maybe we should move the meeting to Thursday.",
    "The baby laughed when the puppy licked her nose.",
    "Go through the hall and turn left at the stairs.",
    "Three hundred and forty two boxes arrived this morning.",
    "Is it true that you once lived in Amsterdam?",
    "A cool breeze blew over the quiet harbour.",
    "Keep your eyes on the road and both hands on the wheel.",
    "The violin and the piano played in perfect harmony.",
    "Nobody expected the old clock to work again.",
    "Fresh fruit and vegetables are good for you.",
    "Why do birds fly south when winter comes?",
    "We watched the sun go down behind the mountains.",
    "The computer program printed a long list of numbers.",
    "Put the plates back in the cupboard, please.",
    "Early in the morning the streets are empty and calm.",
    "Her voice was soft, but every word was clear.",
    "Oh no, I forgot to feed the fish again.",
    "The library will be closed for the holiday.",
    "Look at the beautiful blue balloon in the sky.",
    "I would rather walk than wait for the bus.",
    "The engineer explained how the bridge was built.",
    "You can always call me if you need any help.",
    "Ice cream melts quickly in the summer heat.",
    "The farmer grows wheat, barley and potatoes.",
    "What time does the last train leave tonight?",
    "We painted the fence white before the party.",
    "Whose umbrella is leaning against the wall?",
    "The moon rose over the silent lake.",
    "Bob bought a bike with a bright purple frame.",
    "Nine out of ten people prefer the shorter route.",
    "The children sang a song about a yellow boat.",
    "Wow, that was the loudest thunder I have ever heard.",
    "Sometimes the simplest ideas are the most powerful.",
    "Please remember to lock the door when you leave.",
    "The old photograph showed a family on the beach.",
)


def flite_path() -> str:
    """The flite executable, or a clear error saying how to install it."""
    exe = shutil.which("flite")
    if exe is None:
        raise RuntimeError("the demo-corpus generator needs the flite speech synthesiser: "
                           "apt-get install flite (the committed corpus does not)")
    return exe


def speak(text: str, voice: str, wav_path: Path) -> list[Segment]:
    """Synthesise `text` with flite into `wav_path`; returns its phone segments."""
    res = subprocess.run([flite_path(), "-voice", voice, "-psdur", "-t", text, "-o",
                          str(wav_path)], capture_output=True, text=True, check=True)
    segs = parse_psdur(res.stdout)
    if not segs:
        raise RuntimeError(f"flite printed no phone segments for voice {voice!r}")
    return segs


def _read_wav(path: Path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:  # flite's 'kal' voice is 8 kHz; the others are 16 kHz
        import librosa

        audio = librosa.resample(audio, orig_sr=sr, target_sr=SAMPLE_RATE)
    return audio


def assemble_speech(sentences: list[str], voice: str, rng: np.random.Generator,
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
                 fps: float = FPS) -> dict[str, np.ndarray]:
    """All per-frame drive values of a clip (FrameParams names)."""
    n = int(np.ceil(duration_s * fps))
    mouth = mouth_curves(segments, n, fps, rng, jaw_scale=float(rng.uniform(0.9, 1.15)),
                         smile_drift=float(rng.choice([0.0, 0.25, 0.5])))
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


def _pick_sentences(rng: np.random.Generator) -> list[str]:
    """2-4 different sentences (the caller checks the spoken length)."""
    k = int(rng.integers(2, 5))
    idx = rng.choice(len(SENTENCES), size=k, replace=False)
    return [SENTENCES[i] for i in idx]


def make_clip(rig: FaceRig, voice: str, rng: np.random.Generator, work: Path,
              out_path: Path, fps: float = FPS) -> dict:
    """Speak, animate and encode one clip; returns its corpus.json record (plus curves)."""
    for _ in range(20):  # redraw sentences until the clip length is in range
        sentences = _pick_sentences(rng)
        audio, segments = assemble_speech(sentences, voice, rng, work)
        duration_s = len(audio) / SAMPLE_RATE
        if CLIP_RANGE_S[0] + 0.3 <= duration_s <= CLIP_RANGE_S[1] - 0.3:
            break
    else:
        raise RuntimeError("could not assemble a clip within the length range")
    curves = drive_curves(segments, duration_s, rng, fps)
    n = len(curves["jaw"])
    names = FrameParams.names()
    frames = (rig.render(FrameParams(**{k: float(curves[k][i]) for k in names}))
              for i in range(n))
    encode_clip(frames, audio, out_path, fps, rig.out_px)
    return {"text": " ".join(sentences), "duration_s": round(duration_s, 3), "fps": fps,
            "n_frames": n, "curves": curves}


def generate_corpus(out_dir: Path = DEFAULT_OUT, n_clips: int = 48, seed: int = 0,
                    voices: tuple[str, ...] = VOICES, faces: tuple[str, ...] = FACES,
                    progress: bool = True) -> list[dict]:
    """Write `n_clips` clips spread evenly over the speakers; returns the records.

    Each voice belongs to one face (voice *i* to face *i* mod the number of faces), as each actor
    in real footage has one voice: an audio model can then tell whose rest shape to predict.

    Layout: ``<out>/<face>_<voice>/<clip_id>.mp4``, ``<out>/driven/<clip_id>.npz`` (float16
    drive curves at the video fps), ``<out>/corpus.json``. Deterministic given `seed`.
    """
    flite_path()
    out_dir = Path(out_dir)
    speakers = sorted((faces[i % len(faces)], v) for i, v in enumerate(voices))
    rigs = {f: FaceRig.from_photo(f, out_px=FRAME_PX) for f in faces}
    records: list[dict] = []
    t_start = time.time()
    (out_dir / "driven").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        for i in range(n_clips):
            face, voice = speakers[i % len(speakers)]
            speaker = f"{face}_{voice}"
            clip_id = f"{speaker}_{i // len(speakers):02d}"
            rng = np.random.default_rng([seed, i])  # each clip reproducible on its own
            t0 = time.time()
            rec = make_clip(rigs[face], voice, rng, Path(td), out_dir / speaker / f"{clip_id}.mp4")
            curves = rec.pop("curves")
            np.savez_compressed(out_dir / "driven" / f"{clip_id}.npz", fps=np.float32(FPS),
                                **{k: curves[v].astype(np.float16) for k, v in DRIVEN_KEYS.items()})
            rec = {"clip_id": clip_id, "file": f"{speaker}/{clip_id}.mp4", "speaker": speaker,
                   "face": face, "voice": voice, **rec,
                   "driven": f"driven/{clip_id}.npz"}
            records.append(rec)
            if progress:
                size_kb = (out_dir / rec["file"]).stat().st_size / 1024
                print(f"[{i + 1}/{n_clips}] {rec['file']} {rec['duration_s']:.1f}s "
                      f"{size_kb:.0f} KB ({time.time() - t0:.1f}s)", flush=True)
    meta = {"fps": FPS, "frame_px": FRAME_PX, "sample_rate": SAMPLE_RATE, "seed": seed,
            "generator": "a2bs.synth.corpus", "clips": records}
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
    ap.add_argument("--clips", type=int, default=48, help="number of clips")
    ap.add_argument("--seed", type=int, default=0)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--verify-only", action="store_true",
                      help="only measure driven vs MediaPipe-extracted curves of --out")
    mode.add_argument("--no-verify", action="store_true", help="skip the MediaPipe check")
    args = ap.parse_args(argv)
    try:
        if not args.verify_only:
            generate_corpus(args.out, n_clips=args.clips, seed=args.seed)
        if not args.no_verify:
            from a2bs.synth.verify import verify_corpus

            res = verify_corpus(args.out, progress=True)
            print(f"verified {len(res['per_clip'])} clips: jawOpen r={res['overall']['jawOpen']:.3f}"
                  f" -> {Path(args.out) / 'verification.json'}")
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
        print(f"a2bs synth: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
