"""Peak memory of a benchmark, sampled on a thread (numpy, faiss and Ray workers allocate outside
Python, so tracemalloc would not see them)."""

from __future__ import annotations

import os
import threading
import time
from typing import Self

import psutil


class PeakRss:
    """Keeps the peak summed RSS of this process and, with `include_ray`, every Ray process.

    `own_only` (with `include_ray`): only the processes descended from this one, i.e. the local
    Ray this process started (GCS, raylet, workers), not another user's Ray on a shared machine;
    then the peak summed PSS is kept too (`peak_pss_bytes`, see `own_memory`).
    """

    def __init__(self, include_ray: bool = False, every_s: float = 0.2, own_only: bool = False):
        self.peak_bytes = 0
        self.peak_pss_bytes = 0
        self._include_ray = include_ray
        self._own_only = own_only
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        if not self._include_ray:
            return psutil.Process().memory_info().rss
        if self._own_only:
            rss, pss = own_memory()
            self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
            return rss
        total = 0
        for process in psutil.process_iter(["pid", "cmdline", "memory_info"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if (process.info["pid"] == os.getpid() or "ray" in cmdline) and process.info["memory_info"]:
                total += process.info["memory_info"].rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss())
            time.sleep(self._every)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def own_memory() -> tuple[int, int]:
    """(summed RSS, summed PSS) in bytes of this process and its descendants, now (one that
    ends while read counts 0).

    RSS counts a shared page once in every process that maps it: Ray's object store lives in
    shared memory, so a block the raylet holds, a worker wrote and the driver read counts three
    times in summed RSS. PSS (proportional set size, Linux smaps) splits each shared page
    between the processes that map it, so the sum counts it once: the memory the node needs."""
    rss = pss = 0
    me = psutil.Process()
    for process in (me, *me.children(recursive=True)):
        try:
            memory = process.memory_full_info()
        except psutil.Error:
            continue
        rss, pss = rss + memory.rss, pss + memory.pss
    return rss, pss
