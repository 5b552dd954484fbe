"""The build graph: clip features -> sequence shards (Ray tasks or this process), manifest written last.

The clips come from the clips manifest (``CLIPS/_manifest.json``), never from a folder listing, and
so does the audio front end. Clips are planned into shards; each shard task windows its clips, each
read one segment part at a time (a2bs.extract.store), and writes one Parquet file a row group at a
time, so a task's memory does not grow with the length of a take. A rerun with the same clips (and
parts present) and settings rewrites nothing (the shards manifest's fingerprint says so).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from a2bs.build.sequences import expected_windows, window_params
from a2bs.build.shards import (
    SPLITS,
    ClipSource,
    build_shard,
    clip_identity,
    mean_log_mel,
    plan_shards,
    select_speakers,
    split_clips,
)
from a2bs.config import Config, config_from_dict, config_to_dict, save_config
from a2bs.errors import InputError, ManifestError
from a2bs.extract.store import CLIPS_SUBDIR, segment_folder, segment_uri
from a2bs.manifests import (
    ChannelStats,
    ClipsManifest,
    MelNorm,
    ShardFile,
    ShardsManifest,
    SplitStats,
)
from a2bs.runtime import storage
from a2bs.runtime.batch import CONFIG_NAME
from a2bs.runtime.cluster import init_ray, rows_as_done
from a2bs.runtime.console import tracked
from a2bs.schema import N_TARGETS, SCHEMA_VERSION, TARGET_NAMES


@dataclass
class BuildSummary:
    """What a build run did."""

    clips: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    shards: int = 0
    up_to_date: bool = False
    wall_s: float = 0.0

    def line(self) -> str:
        state = " (up to date, nothing rewritten)" if self.up_to_date else ""
        counts = ", ".join(f"{k} {v}" for k, v in self.rows.items())
        return f"build: {self.clips} clips -> {self.shards} shards, sequences {counts} in {self.wall_s:.1f} s{state}"


def _clip_index(clips_dir: str, manifest: ClipsManifest) -> list[dict]:
    """The clips the manifest lists (by clip id), each of whose listed segment parts must be on disk."""
    def tail(uri: str) -> str:  # "<clip_id>/seg-NNNNN.parquet", however the folder is spelled
        return "/".join(uri.rsplit("/", 2)[-2:])

    on_disk = {tail(uri) for uri in storage.list_files(storage.join(clips_dir, CLIPS_SUBDIR), suffix=".parquet")}
    missing = [uri for cid, e in sorted(manifest.clips.items()) for uri in
               (segment_uri(clips_dir, cid, k) for k in e.segments) if tail(uri) not in on_disk]
    if missing:
        raise InputError(missing[0], f"listed in the clips manifest but missing ({len(missing)} segment part(s) "
                                     "missing; rerun `a2bs extract`)")
    return [{"clip_id": cid, "speaker_id": e.speaker_id, "duration_s": e.duration_s,
             "mel_frame_rate": e.mel_frame_rate, "n_segments": e.n_segments, "segments": tuple(sorted(e.segments)),
             "uri": segment_folder(clips_dir, cid)}
            for cid, e in sorted(manifest.clips.items())]


def _sources(clips_dir: str, clips: list[dict]) -> dict[str, ClipSource]:
    """Each clip's parts, by the key shard plans list it under."""
    return {c["uri"]: ClipSource(clips_dir, c["clip_id"], c["speaker_id"], c["mel_frame_rate"], c["n_segments"],
                                 c["segments"], c["identity"]) for c in clips}


def run_build(clips_dir: str, shards_dir: str, cfg: Config, use_ray: bool = True,
              progress: bool = True, mel_norm: MelNorm | None = None) -> BuildSummary:
    """Window every clip into sequence shards split by speaker or clip (:func:`split_clips`); manifest last.

    The audio front end is the one the clips were extracted with (``cfg.audio`` is replaced by it).
    With ``mel_norm.enabled`` each clip's log-mel is normalised causally from its first frame
    (a2bs.extract.audio.MelNormaliser) with the training split's mean as the prior; `mel_norm` (a
    model card's, for fine-tuning) is used as given instead. The shards manifest records it.
    `progress` shows the shards done on the console (:mod:`a2bs.runtime.console`).

    Raises:
        ManifestError: no clips manifest (or one of another version).
        InputError: no clips, or a clip the manifest lists is missing.
        ConfigError: split settings that cannot be met (:func:`a2bs.build.shards.split_clips`).
    """
    t0 = time.perf_counter()
    clips_manifest = ClipsManifest.load(clips_dir)
    cfg = replace(cfg, audio=clips_manifest.audio)
    clips = _clip_index(clips_dir, clips_manifest)
    if not clips:
        raise InputError(clips_dir, "no clip features found (run `a2bs extract` first)")
    clips = select_speakers(clips, cfg.sequence.speakers, clips_dir)
    split_clips(clips, cfg.sequence)
    for c in clips:
        c["identity"] = clip_identity(c["speaker_id"], cfg.sequence.identity_from)
    for c in clips:
        c["windows"] = expected_windows(int(c["duration_s"] * c["mel_frame_rate"]) + 1, cfg.sequence,
                                        c["mel_frame_rate"])
    # A given normalisation (a card's) counts as itself; one computed here from the train clips (already in
    # the fingerprint) as its settings, so a rerun with nothing to do does not read the train audio again.
    norm_settings = (asdict(mel_norm) if mel_norm is not None
                     else config_to_dict(cfg.mel_norm) if cfg.mel_norm.enabled else None)
    settings = {"audio": config_to_dict(cfg.audio), "sequence": config_to_dict(cfg.sequence),
                **({"mel_norm": norm_settings} if norm_settings else {})}
    # The parts present count: a segment extracted after a failed one fills a gap and changes the windows.
    fingerprint = hashlib.sha256(json.dumps({"clips": {c["clip_id"]: list(c["segments"]) for c in clips},
                                             "settings": settings,
                                             "schema_version": SCHEMA_VERSION}, sort_keys=True).encode()).hexdigest()
    try:
        old = ShardsManifest.load(shards_dir)
    except ManifestError:  # none yet, or of an older a2bs: build afresh
        old = None
    if old is not None and old.fingerprint == fingerprint:
        names = [f.name for split in old.splits.values() for f in split.shards]
        if all(storage.exists(storage.join(shards_dir, n)) for n in names):
            return BuildSummary(len(clips), old.rows, len(names), True, time.perf_counter() - t0)
    plans = plan_shards(clips, cfg.sequence.rows_per_shard)
    sources = _sources(clips_dir, clips)
    if mel_norm is None and cfg.mel_norm.enabled:  # the prior: the training split's mean (one more read of it)
        floor_db = cfg.mel_norm.speech_floor_db
        prior = mean_log_mel([sources[c["uri"]] for c in clips if c["split"] == "train"], floor_db)
        mel_norm = MelNorm(cfg.mel_norm.prior_frames, tuple(round(float(v), 4) for v in prior), floor_db)
    plan_clips = [[sources[uri] for uri in p.clip_uris] for p in plans]
    if use_ray:
        import ray

        init_ray(cfg.ray)
        cfg_dict = config_to_dict(cfg)
        ds = ray.data.from_items([{"i": i} for i in range(len(plans))], override_num_blocks=max(1, len(plans)))
        done = rows_as_done(ds.map(lambda r: build_shard(plans[r["i"]], shards_dir, config_from_dict(cfg_dict),
                                                            plan_clips[r["i"]], mel_norm)))
    else:
        done = (build_shard(p, shards_dir, cfg, c, mel_norm) for p, c in zip(plans, plan_clips))
    stats = list(tracked(done, "build", len(plans), "shards", enabled=progress))
    stats.sort(key=lambda s: s["name"])
    # Remove shards a previous, larger run left behind, so the folder matches the manifest.
    keep = {s["name"] for s in stats}
    for split in SPLITS:
        for uri in storage.list_files(storage.join(shards_dir, split), suffix=".parquet"):
            rel = f"{split}/{uri.rsplit('/', 1)[-1]}"
            if rel not in keep:
                storage.delete(uri)
    manifest = replace(_manifest(clips, stats, cfg, fingerprint), mel_norm=mel_norm)
    save_config(cfg, storage.join(shards_dir, CONFIG_NAME))
    manifest.write(shards_dir)
    return BuildSummary(len(clips), manifest.rows, len(stats), False, time.perf_counter() - t0)


def _split_stats(clips: list[dict], stats: list[dict]) -> SplitStats:
    """One split's statistics from its clips and the statistics of its shards."""
    n = max(sum(x["valid_frames"] for x in stats), 1.0)
    mean = np.zeros(N_TARGETS) + np.sum([x["target_sum"] for x in stats], axis=0) / n
    var = np.zeros(N_TARGETS) + np.sum([x["target_sq_sum"] for x in stats], axis=0) / n - mean**2
    clipped = np.zeros(N_TARGETS, np.int64) + np.sum([x["target_clipped"] for x in stats], axis=0, dtype=np.int64)
    return SplitStats(
        speakers=tuple(sorted({c["speaker_id"] for c in clips})),
        identities=tuple(sorted({c["identity"] for c in clips} - {""})),
        clips=tuple(sorted(c["clip_id"] for c in clips)),
        hours=sum(c["duration_s"] for c in clips) / 3600.0,
        rows=sum(x["rows"] for x in stats),
        shards=tuple(ShardFile(x["name"], x["rows"], x["clips"]) for x in stats),
        valid_frames=float(sum(x["valid_frames"] for x in stats)),
        channels={name: ChannelStats(float(mean[i]), float(np.sqrt(max(var[i], 0.0))), int(clipped[i]))
                  for i, name in enumerate(TARGET_NAMES)},
        mel_clipped=int(sum(x["mel_clipped"] for x in stats)),
    )


def _manifest(clips: list[dict], stats: list[dict], cfg: Config, fingerprint: str) -> ShardsManifest:
    frame_rate_hz = cfg.audio.sample_rate / cfg.audio.hop_length
    window_frames, step_frames = window_params(cfg.sequence, frame_rate_hz)
    # train and val always; a held-out split only when it has clips (a folder without one has no test).
    splits = {s: _split_stats([c for c in clips if c["split"] == s], [x for x in stats if x["split"] == s])
              for s in SPLITS if s in ("train", "val") or any(c["split"] == s for c in clips)}
    return ShardsManifest(fingerprint, frame_rate_hz, window_frames, step_frames, cfg.audio, cfg.sequence, splits)
