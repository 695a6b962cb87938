"""Arrow schemas of the LanceDB tables: the contract between stages (see ARCHITECTURE.md).

One place defines each table; `fusc_lib.store` creates and opens them from here.
"""

import pyarrow as pa

SCANS = "scans"
QUARANTINE = "quarantine"
EMBEDDINGS = "embeddings"
SITES = "sites"
NEIGHBORS = "neighbors"
ASSIGNMENTS = "assignments"

SCANS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),  # sha256 of the file (+ -fNNNN per frame)
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),  # of the original frame
    pa.field("height", pa.int32(), nullable=False),
    pa.field("site", pa.string()),  # manifest `site`, else DICOM InstitutionName, else null
    pa.field("device", pa.string()),  # DICOM Manufacturer + ManufacturerModelName
    pa.field("patient_hash", pa.string()),  # salted hash; a patient id is never stored in clear
    pa.field("study_hash", pa.string()),
    pa.field("image", pa.binary(), nullable=False),  # preprocessed PNG, grey, size x size
    pa.field("pseudo_view", pa.string(), nullable=False),  # from burnt-in text; `unknown` if none
    pa.field("ocr_confidence", pa.float32(), nullable=False),
    pa.field("ocr_text", pa.string()),  # only with --keep-ocr-text: may hold patient names
    pa.field("preprocess_version", pa.string(), nullable=False),
    pa.field("ingested_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])

QUARANTINE_SCHEMA = pa.schema([
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("frame", pa.int32()),  # null when the whole file failed
    pa.field("reason", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),  # read | decode | preprocess
    pa.field("quarantined_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])


# Where each scan came from, as the clustering stages see it: the given site where the manifest
# or DICOM named one, else the style group `fusc sites` inferred. Rewritten whole by that stage.
SITES_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("site", pa.string(), nullable=False),
    pa.field("inferred", pa.bool_(), nullable=False),  # false: from the manifest / DICOM
])

# The k nearest neighbours of each scan in the clustering space of one embedding model.
NEIGHBORS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("model_run", pa.string(), nullable=False),
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


def embeddings_schema(dim: int) -> pa.Schema:
    """One L2-normalised vector per scan and model; the dimension is fixed per table."""
    return pa.schema([
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("model_run", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("embedded_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ])


SCHEMAS = {SCANS: SCANS_SCHEMA, QUARANTINE: QUARANTINE_SCHEMA, SITES: SITES_SCHEMA,
           NEIGHBORS: NEIGHBORS_SCHEMA, ASSIGNMENTS: ASSIGNMENTS_SCHEMA}
