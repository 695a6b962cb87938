"""`fusc ingest`: an archive of scans becomes the LanceDB `scans` and `quarantine` tables.

Ray Data streams the files through an actor pool (read -> decode -> OCR -> inpaint -> crop); the
driver appends what comes out with LanceDB's writer every `commit_rows` rows. Memory stays flat
whatever the archive size, a kill loses at most one uncommitted batch, and a rerun skips every
file already in `scans` or `quarantine`, so running twice adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import pyarrow as pa
import ray

from fusc_lib.ingest import IngestConfig, ScanIngestor, split_output
from fusc_lib.preprocess import PreprocessConfig
from fusc_lib.privacy import resolve_salt
from fusc_lib.progress import progress_bar
from fusc_lib.sources import Source, gather_sources
from fusc_lib.store import Workdir
from jobs._lance_sink import TableAppender
from jobs._ray import cluster_cpus, connect
from schemas.tables import QUARANTINE, SCANS

SALT_FILE = "id-salt.json"


@dataclass
class IngestSummary:
    files_found: int = 0
    files_already_done: int = 0
    rows_ingested: int = 0
    duplicates_skipped: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # until the first rows came back: listing, Ray, worker start


class _IngestActor:
    """Ray Data actor: builds the OCR engine once, then ingests batches of sources."""

    def __init__(self, preprocess: dict, salt: str, keep_ocr_text: bool):
        self.ingestor = ScanIngestor(PreprocessConfig(**preprocess), salt, keep_ocr_text)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.ingestor([Source(**row) for row in batch.to_pylist()])


class _IngestSink:
    """Drops repeated content, then commits scans before quarantine rows.

    That order matters: a file with one bad frame has rows in both tables, and a rerun skips any
    file found in either; committing scans first means a kill never hides a file's good frames.
    """

    def __init__(self, workdir: Workdir, commit_rows: int, summary: IngestSummary):
        self.summary = summary
        self.known_ids = set(workdir.column(SCANS, "image_id").to_pylist())
        self.scans = TableAppender(workdir, SCANS, commit_rows)
        self.quarantine = TableAppender(workdir, QUARANTINE, commit_rows)

    def add(self, batch: pa.Table) -> None:
        scans, quarantine = split_output(batch)
        keep = [self._is_new(image_id) for image_id in scans.column("image_id").to_pylist()]
        self.summary.duplicates_skipped += keep.count(False)
        self.scans.add(scans.filter(pa.array(keep, pa.bool_())))
        self.quarantine.add(quarantine)
        if self.scans.full or self.quarantine.full:
            self.flush()

    def _is_new(self, image_id: str) -> bool:
        if image_id in self.known_ids:
            return False
        self.known_ids.add(image_id)
        return True

    def flush(self) -> None:
        self.scans.flush()
        self.quarantine.flush()
        self.summary.rows_ingested = self.scans.committed
        self.summary.quarantined = self.quarantine.committed


def pending_sources(workdir: Workdir, config: IngestConfig) -> tuple[list[Source], int]:
    """Sources not yet in `scans` or `quarantine`, and how many were already done.

    With `retry_quarantined`, quarantined sources of this input are pending again and their old
    quarantine rows are dropped (a failure again writes a fresh row).
    """
    sources = gather_sources(config.paths, config.manifest)
    done = set(workdir.column(SCANS, "source_uri").to_pylist())
    quarantined = set(workdir.column(QUARANTINE, "source_uri").to_pylist())
    if config.retry_quarantined:
        retried = [s.uri for s in sources if s.uri in quarantined and s.uri not in done]
        workdir.delete_where(QUARANTINE, "source_uri", retried)
    else:
        done |= quarantined
    pending = [s for s in sources if s.uri not in done]
    return pending, len(sources) - len(pending)


def workdir_salt(workdir: Workdir) -> str:
    stored = (workdir.read_json(SALT_FILE) or {}).get("salt")
    salt = resolve_salt(stored)
    if stored is None:
        workdir.write_json({"salt": salt}, SALT_FILE)
    return salt


def run_ingest(workdir: Workdir, config: IngestConfig, preprocess: PreprocessConfig,
               ray_address: str | None = None) -> IngestSummary:
    """Ingest every new file named by `config` into the workdir's tables."""
    started = monotonic()
    summary = IngestSummary()
    pending, summary.files_already_done = pending_sources(workdir, config)
    summary.files_found = len(pending) + summary.files_already_done
    if pending:
        workdir.write_json(config.model_dump(), "runs", "ingest-config.json")
        _stream_into_tables(workdir, config, preprocess, pending, summary, ray_address, started)
    summary.seconds = monotonic() - started
    return summary


def _stream_into_tables(workdir: Workdir, config: IngestConfig, preprocess: PreprocessConfig,
                        pending: list[Source], summary: IngestSummary,
                        ray_address: str | None, started: float) -> None:
    connect(ray_address)
    workers = config.concurrency or cluster_cpus()
    dataset = ray.data.from_items([s.as_row() for s in pending]).map_batches(
        _IngestActor,
        fn_constructor_kwargs={"preprocess": preprocess.model_dump(),
                               "salt": workdir_salt(workdir),
                               "keep_ocr_text": config.keep_ocr_text},
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
