"""Memory freed by a stage goes back to the operating system."""

from __future__ import annotations

import psutil

from fusc_lib.memory import release_freed_memory


def test_freed_heap_memory_is_returned_to_the_system():
    blocks = [bytearray(64 * 1024) for _ in range(3_000)]  # 188 MiB of malloc'd heap blocks
    kept = blocks[-1]  # the heap's top stays in use: only a trim can return the pages below
    del blocks
    process = psutil.Process()
    before = process.memory_info().rss
    release_freed_memory()
    assert before - process.memory_info().rss > 100 * 2**20
    assert len(kept) == 64 * 1024
