"""Which splits `a2bs evaluate` finds in a shards folder, including one of an a2bs before test splits."""

from __future__ import annotations

import pytest
from support import listing_manifest

from a2bs.evaluate.report import split_files, split_label


def test_a_two_split_folder_still_loads_and_asking_for_test_says_why(tmp_path) -> None:
    """A folder built before test splits (train and val only) loads; its test split is a clear error."""
    listing_manifest({"train": ["a"], "val": ["b"]},
                     {"train": ["train/part-00000.parquet"], "val": ["val/part-00000.parquet"]}).write(tmp_path)
    assert split_files(str(tmp_path), "val") == [str(tmp_path / "val" / "part-00000.parquet")]
    with pytest.raises(ValueError, match=r"no 'test' split \(it has: train, val\) \(built with "
                                         r"sequence.test_fraction=0, .*rerun `a2bs build`\)"):
        split_files(str(tmp_path), "test")
    with pytest.raises(ValueError, match=r"no 'known' split \(it has: train, val\)$"):
        split_files(str(tmp_path), "known")


def test_split_labels_say_what_a_number_stands_for() -> None:
    assert split_label("test", "speaker") == "unseen voices, never chosen on"
    assert split_label("val", "speaker") == "unseen voices, chose the epoch"
    assert split_label("test", "clip") == "unseen clips, never chosen on"
    assert split_label("known", "speaker") == "known voices, unseen clips, never chosen on"
