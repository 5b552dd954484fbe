"""Keep a long-lived extraction actor's heap from growing with the segments it has run (glibc).

Measured in a Ray Data actor (``benchmarks/measure_actor_rss.py``, docs/scaling.md "Memory per
actor"): the bytes malloc holds in use stay flat from segment to segment, while its arenas' free
bytes grow by ~15-20 MB per segment, and RSS with them. Two glibc behaviours cause it. Its mmap
threshold is dynamic: once a large block (a decoded frame, a segment's audio or STFT frames) is
freed, blocks up to that size are taken from the heap instead of fresh mappings, where they
fragment it. And free pages inside a heap are returned to the system only when they sit at its
top. So the actor fixes the threshold at glibc's own default (large blocks are mapped and unmapped
whole) and trims the heaps after every segment. Neither changes a computed value; both are no-ops
where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# glibc's default M_MMAP_THRESHOLD: blocks from this size on get their own mapping. Setting it
# explicitly turns off the dynamic raise described above.
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def _glibc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None)  # the C library this process already uses
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD_BYTES`` for this process; False where it cannot."""
    libc = _glibc()
    if libc is None:
        return False
    if not libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.warning("mallopt(M_MMAP_THRESHOLD) failed: an extraction actor's memory may grow with its segments")
        return False
    return True


def release_free_memory() -> None:
    """Return the free pages of every malloc heap to the system (glibc ``malloc_trim(0)``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
