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


class _IngestActor:
    """Ray Data actor: builds the OCR engine once, then ingests batches of sources."""

    def __init__(self, preprocess: dict, salt: str, keep_ocr_text: bool):
        self.ingestor = ScanIngestor(PreprocessConfig(**preprocess), salt, keep_ocr_text)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.ingestor([Source(**row) for row in batch.to_pylist()])


class _LanceAppender:
    """Buffers ingest output on the driver, drops repeated content, commits every N rows."""

    def __init__(self, workdir: Workdir, commit_rows: int, summary: IngestSummary):
        self.workdir = workdir
        self.commit_rows = commit_rows
        self.summary = summary
        self.known_ids = set(workdir.column(SCANS, "image_id").to_pylist())
        self.scans: list[pa.Table] = []
        self.quarantine: list[pa.Table] = []

    def add(self, batch: pa.Table) -> None:
        scans, quarantine = split_output(batch)
        keep = [self._is_new(image_id) for image_id in scans.column("image_id").to_pylist()]
        self.summary.duplicates_skipped += keep.count(False)
        self.scans.append(scans.filter(pa.array(keep, pa.bool_())))
        self.quarantine.append(quarantine)
        if sum(t.num_rows for t in self.scans + self.quarantine) >= self.commit_rows:
            self.flush()

    def _is_new(self, image_id: str) -> bool:
        if image_id in self.known_ids:
            return False
        self.known_ids.add(image_id)
        return True

    def flush(self) -> None:
        """Scans first: a kill between the two commits only re-quarantines a few bad files."""
        for name, pending in ((SCANS, self.scans), (QUARANTINE, self.quarantine)):
            if pending:
                rows = pa.concat_tables(pending)
                self.workdir.append(name, rows)
                count = "rows_ingested" if name == SCANS else "quarantined"
                setattr(self.summary, count, getattr(self.summary, count) + rows.num_rows)
            pending.clear()


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
        _stream_into_tables(workdir, config, preprocess, pending, summary, ray_address)
    summary.seconds = monotonic() - started
    return summary


def _stream_into_tables(workdir: Workdir, config: IngestConfig, preprocess: PreprocessConfig,
                        pending: list[Source], summary: IngestSummary,
                        ray_address: str | None) -> None:
    connect(ray_address)
    workers = config.concurrency or cluster_cpus()
    dataset = ray.data.from_items([s.as_row() for s in pending]).map_batches(
        _IngestActor,
        fn_constructor_kwargs={"preprocess": preprocess.model_dump(),
                               "salt": workdir_salt(workdir),
                               "keep_ocr_text": config.keep_ocr_text},
        batch_size=config.batch_size, batch_format="pyarrow", num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=workers))
    appender = _LanceAppender(workdir, config.commit_rows, summary)
    with progress_bar("ingest", total=len(pending), unit="files") as advance:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            appender.add(batch)
            advance(len(set(batch.column("source_uri").to_pylist())))
        appender.flush()
