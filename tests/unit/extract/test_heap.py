"""An extraction actor fixes glibc's mmap threshold, so its large blocks never settle in the heap.

Each case runs in a fresh interpreter (the threshold is process state). After an 8 MiB block is
freed, glibc's dynamic threshold would serve a 1 MiB block from the heap, where such blocks
fragment it segment after segment (a2bs.extract.heap); with the threshold fixed, the block gets its
own mapping (counted in mallinfo2's ``hblkhd``) and goes back to the system when freed.
"""

import ctypes
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "actor":
    from a2bs.config import Config, config_to_dict
    from a2bs.extract.pipeline import SegmentExtractor

    SegmentExtractor(config_to_dict(Config()), sys.argv[2]).close()
big = np.ones(8 << 20, np.uint8)
del big  # freeing a mapped 8 MiB block raises a dynamic threshold to 8 MiB
before = libc.mallinfo2().hblkhd
block = np.ones(1 << 20, np.uint8)
print(libc.mallinfo2().hblkhd - before)
"""

GLIBC = platform.system() == "Linux" and hasattr(ctypes.CDLL(None), "mallinfo2")


def _mapped_bytes_of_a_1mib_block(case: str, tmp_path) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, case, str(tmp_path)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (mallinfo2)")
def test_segment_extractor_maps_large_blocks_after_a_larger_one_was_freed(tmp_path) -> None:
    assert _mapped_bytes_of_a_1mib_block("actor", tmp_path) >= 1 << 20


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (mallinfo2)")
def test_without_the_fix_glibc_serves_the_block_from_the_heap(tmp_path) -> None:
    """The behaviour a2bs.extract.heap works around (and what the test above would see without it)."""
    assert _mapped_bytes_of_a_1mib_block("plain", tmp_path) == 0
