"""`fusc ingest`: an archive of scans becomes the LanceDB `scans` and `quarantine` tables.

Ray Data streams the files through an actor pool (read -> decode -> OCR -> inpaint -> crop); the
driver appends what comes out with LanceDB's writer every `commit_rows` rows. Memory stays flat
whatever the archive size, a kill loses at most one uncommitted batch, and a rerun skips every
file already in `scans` or `quarantine`, so running twice adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from time import monotonic

import pyarrow as pa
import pyarrow.compute as pc
import ray

from fusc_lib.config import IngestConfig, PreprocessConfig
from fusc_lib.ingest import ScanIngestor, split_output
from fusc_lib.layout import ID_SALT, INGEST_CONFIG
from fusc_lib.privacy import resolve_salt
from fusc_lib.progress import progress_bar
from fusc_lib.sources import Source, gather_sources
from fusc_lib.store import Workdir, utc_now
from fusc_lib.table_appender import TableAppender
from jobs.ray_runtime import cluster_cpus, ray_for_job
from schemas.tables import DUPLICATES, QUARANTINE, SCANS


@dataclass
class IngestSummary:
    files_found: int = 0
    files_already_done: int = 0
    rows_ingested: int = 0
    duplicates: int = 0  # rows of files whose bytes equal a scan's: recorded, not decoded again
    quarantined: int = 0
    frames_skipped: int = 0  # of multi-frame files, by the `frames` limit
    seconds: float = 0.0
    startup_seconds: float = 0.0  # until the first rows came back: listing, Ray, worker start


class _IngestActor:
    """Ray Data actor: builds the OCR engine once, then ingests batches of sources."""

    def __init__(self, preprocess: dict, salt: str, keep_ocr_text: bool, frame_limit: int | None):
        self.ingestor = ScanIngestor(PreprocessConfig(**preprocess), salt, keep_ocr_text,
                                     frame_limit)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.ingestor([Source(**row) for row in batch.to_pylist()])


class _IngestSink:
    """Records repeated content as duplicates, then commits scans before the other rows.

    That order matters: a file with one bad frame has rows in both `scans` and `quarantine`, and
    a rerun skips any file found in any of the three tables; committing scans first means a kill
    never hides a file's good frames, nor a duplicate's twin.
    """

    def __init__(self, workdir: Workdir, commit_rows: int, summary: IngestSummary):
        self.summary = summary
        self.known_ids = set(workdir.column(SCANS, "image_id").to_pylist())
        self.tables = {name: TableAppender(partial(workdir.append, name), commit_rows)
                       for name in (SCANS, DUPLICATES, QUARANTINE)}

    def add(self, batch: pa.Table) -> None:
        self.summary.frames_skipped += pc.sum(batch.column("frames_skipped")).as_py() or 0
        scans, quarantine = split_output(batch)
        keep = pa.array([self._is_new(i) for i in scans.column("image_id").to_pylist()],
                        pa.bool_())
        copies = scans.filter(pc.invert(keep)).select(["source_uri", "frame", "image_id"])
        self.tables[SCANS].add(scans.filter(keep))
        self.tables[DUPLICATES].add(copies.append_column(
            "recorded_at", pa.array([utc_now()] * copies.num_rows, pa.timestamp("ms", tz="UTC"))))
        self.tables[QUARANTINE].add(quarantine)
        if any(table.full for table in self.tables.values()):
            self.flush()

    def _is_new(self, image_id: str) -> bool:
        if image_id in self.known_ids:
            return False
        self.known_ids.add(image_id)
        return True

    def flush(self) -> None:
        for table in self.tables.values():  # in commit order: scans first
            table.flush()
        self.summary.rows_ingested = self.tables[SCANS].committed
        self.summary.duplicates = self.tables[DUPLICATES].committed
        self.summary.quarantined = self.tables[QUARANTINE].committed


def pending_sources(workdir: Workdir, config: IngestConfig,
                    sources: list[Source]) -> tuple[list[Source], int]:
    """Of `sources`, those not yet in `scans`, `duplicates` or `quarantine`, and how many were.

    With `retry_quarantined`, quarantined sources of this input are pending again and their old
    quarantine rows are dropped (a failure again writes a fresh row).
    """
    done = {uri for name in (SCANS, DUPLICATES)
            for uri in workdir.column(name, "source_uri").to_pylist()}
    quarantined = set(workdir.column(QUARANTINE, "source_uri").to_pylist())
    if config.retry_quarantined:
        retried = [s.uri for s in sources if s.uri in quarantined and s.uri not in done]
        workdir.delete_where(QUARANTINE, "source_uri", retried)
    else:
        done |= quarantined
    pending = [s for s in sources if s.uri not in done]
    return pending, len(sources) - len(pending)


def workdir_salt(workdir: Workdir) -> str:
    stored = (workdir.read_json(ID_SALT) or {}).get("salt")
    salt = resolve_salt(stored)
    if stored is None:
        workdir.write_json({"salt": salt}, ID_SALT)
    return salt


def run_ingest(workdir: Workdir, config: IngestConfig, preprocess: PreprocessConfig,
               ray_address: str | None = None,
               sources: list[Source] | None = None) -> IngestSummary:
    """Ingest every new file named by `config` into the workdir's tables. `sources`: the files
    `config` names, where the caller has listed them already (an archive is listed once)."""
    started = monotonic()
    summary = IngestSummary()
    if sources is None:
        sources = gather_sources(config.paths, config.manifest)
    pending, summary.files_already_done = pending_sources(workdir, config, sources)
    summary.files_found = len(pending) + summary.files_already_done
    if pending:
        workdir.write_json(config.model_dump(), *INGEST_CONFIG)
        with ray_for_job(ray_address):
            _stream_into_tables(workdir, config, preprocess, pending, summary, started)
    summary.seconds = monotonic() - started
    return summary


def _stream_into_tables(workdir: Workdir, config: IngestConfig, preprocess: PreprocessConfig,
                        pending: list[Source], summary: IngestSummary, started: float) -> None:
    workers = config.concurrency or cluster_cpus()
    dataset = ray.data.from_items([s.as_row() for s in pending]).map_batches(
        _IngestActor,
        fn_constructor_kwargs={"preprocess": preprocess.model_dump(),
                               "salt": workdir_salt(workdir),
                               "keep_ocr_text": config.keep_ocr_text,
                               "frame_limit": config.frames},
        batch_size=config.batch_size, batch_format="pyarrow", num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=workers))
    sink = _IngestSink(workdir, config.commit_rows, summary)
    with progress_bar("ingest", total=len(pending), unit="files") as advance:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not summary.startup_seconds:
                summary.startup_seconds = monotonic() - started
            sink.add(batch)
            advance(len(set(batch.column("source_uri").to_pylist())))
        sink.flush()
    if summary.rows_ingested:
        # Later stages look scans up by id; indexing here, not there, keeps the table version
        # that `fusc run` stamps stable after ingest.
        workdir.indexed_uri(SCANS)
