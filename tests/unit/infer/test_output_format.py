"""Output formats of `a2bs infer`: npz writes an .npz archive; npy is its old name, still accepted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from a2bs.infer.curves import FORMAT_SUFFIXES, Curves, load_npz, output_format
from a2bs.schema import N_TARGETS


def test_names_and_alias() -> None:
    assert [output_format(f) for f in FORMAT_SUFFIXES] == list(FORMAT_SUFFIXES)
    assert output_format("npy") == "npz" and FORMAT_SUFFIXES["npz"] == ".npz"
    with pytest.raises(ValueError, match="unknown output format 'npx'"):
        output_format("npx")


@pytest.mark.parametrize("fmt", ["npz", "npy"])
def test_npz_and_its_alias_write_the_same_archive(fmt: str, tmp_path: Path) -> None:
    values = np.random.default_rng(0).random((5, N_TARGETS)).astype(np.float32)
    path = Curves(values, 30.0, 5 / 30).save(tmp_path / "take.npz", fmt)
    back = load_npz(path)
    np.testing.assert_array_equal(back.values, values)
    assert back.fps == 30.0
