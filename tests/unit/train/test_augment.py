"""Training augmentation: each transform does what it says, is deterministic for a seed, keeps audio and
face aligned, and reaches the train split only (checked through the trainer's own data path)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from a2bs.config import AudioConfig, AugmentConfig, ConfigError, load_config
from a2bs.runtime.storage import write_parquet_atomic
from a2bs.schema import JAW_INDEX, MEL_DB_RANGE, N_TARGETS, sequence_schema
from a2bs.train.augment import (
    Augmenter,
    augment_batches,
    make_augmenter,
    resample_time,
    speed_positions,
    vtlp_warp_hz,
)
from a2bs.train.data import LocalBatches, arrow_to_arrays, read_shard, shard_info
from a2bs.train.trainer import local_context
from tests.support import listing_manifest

B, T, M = 16, 24, 80
FLOOR, TOP = MEL_DB_RANGE
# Every transform off; a test switches on the one it looks at.
NONE = AugmentConfig(gain_prob=0, noise_prob=0, speed_prob=0, vtlp_prob=0, time_mask_prob=0, freq_mask_prob=0)
ONLY = {
    "gain": replace(NONE, gain_prob=1.0),
    "noise": replace(NONE, noise_prob=1.0),
    "speed": replace(NONE, speed_prob=1.0),
    "vtlp": replace(NONE, vtlp_prob=1.0),
    "time_mask": replace(NONE, time_mask_prob=1.0),
    "freq_mask": replace(NONE, freq_mask_prob=1.0),
}


def _batch(seed: int = 0, n: int = B) -> dict[str, torch.Tensor]:
    """Speech-like windows: a spectral tilt, a level that moves over time, some frames at the dB floor."""
    rng = np.random.default_rng(seed)
    tilt = np.linspace(-20, -60, M)[None, None, :]
    level = rng.uniform(-10, 10, (n, T, 1))
    audio = np.clip(tilt + level + rng.normal(0, 3, (n, T, M)), FLOOR, TOP)
    audio[:, :3] = FLOOR  # leading silence, at the floor
    return {"audio": torch.tensor(audio, dtype=torch.float32),
            "targets": torch.tensor(rng.uniform(0, 1, (n, T, N_TARGETS)), dtype=torch.float32),
            "vad": torch.tensor(rng.uniform(0, 1, (n, T)), dtype=torch.float32),
            "mask": torch.ones(n, T)}


def _run(cfg: AugmentConfig, batch: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    aug = Augmenter(cfg, AudioConfig(), seed=seed)
    return aug(batch, aug.rng(epoch=0, rank=0, index=0))


@pytest.mark.parametrize("name", sorted(ONLY))
def test_each_transform_is_deterministic_for_a_seed(name: str) -> None:
    batch = _batch()
    before = {k: v.clone() for k, v in batch.items()}
    first, again, other = _run(ONLY[name], batch), _run(ONLY[name], batch), _run(ONLY[name], batch, seed=1)
    for k in batch:
        torch.testing.assert_close(first[k], again[k], rtol=0, atol=0)
        torch.testing.assert_close(batch[k], before[k], rtol=0, atol=0)  # the input is left alone
    assert not torch.equal(first["audio"], batch["audio"])  # it did something
    assert not torch.equal(first["audio"], other["audio"])  # and another seed does something else
    assert first["audio"].min() >= FLOOR and first["audio"].max() <= TOP


def test_batches_are_seeded_by_epoch_worker_and_index() -> None:
    aug = Augmenter(ONLY["gain"], AudioConfig(), seed=3)
    batches = [_batch(0), _batch(0)]
    out = {(e, r): [b["audio"] for b in augment_batches(batches, aug, e, r)] for e in (0, 1) for r in (0, 1)}
    again = [b["audio"] for b in augment_batches(batches, aug, 0, 0)]
    assert all(torch.equal(a, b) for a, b in zip(out[0, 0], again))
    assert not torch.equal(out[0, 0][0], out[0, 0][1])  # same rows, next batch index: other draws
    keys = list(out)
    assert all(not torch.equal(out[a][0], out[b][0]) for i, a in enumerate(keys) for b in keys[i + 1:])


def test_off_switches_and_strength() -> None:
    assert make_augmenter(replace(AugmentConfig(), enabled=False), AudioConfig()) is None
    assert make_augmenter(replace(AugmentConfig(), strength=0.0), AudioConfig()) is None
    batch = _batch()
    unchanged = _run(replace(AugmentConfig(), strength=1e-9), batch)
    assert all(torch.equal(unchanged[k], batch[k]) for k in batch)  # every probability scaled to ~0
    assert load_config(None, ["augment.enabled=false", "augment.noise_kinds=[pink]"]).augment.noise_kinds == ("pink",)
    with pytest.raises(ConfigError, match="noise_kinds"):
        Augmenter(replace(AugmentConfig(), noise_kinds=("brown",)), AudioConfig())


def test_gain_shifts_levels_and_keeps_the_floor() -> None:
    cfg = replace(ONLY["gain"], gain_db=6.0)
    batch = _batch()
    out = _run(cfg, batch)["audio"]
    floor = batch["audio"] <= FLOOR
    assert torch.equal(out[floor], batch["audio"][floor])  # silence stays silence
    inner = ~floor & (batch["audio"] > FLOOR + 6) & (batch["audio"] < TOP - 6)
    shift = (out - batch["audio"])
    # One gain per window, within +-6 dB, the same on every unclipped value of it.
    for i in range(B):
        g = shift[i][inner[i]]
        assert g.numel() and float(g.max() - g.min()) < 1e-4 and abs(float(g[0])) <= 6.0 + 1e-4


def test_noise_reaches_its_snr_in_the_power_domain() -> None:
    for kind in ("white", "pink", "babble"):
        cfg = replace(ONLY["noise"], noise_kinds=(kind,), noise_snr_min_db=10.0, noise_snr_max_db=10.0)
        batch = _batch()
        batch["audio"][:, :3] = -40.0  # no clipped frames: powers add exactly
        out = _run(cfg, batch)["audio"]
        signal = torch.pow(10, batch["audio"] / 10)
        noise = torch.pow(10, out / 10) - signal
        assert (noise >= -1e-6 * signal).all()  # noise only adds power
        snr_db = 10 * torch.log10(signal.mean(dim=(1, 2)) / noise.mean(dim=(1, 2)))
        torch.testing.assert_close(snr_db, torch.full((B,), 10.0), atol=0.05, rtol=0)
        if kind == "pink":  # more power per band at low frequencies
            assert noise[..., :10].mean() > 5 * noise[..., -10:].mean()


@pytest.mark.parametrize("factor", [0.9, 0.95, 1.05, 1.1])
@pytest.mark.parametrize("pulse", [3, 8, 15, 20])
def test_speed_keeps_an_audio_pulse_and_its_target_pulse_aligned(factor: float, pulse: int) -> None:
    batch = _batch(n=1)
    batch["audio"][:] = FLOOR
    batch["audio"][0, pulse] = 0.0  # a loud click...
    batch["targets"][:] = 0.0
    batch["targets"][0, pulse, JAW_INDEX] = 1.0  # ...and the jaw opening at the same frame
    out = _speed_with_factor(batch, factor)
    audio_peak = int(out["audio"][0].mean(dim=1).argmax())
    face_peak = int(out["targets"][0, :, JAW_INDEX].argmax())
    assert abs(audio_peak - face_peak) <= 1
    centre = (T - 1) / 2
    expected = centre + (pulse - centre) / factor  # where the pulse lands at this speed
    if 0 <= expected <= T - 1:
        assert abs(audio_peak - expected) <= 1 and abs(face_peak - expected) <= 1
    assert out["audio"].shape == batch["audio"].shape and out["targets"].shape == batch["targets"].shape


def _speed_with_factor(batch: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in batch.items()}
    n = out["audio"].shape[0]
    resample_time(out, torch.arange(n), np.full(n, factor))
    return out


def test_speed_resamples_targets_vad_and_mask_together() -> None:
    batch = _batch(n=4)
    batch["mask"][1, 10] = 0.0  # a frame without a face
    fast = _speed_with_factor(batch, 1.1)
    slow = _speed_with_factor(batch, 0.9)
    # Faster speech shows more of the source than the window holds: the edge frames have no source.
    assert (fast["mask"][:, 0] == 0).all() and (fast["mask"][:, -1] == 0).all()
    assert (slow["mask"][[0, 2, 3]] == 1).all()  # slower: every frame has a source
    pos = speed_positions(np.array([0.9]), T)[0]
    unseen = np.flatnonzero((np.floor(pos) == 10) | (np.ceil(pos) == 10))
    assert (slow["mask"][1, unseen] == 0).all() and slow["mask"][1].sum() == T - len(unseen)
    identity = _speed_with_factor(batch, 1.0)
    assert all(torch.allclose(identity[k], batch[k]) for k in batch)


def test_vtlp_moves_a_formant_along_the_mel_axis() -> None:
    batch = _batch(n=1)
    batch["audio"][:] = -60.0
    batch["audio"][0, :, 30] = 0.0  # one formant band
    aug = Augmenter(ONLY["vtlp"], AudioConfig())
    peaks = {}
    for alpha in (0.9, 1.1):
        warped = vtlp_warp_hz(aug.spectra.centres_hz, np.array([alpha]), 4800.0, aug.spectra.fmax_hz)[0]
        assert warped[0] == pytest.approx(aug.spectra.centres_hz[0] * alpha)  # linear below the knee
        assert warped[-1] < aug.spectra.fmax_hz  # and bends to end at fmax, not past it
        assert np.all(np.diff(warped) > 0)  # a warp, not a fold

        out = {k: v.clone() for k, v in batch.items()}
        aug.warp_mel(out, torch.arange(1), np.array([alpha]))
        peaks[alpha] = int(out["audio"][0, 0].argmax())
    # Band m reads the source at the warped frequency of m: alpha > 1 brings a formant down, < 1 up.
    assert peaks[1.1] < 30 < peaks[0.9]


@pytest.mark.parametrize("name, axis", [("time_mask", 1), ("freq_mask", 2)])
def test_masks_fill_with_the_window_mean(name: str, axis: int) -> None:
    batch = _batch()
    out = _run(ONLY[name], batch)["audio"]
    changed = (out != batch["audio"])
    lines = changed.any(dim=3 - axis)  # (B, T) or (B, M): masked frames / bands
    assert lines.any(dim=1).all()  # every window got a mask
    limit = ONLY[name].time_mask_frames * ONLY[name].time_masks if axis == 1 else \
        ONLY[name].freq_mask_bins * ONLY[name].freq_masks
    assert (lines.sum(dim=1) <= limit).all()
    means = batch["audio"].mean(dim=(1, 2))
    for i in range(B):
        torch.testing.assert_close(out[i][changed[i]], means[i].expand(int(changed[i].sum())))
    assert (out > FLOOR).sum() >= (batch["audio"] > FLOOR).sum()  # never masked down to the floor


# ---------------------------------------------------------------------------------------------
# Through the trainer's own data path: train batches augmented, validation rows exactly as stored.


def write_split(root: Path, split: str, n: int, seed: int) -> str:
    """A shard of `n` synthetic windows (4 per clip) under ROOT/SPLIT; its name relative to ROOT."""
    b = _batch(seed, n)
    name = f"{split}/part-00000.parquet"
    table = pa.Table.from_pydict({
        "clip_id": [f"{split}{i // 4}" for i in range(n)],
        "speaker_id": [f"spk{i % 2}" for i in range(n)],
        "split": [split] * n,
        "identity": [""] * n,
        "start_s": [(i % 4) * 0.12 for i in range(n)],
        "n_frames": [T] * n,
        "audio": [r.ravel() for r in b["audio"].numpy()],
        "targets": [r.ravel() for r in b["targets"].numpy()],
        "vad": list(b["vad"].numpy()),
        "mask": list(b["mask"].numpy()),
    }, schema=sequence_schema(M))
    (root / split).mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(table, root / name)
    return name


def test_trainer_context_augments_train_batches_and_never_val(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    files = {"train": [write_split(shards, "train", 24, 0)], "val": [write_split(shards, "val", 12, 1)]}
    listing_manifest({"train": ["train0"], "val": ["val0"]}, files).write(shards)
    info = shard_info(str(shards))
    every = ["augment.enabled=true"] + [f"augment.{k}=1.0" for k in ("gain_prob", "noise_prob", "speed_prob",
                                                                      "vtlp_prob", "time_mask_prob", "freq_mask_prob")]
    base = ["train.batch_size=8", "train.init_output_bias=false"]
    on = local_context(info, str(tmp_path / "on"), load_config(None, base + every))
    off = local_context(info, str(tmp_path / "off"), load_config(None, base + ["augment.enabled=false"]))
    stored_val = arrow_to_arrays(read_shard(info.val_files[0]), M)
    for ctx in (on, off):
        val = list(ctx.val_arrays())
        for k in ("audio", "targets", "vad", "mask"):
            np.testing.assert_array_equal(np.concatenate([v[k] for v in val]), stored_val[k])
    aug_batches, raw_batches = list(on.train_batches(0)), list(off.train_batches(0))
    assert len(aug_batches) == len(raw_batches) == 3
    for a, r in zip(aug_batches, raw_batches):  # same shuffle; every window changed
        assert (a["audio"] != r["audio"]).flatten(1).any(dim=1).all()
    stored_train = arrow_to_arrays(read_shard(info.train_files[0]), M)["audio"]
    raw_rows = np.concatenate([r["audio"].numpy() for r in raw_batches])
    assert sorted(map(bytes, raw_rows)) == sorted(map(bytes, stored_train))  # off: exactly the stored rows
    again = list(on.train_batches(0))
    assert all(torch.equal(a["audio"], b["audio"]) for a, b in zip(aug_batches, again))  # an epoch is reproducible


def test_local_batches_without_an_augmenter_read_as_stored(tmp_path: Path) -> None:
    name = write_split(tmp_path, "val", 10, 2)
    stored = arrow_to_arrays(read_shard(str(tmp_path / name)), M)
    got = list(LocalBatches([str(tmp_path / name)], M, 4).torch_batches(0))
    np.testing.assert_array_equal(np.concatenate([g["audio"].numpy() for g in got]), stored["audio"])


def test_tune_spaces_search_the_augmentation_strength() -> None:
    from a2bs.tune.search import apply_sample, search_space

    for name in ("small", "full"):
        sample = {k: v.sample() if hasattr(v, "sample") else v for k, v in search_space(name).items()}
        cfg = apply_sample(load_config(), sample)
        assert cfg.augment.strength == sample["augment.strength"] and 0.0 <= cfg.augment.strength <= 1.5
