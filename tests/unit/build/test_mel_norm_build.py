"""Build with ``mel_norm.enabled``: each clip's log-mel is normalised causally over the whole clip (not
per window), from the training split's mean, and the shards manifest records what the card will carry."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from a2bs.build.pipeline import run_build
from a2bs.build.sequences import SyncedClip, make_windows, synchronise, validate
from a2bs.config import Config, load_config
from a2bs.extract.audio import MelNormaliser
from a2bs.extract.store import SegmentPart, plan_segments, split_part, write_segment
from a2bs.manifests import ClipEntry, ClipsManifest, MelNorm, ModelCard, ShardsManifest
from a2bs.runtime import storage
from a2bs.schema import MEL_DB_RANGE, N_TARGETS
from a2bs.train.data import arrow_to_arrays
from a2bs.train.finetune import finetune_shards

RATE_HZ = 100.0
N_MELS = 8


def _clip(duration_s: float, seed: int, tilt_db: float) -> SegmentPart:
    """A clip with a face throughout and a voice-like fixed spectral tilt of `tilt_db` across the bands."""
    rng = np.random.default_rng(seed)
    n_audio = int(duration_s * RATE_HZ) + 1
    index = np.arange(round(duration_s * 30))
    mel = rng.uniform(-70, 0, (n_audio, N_MELS)) + np.linspace(-tilt_db, tilt_db, N_MELS)
    return SegmentPart("clip", -1, 0.0, math.inf, frame_index=index.astype(np.int32), frame_time_s=index / 30.0,
                       targets=rng.uniform(0, 1, (len(index), N_TARGETS)).astype(np.float32),
                       has_face=np.ones(len(index), bool), audio_time_s=np.arange(n_audio) / RATE_HZ,
                       mel_db=mel.astype(np.float32), rms=rng.random(n_audio, dtype=np.float32),
                       zcr=rng.random(n_audio, dtype=np.float32), vad=rng.random(n_audio, dtype=np.float32))


def _store(clips_dir: str, clips: dict[str, tuple[str, SegmentPart]], segment_s: float) -> None:
    entries = {}
    cfg = Config()
    for clip_id, (speaker, whole) in clips.items():
        duration_s = float(whole.audio_time_s[-1])
        plan = plan_segments(duration_s, segment_s)
        parts = split_part(replace(whole, clip_id=clip_id), plan)
        for part in parts:
            write_segment(clips_dir, part)
        entries[clip_id] = ClipEntry(f"{clip_id}.mp4", speaker, duration_s, 30.0, 30.0, RATE_HZ,
                                     len(whole.frame_index), len(whole.frame_index), 1, segment_s, len(plan),
                                     tuple(p.segment for p in parts))
    ClipsManifest(replace(cfg.audio, n_mels=N_MELS), entries).write(clips_dir)


def test_shards_hold_the_clips_causally_normalised_log_mel(tmp_path) -> None:
    clips = {f"c{i}": (f"spk{i % 3}", _clip(3.0 + 0.37 * i, seed=i, tilt_db=4.0 * (i % 3))) for i in range(6)}
    cfg = load_config(None, ["mel_norm.enabled=true", "mel_norm.prior_frames=50", "sequence.split_by=speaker",
                             "sequence.val_fraction=0.34", "sequence.test_fraction=0"])
    for name, segment_s in (("whole", 0.0), ("segmented", 1.13)):
        _store(str(tmp_path / f"clips_{name}"), clips, segment_s)
        run_build(str(tmp_path / f"clips_{name}"), str(tmp_path / f"shards_{name}"), cfg, use_ray=False,
                  progress=False)
    manifest = ShardsManifest.load(str(tmp_path / "shards_whole"))
    train = manifest.splits["train"].clips
    prior = np.clip(np.concatenate([clips[c][1].mel_db for c in train]), *MEL_DB_RANGE).astype(np.float64).mean(axis=0)
    assert manifest.mel_norm is not None and manifest.mel_norm.prior_frames == 50.0
    np.testing.assert_allclose(manifest.mel_norm.prior_db, prior, atol=1e-4)  # the training split's mean
    segmented = ShardsManifest.load(str(tmp_path / "shards_segmented"))
    assert segmented.mel_norm == manifest.mel_norm
    for split in manifest.splits.values():
        for f in split.shards:
            table = pq.read_table(storage.join(str(tmp_path / "shards_whole"), f.name))
            # A clip cut into segment parts gives the same rows: the running mean carries across parts.
            assert pq.read_table(storage.join(str(tmp_path / "shards_segmented"), f.name)).equals(table)
            for clip_id in set(table.column("clip_id").to_pylist()):
                whole = clips[clip_id][1]
                targets, mask = synchronise(whole.audio_time_s, whole.frame_time_s, whole.targets, whole.has_face)
                mel, targets, _ = validate(MelNormaliser(manifest.mel_norm)(whole.mel_db), targets)
                expected = make_windows(SyncedClip(whole.audio_time_s, mel, targets, whole.vad, mask),
                                        cfg.sequence, RATE_HZ)
                rows = arrow_to_arrays(table.filter(pc.equal(table.column("clip_id"), clip_id)), N_MELS)
                np.testing.assert_allclose(rows["audio"], expected["audio"], atol=1e-5, rtol=0)
                raw = make_windows(SyncedClip(whole.audio_time_s, validate(whole.mel_db, targets)[0], targets,
                                              whole.vad, mask), cfg.sequence, RATE_HZ)
                assert np.abs(rows["audio"] - raw["audio"]).max() > 1.0  # the tilt was taken out


def test_off_by_default_and_turning_it_on_rebuilds(tmp_path) -> None:
    clips = {f"c{i}": (f"spk{i % 3}", _clip(2.5, seed=i, tilt_db=3.0)) for i in range(3)}
    _store(str(tmp_path / "clips"), clips, 0.0)
    cfg = load_config(None, ["sequence.val_fraction=0.34", "sequence.test_fraction=0"])
    assert not cfg.mel_norm.enabled
    run_build(str(tmp_path / "clips"), str(tmp_path / "off"), cfg, use_ray=False, progress=False)
    on = replace(cfg, mel_norm=replace(cfg.mel_norm, enabled=True))
    run_build(str(tmp_path / "clips"), str(tmp_path / "on"), on, use_ray=False, progress=False)
    off_m, on_m = ShardsManifest.load(str(tmp_path / "off")), ShardsManifest.load(str(tmp_path / "on"))
    assert off_m.mel_norm is None and on_m.mel_norm is not None
    assert off_m.fingerprint != on_m.fingerprint  # a rebuild with the setting changed rewrites the shards
    again = run_build(str(tmp_path / "clips"), str(tmp_path / "on"), on, use_ray=False, progress=False)
    assert again.up_to_date and ShardsManifest.load(str(tmp_path / "on")) == on_m  # nothing to do: nothing redone


def test_the_run_card_carries_it_and_finetuning_builds_with_the_cards(tmp_path) -> None:
    clips = {f"c{i}": (f"spk{i % 3}", _clip(2.5, seed=i, tilt_db=3.0)) for i in range(3)}
    _store(str(tmp_path / "clips"), clips, 0.0)
    cfg = load_config(None, ["mel_norm.enabled=true", "sequence.val_fraction=0.34", "sequence.test_fraction=0"])
    run_build(str(tmp_path / "clips"), str(tmp_path / "shards"), cfg, use_ray=False, progress=False)
    manifest = ShardsManifest.load(str(tmp_path / "shards"))
    assert manifest.mel_norm.prior_frames == cfg.mel_norm.prior_frames == 400.0  # the default prior weight
    assert ModelCard.for_run(cfg, manifest).mel_norm == manifest.mel_norm
    # Fine-tuning new footage: the base card's prior, not one computed from the new clips (and even with
    # mel_norm off in the user's config).
    card_norm = MelNorm(250.0, tuple(float(v) for v in np.linspace(-60.0, -20.0, N_MELS)))
    shards = finetune_shards(str(tmp_path / "clips"), str(tmp_path / "ft"), Config(), mel_norm=card_norm)
    assert ShardsManifest.load(shards).mel_norm == card_norm
    plain = finetune_shards(str(tmp_path / "clips"), str(tmp_path / "ft_plain"), Config())
    assert ShardsManifest.load(plain).mel_norm is None


def test_a_speech_floor_keeps_pauses_out_of_the_prior_and_is_in_the_fingerprint(tmp_path) -> None:
    clips = {}
    for i in range(3):
        clip = _clip(2.5, seed=i, tilt_db=3.0)
        clip.mel_db[:60] = -78.0  # a 0.6 s opening pause, as the demo clips have
        clips[f"c{i}"] = (f"spk{i}", clip)
    _store(str(tmp_path / "clips"), clips, 0.0)
    base = ["mel_norm.enabled=true", "sequence.val_fraction=0.34", "sequence.test_fraction=0"]
    all_frames, speech = load_config(None, base), load_config(None, [*base, "mel_norm.speech_floor_db=-55"])
    run_build(str(tmp_path / "clips"), str(tmp_path / "all"), all_frames, use_ray=False, progress=False)
    run_build(str(tmp_path / "clips"), str(tmp_path / "speech"), speech, use_ray=False, progress=False)
    all_m, speech_m = ShardsManifest.load(str(tmp_path / "all")), ShardsManifest.load(str(tmp_path / "speech"))
    assert all_m.mel_norm.speech_floor_db == MEL_DB_RANGE[0] and speech_m.mel_norm.speech_floor_db == -55.0
    train = [clips[c][1].mel_db.astype(np.float64) for c in speech_m.splits["train"].clips]
    np.testing.assert_allclose(speech_m.mel_norm.prior_db, np.concatenate([m[60:] for m in train]).mean(axis=0),
                               atol=1e-4)  # the train split's mean over its speech frames only
    np.testing.assert_allclose(all_m.mel_norm.prior_db, np.concatenate(train).mean(axis=0), atol=1e-4)
    assert speech_m.fingerprint != all_m.fingerprint  # changing the floor rebuilds the shards
    assert ModelCard.for_run(speech, speech_m).mel_norm == speech_m.mel_norm  # the card carries the floor
