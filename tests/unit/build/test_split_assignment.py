"""The split protocol: train / val / test by speaker (or clip), known clips of training voices."""

from __future__ import annotations

import dataclasses

import pytest

from a2bs.build.shards import SPLITS, assign_splits, known_clips, select_speakers, split_clips
from a2bs.config import ConfigError, SequenceConfig


def corpus(n_speakers: int, clips_each: int) -> list[dict]:
    return [{"clip_id": f"s{s:02d}_c{c:02d}", "speaker_id": f"s{s:02d}"}
            for s in range(n_speakers) for c in range(clips_each)]


def by_split(clips: list[dict], key: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {s: set() for s in SPLITS}
    for c in clips:
        out[c["split"]].add(c[key])
    return out


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_three_splits_are_deterministic_disjoint_and_sized(seed: int) -> None:
    keys = [f"spk{i}" for i in range(12)]
    a = assign_splits(keys, 0.15, seed, test_fraction=0.25)
    assert a == assign_splits(list(reversed(keys)) + keys[:3], 0.15, seed, test_fraction=0.25)  # order, repeats
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 7, "val": 2, "test": 3} and set(a) == set(keys)


def test_val_is_the_same_with_or_without_a_test_split() -> None:
    """Asking for a test split only moves training keys: val (what chooses) does not change."""
    keys = [f"spk{i}" for i in range(10)]
    for seed in range(5):
        without = assign_splits(keys, 0.2, seed)
        with_test = assign_splits(keys, 0.2, seed, test_fraction=0.3)
        assert {k for k, v in without.items() if v == "val"} == {k for k, v in with_test.items() if v == "val"}
        assert {k for k, v in with_test.items() if v == "test"} < {k for k, v in without.items() if v == "train"}


@pytest.mark.parametrize("n, expected", [(1, (1, 0, 0)), (2, (1, 1, 0)), (3, (1, 1, 1)), (4, (2, 1, 1))])
def test_small_key_sets_keep_a_training_key(n: int, expected: tuple[int, int, int]) -> None:
    a = assign_splits([f"k{i}" for i in range(n)], 0.2, 0, test_fraction=0.2)
    assert tuple(sum(v == s for v in a.values()) for s in ("train", "val", "test")) == expected


def test_no_speaker_in_two_splits_and_known_clips_of_every_training_voice() -> None:
    clips = corpus(12, 6)
    seq = SequenceConfig(val_fraction=0.15, test_fraction=0.25, known_clip_fraction=0.2)
    split_clips(clips, seq)
    speakers = by_split(clips, "speaker_id")
    held = [speakers["val"], speakers["test"], speakers["train"]]
    assert all(a.isdisjoint(b) for i, a in enumerate(held) for b in held[i + 1:])
    assert (len(speakers["val"]), len(speakers["test"]), len(speakers["train"])) == (2, 3, 7)
    # Known clips: the training voices' own clips, one of 6 per voice (round(0.2 * 6)), never all of them.
    assert speakers["known"] == speakers["train"]
    known = [c for c in clips if c["split"] == "known"]
    assert len(known) == 7 and len({c["speaker_id"] for c in known}) == 7
    again = corpus(12, 6)[::-1]
    split_clips(again, seq)
    assert {c["clip_id"]: c["split"] for c in again} == {c["clip_id"]: c["split"] for c in clips}


def test_known_clips_never_take_a_voice_s_last_clip() -> None:
    clips = [{"clip_id": f"{spk}_{i}", "speaker_id": spk} for spk, n in (("one", 1), ("two", 2), ("five", 5))
             for i in range(n)]
    held = known_clips(clips, 0.9, 0)
    left = {spk: sum(c["speaker_id"] == spk and c["clip_id"] not in held for c in clips) for spk in ("one", "two", "five")}
    assert left == {"one": 1, "two": 1, "five": 1}
    assert not known_clips(clips, 0.0, 0)


def test_split_by_clip_splits_clips_and_may_share_speakers() -> None:
    clips = corpus(2, 10)
    split_clips(clips, SequenceConfig(split_by="clip", val_fraction=0.2, test_fraction=0.2))
    ids = by_split(clips, "clip_id")
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"]), len(ids["known"])) == (12, 4, 4, 0)


@pytest.mark.parametrize("change, message", [
    ({"split_by": "window"}, "sequence.split_by must be 'speaker' or 'clip'"),
    ({"test_fraction": 1.0}, "sequence.test_fraction must be in [0, 1)"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "leaves nothing to train on"),
    ({"split_by": "clip", "known_clip_fraction": 0.2}, "known_clip_fraction needs sequence.split_by=speaker"),
])
def test_impossible_split_settings_are_config_errors(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        split_clips(corpus(4, 2), dataclasses.replace(SequenceConfig(), **change))


def test_named_test_speakers_replace_the_test_share() -> None:
    clips = corpus(5, 3)
    split_clips(clips, SequenceConfig(test_speakers=("s03",), val_fraction=0.25, known_clip_fraction=0.3))
    speakers = by_split(clips, "speaker_id")
    assert speakers["test"] == {"s03"} and len(speakers["val"]) == 1 and len(speakers["train"]) == 3
    assert "s03" not in speakers["val"] | speakers["train"] | speakers["known"]
    with pytest.raises(ConfigError, match="sequence.test_speakers: no clips of speaker 'nobody'"):
        split_clips(corpus(5, 3), SequenceConfig(test_speakers=("nobody",)))
    with pytest.raises(ConfigError, match="none is left to train on"):
        split_clips(corpus(2, 3), SequenceConfig(test_speakers=("s00", "s01")))


def test_named_val_speakers_replace_the_val_share_and_keep_test_and_known() -> None:
    base = SequenceConfig(test_speakers=("s03",), val_fraction=0.25, known_clip_fraction=0.3)
    clips = corpus(6, 3)
    split_clips(clips, dataclasses.replace(base, val_speakers=("s05", "s01")))
    speakers = by_split(clips, "speaker_id")
    assert speakers["val"] == {"s01", "s05"} and speakers["test"] == {"s03"}
    assert speakers["train"] == {"s00", "s02", "s04"}
    # adding training voices changes neither val, test nor the known clips of the first voices
    more = corpus(9, 3)
    split_clips(more, dataclasses.replace(base, val_speakers=("s05", "s01")))
    assert by_split(more, "speaker_id")["val"] == {"s01", "s05"}
    assert by_split(more, "clip_id")["known"] >= by_split(clips, "clip_id")["known"]
    # without val_speakers a test share is drawn from the speakers left
    free = corpus(6, 3)
    split_clips(free, SequenceConfig(val_speakers=("s00",), val_fraction=0.5, test_fraction=0.2))
    counts = by_split(free, "speaker_id")
    assert counts["val"] == {"s00"} and len(counts["test"]) == 1 and "s00" not in counts["test"]
    with pytest.raises(ConfigError, match="sequence.val_speakers: no clips of speaker 'nobody'"):
        split_clips(corpus(5, 3), SequenceConfig(val_speakers=("nobody",)))
    with pytest.raises(ConfigError, match="both name 's01'"):
        split_clips(corpus(5, 3), SequenceConfig(val_speakers=("s01",), test_speakers=("s01",)))
    with pytest.raises(ConfigError, match="val_speakers needs sequence.split_by=speaker"):
        split_clips(corpus(5, 3), SequenceConfig(val_speakers=("s01",), split_by="clip"))
    with pytest.raises(ConfigError, match="none is left to train on"):
        split_clips(corpus(2, 3), SequenceConfig(val_speakers=("s00",), test_speakers=("s01",)))


def test_speaker_selection_keeps_only_the_named_speakers() -> None:
    clips = corpus(4, 2)
    assert select_speakers(clips, (), "clips/") is clips
    kept = select_speakers(clips, ("s02", "s00"), "clips/")
    assert [c["clip_id"] for c in kept] == ["s00_c00", "s00_c01", "s02_c00", "s02_c01"]
    with pytest.raises(ConfigError, match=r"sequence.speakers: no clips of speaker 'nobody' in clips/ \(speakers: s00"):
        select_speakers(clips, ("s01", "nobody"), "clips/")
