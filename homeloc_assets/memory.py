"""Give freed memory back to the operating system between steps of a long run.

A run's steps alternate between Arrow (its mimalloc pool) and numpy (glibc's
malloc); memory one of them freed stays mapped in that allocator and the other
cannot reuse it, so a process that ran the classification, the exports and the
landscape one after the other held the peaks of all of them at once. No Dagster.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

import pyarrow as pa


def release_memory() -> None:
    """Collect garbage, then return the free memory of Arrow's pool and of glibc's heap."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim(0)
        except (OSError, AttributeError):  # another C library (musl): nothing to trim
            pass
