"""Hand memory a stage has freed back to the operating system.

The allocators keep what Python, Arrow and Lance free for reuse: after reading a table of
vectors, a one-process `fusc run` held ~280 MiB more than it used (50,000 × 1280 embeddings), and
the next stage started from there. glibc's `malloc_trim` (Linux; elsewhere a no-op) returns the
free pages of its heaps, and Arrow's pool `release_unused` those of its mimalloc/jemalloc pool.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import pyarrow as pa


def release_freed_memory() -> None:
    """Collect garbage, then return allocator-held free memory to the OS (best effort: where
    the C library has no `malloc_trim`, only Arrow's pool is trimmed)."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)
