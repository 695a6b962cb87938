"""Per-file ingest: a batch of sources becomes `scans` rows and `quarantine` rows.

Pure Python (no Ray): the ingest job maps this over the archive; tests call it directly.
Each file fails alone: whatever goes wrong with it becomes a quarantine row with the stage and the
reason, and the rest of the batch goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusc_lib.artifacts import read_bytes
from fusc_lib.config import IngestConfig, default_of
from fusc_lib.io import BadInput, DecodedScan, content_id, decode, frame_id
from fusc_lib.preprocess import (
    PREPROCESS_VERSION,
    PreparedFrame,
    PreprocessConfig,
    Preprocessor,
    encode_png,
)
from fusc_lib.privacy import hash_identifier
from fusc_lib.sources import Source
from fusc_lib.store import utc_now
from fusc_lib.style import style_features
from schemas.tables import QUARANTINE_SCHEMA, SCANS_SCHEMA

OCR_BATCH_FRAMES = 16  # frames prepared together: one OCR batch, bounded memory for cine loops

DEFAULT_FRAMES = default_of(IngestConfig, "frames")  # frames kept per multi-frame file

# One schema for both kinds of row, so a Ray Data batch can carry both; the job splits them.
KIND = pa.field("kind", pa.string(), nullable=False)  # "scan" | "quarantine"
FRAMES_SKIPPED = pa.field("frames_skipped", pa.int32())  # on a file's first row: for the summary
INGEST_OUTPUT_SCHEMA = pa.schema(
    [KIND, FRAMES_SKIPPED]
    + [f.with_nullable(True) for f in SCANS_SCHEMA]
    + [f.with_nullable(True) for f in QUARANTINE_SCHEMA if f.name not in SCANS_SCHEMA.names])


@dataclass
class _PendingFile:
    source: Source
    file_id: str
    scan: DecodedScan
    tags: dict = field(default_factory=dict)


class ScanIngestor:
    """Callable over batches of sources; holds the preprocessor (OCR model) for its lifetime."""

    def __init__(self, config: PreprocessConfig, salt: str, keep_ocr_text: bool = False,
                 frame_limit: int | None = DEFAULT_FRAMES):
        self.preprocessor = Preprocessor(config)
        self.salt = salt
        self.keep_ocr_text = keep_ocr_text
        self.max_megapixels = config.max_megapixels
        self.frame_limit = frame_limit

    def __call__(self, sources: Sequence[Source]) -> pa.Table:
        now = utc_now()
        rows: list[dict] = []
        pending = []
        for source in sources:
            try:
                pending.append(self._open(source))
            except BadInput as error:
                rows.append(_quarantine_row(source.uri, None, error, now))
            except Exception as error:  # a decoder bug must not cost the rest of the batch
                rows.append(_quarantine_row(source.uri, None, BadInput(
                    f"unexpected decode error: {type(error).__name__}: {error}"), now))
        for file in pending:
            rows.extend(self._frames_rows(file, now))
        return pa.Table.from_pylist(rows, schema=INGEST_OUTPUT_SCHEMA)

    def _open(self, source: Source) -> _PendingFile:
        data = read_source(source.uri)
        scan = decode(data, self.max_megapixels, self.frame_limit)
        tags = {"site": source.site or scan.tags.get("site"),
                "device": source.device or scan.tags.get("device"),
                "patient_hash": hash_identifier(source.patient or scan.tags.get("patient"),
                                                self.salt),
                "study_hash": hash_identifier(source.study or scan.tags.get("study"), self.salt)}
        return _PendingFile(source, content_id(data), scan, tags)

    def _frames_rows(self, file: _PendingFile, now) -> Iterator[dict]:
        """Rows for every selected frame of a file, prepared `OCR_BATCH_FRAMES` at a time.

        A frame that fails to prepare is quarantined alone; when decoding stops part-way (a cine
        loop shorter than it claims), the frames decoded so far are kept and one quarantine row
        says what is missing.
        """
        batch: list[tuple[int, np.ndarray]] = []
        failure = None
        try:
            for frame in file.scan.frames:
                batch.append(frame)
                if len(batch) == OCR_BATCH_FRAMES:
                    yield from self._batch_rows(file, batch, now)
                    batch = []
        except BadInput as error:
            failure = error
        yield from self._batch_rows(file, batch, now)
        if failure:
            yield _quarantine_row(file.source.uri, None, failure, now)

    def _batch_rows(self, file: _PendingFile, batch: list[tuple[int, np.ndarray]],
                    now) -> Iterator[dict]:
        for (index, pixels), prepared in zip(batch, self._prepare(batch)):
            row = (_quarantine_row(file.source.uri, index, prepared, now)
                   if isinstance(prepared, BadInput)
                   else self._scan_row(file, index, pixels, prepared, now))
            if index == 0:  # always selected: the file's count of frames left out rides on it
                row["frames_skipped"] = file.scan.frames_skipped
            yield row

    def _prepare(self, batch: list[tuple[int, np.ndarray]]) -> list[PreparedFrame | BadInput]:
        """Prepare a batch together; if that fails, frame by frame to find the culprit."""
        if not batch:
            return []
        try:
            return self.preprocessor.prepare([pixels for _, pixels in batch])
        except Exception:
            return [self._prepare_alone(pixels) for _, pixels in batch]

    def _prepare_alone(self, pixels: np.ndarray) -> PreparedFrame | BadInput:
        try:
            return self.preprocessor.prepare([pixels])[0]
        except Exception as error:
            return BadInput(f"preprocessing failed: {type(error).__name__}: {error}", "preprocess")

    def _scan_row(self, file: _PendingFile, index: int, pixels: np.ndarray,
                  prepared: PreparedFrame, now) -> dict:
        return {
            "kind": "scan",
            "image_id": frame_id(file.file_id, index, file.scan.n_frames),
            "source_uri": file.source.uri,
            "frame": index,
            "width": int(pixels.shape[1]),
            "height": int(pixels.shape[0]),
            **file.tags,
            "style": style_features(prepared.pixels, pixels.shape[1], pixels.shape[0]).tolist(),
            "image": encode_png(prepared.pixels),
            "pseudo_view": prepared.pseudo_view,
            "ocr_confidence": prepared.ocr_confidence,
            "ocr_text": prepared.ocr_text if self.keep_ocr_text else None,
            "decode_notes": "; ".join(file.scan.notes) or None,
            "preprocess_version": PREPROCESS_VERSION,
            "ingested_at": now,
        }


def read_source(uri: str) -> bytes:
    """The bytes of a source file; `BadInput` (stage `read`) says why it cannot be read.

    Local paths are checked first: a broken link, or a FIFO or device that would block a read
    or never end, is named as such instead of being opened.
    """
    if "://" not in uri:
        if os.path.islink(uri) and not os.path.exists(uri):
            raise BadInput(f"broken symbolic link (to {os.readlink(uri)})", stage="read")
        if os.path.exists(uri) and not os.path.isfile(uri):
            raise BadInput("not a regular file (a FIFO, socket or device)", stage="read")
    try:
        return read_bytes(uri)
    except (OSError, ValueError) as error:
        raise BadInput(f"unreadable path: {error}", stage="read") from None


def _quarantine_row(uri: str, frame: int | None, error: BadInput, now) -> dict:
    return {"kind": "quarantine", "source_uri": uri, "frame": frame,
            "reason": error.reason, "stage": error.stage, "quarantined_at": now}


def split_output(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(scans rows, quarantine rows) of an ingest output batch, each in its table's schema."""
    kind = table.column("kind")
    scans = table.filter(pc.equal(kind, "scan"))
    quarantine = table.filter(pc.equal(kind, "quarantine"))
    return (scans.select(SCANS_SCHEMA.names).cast(SCANS_SCHEMA),
            quarantine.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA))
