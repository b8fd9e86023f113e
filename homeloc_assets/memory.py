"""Give freed memory back to the operating system between steps of a long run.

A run's steps alternate between Arrow (its mimalloc pool) and numpy (glibc's
malloc); memory one of them freed stays mapped in that allocator and the other
cannot reuse it, so a process that ran the classification, the exports and the
landscape one after the other held the peaks of all of them at once. No Dagster.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import pyarrow as pa


def release_memory() -> None:
    """Return the free memory of Arrow's pool and of glibc's heap (well under a millisecond
    on a small heap). No ``gc.collect()``: with Dagster loaded it takes about 100 ms, and
    the tables are freed by reference counting, not by the cycle collector."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library, another system)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others: nothing to trim
        return None
