"""Where every artifact of a workdir lives: the one module that names its files and folders.

    <workdir>/
      lancedb/                          the tables (schemas/tables.py)
      preprocess.json                   how frames are prepared, fixed by the first ingest
      id-salt.json                      the salt of patient and study hashes
      runs/ingest-config.json           the options of the last ingest
      stages/<stage>.json               `fusc run`'s ledger (fusc_lib/ledger.py)
      models/ssl/<run>/                 encoder.json, backbone.pt, config.json, loss.csv;
                                        self-label runs also start.pt and head.pt
      models/cluster/<version>/         model.json, head.pt; models/cluster/current.json
      models/sites/site_model.json      the style groups `fusc sites` inferred
      models/site-norms/<table>.pt      per-site BatchNorm statistics of an embedding key
      exports/assignments.csv           what `fusc run` exports
      reports/<version>/                metrics.json (`fusc evaluate`, schemas/metrics.py),
                                        labels.parquet (the labels it matched), report.html
      reports/thumbs/<side>/            the review page's thumbnails, made once per scan

`Workdir` (fusc_lib/store.py) joins these to its root; code inside a model folder (encoders,
heads, training state) joins the file names below to the folder it is given.
"""

from __future__ import annotations

LANCEDB = "lancedb"
PREPROCESS = "preprocess.json"
ID_SALT = "id-salt.json"
INGEST_CONFIG = ("runs", "ingest-config.json")
STAGES = "stages"
SSL_RUNS = ("models", "ssl")
CLUSTER_MODELS = ("models", "cluster")
CURRENT_CLUSTER_MODEL = (*CLUSTER_MODELS, "current.json")
SITE_MODEL = ("models", "sites", "site_model.json")
SITE_NORMS = ("models", "site-norms")  # <embeddings table name>.pt (fusc_lib/models/site_norms)
RUN_EXPORT = ("exports", "assignments.csv")
REPORTS = "reports"
THUMBS = (REPORTS, "thumbs")  # `fusc review`'s thumbnail cache: <side>/<id[:2]>/<id>.jpg

# Files inside a report folder.
METRICS = "metrics.json"  # `fusc evaluate`'s figures, schema in schemas/metrics.py
MATCHED_LABELS = "labels.parquet"  # image_id, view, site, super_class of the scored scans
REPORT_PAGE = "report.html"  # `fusc report`'s self-contained page

# Files inside a model folder.
ENCODER_INFO = "encoder.json"  # backbone name, input size, normalisation
BACKBONE_WEIGHTS = "backbone.pt"  # state dict of the timm backbone
HEAD_WEIGHTS = "head.pt"  # cluster head: {"weight", "bias"}
SELF_LABEL_START = "start.pt"  # head and site means a network self-label run starts from
SSL_CONFIG = "config.json"  # every option of an SSL run
LOSS_LOG = "loss.csv"  # epoch, loss, images/s
TRAINING_STATE = "state.pt"  # model + optimizer inside a Ray Train checkpoint
CLUSTER_MODEL_INFO = "model.json"  # a cluster model's version, embedding, head, sites
