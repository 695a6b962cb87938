"""Connecting to Ray: the one place a job starts or joins a cluster."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import ray


def connect(address: str | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); without one, start a local Ray for this
    job ("local": never the cluster a `ray start` on this machine last recorded, which Ray's own
    default would join, or hang on when it is gone). `auto` joins that one on purpose.

    Ray Data's own progress bars are turned off: jobs show one bar in the units a user counts
    (files, images), not one per internal operator.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        local = {"include_dashboard": False} if address == "local" else {}
        with warnings.catch_warnings():  # Ray's processes are spawned, not forks of this one
            warnings.filterwarnings("ignore", message=".*fork")
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, **local)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_operator_progress_bars = False


@contextmanager
def ray_for_job(address: str | None) -> Iterator[None]:
    """`connect` for the length of a job's Ray work. A local Ray started here is shut down on
    leaving: its idle workers each keep what they read (1-1.5 GiB RSS after reading 10,000
    images, more at 50,000: bench/README.md), which the stages after it, one-node and
    memory-heavy (neighbours, k-means, heads), need more. A cluster joined by address, or a Ray
    already running in this process (a test session's), is left as it is."""
    starts_local = not ray.is_initialized() and \
        (address or os.environ.get("RAY_ADDRESS") or "local") == "local"
    connect(address)
    try:
        yield
    finally:
        if starts_local:
            ray.shutdown()


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# Rows per Lance batch where a read carries stored images (~30 KB PNGs: 7.5 MB). Lance's default
# of 8,192 (240 MB) is held, and copied, by the read task while Ray Data cuts it into blocks.
IMAGE_READ_ROWS = 256


def read_for_actors(uri: str, columns: list[str], readers: int,
                    batch_rows: int | None = None) -> ray.data.Dataset:
    """The rows of the Lance table at `uri` as a Ray Dataset feeding a pool of actors that holds
    every CPU. Reads take no CPU slot (with every CPU held by an actor they would never start),
    so at most `readers` run at once: unbounded, every fragment is read at once into the object
    store and memory grows with the table (40,000 rows of 25 KB in 40 fragments to 2 actors:
    peak 5.75 GiB, against 1.97 GiB with 2 readers, and 2.9x slower). `batch_rows`: rows per
    Lance batch (IMAGE_READ_ROWS for images; None: Lance's default)."""
    return ray.data.read_lance(uri, columns=columns, num_cpus=0, concurrency=readers,
                               scanner_options={"batch_size": batch_rows} if batch_rows else None)
