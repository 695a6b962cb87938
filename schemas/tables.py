"""Arrow schemas of the LanceDB tables: the contract between stages (see ARCHITECTURE.md).

One place defines each table; `fusc_lib.store` creates and opens them from here.
"""

import hashlib
import re

import pyarrow as pa

SCANS = "scans"
QUARANTINE = "quarantine"
DUPLICATES = "duplicates"
# One table per embedding key (`<model>[~views<n>]`): each key is its own vector space, with its
# own width and IVF-PQ index. Workdirs made before held every key in one table, `embeddings`.
EMBEDDINGS_PREFIX = "embeddings-"
LEGACY_EMBEDDINGS = "embeddings"
EMBEDDING_KEY = b"fusc.embedding_key"  # schema metadata: the key an embeddings table holds
SITES = "sites"
NEIGHBORS = "neighbors"
ASSIGNMENTS = "assignments"
REVIEW = "review"

SCANS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),  # sha256 of the file (+ -fNNNN per frame)
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),  # of the original frame
    pa.field("height", pa.int32(), nullable=False),
    pa.field("site", pa.string()),  # manifest `site`, else DICOM InstitutionName, else null
    pa.field("device", pa.string()),  # manifest `device`, else DICOM Manufacturer + ModelName
    pa.field("patient_hash", pa.string()),  # salted hash; a patient id is never stored in clear
    pa.field("study_hash", pa.string()),
    pa.field("image", pa.binary(), nullable=False),  # preprocessed PNG, grey, size x size
    pa.field("pseudo_view", pa.string(), nullable=False),  # from burnt-in text; `unknown` if none
    pa.field("ocr_confidence", pa.float32(), nullable=False),
    pa.field("ocr_text", pa.string()),  # only with --keep-ocr-text: may hold patient names
    pa.field("preprocess_version", pa.string(), nullable=False),
    pa.field("ingested_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    # What decoding assumed or corrected, e.g. "EXIF orientation 6 applied" or "no file meta:
    # transfer syntax assumed Implicit VR Little Endian"; null when nothing was.
    pa.field("decode_notes", pa.string()),
    # Machine-style statistics of the stored image and original frame size
    # (`fusc_lib.sites.style_features`), computed once at ingest so `fusc sites` and `fusc assign`
    # need not decode every image again; null in rows a workdir held before the column existed.
    pa.field("style", pa.list_(pa.float32())),
])

# Files whose bytes equal a file already in `scans` (a re-export, a copy in another study
# folder): not decoded twice, but recorded, so `fusc export` lists them with their twin's cluster.
DUPLICATES_SCHEMA = pa.schema([
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),  # the scan it is a copy of
    pa.field("recorded_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])

QUARANTINE_SCHEMA = pa.schema([
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("frame", pa.int32()),  # null when the whole file failed
    pa.field("reason", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),  # read | decode | preprocess
    pa.field("quarantined_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])


# Where each scan came from, as the clustering stages see it: the site and machine the manifest
# or DICOM named ("site / device", either alone where only one is named), else the style group
# `fusc sites` inferred. Rewritten whole by that stage.
SITES_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("site", pa.string(), nullable=False),
    pa.field("inferred", pa.bool_(), nullable=False),  # false: from the manifest / DICOM
])

# The k nearest neighbours of each scan in the clustering space of one embedding model.
NEIGHBORS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("embedding_key", pa.string(), nullable=False),
    pa.field("neighbor_ids", pa.list_(pa.string()), nullable=False),  # best first
    pa.field("similarities", pa.list_(pa.float32()), nullable=False),  # cosine
])

# The cluster of each scan under one cluster model version.
ASSIGNMENTS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("cluster_id", pa.int32(), nullable=False),
    pa.field("confidence", pa.float32(), nullable=False),  # probability of cluster_id
    pa.field("probabilities", pa.list_(pa.float32()), nullable=False),  # one per cluster
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("assigned_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])


# Every review decision, appended, never rewritten: the state of a model version's review is
# its decisions replayed in `made_at` order (fusc_lib/review.py). Appends do not conflict, so
# two reviewers saving at once lose nothing.
REVIEW_SCHEMA = pa.schema([
    pa.field("decision_id", pa.string(), nullable=False),  # uuid4
    pa.field("model_version", pa.string(), nullable=False),  # the version it was made on
    # name | mixed | unmixed (a cluster); move | exclude | restore (a scan)
    pa.field("action", pa.string(), nullable=False),
    pa.field("cluster_id", pa.int32()),  # name, mixed, unmixed
    pa.field("image_id", pa.string()),  # move, exclude, restore
    pa.field("name", pa.string()),  # name, move: the label given (null: the name is cleared)
    pa.field("reviewer", pa.string()),  # who, where known ($FUSC_REVIEWER, the page's field)
    pa.field("carried_from", pa.string()),  # the version it was first made on, when carried
    pa.field("made_at", pa.timestamp("us", tz="UTC"), nullable=False),
])


def embeddings_table_name(key: str) -> str:
    """The table of embedding key `key`: `embeddings-<slug>-<8 hex of sha1(key)>`.

    LanceDB names allow only [A-Za-z0-9_.-]: the slug keeps the name readable, the hash keeps
    keys that slug alike (`a:b`, `a/b`) apart.
    """
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:64]
    return f"{EMBEDDINGS_PREFIX}{slug}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def embeddings_schema(dim: int, key: str) -> pa.Schema:
    """One L2-normalised vector per scan of embedding key `key` (its table's metadata names
    the key); every vector `dim` wide."""
    return pa.schema([
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("embedding_key", pa.string(), nullable=False),  # the key, on every row
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("embedded_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ], metadata={EMBEDDING_KEY: key.encode()})


SCHEMAS = {SCANS: SCANS_SCHEMA, QUARANTINE: QUARANTINE_SCHEMA, DUPLICATES: DUPLICATES_SCHEMA,
           SITES: SITES_SCHEMA, NEIGHBORS: NEIGHBORS_SCHEMA, ASSIGNMENTS: ASSIGNMENTS_SCHEMA,
           REVIEW: REVIEW_SCHEMA}

# The columns naming a row of each keyed table: `fusc_lib.store.Workdir.append` appends only
# rows whose key is not in the table yet, so a commit repeated after a crash adds nothing.
# EMBEDDINGS_PREFIX stands for every embeddings table. Not keyed: sites (rewritten whole),
# review (each save makes new decision ids), quarantine (`frame` is null for a whole-file
# failure, and null never equals null in a join).
ROW_KEYS = {SCANS: ("image_id",), DUPLICATES: ("source_uri", "frame"),
            EMBEDDINGS_PREFIX: ("image_id",), NEIGHBORS: ("image_id", "embedding_key"),
            ASSIGNMENTS: ("image_id", "model_version")}
